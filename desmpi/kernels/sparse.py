"""Key-level kernels shared by the substituted operators.

An *occurrence* is one key of one sample owned by this rank: (sample s, field f, row, value x).
The forward kernel pools the owned occurrences of every sample; the backward kernel turns the
per-sample gradients of the aggregated partials into per-row gradients, accumulated in
occurrence order (which is the global sample order at every P, hence P-invariant sums).

The pooled quantities, each optional (an empty array skips it), may be strided views into the
partial-result matrix Z (and their gradients views into gZ), so an operator whose partial is the
pooled quantity itself costs no copy:
L (n,) Σ w·x; E (n, F, d) Σ over each field of v·x; S (n, d) Σ over all fields of v·x;
Q (n,) Σ ‖v·x‖².
"""

from __future__ import annotations

from numba import njit


@njit(cache=True)
def pool(occ_s, occ_f, rows, vals, weights, emb_col, L, E, S, Q):
    """Add the owned occurrences into L, E, S, Q (zeroed by the caller); rows < 0 (keys never
    trained, at eval, or not admitted) are skipped. vals: (nnz,) or empty (all 1);
    weights: (rows, R)."""
    has_v = vals.shape[0] > 0
    do_l, do_e, do_s, do_q = L.shape[0] > 0, E.shape[0] > 0, S.shape[0] > 0, Q.shape[0] > 0
    d = weights.shape[1] - emb_col
    for i in range(occ_s.shape[0]):
        r = rows[i]
        if r < 0:
            continue
        s = occ_s[i]
        x = vals[i] if has_v else 1.0
        if do_l:
            L[s] += weights[r, 0] * x
        if do_e:
            f = occ_f[i]
            for c in range(d):
                E[s, f, c] += weights[r, emb_col + c] * x
        if do_s:
            for c in range(d):
                S[s, c] += weights[r, emb_col + c] * x
        if do_q:
            q = 0.0
            for c in range(d):
                vx = weights[r, emb_col + c] * x
                q += vx * vx
            Q[s] += q


@njit(cache=True)
def row_grads(occ_s, occ_f, inv, rows, vals, weights, emb_col, gL, G, gS, gQ, grad):
    """Per-row gradients from per-sample gradients of the pooled quantities.

    inv: (nnz,) index of each occurrence's row among the unique rows (< 0: skipped);
    grad: (nu, R), zeroed. gL (n,) -> ∂/∂w += gL·x; G (n, F, d) -> ∂/∂v += G[s, f]·x;
    gS (n, d) -> ∂/∂v += gS[s]·x; gQ (n,) -> ∂/∂v += 2·gQ·x²·v. Empty ones are skipped.
    """
    has_v = vals.shape[0] > 0
    do_l, do_g, do_s, do_q = gL.shape[0] > 0, G.shape[0] > 0, gS.shape[0] > 0, gQ.shape[0] > 0
    d = weights.shape[1] - emb_col
    for i in range(occ_s.shape[0]):
        u = inv[i]
        if u < 0:
            continue
        s = occ_s[i]
        x = vals[i] if has_v else 1.0
        if do_l:
            grad[u, 0] += gL[s] * x
        if do_g:
            f = occ_f[i]
            for c in range(d):
                grad[u, emb_col + c] += G[s, f, c] * x
        if do_s:
            for c in range(d):
                grad[u, emb_col + c] += gS[s, c] * x
        if do_q:
            r = rows[i]
            a = 2.0 * gQ[s] * x * x
            for c in range(d):
                grad[u, emb_col + c] += a * weights[r, emb_col + c]


@njit(cache=True)
def unique_rows(rows, mark, urows, inv):
    """Distinct rows in order of first appearance, without sorting.

    rows: (nnz,) (< 0: skipped, inv = -1); mark: (>= table rows,) all -1 on entry and on exit
    (scratch owned by the table); urows: (>= nu,) out; inv: (nnz,) out. Returns nu.
    """
    nu = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0:
            inv[i] = -1
            continue
        u = mark[r]
        if u < 0:
            u = nu
            mark[r] = nu
            urows[nu] = r
            nu += 1
        inv[i] = u
    for k in range(nu):
        mark[urows[k]] = -1
    return nu
