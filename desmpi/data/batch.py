"""The in-memory batch every strategy consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Batch:
    """n samples of F sparse fields and Dn dense features.

    labels: (n,) float; dense: (n, Dn) float; keys: (nnz,) int64 field-aware keys in
    (sample, field, position) order. offsets: (n·F + 1,) int64 bag boundaries, the keys of
    sample s, field f being ``keys[offsets[s·F + f] : offsets[s·F + f + 1]]``; None when every
    field is one-hot (then nnz = n·F and the bag of (s, f) is ``keys[s·F + f]``).
    values: (nnz,) float feature values, None when all are 1.
    """

    labels: np.ndarray
    dense: np.ndarray
    keys: np.ndarray
    n_fields: int
    offsets: np.ndarray | None = None
    values: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    def bag_offsets(self) -> np.ndarray:
        """(n·F + 1,) offsets, materialised for one-hot batches too."""
        if self.offsets is not None:
            return self.offsets
        return np.arange(self.n * self.n_fields + 1, dtype=np.int64)

    def sample_field(self) -> tuple[np.ndarray, np.ndarray]:
        """(nnz,) sample index and (nnz,) field index of every key."""
        F = self.n_fields
        if self.offsets is None:
            return np.divmod(np.arange(self.keys.shape[0], dtype=np.int64), F)
        lens = np.diff(self.offsets)
        bag = np.repeat(np.arange(self.n * F, dtype=np.int64), lens)
        return bag // F, bag % F
