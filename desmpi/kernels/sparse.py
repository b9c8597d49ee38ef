"""Key-level kernels shared by the substituted operators.

An *occurrence* is one key of one sample owned by this rank: (sample s, field f, row, value x).
The forward kernel pools the owned occurrences of every sample; the backward kernel turns the
per-sample gradients of the aggregated partials into per-row gradients, accumulated in
occurrence order (which is the global sample order at every P, hence P-invariant sums).
"""

from __future__ import annotations

from numba import njit


@njit(cache=True)
def pool(occ_s, occ_f, rows, vals, weights, emb_col, L, E, Q):
    """Pool owned occurrences per sample (rows < 0, never-trained keys at eval, are skipped).

    vals: (nnz,) or empty (all 1). weights: (rows, R). Outputs (zeroed by the caller, each
    may be empty to skip it): L (n,) Σ w·x; E (n, F, d) Σ_field v·x; Q (n,) Σ ‖v·x‖².
    """
    has_v = vals.shape[0] > 0
    do_l, do_e, do_q = L.shape[0] > 0, E.shape[0] > 0, Q.shape[0] > 0
    d = E.shape[2] if do_e else weights.shape[1] - emb_col
    for i in range(occ_s.shape[0]):
        r = rows[i]
        if r < 0:
            continue
        s = occ_s[i]
        x = vals[i] if has_v else 1.0
        if do_l:
            L[s] += weights[r, 0] * x
        if do_e or do_q:
            f = occ_f[i]
            q = 0.0
            for c in range(d):
                vx = weights[r, emb_col + c] * x
                if do_e:
                    E[s, f, c] += vx
                q += vx * vx
            if do_q:
                Q[s] += q


@njit(cache=True)
def row_grads(occ_s, occ_f, inv, rows, vals, weights, emb_col, gL, G, gQ, grad):
    """Per-row gradients from per-sample gradients of the pooled quantities.

    inv: (nnz,) index of each occurrence's row among the unique rows; grad: (nu, R), zeroed.
    gL (n,) -> ∂/∂w += gL·x; G (n, F, d) -> ∂/∂v += G[s, f]·x; gQ (n,) -> ∂/∂v += 2·gQ·x²·v.
    Empty gL / G / gQ are skipped.
    """
    has_v = vals.shape[0] > 0
    do_l, do_g, do_q = gL.shape[0] > 0, G.shape[0] > 0, gQ.shape[0] > 0
    d = weights.shape[1] - emb_col
    for i in range(occ_s.shape[0]):
        u = inv[i]
        s = occ_s[i]
        x = vals[i] if has_v else 1.0
        if do_l:
            grad[u, 0] += gL[s] * x
        if do_g:
            f = occ_f[i]
            for c in range(d):
                grad[u, emb_col + c] += G[s, f, c] * x
        if do_q:
            r = rows[i]
            a = 2.0 * gQ[s] * x * x
            for c in range(d):
                grad[u, emb_col + c] += a * weights[r, emb_col + c]
