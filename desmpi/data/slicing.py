"""Rank slicing: global batch t is rows [t·B, (t+1)·B); rank r reads its slice.

The sample sequence never depends on P: the global batch is the same rows in the same order at
any P, and the ranks' slices, concatenated in rank order, are that batch. A last, shorter batch
is split the same way (the first n mod P ranks get one row more), like ``numpy.array_split``.
"""

from __future__ import annotations

import numpy as np


def batch_bounds(t: int, global_batch: int, n_rows: int) -> tuple[int, int]:
    """Rows [start, stop) of global batch t."""
    start = t * global_batch
    return start, min(start + global_batch, n_rows)


def split_counts(n: int, parts: int) -> np.ndarray:
    """(parts,) sizes of an array_split of n rows."""
    q, m = divmod(n, parts)
    return np.array([q + 1 if i < m else q for i in range(parts)], dtype=np.int64)


def rank_slice(t: int, global_batch: int, n_rows: int, size: int, rank: int) -> tuple[int, int]:
    """Rows [a, b) of global batch t that rank ``rank`` of ``size`` reads."""
    start, stop = batch_bounds(t, global_batch, n_rows)
    c = split_counts(stop - start, size)
    a = start + int(c[:rank].sum())
    return a, a + int(c[rank])


def n_batches(n_rows: int, global_batch: int, drop_last: bool = False) -> int:
    return n_rows // global_batch if drop_last else -(-n_rows // global_batch)
