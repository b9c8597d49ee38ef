"""Sparse optimizer updates of the touched rows only (lazy semantics), in place."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def sgd(weights, urows, grad, lr, l2):
    for u in range(urows.shape[0]):
        r = urows[u]
        for c in range(weights.shape[1]):
            weights[r, c] -= lr * (grad[u, c] + l2 * weights[r, c])


@njit(cache=True)
def adagrad(weights, slots, urows, grad, lr, eps, l2):
    """acc += g²; w -= lr·g / (√acc + eps) (PyTorch's Adagrad, initial accumulator 0)."""
    for u in range(urows.shape[0]):
        r = urows[u]
        for c in range(weights.shape[1]):
            g = grad[u, c] + l2 * weights[r, c]
            slots[r, c] += g * g
            weights[r, c] -= lr * g / (np.sqrt(slots[r, c]) + eps)


@njit(cache=True)
def ftrl(weights, slots, urows, grad, alpha, beta, l1, l2):
    """FTRL-Proximal (McMahan et al., KDD 2013, Algorithm 1); slots [z | n]."""
    R = weights.shape[1]
    for u in range(urows.shape[0]):
        r = urows[u]
        for c in range(R):
            g = grad[u, c]
            n = slots[r, R + c]
            sigma = (np.sqrt(n + g * g) - np.sqrt(n)) / alpha
            z = slots[r, c] + g - sigma * weights[r, c]
            n += g * g
            slots[r, c] = z
            slots[r, R + c] = n
            if abs(z) <= l1:
                weights[r, c] = 0.0
            else:
                sgn = 1.0 if z > 0 else -1.0
                weights[r, c] = -(z - sgn * l1) / ((beta + np.sqrt(n)) / alpha + l2)


@njit(cache=True)
def adam(weights, slots, urows, grad, lr, b1, b2, eps, t, l2):
    """Lazy Adam: moments of touched rows only, bias correction by the global step t >= 1."""
    R = weights.shape[1]
    c1 = 1.0 - b1 ** t
    c2 = 1.0 - b2 ** t
    for u in range(urows.shape[0]):
        r = urows[u]
        for c in range(R):
            g = grad[u, c] + l2 * weights[r, c]
            m = b1 * slots[r, c] + (1.0 - b1) * g
            v = b2 * slots[r, R + c] + (1.0 - b2) * g * g
            slots[r, c] = m
            slots[r, R + c] = v
            weights[r, c] -= lr * (m / c1) / (np.sqrt(v / c2) + eps)
