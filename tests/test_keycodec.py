"""The narrow key encoding is lossless for every int64 key array (property test)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from desmpi.data.keycodec import MISSING_WORD, escapes, fields_of, join, n_escapes, split
from desmpi.kernels.hashing import FIELD_SHIFT, MISSING_BIT


@given(st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=60), st.integers(1, 5))
@settings(max_examples=200, deadline=None)
def test_any_int64_round_trips(values, F):
    keys = np.array(values, dtype=np.int64)
    f = fields_of(len(values) // F + 1, F, None, keys.size)
    words, esc = split(keys, f)
    assert words.dtype == np.uint32 and np.array_equal(join(words, f, esc), keys)
    assert esc.size == int(escapes(keys, f).sum()) == n_escapes(words)


def test_criteo_like_keys_need_no_escape():
    rng = np.random.default_rng(0)
    n, F = 26 * 500, 26
    f = np.arange(n) % F
    v = rng.integers(0, (1 << 32) - 2, n, dtype=np.int64)  # 8 hex digits
    k = ((f + 1) << FIELD_SHIFT) | v
    miss = rng.random(n) < 0.3
    k[miss] = ((f[miss] + 1) << FIELD_SHIFT) | MISSING_BIT
    words, esc = split(k, f)
    assert esc.size == 0 and (words[miss] == MISSING_WORD).all()
    assert words.nbytes * 2 == k.nbytes
    assert np.array_equal(join(words, f, esc), k)
    # the two reserved values themselves escape, and still round-trip
    k2 = k.copy()
    k2[:2] = ((f[:2] + 1) << FIELD_SHIFT) | np.array([0xFFFFFFFE, 0xFFFFFFFF])
    w2, e2 = split(k2, f)
    assert e2.size == 2 and np.array_equal(join(w2, f, e2), k2)


def test_escapes_round_trip_multi_hot():
    rng = np.random.default_rng(1)
    F, n = 3, 40
    lens = rng.integers(0, 4, n * F)
    off = np.concatenate([[0], np.cumsum(lens)])
    f = fields_of(n, F, off, int(off[-1]))
    assert np.array_equal(f, np.repeat(np.arange(n * F) % F, lens))
    k = ((f + 1) << FIELD_SHIFT) | rng.integers(0, 1 << 40, f.size)  # 40-bit: many escapes
    words, esc = split(k, f)
    assert esc.size > 0 and np.array_equal(join(words, f, esc), k)


def test_escapes_per_block_counts_each_ranks_words():
    from desmpi.data.keycodec import ESCAPE_WORD, escapes_per_block

    w = np.array([1, ESCAPE_WORD, 2, ESCAPE_WORD, ESCAPE_WORD, 3], dtype=np.uint32)
    assert escapes_per_block(w, np.array([2, 0, 3, 1])).tolist() == [1, 0, 2, 0]
    assert escapes_per_block(w[:0], np.array([0, 0])).tolist() == [0, 0]
