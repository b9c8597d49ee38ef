"""Pack floats into 16-bit words and sum packed chunks (Numba; no Python loops per element).

* bf16: the upper 16 bits of the float32, rounded to nearest even (NaN kept a quiet NaN);
  float64 input goes through float32 first.
* fp16: IEEE half precision (NumPy's conversion: round to nearest even; beyond ±65504 inf).

:func:`sum_packed` decodes P chunks of m words each and sums them in float32 (rank order, so
every rank that sums the same chunks gets the same bits).
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def _bf16_bits(u: np.ndarray, out: np.ndarray) -> None:
    for i in range(u.size):
        b = u[i]
        if (b & 0x7F800000) == 0x7F800000 and (b & 0x007FFFFF) != 0:
            out[i] = np.uint16((b >> 16) | 0x0040)  # NaN stays NaN
        else:
            out[i] = np.uint16((b + 0x7FFF + ((b >> 16) & 1)) >> 16)


def pack(codec: str, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x (any shape, float32/64) -> (x.size,) uint16 words of ``codec``."""
    x32 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty(x32.size, dtype=np.uint16) if out is None else out
    if codec == "bf16":
        _bf16_bits(x32.view(np.uint32), out)
    elif codec == "fp16":
        with np.errstate(over="ignore"):  # overflow is inf, caught by the step's checks
            out[:] = x32.astype(np.float16).view(np.uint16)
    else:
        raise ValueError(f"unknown codec {codec!r}")
    return out


@nb.njit(cache=True, nogil=True)
def _bf16_to_f32(q: np.ndarray, out: np.ndarray) -> None:
    u = out.view(np.uint32)
    for i in range(q.size):
        u[i] = np.uint32(q[i]) << 16


def unpack(codec: str, q: np.ndarray, dtype=np.float32) -> np.ndarray:
    """(n,) uint16 words -> (n,) floats of ``dtype``."""
    if codec == "bf16":
        f = np.empty(q.size, dtype=np.float32)
        _bf16_to_f32(q, f)
    elif codec == "fp16":
        f = q.view(np.float16).astype(np.float32)
    else:
        raise ValueError(f"unknown codec {codec!r}")
    return f if np.dtype(dtype) == np.float32 else f.astype(dtype)


@nb.njit(cache=True, nogil=True)
def _sum_f32_chunks(f: np.ndarray, P: int, m: int, out: np.ndarray) -> None:
    for i in range(m):
        s = np.float32(0.0)
        for j in range(P):
            s += f[j * m + i]
        out[i] = s


def sum_packed(codec: str, q: np.ndarray, P: int, out: np.ndarray) -> np.ndarray:
    """q: P chunks of m = out.size words (chunk j from rank j) -> out (m,) = Σ_j decode(chunk
    j), summed in float32 in rank order."""
    m = out.size
    if q.size != P * m:
        raise ValueError(f"{q.size} words are not {P} chunks of {m}")
    f = unpack(codec, q)
    s = np.empty(m, dtype=np.float32)
    _sum_f32_chunks(f, P, m, s)
    out.reshape(-1)[:] = s
    return out


def topk_count(m: int, ratio: float) -> int:
    """Entries kept of a chunk of m: ⌈ratio·m⌉ (at most m)."""
    return min(m, int(np.ceil(ratio * m - 1e-9)))


def pack_topk(x: np.ndarray, bounds: np.ndarray, ratio: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by magnitude of each chunk [bounds[j], bounds[j+1]) of x (flat floats), packed as
    3·k 16-bit words per chunk: index low words, index high words (index within the chunk),
    bf16 values. Returns (words, decoded (x.size,) float32: what the receivers will see)."""
    x32 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    parts, dec = [], np.zeros(x32.size, dtype=np.float32)
    for j in range(bounds.size - 1):
        lo, hi = int(bounds[j]), int(bounds[j + 1])
        k = topk_count(hi - lo, ratio)
        if k == 0:
            continue
        c = x32[lo:hi]
        idx = np.argpartition(-np.abs(c), k - 1)[:k] if k < hi - lo else np.arange(hi - lo)
        idx = np.sort(idx).astype(np.uint32)
        vals = pack("bf16", c[idx])
        parts += [(idx & 0xFFFF).astype(np.uint16), (idx >> 16).astype(np.uint16), vals]
        dec[lo + idx.astype(np.int64)] = unpack("bf16", vals)
    words = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint16)
    return words, dec


def add_topk(words: np.ndarray, out: np.ndarray) -> None:
    """out (m,) float32 += the chunk of 3·k words (unique indices) that :func:`pack_topk`
    made for it."""
    k = words.size // 3
    if k == 0:
        return
    idx = words[:k].astype(np.int64) | (words[k:2 * k].astype(np.int64) << 16)
    out[idx] += unpack("bf16", words[2 * k:])
