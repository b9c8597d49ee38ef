"""Kernels of the synthetic generator: the hidden model's logit of each sample."""

from __future__ import annotations

import numpy as np
from numba import njit

from desmpi.kernels.hashing import VALUE_MASK, normal01


@njit(cache=True)
def hidden_logit(keys, offsets, values, n, F, seed, sigma_w, sigma_v, k, signal_ids):
    """Logit of a hidden FM over the keys: Σ_f w̄_f + ½(‖Σ_f v̄_f‖² − Σ_f ‖v̄_f‖²).

    w(key) ~ N(0, sigma_w²) and v(key) ~ N(0, sigma_v² I_k) are counter-based functions of
    (seed, key) for the ``signal_ids`` most frequent ids of each field, 0 for rarer ids (so
    that a learner can approach the oracle). A field's bag is mean-pooled (weighted by values).
    offsets: (n·F + 1,).
    Returns (n,) float64.
    """
    out = np.zeros(n, dtype=np.float64)
    s = np.zeros(k, dtype=np.float64)
    vf = np.zeros(k, dtype=np.float64)
    for i in range(n):
        s[:] = 0.0
        q = 0.0
        lin = 0.0
        for f in range(F):
            a = offsets[i * F + f]
            b = offsets[i * F + f + 1]
            if b == a:
                continue
            inv = 1.0 / (b - a)
            vf[:] = 0.0
            for j in range(a, b):
                key = keys[j]
                if (key & VALUE_MASK) >= signal_ids:
                    continue
                x = values[j] * inv
                lin += x * sigma_w * normal01(seed, key, 0)
                for c in range(k):
                    vf[c] += x * sigma_v * normal01(seed, key, c + 1)
            for c in range(k):
                s[c] += vf[c]
                q += vf[c] * vf[c]
        ss = 0.0
        for c in range(k):
            ss += s[c] * s[c]
        out[i] = lin + 0.5 * (ss - q)
    return out
