"""Elementwise passes of the dense layers, fused and in place (one sweep, no temporaries)."""

from __future__ import annotations

import numpy as np
from numba import njit

from desmpi.kernels.sparse import WIDE_ROW, add_scaled_row


@njit(cache=True)
def bias_act(y, b, relu):
    """y (n, m) += b (m,), then ReLU in place when ``relu``."""
    n, m = y.shape
    zero = y.dtype.type(0.0)
    for i in range(n):
        for j in range(m):
            v = y[i, j] + b[j]
            y[i, j] = max(v, zero) if relu else v


@njit(cache=True)
def relu_grad(g, a, gb):
    """g (n, m) *= (a > 0) in place, a = ReLU output (a > 0 exactly where the input was);
    adds the column sums of the result into gb (m,) (the bias gradient) in the same pass."""
    n, m = g.shape
    zero = g.dtype.type(0.0)
    acc = np.zeros(m, dtype=g.dtype)
    for i in range(n):
        for j in range(m):
            v = g[i, j] if a[i, j] > zero else zero
            g[i, j] = v
            acc[j] += v
    for j in range(m):
        gb[j] += acc[j]


@njit(cache=True, inline="always")
def _load_T(z, E, s, buf):
    """buf (F + 1, d) = T of sample s: [z[s], E_1[s] .. E_F[s]]."""
    d = z.shape[1]
    for c in range(d):
        buf[0, c] = z[s, c]
    for f in range(buf.shape[0] - 1):
        for c in range(d):
            buf[f + 1, c] = E[s, f * d + c]


@njit(cache=True, fastmath=True)
def dot_interaction(z, E, out):
    """DLRM's pairwise dot interaction of T = [z, E_1 .. E_F] for every sample.

    z: (n, d); E: (n, F·d) (rows C-contiguous); out: (n, d + T(T-1)/2) = [z | <T_i, T_j>
    for i > j in row-major order of the strict lower triangle] (np.tril_indices(T, -1)).
    One sample's T (27 × 64 floats for Criteo) stays in L1; the dots are vectorised over d,
    four at a time so that each load of T_i serves four products.
    """
    n, d = z.shape
    F = E.shape[1] // d
    buf = np.empty((F + 1, d), dtype=E.dtype)
    zero = E.dtype.type(0.0)
    for s in range(n):
        _load_T(z, E, s, buf)
        for c in range(d):
            out[s, c] = z[s, c]
        p = d
        for i in range(1, F + 1):
            j = 0
            while j + 4 <= i:
                a0 = zero
                a1 = zero
                a2 = zero
                a3 = zero
                for c in range(d):
                    x = buf[i, c]
                    a0 += x * buf[j, c]
                    a1 += x * buf[j + 1, c]
                    a2 += x * buf[j + 2, c]
                    a3 += x * buf[j + 3, c]
                out[s, p] = a0
                out[s, p + 1] = a1
                out[s, p + 2] = a2
                out[s, p + 3] = a3
                p += 4
                j += 4
            while j < i:
                acc = zero
                for c in range(d):
                    acc += buf[i, c] * buf[j, c]
                out[s, p] = acc
                p += 1
                j += 1


@njit(cache=True)
def dot_interaction_backward(gout, z, E, gz, gE):
    """Gradients of :func:`dot_interaction`: gout (n, d + pairs) -> gz (n, d) (including
    gout's direct z part) and gE (n, F·d), both overwritten.

    Per sample gT = Gs T with Gs (T × T) the symmetric matrix of the pairs' gradients: one
    small BLAS product each (twice as fast here as a hand-written loop).
    """
    n, d = z.shape
    F = E.shape[1] // d
    buf = np.empty((F + 1, d), dtype=E.dtype)
    gs = np.zeros((F + 1, F + 1), dtype=E.dtype)  # diagonal stays 0
    g = np.empty((F + 1, d), dtype=E.dtype)
    for s in range(n):
        _load_T(z, E, s, buf)
        p = d
        for i in range(1, F + 1):
            for j in range(i):
                a = gout[s, p]
                gs[i, j] = a
                gs[j, i] = a
                p += 1
        np.dot(gs, buf, g)
        for c in range(d):
            gz[s, c] = g[0, c] + gout[s, c]
        for f in range(F):
            for c in range(d):
                gE[s, f * d + c] = g[f + 1, c]


@njit(cache=True)
def field_sum(E, d, out):
    """out (n, d) = Σ_f E[:, f·d : (f+1)·d], fields in order; E (n, F·d), rows may be strided
    (a column slice of Z). The FM's S from the pooled embeddings."""
    n = E.shape[0]
    F = E.shape[1] // d
    wide = d >= WIDE_ROW
    one = E.dtype.type(1.0)
    for s in range(n):
        for c in range(d):
            out[s, c] = E[s, c]
        for f in range(1, F):
            add_scaled_row(out, s, 0, E, s, f * d, d, one, wide)


@njit(cache=True)
def add_to_fields(gE, g, d):
    """gE[:, f·d : (f+1)·d] += g (n, d) for every field f, in place; gE (n, F·d), rows may be
    strided (a column slice of gZ). The gradient of S = Σ_f E_f reaching every field."""
    n = gE.shape[0]
    F = gE.shape[1] // d
    wide = d >= WIDE_ROW
    one = gE.dtype.type(1.0)
    for s in range(n):
        for f in range(F):
            add_scaled_row(gE, s, f * d, g, s, 0, d, one, wide)
