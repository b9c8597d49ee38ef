"""Pack floats into 16-bit words and sum packed chunks (Numba; no Python loops per element).

* bf16: the upper 16 bits of the float32, rounded to nearest even (NaN kept a quiet NaN);
  float64 input goes through float32 first.
* fp16: IEEE half precision, round to nearest even, subnormals kept, beyond ±65504 inf (the
  same bits as NumPy's ``astype(float16)``; decoding makes a signalling NaN quiet). The
  conversions are the CPU's (F16C's ``vcvtps2ph``/``vcvtph2ps`` through LLVM, :func:`hardware_f16`)
  where they compile and agree with the portable branch-free kernels, which run elsewhere.
* int8: block-wise absmax quantisation, :mod:`desmpi.kernels.int8`.

:func:`sum_packed` decodes P chunks of m words each and sums them in float32 (rank order, so
every rank that sums the same chunks gets the same bits).
"""

from __future__ import annotations

import functools
import platform

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic

from desmpi.kernels.int8 import RINT, int8_words, pack_int8, unpack_int8


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


_U32 = np.uint32
_SUB = np.float32(2.0 ** 24)  # a half subnormal's unit is 2**-24


@nb.njit(cache=True, nogil=True)
def _f16_bits(x: np.ndarray, u: np.ndarray, out: np.ndarray) -> None:
    """x (float32) -> IEEE half bits, round to nearest even (u: x's bits). Branch-free so that
    the loop vectorises: every element computes the three cases and keeps its own —
    normal halves rebias the exponent and round the mantissa with an integer add (F. Giesen,
    "float->half variants", 2016); subnormal ones are rint(|x| · 2**24) (exact in float32 for
    |x| < 2**-14); |x| >= 65520 rounds to inf, NaN stays a quiet NaN."""
    for i in range(u.size):
        b = u[i]
        a = b & _U32(0x7FFFFFFF)
        sign = (b >> _U32(16)) & _U32(0x8000)
        # (15 - 127) << 23 as a wrapping uint32 add, plus the rounding bias 0xFFF (+1 if odd)
        h_norm = (a + _U32(0xC8000FFF) + ((a >> _U32(13)) & _U32(1))) >> _U32(13)
        r = (abs(x[i]) * _SUB + RINT) - RINT  # rint, ties to even
        h_sub = _U32(r) if a < _U32(0x38800000) else _U32(0)
        h_inf = _U32(0x7C00) | ((_U32(0x200) | ((a & _U32(0x7FFFFF)) >> _U32(13)))
                                if a > _U32(0x7F800000) else _U32(0))
        h = h_sub if a < _U32(0x38800000) else (h_norm if a < _U32(0x47800000) else h_inf)
        out[i] = np.uint16(sign | h)


_F16_SCALE = np.float32(2.0 ** 112)  # a half's value / the float32 its bits make at << 13


@nb.njit(cache=True, nogil=True)
def _f16_to_f32(q: np.ndarray, out: np.ndarray) -> None:
    """IEEE half bits -> float32 (F. Giesen's "half_to_float", 2012): |h| << 13 read as a
    float32 is the half's magnitude · 2**-112 for normal and subnormal halves alike, so one
    multiplication by 2**112 (exact) rebiases both; exponent 31 (inf; NaN: payload kept,
    made quiet) and the sign are set on the bits after. Three passes that vectorise, each a
    few operations: 2.5x faster than one pass choosing between the cases per element."""
    u = out.view(np.uint32)
    for i in range(q.size):
        u[i] = (_U32(q[i]) & _U32(0x7FFF)) << _U32(13)
    for i in range(q.size):
        out[i] *= _F16_SCALE
    for i in range(q.size):
        h = _U32(q[i])
        b = u[i]
        if (h & _U32(0x7C00)) == _U32(0x7C00):  # inf, or NaN made quiet as F16C makes it
            b |= _U32(0x7FC00000) if h & _U32(0x3FF) else _U32(0x7F800000)
        u[i] = b | ((h & _U32(0x8000)) << _U32(16))


@intrinsic
def _f16_of(typingctx, x):
    """float32 -> IEEE half bits by LLVM's ``fptrunc`` (x86's F16C ``vcvtps2ph``: round to
    nearest even, subnormals kept, NaN made quiet with its payload's top bits)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


@intrinsic
def _f32_of_half(typingctx, h):
    """IEEE half bits -> float32 by LLVM's ``fpext`` (F16C ``vcvtph2ps``: exact)."""
    if h != types.uint16:
        return None

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


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


@nb.njit(cache=True, nogil=True)
def _ef_f16_hw(x: np.ndarray, r: np.ndarray, q: np.ndarray) -> None:
    """:func:`_ef_bf16` for fp16, by the CPU's half conversions."""
    for i in range(x.size):
        v = x[i] + r[i]
        h = _f16_of(v)
        q[i] = h
        r[i] = v - _f32_of_half(h)


@nb.njit(cache=True, nogil=True)
def _f16_pack_hw(x: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.size):
        out[i] = _f16_of(x[i])


@nb.njit(cache=True, nogil=True)
def _f16_unpack_hw(q: np.ndarray, out: np.ndarray) -> None:
    for i in range(q.size):
        out[i] = _f32_of_half(q[i])


@nb.njit(cache=True, nogil=True)
def _f16_sum_hw(q: np.ndarray, P: int, m: int, out: np.ndarray) -> None:
    for i in range(m):
        out[i] = _f32_of_half(q[i])
    for j in range(1, P):
        qj = q[j * m:(j + 1) * m]
        for i in range(m):
            out[i] += _f32_of_half(qj[i])


def _targets_half_instructions() -> bool:
    """Does the code Numba generates here have half <-> float instructions? On x86 only with
    F16C among the target's features (the host's, or ``NUMBA_CPU_FEATURES``; a named
    ``NUMBA_CPU_NAME`` alone gives no feature list: no); elsewhere (ARMv8 has them in its base
    set) yes. Without them LLVM would call a runtime routine the JIT cannot resolve, and that
    failure aborts the process rather than raising."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    from numba.core import config

    if config.CPU_FEATURES is not None:
        feats = config.CPU_FEATURES
    elif config.CPU_NAME not in (None, "host"):
        return False
    else:
        from llvmlite import binding

        feats = binding.get_host_cpu_features().flatten()
    return "+f16c" in feats.split(",")


@functools.cache
def hardware_f16() -> bool:
    """Whether the half conversions compile to instructions (F16C and the like) and give the
    portable kernels' bits (checked once a process, over special values and every half); where
    they do not (:func:`_targets_half_instructions`, or any failure to build or agree), the
    portable branch-free kernels run — the same bits, 3-6x slower."""
    if not _targets_half_instructions():
        return False
    try:
        h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
        a, b = np.empty(h.size, np.float32), np.empty(h.size, np.float32)
        _f16_unpack_hw(h, a)
        _f16_to_f32(h, b)
        x = np.concatenate([b, np.array([65519.99, 65520, 2.98e-8, 2.99e-8, 1e-45, 3e38, -0.0],
                                        np.float32)])
        x = np.concatenate([x, np.nextafter(x, np.float32(np.inf))])
        p, r = np.empty(x.size, np.uint16), np.empty(x.size, np.uint16)
        _f16_pack_hw(x, p)
        _f16_bits(x, x.view(np.uint32), r)
        return bool(np.array_equal(a.view(np.uint32), b.view(np.uint32))
                    and np.array_equal(p, r))
    except Exception:  # noqa: BLE001 - any failure to build or run: the portable kernels
        return False


def chunk_words(codec: str, m: int) -> int:
    """16-bit words of a chunk of m floats under a dense codec (bf16, fp16: one a float)."""
    return int8_words(m) if codec == "int8" else m


def _bounds(blocks) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(blocks, dtype=np.int64))]).astype(np.int64)


def pack_chunks(codec: str, x: np.ndarray, blocks, out: np.ndarray | None = None
                ) -> np.ndarray:
    """x (flat floats) split in chunks of ``blocks`` floats -> the dense codec's words, chunk
    after chunk (Σ :func:`chunk_words` words; bf16 and fp16 do not see the chunks)."""
    if codec != "int8":
        return pack(codec, x, out)
    x32 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    b = _bounds(blocks)
    if b[-1] != x32.size:
        raise ValueError(f"chunks of {b[-1]} floats do not split {x32.size}")
    n = int(sum(int8_words(int(m)) for m in np.diff(b)))
    out = np.empty(n, dtype=np.uint16) if out is None else out[:n]
    pack_int8(x32, x32.view(np.uint32), b, out, out.view(np.int8))
    return out


def unpack_chunks(codec: str, q: np.ndarray, blocks, dtype=np.float32,
                  out: np.ndarray | None = None) -> np.ndarray:
    """The inverse of :func:`pack_chunks`: (Σ blocks,) floats of ``dtype`` (into ``out``)."""
    if codec != "int8":
        return unpack(codec, q, dtype, out)
    b = _bounds(blocks)
    f32 = np.dtype(dtype) == np.float32
    f = out.reshape(-1) if (out is not None and f32) else np.empty(int(b[-1]), np.float32)
    unpack_int8(q, q.view(np.int8), b, f, False)
    if f32:
        return f
    if out is None:
        return f.astype(dtype)
    out.reshape(-1)[:] = f
    return out


def pack_feedback(codec: str, x: np.ndarray, residual: np.ndarray, out: np.ndarray
                  ) -> bool:
    """One pass of error feedback and packing where a kernel does it (x and residual flat
    float32; bf16, or fp16 with :func:`hardware_f16`): out = the codec's words of x +
    residual, residual = what they lost; x is left as it was. Returns False (nothing done)
    otherwise: the caller adds, packs, decodes and subtracts."""
    if x.dtype != np.float32 or residual.dtype != np.float32:
        return False
    if codec == "bf16":
        _ef_bf16(x, residual, out)
    elif codec == "fp16" and hardware_f16():
        _ef_f16_hw(x, residual, out)
    else:
        return False
    return True


def pack(codec: str, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x (any shape, float32/64) -> (x.size,) uint16 words of ``codec``."""
    x32 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty(x32.size, dtype=np.uint16) if out is None else out
    if codec == "bf16":
        _bf16_bits(x32.view(np.uint32), out)
    elif codec == "fp16":  # overflow is inf, caught by the step's checks
        if hardware_f16():
            _f16_pack_hw(x32, out)
        else:
            _f16_bits(x32, x32.view(np.uint32), out)
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
        (_f16_unpack_hw if hardware_f16() else _f16_to_f32)(q, f)
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
    u = np.empty(1, dtype=np.uint32)
    f = u.view(np.float32)
    for i in range(m):
        out[i] = 0.0
    for j in range(P):  # rank order; the inner loop runs over contiguous words
        base = j * m
        for i in range(m):
            u[0] = np.uint32(q[base + i]) << 16
            out[i] += f[0]


@nb.njit(cache=True, nogil=True)
def _sum_f16(q: np.ndarray, P: int, m: int, out: np.ndarray) -> None:
    """out = Σ_j decode(q[j·m:(j+1)·m]) in rank order, a block of 2048 at a time: each
    chunk's block decodes into a scratch that stays in L1 and is added from there (one read
    of q, one write of out)."""
    BL = 2048
    s = np.empty(BL, dtype=np.float32)
    for lo in range(0, m, BL):
        hi = min(m, lo + BL)
        ob, sb = out[lo:hi], s[:hi - lo]
        _f16_to_f32(q[lo:hi], ob)
        for j in range(1, P):
            _f16_to_f32(q[j * m + lo:j * m + hi], sb)
            for i in range(sb.size):
                ob[i] += sb[i]


def sum_packed(codec: str, q: np.ndarray, P: int, out: np.ndarray) -> np.ndarray:
    """q: P chunks of :func:`chunk_words` (m) words, m = out.size (chunk j from rank j) ->
    out (m,) float32 = Σ_j decode(chunk j), summed in float32 in rank order."""
    m = out.size
    w = chunk_words(codec, m)
    if q.size != P * w:
        raise ValueError(f"{q.size} words are not {P} chunks of {w}")
    o = out.reshape(-1)
    if codec == "int8":
        o[:] = 0.0
        for j in range(P):  # rank order
            c = q[j * w:(j + 1) * w]
            unpack_int8(c, c.view(np.int8), np.array([0, m], dtype=np.int64), o, True)
    elif codec == "bf16":
        _sum_bf16(q, P, m, o)
    elif codec == "fp16":
        (_f16_sum_hw if hardware_f16() else _sum_f16)(q, P, m, o)
    else:
        raise ValueError(f"unknown codec {codec!r}")
    return out
