"""Replicated DES, ``des/allreduce`` — the paper's form (DESIGN: the substitutions).

Input: the global batch on every rank (:mod:`desmpi.strategies.des_input`, with label and
dense rows). Every rank computes the partials of the keys it owns for all B samples; one
Allreduce of Z (B×W) gives every rank the whole aggregated Z; the dense part then runs,
replicated, over the global batch, so backward needs no communication except a fused first
layer's W1 gradient (an Allreduce of W1's size). Replicas must stay bitwise equal: checked by
:meth:`DesReplicated.check_replicas`.
"""

from __future__ import annotations

import hashlib

import numpy as np

from desmpi.data.batch import Batch
from desmpi.metrics import sigmoid
from desmpi.reference import bce_with_logits, local_partials, sparse_update
from desmpi.strategies import compressed, des_input
from desmpi.strategies.template import Strategy


class DesReplicated(Strategy):
    strategy, aggregate = "des", "allreduce"

    def feedback_vectors(self) -> tuple[str, ...]:
        return ("W1",) if self.model.partial_grad_size else ()  # the dense part is replicated

    def _partials(self, b: Batch, sizes: np.ndarray, insert: bool):
        """(global batch, occurrences, pools, Z (B, W) local partials)."""
        tm = self.timer
        g = des_input.global_batch(self.comm, b, sizes, self.variant.replicate_input, True,
                                   self.model.dtype, self.wire.keys)
        tm.lap("gather")
        occ, pooled, Zloc = local_partials(self.model, self.table, g, self.comm.rank,
                                           self.comm.size, insert, tm)
        return g, occ, pooled, Zloc

    def _aggregate(self, Zloc: np.ndarray) -> np.ndarray:
        """Σ over ranks of the partials, in place (Zloc is not needed any more)."""
        if self.wire.partials == "none":
            return self.comm.allreduce(Zloc, out=Zloc)
        return compressed.allreduce(self.comm, Zloc, self.wire.partials, ratio=self.wire.ratio,
                                    bufs=self.bufs)

    def train_step(self, b: Batch, sizes: np.ndarray, t: int) -> float:
        """One synchronous step on this rank's slice ``b``; returns the global loss sum."""
        comm, model, tm = self.comm, self.model, self.timer
        prm = model.params
        sizes = np.asarray(sizes, dtype=np.int64)
        B = int(sizes.sum())
        tm.start()
        g, occ, pooled, Zloc = self._partials(b, sizes, insert=True)
        prm.zero_grad()
        Z = self._aggregate(Zloc)
        tm.lap("aggregate")
        logits, cache = model.forward(Z, g.dense)
        loss, p = bce_with_logits(logits, g.labels)
        gZ = model.backward(cache, (p - g.labels) / B)
        tm.lap("dense")
        if self.probe is not None:
            self.probe.update(Z=Z.copy(), gZ=np.array(gZ))
        kg = model.key_grads(gZ, pooled)
        tm.lap("key_grads")
        if model.partial_grad_size:
            gw1 = prm.grads[model.partial_grad]  # a contiguous view, reduced in place
            if self.wire.dense == "none":
                comm.allreduce(gw1, out=gw1)
            else:
                self.feedback_allreduce("W1", gw1)
            tm.lap("aggregate")
        self._check_and_update(Z, loss, t, lambda t: sparse_update(
            model, occ, kg, self.table, self.sparse_opt, t))
        return loss

    def predict(self, b: Batch, sizes: np.ndarray) -> np.ndarray:
        """Probabilities of the whole global batch, on every rank (:meth:`evaluating`)."""
        sizes = np.asarray(sizes, dtype=np.int64)
        with self.evaluating():
            g, _, _, Zloc = self._partials(b, sizes, insert=False)
            logits, _ = self.model.forward(self._aggregate(Zloc), g.dense)
        return sigmoid(np.asarray(logits, dtype=np.float64))

    def check_replicas(self, step: int) -> None:
        """Replicated dense parameters must be bitwise equal on every rank: the MPI standard
        advises, and MPICH's and Open MPI's default algorithms give, the same Allreduce bits on
        every rank; a library that does not is caught here."""
        if self.comm.size == 1:
            return
        h = hashlib.blake2b(self.model.params.data.tobytes(), digest_size=16).hexdigest()
        hs = self.comm.allgather_object(h)
        if len(set(hs)) > 1:
            bad = [r for r, x in enumerate(hs) if x != hs[0]]
            raise RuntimeError(f"step {step}: replicated dense parameters differ between rank "
                               f"0 and ranks {bad}: the MPI library's Allreduce is not "
                               "bitwise reproducible; use dist.aggregate = 'reduce_scatter'")
