"""Lossless narrow encoding of a batch's keys for the input Allgatherv (``dist.keys``).

A key is ``(field + 1) << 48 | value`` (:mod:`desmpi.kernels.hashing`), and its field is known
from its position in the batch (one-hot: position mod F; multi-hot: from the bag offsets, which
travel first). So a key travels as its value in one 32-bit word:

* ``value`` when its field bits match its position and ``value < 0xFFFFFFFE`` (Criteo's hex ids
  are 32-bit: all but two of them fit);
* ``0xFFFFFFFF`` (:data:`MISSING_WORD`) for the field's *missing* key;
* ``0xFFFFFFFE`` (:data:`ESCAPE_WORD`) for any other key (a 33-bit or hashed 47-bit value, or the
  values 0xFFFFFFFE and 0xFFFFFFFF themselves): the full keys follow, in order, in a second
  Allgatherv of int64 — whose counts every rank reads off the words it received, so no count
  exchange is needed, and which is skipped when no rank has an escape.

``join(split(keys))`` is ``keys`` for every int64 array (tests/test_keycodec.py). Traffic: 4
bytes per key, plus 8 per escape, against 8 per key.
"""

from __future__ import annotations

import numpy as np

from desmpi.kernels.hashing import FIELD_SHIFT, MISSING_BIT

WORD = np.uint32
MISSING_WORD = 0xFFFFFFFF
ESCAPE_WORD = 0xFFFFFFFE


def fields_of(n: int, F: int, offsets: np.ndarray | None, nnz: int) -> np.ndarray:
    """(nnz,) field index of every key position of a batch of n samples."""
    if offsets is None:
        return np.arange(nnz, dtype=np.int64) % F
    bag = np.repeat(np.arange(n * F, dtype=np.int64), np.diff(offsets))
    return bag % F


def _base(fields: np.ndarray) -> np.ndarray:
    """The field bits of each position's key: (field + 1) << FIELD_SHIFT."""
    return (fields.astype(np.int64) + 1) << FIELD_SHIFT


def _classify(keys: np.ndarray, fields: np.ndarray):
    base = _base(fields)
    v = keys - base  # modular: exact whenever the key is base + v
    fits = (v >= 0) & (v < ESCAPE_WORD)
    missing = keys == (base | MISSING_BIT)
    return v, fits, missing


def escapes(keys: np.ndarray, fields: np.ndarray) -> np.ndarray:
    """Bool (nnz,): keys that do not fit one word."""
    _, fits, missing = _classify(keys, fields)
    return ~fits & ~missing


def split(keys: np.ndarray, fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (words (nnz,) uint32, the escaped keys (e,) int64 in position order)."""
    v, fits, missing = _classify(keys, fields)
    words = np.where(fits, v, np.where(missing, MISSING_WORD, ESCAPE_WORD)).astype(WORD)
    return words, keys[~fits & ~missing]


def n_escapes(words: np.ndarray) -> int:
    return int(np.count_nonzero(words == ESCAPE_WORD))


def escapes_per_block(words: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(len(counts),) int64: escape words in each consecutive block of ``counts`` words."""
    seen = np.concatenate([[0], np.cumsum(words == ESCAPE_WORD)])
    return np.diff(seen[np.concatenate([[0], np.cumsum(counts)])]).astype(np.int64)


def join(words: np.ndarray, fields: np.ndarray, escaped: np.ndarray) -> np.ndarray:
    """Inverse of :func:`split` (``escaped``: the full keys of the escape words, in order)."""
    base = _base(fields)
    w = words.astype(np.int64)
    keys = np.where(w == MISSING_WORD, base | MISSING_BIT, base + w)
    esc = np.flatnonzero(words == ESCAPE_WORD)
    if esc.size != escaped.size:
        raise ValueError(f"{esc.size} escape words but {escaped.size} escaped keys")
    keys[esc] = escaped
    return keys
