"""A rank's shard of a dynamic sparse table: key -> row of weights and optimizer slots.

Rows live in contiguous arrays that grow by 1/4 when full, in place where the OS allows
(:mod:`desmpi.table.mapped`: a memory map enlarged by ``mremap``, no copy); the hash index (linear
probing, any capacity) grows by half when its load passes 0.8. Memory per key stays near 1.3x
the row and slot bytes themselves (``bytes_per_key``). A key seen for the first time is
inserted and initialised from (seed, key) alone, so initial values do not depend on P, arrival
order or which rank inserted the key.
"""

from __future__ import annotations

import numpy as np

from desmpi.kernels.sparse import unique_rows
from desmpi.kernels.table import EMPTY, find, find_or_insert, rehash
from desmpi.table.mapped import GrowableRows

LOAD_MAX = 0.8  # hash index load factor that triggers growth
HASH_GROWTH = 1.5
ROW_GROWTH = 1.25


class ShardTable:
    """Rows of width R = ``emb_col`` linear columns + embedding columns, S optimizer slots."""

    def __init__(self, width: int, emb_col: int, n_slots: int, dtype, seed: int,
                 init_std: float, slot_init: float = 0.0, capacity: int = 1024) -> None:
        self.R, self.emb_col, self.S = width, emb_col, n_slots
        self.dtype = np.dtype(dtype)
        self.seed, self.init_std, self.slot_init = seed, init_std, slot_init
        cap = max(16, int(capacity / LOAD_MAX) + 1)
        self.tkeys = np.full(cap, EMPTY, dtype=np.int64)
        self.tvals = np.zeros(cap, dtype=np.int64)
        # rows, optimizer slots and the scratch of unique_rows (0 = unmarked), grown together
        self._rows = [GrowableRows(capacity, width, self.dtype),
                      GrowableRows(capacity, n_slots, self.dtype),
                      GrowableRows(capacity, 1, np.int32)]
        self._views()
        self.n = 0
        self.lifecycle = None  # a desmpi.table.lifecycle.Lifecycle: admission and eviction

    def _views(self) -> None:
        self.weights, self.slots = self._rows[0].array, self._rows[1].array
        self._mark = self._rows[2].array.reshape(-1)

    def _reserve(self, extra: int) -> None:
        need = self.n + extra
        if need > self.weights.shape[0]:
            cap = max(need, int(ROW_GROWTH * self.weights.shape[0]) + 1)
            self.weights = self.slots = self._mark = None  # the maps move without copying
            for g in self._rows:
                g.grow(cap)
            self._views()
        if need > LOAD_MAX * self.tkeys.shape[0]:
            cap = max(int(need / LOAD_MAX) + 1, int(HASH_GROWTH * self.tkeys.shape[0]))
            nk = np.full(cap, EMPTY, dtype=np.int64)
            nv = np.zeros(cap, dtype=np.int64)
            rehash(self.tkeys, self.tvals, nk, nv)
            self.tkeys, self.tvals = nk, nv

    def lookup_or_insert(self, keys: np.ndarray) -> np.ndarray:
        """(n,) int64 keys -> (n,) int64 rows, inserting new keys.

        Keys are looked up first; room is reserved only for the absent ones, which are then
        inserted (so capacity tracks the keys, not the batch). With a lifecycle, absent keys
        are admitted by its rule and rows of keys not admitted are -1.
        """
        if self.lifecycle is not None:
            return self.lifecycle.lookup_or_admit(self, keys)
        out = self.lookup(keys)
        miss = np.flatnonzero(out < 0)
        if miss.shape[0]:
            out[miss] = self.insert_new(keys[miss])
        return out

    def insert_new(self, keys: np.ndarray, init: bool = True) -> np.ndarray:
        """Insert keys known to be absent (repeats allowed); returns their rows. ``init``:
        initialise the new rows from (seed, key) (restores overwrite them instead)."""
        self._reserve(keys.shape[0])
        got = np.empty(keys.shape[0], dtype=np.int64)
        self.n = find_or_insert(self.tkeys, self.tvals, self.n, keys, got, self.weights,
                                self.seed, self.init_std, self.emb_col, self.slots,
                                self.slot_init, init)
        return got

    def compact(self, keep: np.ndarray) -> None:
        """Keep rows where ``keep`` (n,) is true, in order; rebuild the index."""
        keys = self.keys()[keep]
        w = self.weights[: self.n][keep]
        s = self.slots[: self.n][keep]
        m = keys.shape[0]
        self.tkeys[:] = EMPTY
        self.weights[:m] = w
        self.slots[:m] = s
        rows = np.empty(m, dtype=np.int64)
        self.n = find_or_insert(self.tkeys, self.tvals, 0, keys, rows, self.weights, self.seed,
                                self.init_std, self.emb_col, self.slots, self.slot_init, False)
        assert np.array_equal(rows, np.arange(m))

    def load_rows(self, keys: np.ndarray, weights: np.ndarray, slots: np.ndarray) -> None:
        """Set the rows of ``keys`` (n,) to ``weights`` (n, R) and ``slots`` (n, S) (restores:
        no initialisation is computed for rows that are overwritten anyway)."""
        out = self.lookup(keys)
        miss = np.flatnonzero(out < 0)
        if miss.shape[0]:
            out[miss] = self.insert_new(keys[miss], init=False)
        self.weights[out] = weights
        self.slots[out] = slots

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """(n,) keys -> (n,) rows, -1 for keys never trained (they contribute zero)."""
        out = np.empty(keys.shape[0], dtype=np.int64)
        find(self.tkeys, self.tvals, keys, out)
        return out

    def unique_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(nnz,) rows -> (distinct rows (nu,) in order of first appearance, inv (nnz,) with
        rows[i] = urows[inv[i]]); rows < 0 get inv -1. O(nnz), no sort."""
        urows = np.empty(rows.shape[0], dtype=np.int64)
        inv = np.empty(rows.shape[0], dtype=np.int64)
        nu = unique_rows(rows, self._mark, urows, inv)
        return urows[:nu], inv

    def keys(self) -> np.ndarray:
        """Keys in row order."""
        occ = self.tkeys != EMPTY
        out = np.empty(self.n, dtype=np.int64)
        out[self.tvals[occ]] = self.tkeys[occ]
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held: hash index + row and slot arrays (allocated capacity) + scratch."""
        return (self.tkeys.nbytes + self.tvals.nbytes + self.weights.nbytes
                + self.slots.nbytes + self._mark.nbytes)

    def bytes_per_key(self) -> float:
        return self.nbytes / self.n if self.n else float("nan")
