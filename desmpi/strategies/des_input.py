"""DES's input phase, shared by its two aggregations: the global batch on every rank.

``gather`` (the default): Allgatherv of the local batches' keys (bag lengths first for multi-hot
data, values for weighted keys) and, when the dense part is replicated, of [label | dense] rows.
``replicate``: every rank read the whole global batch from the data set itself (I/O instead of
MPI traffic, the DES paper's setting); nothing is communicated.

``dist.keys = "narrow"``: the keys travel as 32-bit words with the field implied by position
(:mod:`desmpi.data.keycodec`, lossless): the Allgatherv of the words, then an Allgatherv of the
escaped full keys when any rank has one (every rank counts the escape words it received); bag
lengths travel as int32.
"""

from __future__ import annotations

import numpy as np

from desmpi.comm import Comm
from desmpi.data import keycodec
from desmpi.data.batch import Batch


def gather(comm: Comm, b: Batch, sizes: np.ndarray, features: bool, dtype,
           key_encoding: str = "int64") -> Batch:
    """The global batch's keys (and, when ``features``, labels and dense rows) from every
    rank's slice ``b``; ``sizes`` (P,) samples per rank."""
    F = b.n_fields
    dt = dtype
    offsets = None
    if b.offsets is not None:
        lens = np.diff(b.offsets)
        if key_encoding == "narrow":  # bag lengths as 32-bit words (lossless below 2^31)
            if lens.size and lens.max() > np.iinfo(np.int32).max:
                raise ValueError(f"a bag of {int(lens.max())} keys does not fit dist.keys = "
                                 "'narrow''s 32-bit lengths")
            lens = comm.allgatherv(lens.astype(np.int32), sizes * F).astype(np.int64)
        else:
            lens = comm.allgatherv(lens, sizes * F)
        offsets = np.zeros(lens.shape[0] + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        bounds = offsets[np.concatenate([[0], np.cumsum(sizes * F)])]
        nnz = np.diff(bounds)
    else:
        nnz = sizes * F
    if key_encoding == "narrow":
        keys = _gather_narrow(comm, b, nnz, int(sizes.sum()), offsets)
    else:
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


def _gather_narrow(comm: Comm, b: Batch, nnz: np.ndarray, B: int,
                   offsets: np.ndarray | None) -> np.ndarray:
    """The global batch's keys through :mod:`desmpi.data.keycodec` (lossless)."""
    F = b.n_fields
    words, escaped = keycodec.split(b.keys, keycodec.fields_of(b.n, F, b.offsets,
                                                               b.keys.shape[0]))
    allw = comm.allgatherv(words, nnz)
    n_esc = keycodec.escapes_per_block(allw, nnz)
    allesc = comm.allgatherv(escaped, n_esc) if n_esc.sum() else escaped[:0]
    return keycodec.join(allw, keycodec.fields_of(B, F, offsets, allw.shape[0]), allesc)


def global_batch(comm: Comm, b: Batch, sizes: np.ndarray, replicate_input: bool,
                 features: bool, dtype, key_encoding: str = "int64") -> Batch:
    """The global batch: ``b`` itself under replicated input, else :func:`gather`."""
    return b if replicate_input else gather(comm, b, sizes, features, dtype, key_encoding)


def own_rows(comm: Comm, b: Batch, sizes: np.ndarray, replicate_input: bool
             ) -> tuple[np.ndarray, np.ndarray]:
    """(labels, dense rows) of this rank's samples: a slice of the global batch under
    replicated input, else the rank's own batch."""
    if not replicate_input:
        return b.labels, b.dense
    lo = int(sizes[: comm.rank].sum())
    hi = lo + int(sizes[comm.rank])
    return b.labels[lo:hi], b.dense[lo:hi]
