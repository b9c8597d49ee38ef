"""Pieces every strategy shares: the batch layout, routing, local pooling and sparse update."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from desmpi.data.batch import Batch
from desmpi.kernels.hashing import owners
from desmpi.kernels.sparse import pool, row_grads
from desmpi.metrics import sigmoid
from desmpi.ops.base import KeyGrads, Pooled


@dataclass
class Occurrences:
    """Owned keys of a batch: sample, field, table row and value of each (global order)."""

    s: np.ndarray
    f: np.ndarray
    rows: np.ndarray
    vals: np.ndarray  # empty: all ones


class Timer:
    """Seconds per phase, accumulated (``phases``) — the per-phase breakdown of benchmarks."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = defaultdict(float)
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        t = time.perf_counter()
        self.phases[name] += t - self._t
        self._t = t

    def start(self) -> None:
        self._t = time.perf_counter()


def route(batch: Batch, rank: int, size: int) -> np.ndarray:
    """Positions (into batch.keys) of the keys this rank owns, in batch order."""
    if size == 1:
        return np.arange(batch.keys.shape[0], dtype=np.int64)
    return np.flatnonzero(owners(batch.keys, size) == rank)


def occurrences(batch: Batch, pos: np.ndarray, table, insert: bool) -> Occurrences:
    """The occurrences at positions ``pos`` (sorted, distinct) of the batch's keys."""
    s, f = batch.sample_field()
    if pos.shape[0] == batch.keys.shape[0]:  # every key (one rank): no gathers
        keys, vals = batch.keys, batch.values
    else:
        s, f, keys = s[pos], f[pos], batch.keys[pos]
        vals = batch.values[pos] if batch.values is not None else None
    rows = table.lookup_or_insert(keys) if insert else table.lookup(keys)
    vals = np.empty(0, table.dtype) if vals is None else vals
    return Occurrences(s, np.asarray(f, dtype=np.int64), rows, vals)


def pool_owned(model, occ: Occurrences, n: int, table) -> Pooled:
    """Pools of the owned occurrences of n samples (written in place into the partials p.Z)."""
    p = model.empty_pooled(n)
    pool(occ.s, occ.f, occ.rows, occ.vals, table.weights, model.emb_col, *p.kernel_args)
    return p


def sparse_update(model, occ: Occurrences, kg: KeyGrads, table, opt, t: int) -> int:
    """Accumulate per-row gradients in occurrence order and apply the sparse optimizer.

    Rows are deduplicated in order of first appearance (no sort); rows < 0 (keys not admitted
    yet, feature lifecycle) get no update. Returns the number of distinct rows touched.
    """
    urows, inv = table.unique_rows(occ.rows)
    if urows.shape[0] == 0:
        return 0
    grad = model.params.ws.zeros("sparse_grad", (urows.shape[0], table.R), table.dtype)
    row_grads(occ.s, occ.f, inv, urows, occ.vals, table.weights, model.emb_col,
              *kg.kernel_args, grad)
    opt.apply(table, urows, grad, t)
    return int(urows.shape[0])


def allreduce_grads_and_loss(comm, params, loss_local: float) -> float:
    """Sum the dense gradients over ranks in place, with the loss sum riding along as one more
    element (one Allreduce of D + 1); returns the global loss sum."""
    buf = params.scratch("grads+loss", (params.size + 1,))
    buf[:-1] = params.grads
    buf[-1] = loss_local
    comm.allreduce(buf, out=buf)  # in place
    params.grads[:] = buf[:-1]
    return float(buf[-1])


class NonFiniteError(FloatingPointError):
    """NaN/inf in a step's loss or gradients; raised before any update is applied."""


def check_finite(model, Z: np.ndarray, loss: float, grads: np.ndarray, t: int) -> None:
    """Raise NonFiniteError naming the step and the first operator whose partial is bad."""
    if np.isfinite(loss) and np.isfinite(grads).all():
        return
    where = "the dense part"
    for op in model.ops:
        if not np.isfinite(Z[:, op.cols]).all():
            where = f"operator {op.name}"
            break
    what = "loss" if not np.isfinite(loss) else "dense gradients"
    raise NonFiniteError(f"step {t}: non-finite {what} in model {model.name}, first seen in "
                         f"{where} (try a smaller train.lr)")


def bce_with_logits(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Sum over samples of the binary cross-entropy of logits z, and σ(z)."""
    p = sigmoid(z)
    loss = np.logaddexp(0.0, z) - y * z
    return float(loss.sum()), p
