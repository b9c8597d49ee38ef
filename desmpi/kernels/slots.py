"""Sparse codecs' slots (``dist.compress`` topk and threshold; Numba): each chunk of a vector
travels as k = ⌈ratio·m⌉ (index, value) slots, 3·k 16-bit words (index low and high halves,
bf16 values), filled with its k largest magnitudes (top-k, a radix select) or with the entries
that reach a hard threshold τ (DCT); :func:`add_topk` adds a chunk's slots into a float32 block.
The bytes follow from the sizes alone, so plans stay exact."""

from __future__ import annotations

import numba as nb
import numpy as np

from desmpi.kernels.compress import _bf16_of


def topk_count(m: int, ratio: float) -> int:
    """Entries kept of a chunk of m: ⌈ratio·m⌉ (at most m)."""
    return min(m, int(np.ceil(ratio * m - 1e-9)))


@nb.njit(cache=True, nogil=True)
def _fill_slots(cu: np.ndarray, idx: np.ndarray, w: np.ndarray, dst: np.ndarray, sub: bool
                ) -> None:
    """A chunk's slots: w (3k,) = the k indices' low and high 16 bits, then the bf16 of the
    chunk's values there (cu: the chunk's float32 bits); at each kept i, dst[i] = the value
    sent (dst: the decoded chunk), or with ``sub`` dst[i] −= it (dst: the chunk itself, which
    becomes what the slots left out: error feedback's x − decoded without a decoded copy)."""
    k = idx.size
    t = np.empty(1, dtype=np.uint32)
    tf = t.view(np.float32)
    for j in range(k):
        i = idx[j]
        w[j] = np.uint16(i & 0xFFFF)
        w[k + j] = np.uint16(i >> 16)
        h = _bf16_of(cu[i])
        w[2 * k + j] = h
        t[0] = np.uint32(h) << 16
        if sub:
            dst[i] = dst[i] - tf[0]
        else:
            dst[i] = tf[0]


@nb.njit(cache=True, nogil=True)
def _add_slots(w: np.ndarray, out: np.ndarray) -> None:
    """out[index] += value of each of the k slots in w (3k words: :func:`_fill_slots`)."""
    k = w.size // 3
    t = np.empty(1, dtype=np.uint32)
    tf = t.view(np.float32)
    for j in range(k):
        t[0] = np.uint32(w[2 * k + j]) << 16
        out[np.int64(w[j]) | (np.int64(w[k + j]) << 16)] += tf[0]


def _pack_slots(x: np.ndarray, bounds: np.ndarray, ratio: float, choose,
                dec: np.ndarray | None = None, words: np.ndarray | None = None,
                feedback: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Each chunk [bounds[j], bounds[j+1]) of x (flat floats) as k = :func:`topk_count` slots
    that ``choose(chunk, k)`` names ((k,) distinct indices within the chunk), packed as 3·k
    16-bit words: index low words, index high words, bf16 values. Returns (words, decoded
    (x.size,) float32: what the receivers will see); ``dec`` (x.size floats) and ``words``
    (at least Σ 3·k) are scratch to reuse, overwritten. ``feedback`` (x flat float32): no
    decoded vector (None); x becomes x − decoded in place (error feedback's residual)."""
    if feedback:
        if x.dtype != np.float32 or x.ndim != 1 or not x.flags.c_contiguous:
            raise ValueError("feedback packing needs flat C-contiguous float32")
        x32 = x
    else:
        x32 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    ks = [topk_count(int(bounds[j + 1] - bounds[j]), ratio) for j in range(bounds.size - 1)]
    n = 3 * sum(ks)
    words = np.empty(n, dtype=np.uint16) if words is None else words[:n]
    if feedback:
        dec = None
    elif dec is None:
        dec = np.zeros(x32.size, dtype=np.float32)
    else:
        dec.fill(0.0)
    off = 0
    for j, k in enumerate(ks):
        if k == 0:
            continue
        lo, hi = int(bounds[j]), int(bounds[j + 1])
        c = x32[lo:hi]
        idx = np.asarray(choose(c, k), dtype=np.int64)
        _fill_slots(c.view(np.uint32), idx, words[off:off + 3 * k],
                    c if feedback else dec[lo:hi], feedback)
        off += 3 * k
    return words, dec


_MAG = np.uint32(0x7FFFFFFF)


@nb.njit(cache=True, nogil=True)
def _kth_magnitude(v: np.ndarray, k: int) -> tuple[np.uint32, int]:
    """The k-th largest of the magnitudes v (float32 bits, sign cleared; 0 < k <= v.size),
    and how many equal to it are among the k largest. Radix select (non-negative floats order
    as their bits): three histogram passes (11, 11, 10 bits) each decide a digit."""
    hist = np.zeros(2048, dtype=np.int64)
    prefix = np.uint32(0)
    known = np.uint32(0)  # the bits of T decided so far
    need = k
    for d in range(3):
        sh = np.uint32(21 - 11 * d) if d < 2 else np.uint32(0)
        top = 2047 if d < 2 else 1023
        hist[:] = 0
        for j in range(v.size):
            if (v[j] & known) == prefix:
                hist[(v[j] >> sh) & np.uint32(top)] += 1
        above = 0
        b = top
        while above + hist[b] < need:  # the digit of the need-th largest: from the top down
            above += hist[b]
            b -= 1
        need -= above
        prefix |= np.uint32(b) << sh
        known |= np.uint32(top) << sh
    return prefix, need


@nb.njit(cache=True, nogil=True)
def _select_largest(xu: np.ndarray, k: int, idx: np.ndarray) -> None:
    """idx[:k] = the indices of the k largest |x| in index order (ties at the k-th magnitude:
    the lowest indices; NaN counts as the largest, so that it travels and the step's checks
    stop the run). xu: (n,) the float32 bits of x, 0 < k <= n.

    A strided sample of 2048 magnitudes gives a bound L below the k-th largest with a margin;
    one branch-free pass lists the candidates |x| >= L (indices ascending, magnitudes beside
    them). When at least k are listed, the k-th largest T is >= L, so every entry that can be
    kept is a candidate: :func:`_kth_magnitude` finds T among them and a pass over them
    collects the k. Otherwise (the sample misled) the same runs over all n. Exact either
    way; about 2 passes over x where a radix select over all of it makes 4. n < 2**31 (the
    candidates' indices are int32; slot indices travel as 32 bits anyway)."""
    n = xu.size
    ci = np.empty(n + 1, dtype=np.int32)
    cm = np.empty(n + 1, dtype=np.uint32)
    c = -1
    s = 2048
    if n >= 4 * s:
        stride = n // s
        smp = np.empty(s, dtype=np.uint32)
        for j in range(s):
            smp[j] = xu[j * stride] & _MAG
        smp.sort()
        e = k * s / n  # expected sample entries above T
        r = int(e + 4.0 * np.sqrt(e) + 8.0)
        if r < s:
            lo = smp[s - 1 - r]
            c = 0
            for i in range(n):  # branch-free: the slot is overwritten unless i is kept
                m = xu[i] & _MAG
                ci[c] = i
                cm[c] = m
                c += m >= lo
    if c < k:
        c = n
        for i in range(n):
            ci[i] = i
            cm[i] = xu[i] & _MAG
    T, need = _kth_magnitude(cm[:c], k)
    j = 0
    for t in range(c):  # branch-free, compacting in place (j <= t)
        m = cm[t]
        tie = (m == T) & (need > 0)
        ci[j] = ci[t]
        j += (m > T) | tie
        need -= tie
    idx[:k] = ci[:k]


def pack_topk(x: np.ndarray, bounds: np.ndarray, ratio: float, dec: np.ndarray | None = None,
              words: np.ndarray | None = None, feedback: bool = False
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """Top-k by magnitude of each chunk [bounds[j], bounds[j+1]) of x (flat floats), packed as
    3·k 16-bit words per chunk (:func:`_pack_slots`; indices ascending; ties at the k-th
    magnitude broken by index). Returns (words, decoded (x.size,) float32: what the receivers
    will see; ``dec``, ``words``, ``feedback``: as :func:`_pack_slots` takes them)."""
    def largest(c: np.ndarray, k: int) -> np.ndarray:
        idx = np.empty(k, dtype=np.int64)
        _select_largest(c.view(np.uint32), k, idx)
        return idx

    return _pack_slots(x, bounds, ratio, largest, dec, words, feedback)


def add_topk(words: np.ndarray, out: np.ndarray) -> None:
    """out (m,) float32 += the chunk of 3·k words (unique indices) that :func:`pack_topk`
    made for it."""
    _add_slots(words, out)


@nb.njit(cache=True, nogil=True)
def _select_threshold(c: np.ndarray, k: int, tau: np.float32, idx: np.ndarray) -> int:
    """idx[:k] = the first k indices of chunk c with |c| >= tau, in index order, then (when
    fewer pass) the first indices below it; returns how many passed (may exceed k)."""
    cand = np.empty(c.size + 1, dtype=np.int64)
    passed = 0
    for i in range(c.size):  # branch-free: the slot is overwritten unless c[i] passes
        cand[passed] = i
        passed += abs(c[i]) >= tau
    n = min(passed, k)
    idx[:n] = cand[:n]
    if n < k:  # fill the budget: the slots travel anyway, so they carry real values
        for i in range(c.size):
            if n == k:
                break
            if abs(c[i]) < tau:
                idx[n] = i
                n += 1
    return passed


def pack_threshold(x: np.ndarray, bounds: np.ndarray, ratio: float, tau: float,
                   dec: np.ndarray | None = None, words: np.ndarray | None = None,
                   feedback: bool = False) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Hard threshold (DCT, Gupta et al. 2020) in a fixed budget: each chunk [bounds[j],
    bounds[j+1]) of x sends k = :func:`topk_count` slots, the entries with |x| >= tau in index
    order (those past k stay in the error-feedback residual), the budget filled from the
    entries below tau when fewer pass. The words are :func:`pack_topk`'s (3·k per chunk, read
    by :func:`add_topk`), so the bytes are known before the values: plans stay exact. Returns
    (words, decoded (x.size,) float32, entries that passed tau; ``dec``, ``words``,
    ``feedback``: as :func:`_pack_slots` takes them)."""
    passed = [0]

    def over(c: np.ndarray, k: int) -> np.ndarray:
        idx = np.empty(k, dtype=np.int64)
        passed[0] += _select_threshold(c, k, np.float32(tau), idx)
        return idx

    words, dec = _pack_slots(x, bounds, ratio, over, dec, words, feedback)
    return words, dec, passed[0]


def estimate_threshold(x: np.ndarray, ratio: float, sample: int, seed: int) -> float:
    """The magnitude that about ``ratio`` of x's entries reach, from ``sample`` entries drawn
    uniformly (with replacement; all of x when it is no larger): DCT's sampled estimate."""
    a = np.abs(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
    if a.size == 0:
        return 0.0
    if a.size > sample:
        a = a[np.random.default_rng(seed).integers(0, a.size, sample)]
    k = min(a.size - 1, int(np.floor((1.0 - ratio) * a.size)))
    return float(np.partition(a, k)[k])
