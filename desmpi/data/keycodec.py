"""Lossless narrow encoding of a batch's keys for the input Allgatherv (``dist.keys``).

A key is ``(field + 1) << 48 | value`` (:mod:`desmpi.kernels.hashing`), and its field is known
from its position in the batch (one-hot: position mod F; multi-hot: from the bag offsets, which
travel first). So a key travels as its value in one 32-bit word:

* ``value`` when its field bits match its position and ``value < 0xFFFFFFFF`` (Criteo's hex ids
  are 32-bit: every one fits);
* ``0xFFFFFFFF`` for the field's *missing* key;
* any other key (a 33-bit or hashed 47-bit value, or the value 0xFFFFFFFF itself) is an
  *escape*: its word is 0xFFFFFFFF too, and (position, full key) travel in a second Allgatherv
  of int64 pairs, after an Allgather of each rank's escape count.

``join(split(keys))`` is ``keys`` for every int64 array (tests/test_keycodec.py). Traffic:
4 bytes per key + 8 per rank + 16 per escape, against 8 per key.
"""

from __future__ import annotations

import numpy as np

from desmpi.kernels.hashing import FIELD_SHIFT, MISSING_BIT

WORD = np.uint32
MISSING_WORD = 0xFFFFFFFF


def fields_of(n: int, F: int, offsets: np.ndarray | None, nnz: int) -> np.ndarray:
    """(nnz,) field index of every key position of a batch of n samples."""
    if offsets is None:
        return np.arange(nnz, dtype=np.int64) % F
    bag = np.repeat(np.arange(n * F, dtype=np.int64), np.diff(offsets))
    return bag % F


def escapes(keys: np.ndarray, fields: np.ndarray) -> np.ndarray:
    """Bool (nnz,): keys that do not fit one word."""
    base = (fields.astype(np.int64) + 1) << FIELD_SHIFT
    v = keys - base
    fits = (v >= 0) & (v < MISSING_WORD)
    return ~fits & (keys != (base | MISSING_BIT))


def split(keys: np.ndarray, fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (words (nnz,) uint32, escapes (2·e,) int64 as (position, key) pairs)."""
    base = (fields.astype(np.int64) + 1) << FIELD_SHIFT
    v = keys - base
    fits = (v >= 0) & (v < MISSING_WORD)
    words = np.where(fits, v, MISSING_WORD).astype(WORD)
    esc = np.flatnonzero(~fits & (keys != (base | MISSING_BIT)))
    pairs = np.empty((esc.size, 2), dtype=np.int64)
    pairs[:, 0] = esc
    pairs[:, 1] = keys[esc]
    return words, pairs.reshape(-1)


def join(words: np.ndarray, fields: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`split` (pairs: positions into ``words``)."""
    base = (fields.astype(np.int64) + 1) << FIELD_SHIFT
    w = words.astype(np.int64)
    keys = np.where(w == MISSING_WORD, base | MISSING_BIT, base + w)
    if pairs.size:
        p = pairs.reshape(-1, 2)
        keys[p[:, 0]] = p[:, 1]
    return keys
