"""The single-process reference path, which every strategy composes: occurrences of owned keys
-> pools -> partials Z; gradients of the pools -> row gradients -> sparse update.

At P = 1 a rank owns every key and these functions *are* the model (:func:`predict` is what
serving runs); at P > 1 each strategy calls the same functions on the keys its rank owns and
only adds communication around them (DESIGN: substitution, not re-implementation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from desmpi.data.batch import Batch
from desmpi.kernels.hashing import owners
from desmpi.kernels.sparse import pool, row_grads
from desmpi.metrics import sigmoid
from desmpi.ops.base import Pools


@dataclass
class Occurrences:
    """Owned keys of a batch: sample, field, table row and value of each (global order)."""

    s: np.ndarray
    f: np.ndarray
    rows: np.ndarray
    vals: np.ndarray  # empty: all ones


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


def pool_owned(model, occ: Occurrences, n: int, table) -> Pools:
    """Pools of the owned occurrences of n samples (written in place into the partials p.Z)."""
    p = model.empty_pooled(n)
    pool(occ.s, occ.f, occ.rows, occ.vals, table.weights, model.emb_col, *p.kernel_args)
    return p


def sparse_update(model, occ: Occurrences, kg: Pools, table, opt, t: int) -> np.ndarray:
    """Accumulate per-row gradients in occurrence order and apply the sparse optimizer.

    Rows are deduplicated in order of first appearance (no sort); rows < 0 (keys not admitted
    yet, feature lifecycle) get no update. Returns the distinct rows updated.
    """
    urows, inv = table.unique_rows(occ.rows)
    if urows.shape[0] == 0:
        return urows
    grad = model.params.ws.zeros("sparse_grad", (urows.shape[0], table.R), table.dtype)
    row_grads(occ.s, occ.f, inv, urows, occ.vals, table.weights, model.emb_col,
              *kg.kernel_args, grad)
    opt.apply(table, urows, grad, t)
    return urows


def bce_with_logits(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Sum over samples of the binary cross-entropy of logits z, and σ(z)."""
    p = sigmoid(z)
    loss = np.logaddexp(0.0, z) - y * z
    return float(loss.sum()), p


def local_partials(model, table, batch: Batch, rank: int, size: int, insert: bool,
                   timer=None) -> tuple[Occurrences, Pools, np.ndarray]:
    """(occurrences, pools, Z (n, W)): this rank's partials of every sample of ``batch`` over
    the keys it owns (all keys at size 1). ``timer`` (a :class:`desmpi.timer.Timer`) gets the
    phases route, lookup, partials."""
    pos = route(batch, rank, size)
    if timer is not None:
        timer.lap("route")
    occ = occurrences(batch, pos, table, insert)
    if timer is not None:
        timer.lap("lookup")
    pooled = pool_owned(model, occ, batch.n, table)
    Z = model.partial(pooled)
    if timer is not None:
        timer.lap("partials")
    return occ, pooled, Z


def predict(model, table, batch: Batch) -> np.ndarray:
    """(n,) probabilities of ``batch`` from a whole (unsharded) table; keys never trained
    contribute zero."""
    _, _, Z = local_partials(model, table, batch, 0, 1, insert=False)
    logits, _ = model.forward(Z, batch.dense.astype(model.dtype))
    return sigmoid(np.asarray(logits, dtype=np.float64))


def train_step(model, table, batch: Batch, sparse_opt, dense_opt, t: int
               ) -> tuple[float, np.ndarray, np.ndarray]:
    """One single-process training step on the global batch (n samples): partials, dense
    forward and backward, row gradients, both optimizers. Returns (loss sum, Z (n, W),
    gZ (n, W)). Every strategy at every P must give what this gives, up to summation order."""
    prm = model.params
    prm.zero_grad()
    occ, pooled, Z = local_partials(model, table, batch, 0, 1, insert=True)
    logits, cache = model.forward(Z, batch.dense.astype(model.dtype))
    loss, p = bce_with_logits(logits, batch.labels)
    gZ = model.backward(cache, (p - batch.labels) / batch.n)
    kg = model.key_grads(gZ, pooled)
    sparse_update(model, occ, kg, table, sparse_opt, t)
    dense_opt.apply(prm.data, prm.grads, t)
    return loss, np.array(Z), np.array(gZ)
