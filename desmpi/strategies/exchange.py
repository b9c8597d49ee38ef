"""Shared machinery of the data-parallel strategies (ps, a2a, des-a2a).

Their dense part is data parallel: each rank runs the model on its own b samples and one
Allreduce sums the dense gradients, with the loss sum riding along as one more element.
Sparse traffic goes to and from the keys' owners with Alltoallv; items bound for one owner
keep their batch order, so owners accumulate gradients in a fixed order at every run.
"""

from __future__ import annotations

import numpy as np

from desmpi.comm import Comm
from desmpi.data.batch import Batch
from desmpi.kernels.hashing import owners
from desmpi.metrics import sigmoid
from desmpi.strategies.common import (
    Timer,
    allreduce_grads_and_loss,
    bce_with_logits,
    check_finite,
)
from desmpi.strategies.counts import ModelDims, StepCounts
from desmpi.strategies.plans import plan
from sim.accounting import Call


def group_by_owner(own: np.ndarray, P: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, counts): a stable order that groups items by owner, and items per owner."""
    return np.argsort(own, kind="stable"), np.bincount(own, minlength=P).astype(np.int64)


def segments_by_owner(own: np.ndarray, group: np.ndarray, P: int):
    """Route items to owners in segments of equal ``group`` id (a bag, a sample).

    Returns (order, item counts per owner, first item of each segment (mask in sent order),
    segment lengths, segment counts per owner, group id of each segment). Items keep their
    batch order within an owner.
    """
    order, icnt = group_by_owner(own, P)
    g = group[order]
    own_sorted = np.repeat(np.arange(P), icnt)
    first = runs(own_sorted, g)
    starts = np.flatnonzero(first)
    lens = np.diff(np.append(starts, g.shape[0]))
    scnt = np.bincount(own_sorted[first], minlength=P).astype(np.int64)
    return order, icnt, first, lens, scnt, g[first]


def runs(*cols: np.ndarray) -> np.ndarray:
    """Boolean mask of the first item of each run of equal tuples in already grouped columns."""
    n = cols[0].shape[0]
    first = np.ones(n, dtype=bool)
    if n > 1:
        ch = np.zeros(n - 1, dtype=bool)
        for c in cols:
            ch |= c[1:] != c[:-1]
        first[1:] = ch
    return first


class ExchangeStrategy:
    """Base of ps, a2a and des-a2a; subclasses implement ``_sparse_forward``/``_backward``."""

    name = "exchange"

    def __init__(self, model, table, sparse_opt, dense_opt, comm: Comm, aggregate: str = "",
                 timer: Timer | None = None) -> None:
        self.model, self.table, self.comm = model, table, comm
        self.sparse_opt, self.dense_opt = sparse_opt, dense_opt
        self.aggregate = aggregate
        self.timer = timer or Timer()

    def plan(self, counts: StepCounts, rank: int) -> list[Call]:
        return plan(self.name, "", counts, ModelDims.of(self.model), rank)

    def send_segments(self, b: Batch, order, kcnt, lens, scnt, send_lens: bool, insert: bool):
        """Keys (grouped by owner in segments) to their owners, with segment lengths and
        values; the owner looks them up. Returns (keys_in, rows, lens_in, vals_in, scnt_in).

        One Alltoall exchanges (keys, segments) per peer; lengths travel only when
        ``send_lens`` (one-hot bags are segments of one key).
        """
        comm, table, dt = self.comm, self.table, self.table.dtype
        rc = comm.alltoall_counts(np.stack([kcnt, scnt], axis=1))
        rk, rs = rc[:, 0], rc[:, 1]
        keys_in, _ = comm.alltoallv(b.keys[order], kcnt, rk)
        if send_lens:
            lens_in, _ = comm.alltoallv(lens, scnt, rs)
        else:
            lens_in = np.ones(keys_in.shape[0], dtype=np.int64)
        if b.values is not None:
            vals_in, _ = comm.alltoallv(np.ascontiguousarray(b.values[order], dtype=dt), kcnt,
                                        rk)
        else:
            vals_in = np.empty(0, dt)
        self.timer.lap("exchange")
        rows = table.lookup_or_insert(keys_in) if insert else table.lookup(keys_in)
        self.timer.lap("lookup")
        return keys_in, rows, lens_in, vals_in, rs

    def owners(self, keys: np.ndarray) -> np.ndarray:
        P = self.comm.size
        return owners(keys, P) if P > 1 else np.zeros(keys.shape[0], np.int64)

    # subclasses: forward returns (Z (b, W), state); backward(state, gZ) sends gradients and
    # returns the owner-side closure that applies the sparse update after the dense Allreduce
    def _sparse_forward(self, b: Batch, insert: bool):
        raise NotImplementedError

    def _sparse_backward(self, state, gZ: np.ndarray):
        raise NotImplementedError

    def train_step(self, b: Batch, sizes: np.ndarray, t: int) -> float:
        model, comm, tm = self.model, self.comm, self.timer
        prm = model.params
        B = int(np.sum(sizes))
        tm.start()
        prm.zero_grad()
        Z, state = self._sparse_forward(b, insert=True)
        logits, cache = model.forward(Z, b.dense)
        loss_local, p = bce_with_logits(logits, b.labels)
        gZ = model.backward(cache, (p - b.labels) / B)
        tm.lap("dense")
        update = self._sparse_backward(state, gZ)
        loss = allreduce_grads_and_loss(comm, prm, loss_local)
        tm.lap("aggregate")
        check_finite(model, Z, loss, prm.grads, t)
        update(t)
        tm.lap("sparse_update")
        self.dense_opt.apply(prm.data, prm.grads, t)
        tm.lap("dense_update")
        return loss

    def predict(self, b: Batch, sizes: np.ndarray) -> np.ndarray:
        """Probabilities of the whole global batch, on every rank (scope eval)."""
        with self.comm.acct.scoped("eval"):
            Z, _ = self._sparse_forward(b, insert=False)
            logits, _ = self.model.forward(Z, b.dense)
            allp = self.comm.allgatherv(np.ascontiguousarray(logits), np.asarray(sizes))
        return sigmoid(np.asarray(allp, dtype=np.float64))

    def check_replicas(self, step: int) -> None:
        """Nothing is replicated outside the dense Allreduce's result."""
