"""Key-level kernels shared by the substituted operators.

An *occurrence* is one key of one sample owned by this rank: (sample s, field f, row, value x).
The forward kernel pools the owned occurrences of every sample; the backward kernel turns the
per-sample gradients of the aggregated partials into per-row gradients, accumulated in
occurrence order (which is the global sample order at every P, hence P-invariant sums).

The pooled quantities (see :class:`desmpi.ops.base.Pools`) live in 2-D C arrays at column
offsets, -1 when absent: Z holds L at cL, S (d) at cS, Q at cQ; EZ holds E (F·d) at cE. With
Z the partial-result matrix an operator whose partial is a pooled quantity costs no copy; the
gradient kernel reads gZ in the same layout. Arithmetic stays in the arrays' precision.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from desmpi.kernels.prefetch import AHEAD, prefetch_row

# Row additions (add_scaled_row: pool, row_grads incl. its square-term pass, add_segments,
# kernels/dense.py's field_sum / add_to_fields) loop over 1-D row views from this many floats
# per row, because Numba vectorises those and not the 2-D-indexed loops (kept below it, where
# the vector setup costs more than it saves). Keep the branch: the same view loops without it
# compiled to slower code. The measurements behind both choices: docs/speed.md, "Kernels".
WIDE_ROW = 8


@njit(inline="always")
def add_scaled_row(dst, i, o, src, k, so, d, x, wide):
    """dst[i, o:o+d] += src[k, so:so+d] · x; over 1-D views when ``wide`` (see WIDE_ROW)."""
    if wide:
        a = dst[i, o:o + d]
        b = src[k, so:so + d]
        for c in range(d):
            a[c] += b[c] * x
    else:
        for c in range(d):
            dst[i, o + c] += src[k, so + c] * x


@njit(cache=True)
def pool(occ_s, occ_f, rows, vals, weights, emb_col, Z, cL, cS, cQ, EZ, cE):
    """Add the owned occurrences into the pools (zeroed by the caller); rows < 0 (keys never
    trained, at eval, or not admitted) are skipped. vals: (nnz,) or empty (all 1);
    weights: (rows, R) = [w | v (d)] from column emb_col."""
    has_v = vals.shape[0] > 0
    d = weights.shape[1] - emb_col
    one = weights.dtype.type(1.0)
    nnz = occ_s.shape[0]
    wide = d >= WIDE_ROW  # vectorised row loops (see WIDE_ROW)
    for i in range(nnz):
        if i + AHEAD < nnz and rows[i + AHEAD] >= 0:
            prefetch_row(weights, rows[i + AHEAD])
        r = rows[i]
        if r < 0:
            continue
        s = occ_s[i]
        x = vals[i] if has_v else one
        if cL >= 0:
            Z[s, cL] += weights[r, 0] * x
        if cE >= 0:
            add_scaled_row(EZ, s, cE + occ_f[i] * d, weights, r, emb_col, d, x, wide)
        if cS >= 0:
            add_scaled_row(Z, s, cS, weights, r, emb_col, d, x, wide)
        if cQ >= 0:
            q = weights.dtype.type(0.0)
            for c in range(d):
                q += weights[r, emb_col + c] * weights[r, emb_col + c]
            Z[s, cQ] += q * (x * x)


@njit(cache=True)
def row_grads(occ_s, occ_f, inv, urows, vals, weights, emb_col, gZ, cL, cS, cQ, gEZ, cE, grad):
    """Per-row gradients from per-sample gradients of the pooled quantities (same layout).

    inv: (nnz,) index of each occurrence's row among the unique rows urows (< 0: skipped);
    grad: (nu, R), zeroed. ∂/∂w += gL·x; ∂/∂v += (G[s, f] + gS[s])·x + 2·gQ·x²·v. The Q term
    is v times a per-row scalar sum, so v is read once per distinct row, not per occurrence.
    Sums run in occurrence order (the global sample order at every P).
    """
    has_v = vals.shape[0] > 0
    d = weights.shape[1] - emb_col
    one = weights.dtype.type(1.0)
    nnz = occ_s.shape[0]
    nu = grad.shape[0]
    qsum = np.zeros(nu if cQ >= 0 else 0, dtype=grad.dtype)
    # rows of WIDE_ROW floats or more: loops over 1-D row views, which the compiler vectorises
    # (2-D indexing inside the loops stays scalar); shorter rows keep the scalar loops
    wide = d >= WIDE_ROW
    for i in range(nnz):
        if i + AHEAD < nnz and inv[i + AHEAD] >= 0:
            prefetch_row(grad, inv[i + AHEAD])
        u = inv[i]
        if u < 0:
            continue
        s = occ_s[i]
        x = vals[i] if has_v else one
        if cL >= 0:
            grad[u, 0] += gZ[s, cL] * x
        if cE >= 0:
            add_scaled_row(grad, u, emb_col, gEZ, s, cE + occ_f[i] * d, d, x, wide)
        if cS >= 0:
            add_scaled_row(grad, u, emb_col, gZ, s, cS, d, x, wide)
        if cQ >= 0:
            qsum[u] += 2 * gZ[s, cQ] * (x * x)
    if cQ >= 0:
        for u in range(nu):
            if u + AHEAD < nu:
                prefetch_row(weights, urows[u + AHEAD])
            add_scaled_row(grad, u, emb_col, weights, urows[u], emb_col, d, qsum[u], wide)


@njit(cache=True)
def add_segments(seg_s, seg_f, seg, sL, sv, sQ, d, Z, cL, cS, cQ, EZ, cE):
    """Add pooled segments into the pools, in segment order. seg (m, w): one row per
    (sample seg_s, field seg_f) part, [L | v (d) | Q] from columns sL, sv, sQ (-1: absent); v
    goes into E[s, f] and/or S[s]."""
    wide = d >= WIDE_ROW  # vectorised row loops (see WIDE_ROW)
    one = seg.dtype.type(1.0)
    for k in range(seg_s.shape[0]):
        s = seg_s[k]
        if sL >= 0 and cL >= 0:
            Z[s, cL] += seg[k, sL]
        if sv >= 0:
            if cE >= 0:
                add_scaled_row(EZ, s, cE + seg_f[k] * d, seg, k, sv, d, one, wide)
            if cS >= 0:
                add_scaled_row(Z, s, cS, seg, k, sv, d, one, wide)
        if sQ >= 0 and cQ >= 0:
            Z[s, cQ] += seg[k, sQ]


@njit(cache=True)
def gather_segments(seg_s, seg_f, seg, sL, sv, sQ, d, Z, cL, cS, cQ, EZ, cE):
    """The transpose of :func:`add_segments`: seg (m, w) row k = the (sample seg_s[k], field
    seg_f[k]) part of the pools' gradients, [L | v (d) | Q] at columns sL, sv, sQ (-1: absent),
    v = E[s, f] + S[s] (either may be absent: cE, cS = -1). Every present column is written."""
    zero = seg.dtype.type(0.0)
    for k in range(seg_s.shape[0]):
        s = seg_s[k]
        if sL >= 0:
            seg[k, sL] = Z[s, cL] if cL >= 0 else zero
        if sv >= 0:
            if cE >= 0:
                o = cE + seg_f[k] * d
                for c in range(d):
                    seg[k, sv + c] = EZ[s, o + c]
                if cS >= 0:
                    for c in range(d):
                        seg[k, sv + c] += Z[s, cS + c]
            elif cS >= 0:
                for c in range(d):
                    seg[k, sv + c] = Z[s, cS + c]
            else:
                for c in range(d):
                    seg[k, sv + c] = zero
        if sQ >= 0:
            seg[k, sQ] = Z[s, cQ] if cQ >= 0 else zero


@njit(cache=True)
def add_rows(grad, inv, g):
    """grad[inv[i]] += g[i] for every i in order (inv < 0: skipped). grad (nu, R), g (m, R)."""
    for i in range(inv.shape[0]):
        u = inv[i]
        if u >= 0:
            for c in range(g.shape[1]):
                grad[u, c] += g[i, c]


@njit(cache=True)
def unique_rows(rows, mark, urows, inv):
    """Distinct rows in order of first appearance, without sorting.

    rows: (nnz,) (< 0: skipped, inv = -1); mark: (>= table rows,) all 0 on entry and on exit
    (scratch owned by the table, u + 1 while row r is the u-th distinct row); urows: (>= nu,)
    out; inv: (nnz,) out. Returns nu.
    """
    nu = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0:
            inv[i] = -1
            continue
        u = mark[r] - 1
        if u < 0:
            u = nu
            nu += 1
            mark[r] = nu
            urows[u] = r
        inv[i] = u
    for k in range(nu):
        mark[urows[k]] = 0
    return nu
