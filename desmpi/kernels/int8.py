"""int8 packing: block-wise absmax quantisation into 16-bit words (Numba).

Blocks of :data:`INT8_BLOCK` floats, as ZeRO++'s quantised communication and TorchRec's
row-wise INT8 comms do: each block travels as one bf16 scale s (max|x| / 127, rounded *up* to
bf16 so that |x| / s <= 127) and one int8 q = rint(x · (1/s)) per float (float32 arithmetic),
two to a 16-bit word; the receiver reads q·s (error <= s / 2). A block holding NaN or inf gets
a NaN scale: it decodes to NaN and the step's checks stop the run. Blocks restart at every
chunk (each chunk of a collective decodes on its own), so a chunk of m floats is
:func:`int8_words` (m) words. :mod:`desmpi.kernels.compress` dispatches to these kernels.
"""

from __future__ import annotations

import numba as nb
import numpy as np

RINT = np.float32(12582912.0)  # 1.5·2^23: x + it − it rounds |x| < 2^22 to nearest even

INT8_BLOCK = 64  # floats per int8 scale: 1 scale word per 32 data words (3% on the bytes)


def int8_words(m):
    """16-bit words of a chunk of m floats under int8: ⌈m/2⌉ data words + ⌈m/64⌉ scales (m an
    int or an integer array, elementwise)."""
    return (m + 1) // 2 + (m + INT8_BLOCK - 1) // INT8_BLOCK


@nb.njit(cache=True, nogil=True, inline="always")
def abs_max_bits(u: np.ndarray) -> np.uint32:
    """The bits of max |x| over the float32 values whose bits are u: non-negative floats order
    as their bits, so an integer maximum of the sign-cleared bits (which vectorises; a float
    maximum, bound to NaN's rules, does not). inf or NaN give 0x7F800000 or more."""
    m = np.uint32(0)
    for i in range(u.size):
        m = max(m, u[i] & np.uint32(0x7FFFFFFF))
    return m


@nb.njit(cache=True, nogil=True)
def pack_int8(x: np.ndarray, xu: np.ndarray, bounds: np.ndarray, out: np.ndarray,
               out8: np.ndarray) -> None:
    """Chunks [bounds[j], bounds[j+1]) of x (float32) into out (uint16 words; out8: the same
    memory as int8), chunk after chunk: the chunk's bf16 scales (one a block), then its int8
    values (two to a word in memory order: ranks of one byte order, as MPI jobs are). xu: x's
    bits as uint32. Three passes a chunk (block maxima, scales, values) so that the
    per-element loops vectorise; they run over a block's slice from index 0 (an index
    Numba cannot prove non-negative gets a wraparound check that stops LLVM vectorising:
    10-20x slower)."""
    G = INT8_BLOCK
    nmax = 0
    for j in range(bounds.size - 1):
        nmax = max(nmax, (bounds[j + 1] - bounds[j] + G - 1) // G)
    top = np.empty(nmax, dtype=np.uint32)
    inv = np.empty(nmax, dtype=np.float32)
    sb = np.empty(1, dtype=np.uint32)
    sf = sb.view(np.float32)
    w = 0
    for j in range(bounds.size - 1):
        lo, hi = bounds[j], bounds[j + 1]
        m = hi - lo
        nblk = (m + G - 1) // G
        xc, uc = x[lo:hi], xu[lo:hi]
        oc = out8[2 * (w + nblk):2 * (w + nblk) + m]
        for k in range(nblk):  # a block's slice: indices from 0 vectorise
            top[k] = abs_max_bits(uc[k * G:min(m, (k + 1) * G)])
        for k in range(nblk):
            if top[k] >= 0x7F800000:  # inf or NaN: a NaN scale, the block decodes to NaN
                out[w + k] = np.uint16(0x7FC0)
                inv[k] = 0.0
                continue
            sb[0] = top[k]
            sf[0] = sf[0] / np.float32(127.0)
            u = np.int64(sb[0])
            hb = u >> 16
            if u & 0xFFFF:
                hb += 1  # round the scale up: |x| / s <= 127
            out[w + k] = np.uint16(hb)
            sb[0] = np.uint32(hb << 16)
            inv[k] = np.float32(1.0) / sf[0] if hb else np.float32(0.0)
        for k in range(nblk):
            v = inv[k]
            xb, ob = xc[k * G:min(m, (k + 1) * G)], oc[k * G:min(m, (k + 1) * G)]
            for i in range(xb.size):
                r = (xb[i] * v + RINT) - RINT  # rint, ties to even
                ob[i] = np.int8(max(np.float32(-127.0), min(np.float32(127.0), r)))
        if m & 1:
            out8[2 * (w + nblk) + m] = 0  # the last word's unused byte
        w += nblk + (m + 1) // 2


@nb.njit(cache=True, nogil=True)
def unpack_int8(q: np.ndarray, q8: np.ndarray, bounds: np.ndarray, out: np.ndarray,
                 add: bool) -> None:
    """out[bounds[j]:bounds[j+1]] (=, or += when ``add``) the decoded chunk j of q (q8: the
    same memory as int8)."""
    G = INT8_BLOCK
    sb = np.empty(1, dtype=np.uint32)
    sf = sb.view(np.float32)
    w = 0
    for j in range(bounds.size - 1):
        lo, hi = bounds[j], bounds[j + 1]
        m = hi - lo
        nblk = (m + G - 1) // G
        qc = q8[2 * (w + nblk):2 * (w + nblk) + m]
        oc = out[lo:hi]
        for k in range(nblk):
            sb[0] = np.uint32(np.int64(q[w + k]) << 16)
            s = sf[0]
            qb, ob = qc[k * G:min(m, (k + 1) * G)], oc[k * G:min(m, (k + 1) * G)]
            if add:
                for i in range(qb.size):
                    ob[i] += np.float32(qb[i]) * s
            else:
                for i in range(qb.size):
                    ob[i] = np.float32(qb[i]) * s
        w += nblk + (m + 1) // 2
