"""Dynamic feature lifecycle of a shard: admission after ``min_count`` steps, eviction by age
(``ttl_steps``) and by shard size (``max_keys``, least recently seen first).

Counting is per step of presence: a key counts once in a step in which any sample of the
global batch has it. Its owner learns that identically under every strategy and P, so admission
and TTL eviction are the same at every P (tested). A key not yet admitted contributes zero and
gets no update, as a never-seen key. ``max_keys`` bounds a shard, so which keys it evicts
depends on how keys are spread over shards: it is not P-invariant, by nature.

Counts of keys not yet admitted live in a side table (key -> count); an evicted key is
forgotten (its count restarts at 0).
"""

from __future__ import annotations

import numpy as np


class Lifecycle:
    def __init__(self, min_count: int = 1, ttl_steps: int = 0, max_keys: int = 0) -> None:
        from desmpi.table.shard import ShardTable

        self.min_count, self.ttl_steps, self.max_keys = min_count, ttl_steps, max_keys
        self.step = 0
        self.last_seen = np.zeros(0, dtype=np.int64)
        self.counts = ShardTable(1, 1, 0, np.float64, 0, 0.0) if min_count > 1 else None
        self.evicted = 0

    def _grow(self, table) -> None:
        if self.last_seen.shape[0] < table.weights.shape[0]:
            ls = np.zeros(table.weights.shape[0], dtype=np.int64)
            ls[: self.last_seen.shape[0]] = self.last_seen
            self.last_seen = ls

    def lookup_or_admit(self, table, keys: np.ndarray) -> np.ndarray:
        """Rows of ``keys`` (-1: not admitted yet), counting this step's presence."""
        out = table.lookup(keys)
        miss = out < 0
        if miss.any():
            new = np.unique(keys[miss])
            if self.counts is not None:
                c = self.counts.lookup_or_insert(new)
                self.counts.weights[c, 0] += 1
                new = new[self.counts.weights[c, 0] >= self.min_count]
            if new.shape[0]:
                table.insert_new(new)
                out[miss] = table.lookup(keys[miss])
        self._grow(table)
        seen = out[out >= 0]
        self.last_seen[seen] = self.step
        return out

    def evict(self, table, step: int) -> int:
        """Drop rows not seen for ttl_steps, then the least recently seen beyond max_keys."""
        n = table.n
        if n == 0:
            return 0
        ls = self.last_seen[:n]
        keep = np.ones(n, dtype=bool)
        if self.ttl_steps:
            keep &= ls > step - self.ttl_steps
        if self.max_keys and keep.sum() > self.max_keys:
            idx = np.flatnonzero(keep)
            keys = table.keys()
            order = np.lexsort((keys[idx], -ls[idx]))  # most recent first, ties by key
            keep[:] = False
            keep[idx[order[: self.max_keys]]] = True
        dropped = int(n - keep.sum())
        if dropped:
            gone = table.keys()[~keep]
            table.compact(keep)
            self.last_seen[: table.n] = ls[keep]
            if self.counts is not None:
                c = self.counts.lookup(gone)
                self.counts.weights[c[c >= 0], 0] = 0.0
            self.evicted += dropped
        return dropped

    # checkpoint support -----------------------------------------------------------------
    def state(self, table) -> dict:
        out = {"last_seen": self.last_seen[: table.n].copy()}
        if self.counts is not None:
            c = self.counts
            out["count_keys"] = c.keys()
            out["count_values"] = c.weights[: c.n, 0].copy()
        return out

    def load(self, table, keys: np.ndarray, last_seen: np.ndarray, count_keys=None,
             count_values=None) -> None:
        self._grow(table)
        rows = table.lookup(keys)
        self.last_seen[rows] = last_seen
        if self.counts is not None and count_keys is not None and len(count_keys):
            r = self.counts.lookup_or_insert(count_keys)
            self.counts.weights[r, 0] = count_values
