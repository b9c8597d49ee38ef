"""What a step's traffic depends on, counted from the global batch alone (no communication).

:func:`count_step` gives, for P ranks, each rank's batch size and key count and the (rank,
owner) matrices of keys, distinct keys, (sample, field) bags and samples — everything the
strategies' plans need. The simulator's data profile is the same counts for larger P.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from desmpi.data import keycodec
from desmpi.data.batch import Batch
from desmpi.data.slicing import split_counts
from desmpi.kernels.hashing import distinct_pair_counts, grouped_pair_counts, owners


@dataclass(frozen=True)
class StepCounts:
    """Counts of one global batch split over P ranks.

    sizes, nnz: (P,) samples and keys per rank. keys, distinct, bags, samples: (P, P) — of
    rank r's local batch, how many key occurrences / distinct keys / (sample, field) bags /
    samples have at least one key owned by rank j (entry [r, j]).
    """

    P: int
    n_fields: int
    n_dense: int
    onehot: bool
    weighted: bool
    sizes: np.ndarray
    nnz: np.ndarray
    keys: np.ndarray
    distinct: np.ndarray
    bags: np.ndarray
    samples: np.ndarray
    escapes: np.ndarray | None = None  # (P,) keys per rank the narrow encoding escapes


def count_step(b: Batch, P: int, onehot: bool | None = None, weighted: bool | None = None
               ) -> StepCounts:
    """Counts of global batch ``b`` (B samples) over P ranks."""
    F = b.n_fields
    sizes = split_counts(b.n, P)
    sample_rank = np.repeat(np.arange(P), sizes)
    s, f = b.sample_field()
    own = owners(b.keys, P) if P > 1 else np.zeros(b.keys.shape[0], np.int64)
    kr = sample_rank[s]
    keys = np.bincount(kr * P + own, minlength=P * P).reshape(P, P)
    nnz = keys.sum(axis=1)

    distinct = _distinct(b.keys, kr, kr, own, P)  # owner is a function of the key
    bags = _distinct(s * F + f, own, kr, own, P)
    samples = _distinct(s, own, kr, own, P)
    esc = np.bincount(kr[keycodec.escapes(b.keys, f)], minlength=P).astype(np.int64)
    return StepCounts(P, F, b.dense.shape[1],
                      b.offsets is None if onehot is None else onehot,
                      b.values is not None if weighted is None else weighted,
                      sizes, nnz, keys, distinct, bags, samples, esc)


def _distinct(a: np.ndarray, b: np.ndarray, kr: np.ndarray, own: np.ndarray, P: int
              ) -> np.ndarray:
    """(P, P) count of distinct (a, b) pairs, by (rank kr, owner own) of their first item.
    b: (n,) in [0, P) (a rank or an owner)."""
    if a.shape[0] == 0:
        return np.zeros((P, P), dtype=np.int64)
    if int(b.min()) < 0 or int(b.max()) >= P:
        raise ValueError(f"b must lie in [0, {P})")
    if bool(np.all(a[1:] >= a[:-1])):  # bags and samples: grouped in batch order
        return grouped_pair_counts(a, b, kr, own, P, P)
    return distinct_pair_counts(a, b, kr, own, P)


@dataclass(frozen=True)
class ModelDims:
    """The model sizes traffic depends on.

    W: partial width; R: table row width; seg: width of a pooled (sample, field) segment
    (a2a); D: dense parameters; partial_grad: dense entries summed over ranks even when the
    dense part is replicated (fused W1); itemsize: bytes per float.
    """

    W: int
    R: int
    seg: int
    D: int
    partial_grad: int
    itemsize: int

    @staticmethod
    def of(model) -> ModelDims:
        L, E, Q = model.needs()
        seg = int(L) + (model.d if E else 0) + int(Q)
        return ModelDims(model.W, model.row_width, seg, model.params.size,
                         model.partial_grad_size, model.dtype.itemsize)
