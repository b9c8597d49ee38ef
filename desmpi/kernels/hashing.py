"""64-bit mixing: owner of a key, counter-based random numbers of (seed, key)."""

from __future__ import annotations

import numpy as np
from numba import njit

FIELD_SHIFT = 48
VALUE_MASK = (1 << 47) - 1
MISSING_BIT = 1 << 47  # value part of a field's "missing" key; never produced by a raw id
_U64 = np.uint64


@njit(cache=True, inline="always")
def mix64(x):
    """SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijection of uint64 with full avalanche."""
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


@njit(cache=True)
def owners(keys, p):
    """owner(key) = mix64(key) mod P for every key. keys: (n,) int64 -> (n,) int64."""
    out = np.empty(keys.shape[0], dtype=np.int64)
    pp = _U64(p)
    for i in range(keys.shape[0]):
        out[i] = np.int64(mix64(_U64(keys[i])) % pp)
    return out


@njit(cache=True, inline="always")
def uniform01(seed, key, j):
    """A uniform in (0, 1) that depends only on (seed, key, j): counter-based, no state."""
    c = _U64(key) + _U64(j) * _U64(0xD1B54A32D192ED03)
    x = mix64(_U64(seed) * _U64(0x9E3779B97F4A7C15) ^ mix64(c))
    return ((x >> _U64(11)) + 0.5) * (1.0 / 9007199254740992.0)


@njit(cache=True, inline="always")
def normal01(seed, key, j):
    """A standard normal that depends only on (seed, key, j) (Box-Muller on two uniforms)."""
    u1 = uniform01(seed, key, 2 * j)
    u2 = uniform01(seed, key, 2 * j + 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


@njit(cache=True)
def distinct_pair_counts(a, b, r, c, p):
    """(p, p) count of the distinct (a[i], b[i]) pairs, each counted once at [r[i], c[i]] of
    its first occurrence i. a, b: (n,) int64, any values; r, c: (n,) int64 in [0, p).

    One pass over an open-addressing hash table (linear probing, load <= 1/2): O(n), where a
    sort-based count (``np.unique``) is O(n log n). Where ``a`` is grouped (non-decreasing)
    and b small, :func:`grouped_pair_counts` needs no table.
    """
    n = a.shape[0]
    cap = 2
    while cap < 2 * n:
        cap *= 2
    mask = _U64(cap - 1)
    ta = np.empty(cap, dtype=np.int64)
    tb = np.empty(cap, dtype=np.int64)
    used = np.zeros(cap, dtype=np.bool_)
    out = np.zeros((p, p), dtype=np.int64)
    for i in range(n):
        x = a[i]
        y = b[i]
        h = np.int64(mix64(_U64(x) ^ mix64(_U64(y) + _U64(0x9E3779B97F4A7C15))) & mask)
        while used[h] and not (ta[h] == x and tb[h] == y):
            h = np.int64(_U64(h + 1) & mask)
        if not used[h]:
            used[h] = True
            ta[h] = x
            tb[h] = y
            out[r[i], c[i]] += 1
    return out


@njit(cache=True)
def grouped_pair_counts(a, b, r, c, p, nb):
    """:func:`distinct_pair_counts` for non-decreasing ``a`` and b in [0, nb): a pair is new
    when b was not yet seen in the current run of equal a (one (nb,) array of the run each b
    was last seen in; one sequential pass)."""
    last = np.full(nb, -1, dtype=np.int64)
    out = np.zeros((p, p), dtype=np.int64)
    g = -1
    for i in range(a.shape[0]):
        if i == 0 or a[i] != a[i - 1]:
            g = i
        if last[b[i]] != g:
            last[b[i]] = g
            out[r[i], c[i]] += 1
    return out


@njit(cache=True, inline="always")
def key_stream(seed, key):
    """A 64-bit state of (seed, key) from which :func:`approx_normal` draws a row's values."""
    return mix64(_U64(seed) * _U64(0x9E3779B97F4A7C15) ^ mix64(_U64(key)))


_SQRT3 = np.sqrt(3.0)


@njit(cache=True, inline="always")
def approx_normal(state, j):
    """Value j of a stream: a sum of four 16-bit uniforms of one hash, centred and scaled
    (Irwin-Hall): mean 0, variance 1 - 2**-32, within ±√12 / 2 ≈ ±3.46. One hash per value,
    several times cheaper than Box-Muller; used for embedding initialisation."""
    x = mix64(state + _U64(j + 1) * _U64(0xD1B54A32D192ED03))
    m = _U64(0xFFFF)
    a = (x & m) + ((x >> _U64(16)) & m) + ((x >> _U64(32)) & m) + (x >> _U64(48))
    return ((np.float64(a) + 2.0) * (1.0 / 65536.0) - 2.0) * _SQRT3


def field_key(field: int, value: np.ndarray | int) -> np.ndarray | int:
    """Field-aware key of a raw value (< 2**47) of field ``field`` (0-based)."""
    return ((field + 1) << FIELD_SHIFT) | value


def key_field(keys: np.ndarray) -> np.ndarray:
    """Field index (0-based) of field-aware keys."""
    return (keys >> FIELD_SHIFT) - 1
