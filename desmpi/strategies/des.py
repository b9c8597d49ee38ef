"""Strategy ``des``: Distributed Equivalent Substitution (DESIGN.md §3).

aggregate = "allreduce" (the paper's form): Allgatherv of the local batch (lengths of multi-hot
bags, keys, values, [label | dense] rows); every rank computes the partials of its own keys for
the whole global batch; Allreduce of Z (B×W); the dense part is replicated over the global batch,
so no backward communication except a fused first layer's W1 gradient (Allreduce of W1's size).

dist.input = "replicate" drops the input Allgathervs: every rank reads the whole global batch
from the data set itself (I/O instead of MPI traffic, as in the DES paper's setting).

aggregate = "reduce_scatter": Allgatherv of keys only; Reduce_scatter of Z gives each rank its
own b×W; the dense part is data parallel; backward Allgatherv of gZ (b×W each) and one
Allreduce of the dense gradients (with the loss sum riding along as one more element).
"""

from __future__ import annotations

import hashlib

import numpy as np

from desmpi.comm import Comm
from desmpi.data.batch import Batch
from desmpi.metrics import sigmoid
from desmpi.strategies.common import (
    Timer,
    allreduce_grads_and_loss,
    bce_with_logits,
    check_finite,
    occurrences,
    pool_owned,
    route,
    sparse_update,
)
from desmpi.strategies.counts import ModelDims, StepCounts
from desmpi.strategies.plans import plan
from sim.accounting import Call


class DesStrategy:
    name = "des"

    def __init__(self, model, table, sparse_opt, dense_opt, comm: Comm, aggregate: str,
                 timer: Timer | None = None, input_mode: str = "gather") -> None:
        if aggregate not in ("allreduce", "reduce_scatter"):
            raise ValueError(f"dist.aggregate = {aggregate!r}: allreduce or reduce_scatter")
        self.model, self.table, self.comm = model, table, comm
        self.sparse_opt, self.dense_opt = sparse_opt, dense_opt
        self.aggregate = aggregate
        self.timer = timer or Timer()
        self.replicated = aggregate == "allreduce"
        if input_mode not in ("gather", "replicate"):
            raise ValueError(f"dist.input = {input_mode!r}: gather or replicate")
        # replicate: every rank reads the whole global batch itself (no input collective)
        self.replicate_input = input_mode == "replicate"

    # ---- plan --------------------------------------------------------------------------------
    def plan(self, counts: StepCounts, rank: int) -> list[Call]:
        """Collectives of one training step on ``rank``, from the batch's counts alone."""
        return plan("des", self.aggregate, counts, ModelDims.of(self.model), rank,
                    self.replicate_input)

    # ---- execution ---------------------------------------------------------------------------
    def _gather(self, b: Batch, sizes: np.ndarray, features: bool) -> Batch:
        """The global batch's keys (and, when ``features``, labels and dense rows)."""
        comm, F = self.comm, b.n_fields
        dt = self.model.dtype
        offsets = None
        if b.offsets is not None:
            lens = comm.allgatherv(np.diff(b.offsets), sizes * F)
            offsets = np.zeros(lens.shape[0] + 1, dtype=np.int64)
            np.cumsum(lens, out=offsets[1:])
            bounds = offsets[np.concatenate([[0], np.cumsum(sizes * F)])]
            nnz = np.diff(bounds)
        else:
            nnz = sizes * F
        keys = comm.allgatherv(b.keys, nnz)
        values = None
        if b.values is not None:
            values = comm.allgatherv(np.ascontiguousarray(b.values, dtype=dt), nnz)
        B = int(sizes.sum())
        if features:
            Dn = b.dense.shape[1]
            feats = np.empty((b.n, 1 + Dn), dtype=dt)
            feats[:, 0] = b.labels
            feats[:, 1:] = b.dense
            fg = comm.allgatherv(feats.reshape(-1), sizes * (1 + Dn)).reshape(B, 1 + Dn)
            labels, dense = fg[:, 0], fg[:, 1:]
        else:
            labels, dense = np.empty(B, dt), np.empty((B, 0), dt)
        return Batch(labels, dense, keys, F, offsets, values)

    def _inputs(self, b: Batch, sizes: np.ndarray) -> tuple[Batch, np.ndarray, np.ndarray]:
        """(global batch, this rank's labels, this rank's dense rows)."""
        if self.replicate_input:
            lo = int(sizes[: self.comm.rank].sum())
            hi = lo + int(sizes[self.comm.rank])
            return b, b.labels[lo:hi], b.dense[lo:hi]
        return self._gather(b, sizes, features=self.replicated), b.labels, b.dense

    def _local_partials(self, g: Batch, insert: bool):
        tm = self.timer
        pos = route(g, self.comm.rank, self.comm.size)
        tm.lap("route")
        occ = occurrences(g, pos, self.table, insert)
        tm.lap("lookup")
        pooled = pool_owned(self.model, occ, g.n, self.table)
        Z = self.model.partial(pooled)
        tm.lap("partials")
        return occ, pooled, Z

    def train_step(self, b: Batch, sizes: np.ndarray, t: int) -> float:
        """One synchronous step on this rank's slice ``b``; returns the global loss sum."""
        comm, model, tm = self.comm, self.model, self.timer
        prm = model.params
        sizes = np.asarray(sizes, dtype=np.int64)
        B, W = int(sizes.sum()), model.W
        tm.start()
        g, y_mine, x_mine = self._inputs(b, sizes)
        n_mine = y_mine.shape[0]
        tm.lap("gather")
        occ, pooled, Zloc = self._local_partials(g, insert=True)
        prm.zero_grad()
        if self.replicated:
            Z = comm.allreduce(Zloc, out=Zloc)  # in place: Zloc is not needed any more
            tm.lap("aggregate")
            logits, cache = model.forward(Z, g.dense)
            loss, p = bce_with_logits(logits, g.labels)
            gZ = model.backward(cache, (p - g.labels) / B)
            tm.lap("dense")
            kg = model.key_grads(gZ, pooled)
            tm.lap("key_grads")
            sl = model.partial_grad
            if model.partial_grad_size:
                gw1 = prm.grads[sl]  # a contiguous view, reduced in place
                comm.allreduce(gw1, out=gw1)
                tm.lap("aggregate")
        else:
            Zm = comm.reduce_scatter(Zloc, sizes * W,
                                     out=prm.scratch("Zmine", (n_mine, W))).reshape(n_mine, W)
            tm.lap("aggregate")
            logits, cache = model.forward(Zm, x_mine)
            loss_local, p = bce_with_logits(logits, y_mine)
            gZm = model.backward(cache, (p - y_mine) / B)
            tm.lap("dense")
            gZ = comm.allgatherv(np.ascontiguousarray(gZm).reshape(-1), sizes * W,
                                 out=prm.scratch("gZall", (B, W))).reshape(B, W)
            tm.lap("aggregate")
            kg = model.key_grads(gZ, pooled)
            tm.lap("key_grads")
            loss = allreduce_grads_and_loss(comm, prm, loss_local)
            tm.lap("aggregate")
        check_finite(model, Z if self.replicated else Zm, loss, prm.grads, t)
        sparse_update(model, occ, kg, self.table, self.sparse_opt, t)
        tm.lap("sparse_update")
        self.dense_opt.apply(prm.data, prm.grads, t)
        tm.lap("dense_update")
        return loss

    def predict(self, b: Batch, sizes: np.ndarray) -> np.ndarray:
        """Probabilities of the whole global batch, on every rank (communication: scope eval)."""
        comm, model = self.comm, self.model
        sizes = np.asarray(sizes, dtype=np.int64)
        W = model.W
        with comm.acct.scoped("eval"):
            g, _, x_mine = self._inputs(b, sizes)
            _, _, Zloc = self._local_partials(g, insert=False)
            if self.replicated:
                logits, _ = model.forward(comm.allreduce(Zloc), g.dense)
            else:
                Zm = comm.reduce_scatter(Zloc, sizes * W).reshape(x_mine.shape[0], W)
                lm, _ = model.forward(Zm, x_mine)
                logits = comm.allgatherv(np.ascontiguousarray(lm), sizes)
        return sigmoid(np.asarray(logits, dtype=np.float64))

    def check_replicas(self, step: int) -> None:
        """Replicated dense parameters must be bitwise equal on every rank (DESIGN.md §3)."""
        if not self.replicated or self.comm.size == 1:
            return
        h = hashlib.blake2b(self.model.params.data.tobytes(), digest_size=16).hexdigest()
        hs = self.comm.allgather_object(h)
        if len(set(hs)) > 1:
            bad = [r for r, x in enumerate(hs) if x != hs[0]]
            raise RuntimeError(f"step {step}: replicated dense parameters differ between rank "
                               f"0 and ranks {bad}: the MPI library's Allreduce is not "
                               "bitwise reproducible; use dist.aggregate = 'reduce_scatter'")
