"""Open-addressing hash table kernels (linear probing) from int64 key to row index."""

from __future__ import annotations

import numpy as np
from numba import njit

from desmpi.kernels.hashing import mix64, normal01

EMPTY = -1  # no field-aware key is -1 (the field id sits in bits 48..62)
_SLOT_SALT = np.uint64(0x632BE59BD9B4E019)  # slot hash differs from the owner hash


@njit(cache=True, inline="always")
def _slot(key, mask):
    return np.int64(mix64(np.uint64(key) ^ _SLOT_SALT) & np.uint64(mask))


@njit(cache=True)
def find(tkeys, tvals, qkeys, out):
    """out[i] = row of qkeys[i], or -1 when absent."""
    mask = tkeys.shape[0] - 1
    for i in range(qkeys.shape[0]):
        k = qkeys[i]
        j = _slot(k, mask)
        out[i] = -1
        while tkeys[j] != EMPTY:
            if tkeys[j] == k:
                out[i] = tvals[j]
                break
            j = (j + 1) & mask


@njit(cache=True)
def find_or_insert(tkeys, tvals, n_rows, qkeys, out, weights, seed, init_std, emb_col, slots,
                   slot_init):
    """out[i] = row of qkeys[i], inserting absent keys as new rows n_rows, n_rows+1, ...

    A new row is initialised from (seed, key) alone: columns [0, emb_col) (linear weights) are
    0, columns [emb_col, R) are N(0, init_std^2); optimizer slots are ``slot_init``. Capacity
    of the table and of the row arrays must already suffice. Returns the new row count.
    """
    mask = tkeys.shape[0] - 1
    R = weights.shape[1]
    for i in range(qkeys.shape[0]):
        k = qkeys[i]
        j = _slot(k, mask)
        while True:
            t = tkeys[j]
            if t == k:
                out[i] = tvals[j]
                break
            if t == EMPTY:
                tkeys[j] = k
                tvals[j] = n_rows
                out[i] = n_rows
                for c in range(emb_col):
                    weights[n_rows, c] = 0.0
                for c in range(emb_col, R):
                    weights[n_rows, c] = init_std * normal01(seed, k, c - emb_col)
                for c in range(slots.shape[1]):
                    slots[n_rows, c] = slot_init
                n_rows += 1
                break
            j = (j + 1) & mask
    return n_rows


@njit(cache=True)
def rehash(old_keys, old_vals, new_keys, new_vals):
    mask = new_keys.shape[0] - 1
    for i in range(old_keys.shape[0]):
        k = old_keys[i]
        if k != EMPTY:
            j = _slot(k, mask)
            while new_keys[j] != EMPTY:
                j = (j + 1) & mask
            new_keys[j] = k
            new_vals[j] = old_vals[i]
