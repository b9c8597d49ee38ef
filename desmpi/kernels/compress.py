"""Pack floats into 16-bit words and sum packed chunks (Numba; no Python loops per element).

* bf16: the upper 16 bits of the float32, rounded to nearest even (NaN kept a quiet NaN);
  float64 input goes through float32 first.
* fp16: IEEE half precision (NumPy's ``astype(float16)`` bits); in chunks, each chunk scaled
  by a power of two of its own so that its halves keep 11 significant bits at any scale:
  :mod:`desmpi.kernels.f16`.
* int8: block-wise absmax quantisation, :mod:`desmpi.kernels.int8`.

:func:`sum_packed` decodes P chunks of m words each and sums them in float32 (rank order, so
every rank that sums the same chunks gets the same bits); :func:`finish_sum` (bf16) adds the
last of them, packs the sum and decodes it back in one pass.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic

from desmpi.kernels import f16
from desmpi.kernels.int8 import int8_words, pack_int8, unpack_int8


@nb.njit(cache=True, nogil=True, inline="always")
def _bf16_of(b: np.uint32) -> np.uint16:
    """The bf16 of the float32 whose bits are b: rounded to nearest even, NaN a quiet NaN."""
    if (b & 0x7F800000) == 0x7F800000 and (b & 0x007FFFFF) != 0:
        return np.uint16((b >> 16) | 0x0040)  # NaN stays NaN
    return np.uint16((b + 0x7FFF + ((b >> 16) & 1)) >> 16)


@nb.njit(cache=True, nogil=True)
def _bf16_bits(u: np.ndarray, out: np.ndarray) -> None:
    for i in range(u.size):
        out[i] = _bf16_of(u[i])


@intrinsic
def _bits_of(typingctx, x):
    """float32 -> its bits as uint32 (a register bitcast: the loop stays vectorisable)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@intrinsic
def _float_of(typingctx, u):
    """uint32 bits -> the float32 they make (a register bitcast)."""
    if u != types.uint32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@nb.njit(cache=True, nogil=True)
def _ef_bf16(x: np.ndarray, r: np.ndarray, q: np.ndarray) -> None:
    """Error feedback and bf16 packing in one pass: v = x + r, q = bf16(v), r = v − q's value
    (float32 throughout: the bits of add, pack, decode and subtract done one after another)."""
    for i in range(x.size):
        v = x[i] + r[i]
        h = _bf16_of(_bits_of(v))
        q[i] = h
        r[i] = v - _float_of(np.uint32(np.uint32(h) << np.uint32(16)))


CHUNKED = ("int8", "fp16")  # dense codecs whose words depend on the chunks (scales per chunk)


def chunk_words(codec: str, m):
    """16-bit words of a chunk of m floats under a dense codec (bf16: one a float; fp16: one
    a float and the chunk's exponent; int8: :func:`desmpi.kernels.int8.int8_words`); m an int
    or an integer array of chunk sizes (elementwise)."""
    if codec == "int8":
        return int8_words(m)
    return f16.f16_words(m) if codec == "fp16" else m


def _bounds(blocks) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(blocks, dtype=np.int64))]).astype(np.int64)


def pack_chunks(codec: str, x: np.ndarray, blocks, out: np.ndarray | None = None
                ) -> np.ndarray:
    """x (flat floats) split in chunks of ``blocks`` floats -> the dense codec's words, chunk
    after chunk (Σ :func:`chunk_words` words; bf16 does not see the chunks)."""
    if codec not in CHUNKED:
        return pack(codec, x, out)
    x32 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    b = _bounds(blocks)
    if b[-1] != x32.size:
        raise ValueError(f"chunks of {b[-1]} floats do not split {x32.size}")
    n = int(chunk_words(codec, np.diff(b)).sum())
    out = np.empty(n, dtype=np.uint16) if out is None else out[:n]
    if codec == "fp16":  # overflow is inf, caught by the step's checks
        return f16.pack_chunks(x32, b, out)
    pack_int8(x32, x32.view(np.uint32), b, out, out.view(np.int8))
    return out


def unpack_chunks(codec: str, q: np.ndarray, blocks, dtype=np.float32,
                  out: np.ndarray | None = None) -> np.ndarray:
    """The inverse of :func:`pack_chunks`: (Σ blocks,) floats of ``dtype`` (into ``out``)."""
    if codec not in CHUNKED:
        return unpack(codec, q, dtype, out)
    b = _bounds(blocks)
    f32 = np.dtype(dtype) == np.float32
    f = out.reshape(-1) if (out is not None and f32) else np.empty(int(b[-1]), np.float32)
    if codec == "fp16":
        f16.unpack_chunks(q, b, f)
    else:
        unpack_int8(q, q.view(np.int8), b, f, False)
    if f32:
        return f
    if out is None:
        return f.astype(dtype)
    out.reshape(-1)[:] = f
    return out


def pack_feedback(codec: str, x: np.ndarray, residual: np.ndarray, blocks, out: np.ndarray
                  ) -> bool:
    """One pass of error feedback and packing where a kernel does it (x and residual flat
    float32; bf16, or fp16 with the CPU's half conversions), chunked at ``blocks``: out = the
    codec's words of x + residual, residual = what they lost; x is left as it was. Returns
    False (nothing done) otherwise: the caller adds, packs, decodes and subtracts."""
    if x.dtype != np.float32 or residual.dtype != np.float32:
        return False
    if codec == "bf16":
        _ef_bf16(x, residual, out)
        return True
    if codec == "fp16":
        return f16.feedback_chunks(x, residual, _bounds(blocks), out)
    return False


def pack(codec: str, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x (any shape, float32/64) -> (x.size,) uint16 words of ``codec`` (fp16: plain IEEE
    halves; the collectives send :func:`pack_chunks`' scaled ones)."""
    x32 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty(x32.size, dtype=np.uint16) if out is None else out
    if codec == "bf16":
        _bf16_bits(x32.view(np.uint32), out)
    elif codec == "fp16":
        f16.pack(x32, out)
    else:
        raise ValueError(f"unknown codec {codec!r}")
    return out


@nb.njit(cache=True, nogil=True)
def _bf16_to_f32(q: np.ndarray, out: np.ndarray) -> None:
    u = out.view(np.uint32)
    for i in range(q.size):
        u[i] = np.uint32(q[i]) << 16


def unpack(codec: str, q: np.ndarray, dtype=np.float32, out: np.ndarray | None = None
           ) -> np.ndarray:
    """(n,) uint16 words -> (n,) floats of ``dtype`` (into ``out`` when given: flat, n)."""
    f32 = np.dtype(dtype) == np.float32
    f = out if (out is not None and f32) else np.empty(q.size, dtype=np.float32)
    if codec == "bf16":
        _bf16_to_f32(q, f)
    elif codec == "fp16":
        f16.unpack(q, f)
    else:
        raise ValueError(f"unknown codec {codec!r}")
    if f32:
        return f
    if out is None:
        return f.astype(dtype)
    out[:] = f
    return out


@nb.njit(cache=True, nogil=True)
def _sum_bf16(q: np.ndarray, P: int, m: int, out: np.ndarray) -> None:
    """out (m,) += the P chunks of q decoded, in rank order."""
    for j in range(P):  # rank order; the inner loop runs over contiguous words
        c = q[j * m:(j + 1) * m]  # (a slice: q[j * m + i] would not vectorise)
        for i in range(m):
            out[i] += _float_of(np.uint32(np.uint32(c[i]) << np.uint32(16)))


@nb.njit(cache=True, nogil=True)
def _start_bf16(q: np.ndarray, m: int, init: np.ndarray, out: np.ndarray) -> None:
    """out (m,) = init + the first chunk of q decoded (one pass: the sum's start and its
    first term)."""
    for i in range(m):
        out[i] = np.float32(init[i]) + _float_of(np.uint32(np.uint32(q[i]) << np.uint32(16)))


@nb.njit(cache=True, nogil=True)
def _finish_bf16(q: np.ndarray, P: int, m: int, x: np.ndarray, qm: np.ndarray) -> None:
    """x (m,) float32 += the P chunks of q decoded, in rank order; then qm = x's bf16 words
    and x = their value. The last chunk's add, the packing and the decoding in one pass."""
    if P == 0:  # (x + 0 would turn −0 into +0)
        for i in range(m):
            h = _bf16_of(_bits_of(x[i]))
            qm[i] = h
            x[i] = _float_of(np.uint32(np.uint32(h) << np.uint32(16)))
        return
    _sum_bf16(q, P - 1, m, x)
    last = q[(P - 1) * m:]
    for i in range(m):
        h = _bf16_of(_bits_of(x[i] + _float_of(np.uint32(np.uint32(last[i]) << np.uint32(16)))))
        qm[i] = h
        x[i] = _float_of(np.uint32(np.uint32(h) << np.uint32(16)))


@nb.njit(cache=True, nogil=True)
def take_residual(x: np.ndarray, r: np.ndarray) -> None:
    """x += r and r = 0 where r is not 0 (one read of r; it writes only where r held
    something: a rank's own chunk, sent at full width, leaves no residual)."""
    for i in range(r.size):
        if r[i] != 0:
            x[i] += r[i]
            r[i] = 0


def sum_packed(codec: str, q: np.ndarray, P: int, out: np.ndarray,
               init: np.ndarray | None = None) -> np.ndarray:
    """q: P chunks of :func:`chunk_words` (m) words, m = out.size -> out (m,) float32 =
    init + Σ_j decode(chunk j), summed in float32 in order: ``init`` (m floats: a rank's own
    chunk, which never went through the codec; zeros when None) first, then the chunks."""
    m = out.size
    w = chunk_words(codec, m)
    if q.size != P * w:
        raise ValueError(f"{q.size} words are not {P} chunks of {w}")
    if codec not in ("int8", "bf16", "fp16"):
        raise ValueError(f"unknown codec {codec!r}")
    o = out.reshape(-1)
    if codec == "bf16" and init is not None and P > 0 and init.dtype == np.float32:
        _start_bf16(q, m, init.reshape(-1), o)  # init + chunk 0 in one pass
        _sum_bf16(q[w:], P - 1, m, o)
        return out
    if init is None:
        o.fill(0.0)
    else:
        o[:] = init.reshape(-1)
    if codec == "int8":
        for j in range(P):  # rank order
            c = q[j * w:(j + 1) * w]
            unpack_int8(c, c.view(np.int8), np.array([0, m], dtype=np.int64), o, True)
    elif codec == "bf16":
        _sum_bf16(q, P, m, o)
    else:
        f16.sum_chunks(q, P, m, o, add=True)
    return out


def finish_sum(codec: str, q: np.ndarray, P: int, x: np.ndarray, qm: np.ndarray) -> np.ndarray:
    """A compressed Allreduce's owner step after the sum's start, in one pass (bf16): x (m,
    float32, the sum so far: this rank's own chunk) += the P chunks of q (m words each)
    decoded, in rank order; then qm (m words) = the sum's bf16 words, which the Allgatherv
    sends, and x = their value, what every other rank decodes from them."""
    m = x.size
    if codec != "bf16" or x.dtype != np.float32 or q.size != P * m or qm.size != m:
        raise ValueError(f"finish_sum: bf16 on float32 only, {P} chunks of {m} words "
                         f"({codec}, {x.dtype}, {q.size} words, {qm.size} out)")
    _finish_bf16(q, P, m, x, qm)
    return qm
