"""Data-parallel DES, ``des/reduce_scatter``.

Input: the global batch's keys on every rank (:mod:`desmpi.strategies.des_input`, keys only).
Every rank computes the partials of its keys for all B samples; Reduce_scatter of Z gives each
rank the aggregated rows of its own b samples; the dense part is data parallel; backward
Allgatherv of gZ (b×W from each rank) so that every owner has the gradient of every sample's
partial; the dense gradients go in the template's one Allreduce.
"""

from __future__ import annotations

import numpy as np

from desmpi.data.batch import Batch
from desmpi.reference import local_partials, sparse_update
from desmpi.strategies import compressed, des_input
from desmpi.strategies.template import DataParallelStrategy


class DesReduceScatter(DataParallelStrategy):
    strategy, aggregate = "des", "reduce_scatter"

    def _local_rows(self, b: Batch, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return des_input.own_rows(self.comm, b, sizes, self.variant.replicate_input)

    def _sparse_forward(self, b: Batch, sizes: np.ndarray, insert: bool):
        comm, model, tm = self.comm, self.model, self.timer
        W, n_mine = model.W, int(sizes[comm.rank])
        g = des_input.global_batch(comm, b, sizes, self.variant.replicate_input, False,
                                   model.dtype, self.wire.keys)
        tm.lap("gather")
        occ, pooled, Zloc = local_partials(model, self.table, g, comm.rank, comm.size, insert,
                                           tm)
        out = model.params.scratch("Zmine", (n_mine, W))
        if self.wire.partials == "none":
            comm.reduce_scatter(Zloc, sizes * W, out=out)
        else:
            compressed.reduce_scatter(comm, Zloc.reshape(-1), sizes * W, self.wire.partials, out,
                                      self.wire.ratio, self.bufs)
        Zm = out.reshape(n_mine, W)
        tm.lap("aggregate")
        return Zm, (occ, pooled, sizes)

    def _sparse_backward(self, state, gZ: np.ndarray):
        comm, model, tm = self.comm, self.model, self.timer
        occ, pooled, sizes = state
        B, W = int(sizes.sum()), model.W
        out = model.params.scratch("gZall", (B, W))
        send = np.ascontiguousarray(gZ).reshape(-1)
        if self.wire.partial_grads == "none":
            comm.allgatherv(send, sizes * W, out=out)
        else:
            compressed.allgatherv(comm, send, sizes * W, self.wire.partial_grads, out,
                                  self.wire.ratio, self.bufs)
        gZall = out.reshape(B, W)
        tm.lap("aggregate")
        kg = model.key_grads(gZall, pooled)  # fused first layer: this rank's part of dW1
        tm.lap("key_grads")
        return lambda t: sparse_update(model, occ, kg, self.table, self.sparse_opt, t)
