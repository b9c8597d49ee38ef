"""Open-addressing hash table kernels (linear probing) from int64 key to row index."""

from __future__ import annotations

import numpy as np
from numba import njit

from desmpi.kernels.hashing import approx_normal, key_stream, mix64
from desmpi.kernels.prefetch import AHEAD, prefetch_row

EMPTY = -1  # no field-aware key is -1 (the field id sits in bits 48..62)
_SLOT_SALT = np.uint64(0x632BE59BD9B4E019)  # slot hash differs from the owner hash


@njit(cache=True, inline="always")
def _slot(key, cap):
    """Slot in [0, cap) by multiply-shift of the hash's high 32 bits (any cap < 2**32)."""
    h = mix64(np.uint64(key) ^ _SLOT_SALT) >> np.uint64(32)
    return np.int64((h * np.uint64(cap)) >> np.uint64(32))


@njit(cache=True)
def find(tkeys, tvals, qkeys, out):
    """out[i] = row of qkeys[i], or -1 when absent."""
    cap = tkeys.shape[0]
    n = qkeys.shape[0]
    tk2, tv2 = tkeys.reshape(cap, 1), tvals.reshape(cap, 1)  # views: rows to prefetch
    for i in range(n):
        if i + AHEAD < n:
            j2 = _slot(qkeys[i + AHEAD], cap)
            prefetch_row(tk2, j2)
            prefetch_row(tv2, j2)
        k = qkeys[i]
        j = _slot(k, cap)
        out[i] = -1
        while tkeys[j] != EMPTY:
            if tkeys[j] == k:
                out[i] = tvals[j]
                break
            j += 1
            if j == cap:
                j = 0


@njit(cache=True)
def find_or_insert(tkeys, tvals, n_rows, qkeys, out, weights, seed, init_std, emb_col, slots,
                   slot_init, init=True):
    """out[i] = row of qkeys[i], inserting absent keys as new rows n_rows, n_rows+1, ...

    A new row is initialised from (seed, key) alone: columns [0, emb_col) (linear weights) are
    0, columns [emb_col, R) have mean 0 and standard deviation init_std (Irwin-Hall
    approximation of the normal, :func:`~desmpi.kernels.hashing.approx_normal`); optimizer
    slots are ``slot_init``. Capacity of the table and of the row arrays must already suffice.
    Returns the new row count.
    ``init=False`` leaves new rows as they are (the caller overwrites them: restores).
    The rows are initialised after all keys are placed, in a loop of their own (the compiler
    vectorises it there, not inside the probe loop: about twice as fast at d = 64).
    """
    cap = tkeys.shape[0]
    R = weights.shape[1]
    first = n_rows
    new_keys = np.empty(qkeys.shape[0] if init else 0, dtype=np.int64)  # of rows first, ...
    for i in range(qkeys.shape[0]):
        k = qkeys[i]
        j = _slot(k, cap)
        while True:
            t = tkeys[j]
            if t == k:
                out[i] = tvals[j]
                break
            if t == EMPTY:
                tkeys[j] = k
                tvals[j] = n_rows
                out[i] = n_rows
                if init:
                    new_keys[n_rows - first] = k
                n_rows += 1
                break
            j += 1
            if j == cap:
                j = 0
    if init:
        for r in range(first, n_rows):
            st = key_stream(seed, new_keys[r - first])
            for c in range(emb_col):
                weights[r, c] = 0.0
            for c in range(emb_col, R):
                weights[r, c] = init_std * approx_normal(st, c - emb_col)
            for c in range(slots.shape[1]):
                slots[r, c] = slot_init
    return n_rows


@njit(cache=True)
def rehash(old_keys, old_vals, new_keys, new_vals):
    cap = new_keys.shape[0]
    for i in range(old_keys.shape[0]):
        k = old_keys[i]
        if k != EMPTY:
            j = _slot(k, cap)
            while new_keys[j] != EMPTY:
                j += 1
                if j == cap:
                    j = 0
            new_keys[j] = k
            new_vals[j] = old_vals[i]
