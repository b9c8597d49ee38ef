"""Strategy ``des-a2a``: sparse DES.

Keys go to their owners grouped per (sample, owner) pair; each owner computes the model's
partial results (W wide) of each pair over its keys and sends them back only for the pairs that
exist; the requester sums them into Z (b×W), runs the dense part on its b samples, and sends gZ
of each pair back to its owner, which needs nothing else for its keys' gradients. Per-rank
traffic is bounded by distinct owners per sample, not by the global batch.
"""

from __future__ import annotations

import numpy as np

from desmpi.data.batch import Batch
from desmpi.kernels.hashing import key_field
from desmpi.reference import Occurrences, pool_owned, sparse_update
from desmpi.strategies.exchange import ExchangeStrategy, segments_by_owner


class DesA2AStrategy(ExchangeStrategy):
    strategy = "des-a2a"

    def _sparse_forward(self, b: Batch, sizes: np.ndarray, insert: bool):
        comm, table, model, tm = self.comm, self.table, self.model, self.timer
        P, W = comm.size, model.W
        dt = table.dtype
        s, _ = b.sample_field()
        order, kcnt, _, lens, pcnt, pair_s = segments_by_owner(self.owners(b.keys), s, P)
        tm.lap("route")
        keys_in, rows, lens_in, vals_in, rp = self.send_segments(b, order, kcnt, lens, pcnt,
                                                                 True, insert)
        n_in = int(rp.sum())
        occ = Occurrences(np.repeat(np.arange(n_in, dtype=np.int64), lens_in),
                          key_field(keys_in), rows, vals_in)
        pooled_pairs = pool_owned(model, occ, n_in, table)
        Zp = model.partial(pooled_pairs)
        tm.lap("partials")
        back = self.floats(Zp, rp * W, pcnt * W)
        tm.lap("exchange")
        Z = np.zeros((b.n, W), dtype=dt)
        np.add.at(Z, pair_s, back.reshape(-1, W))  # owner order, the same at every run
        return Z, (pair_s, pcnt, rp, occ, pooled_pairs)

    def _sparse_backward(self, state, gZ: np.ndarray):
        table, model, tm = self.table, self.model, self.timer
        pair_s, pcnt, rp, occ, pooled_pairs = state
        W = model.W
        g_in = self.floats(gZ[pair_s], pcnt * W, rp * W, grads=True)
        tm.lap("exchange")
        kg = model.key_grads(g_in.reshape(-1, W), pooled_pairs)  # fused: local part of dW1
        tm.lap("key_grads")
        return lambda t: sparse_update(model, occ, kg, table, self.sparse_opt, t)
