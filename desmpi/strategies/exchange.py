"""Routing by owner for the all-to-all strategies (ps, a2a, des-a2a).

Sparse traffic goes to and from the keys' owners with Alltoallv; items bound for one owner
keep their batch order, so owners accumulate gradients in a fixed order at every run. The
step itself is the data-parallel template (:mod:`desmpi.strategies.template`).
"""

from __future__ import annotations

import numpy as np

from desmpi.data.batch import Batch
from desmpi.kernels.hashing import owners
from desmpi.strategies import compressed
from desmpi.strategies.template import DataParallelStrategy


def group_by_owner(own: np.ndarray, P: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, counts): a stable order that groups items by owner, and items per owner."""
    return np.argsort(own, kind="stable"), np.bincount(own, minlength=P).astype(np.int64)


def segments_by_owner(own: np.ndarray, group: np.ndarray, P: int):
    """Route items to owners in segments of equal ``group`` id (a bag, a sample).

    Returns (order, item counts per owner, first item of each segment (mask in sent order),
    segment lengths, segment counts per owner, group id of each segment). Items keep their
    batch order within an owner.
    """
    order, icnt = group_by_owner(own, P)
    g = group[order]
    own_sorted = np.repeat(np.arange(P), icnt)
    first = runs(own_sorted, g)
    starts = np.flatnonzero(first)
    lens = np.diff(np.append(starts, g.shape[0]))
    scnt = np.bincount(own_sorted[first], minlength=P).astype(np.int64)
    return order, icnt, first, lens, scnt, g[first]


def runs(*cols: np.ndarray) -> np.ndarray:
    """Boolean mask of the first item of each run of equal tuples in already grouped columns."""
    n = cols[0].shape[0]
    first = np.ones(n, dtype=bool)
    if n > 1:
        ch = np.zeros(n - 1, dtype=bool)
        for c in cols:
            ch |= c[1:] != c[:-1]
        first[1:] = ch
    return first




class ExchangeStrategy(DataParallelStrategy):
    """Base of ps, a2a and des-a2a: sparse traffic by Alltoallv to and from the keys' owners."""

    def send_segments(self, b: Batch, order, kcnt, lens, scnt, send_lens: bool, insert: bool):
        """Keys (grouped by owner in segments) to their owners, with segment lengths and
        values; the owner looks them up. Returns (keys_in, rows, lens_in, vals_in, scnt_in).

        One Alltoall exchanges (keys, segments) per peer; lengths travel only when
        ``send_lens`` (one-hot bags are segments of one key).
        """
        comm, table, dt = self.comm, self.table, self.table.dtype
        rc = comm.alltoall_counts(np.stack([kcnt, scnt], axis=1))
        rk, rs = rc[:, 0], rc[:, 1]
        keys_in, _ = comm.alltoallv(b.keys[order], kcnt, rk)
        if send_lens:
            lens_in, _ = comm.alltoallv(lens, scnt, rs)
        else:
            lens_in = np.ones(keys_in.shape[0], dtype=np.int64)
        if b.values is not None:
            vals_in, _ = comm.alltoallv(np.ascontiguousarray(b.values[order], dtype=dt), kcnt,
                                        rk)
        else:
            vals_in = np.empty(0, dt)
        self.timer.lap("exchange")
        rows = table.lookup_or_insert(keys_in) if insert else table.lookup(keys_in)
        self.timer.lap("lookup")
        return keys_in, rows, lens_in, vals_in, rs

    def floats(self, x: np.ndarray, sendcounts, recvcounts, grads: bool = False
               ) -> np.ndarray:
        """Alltoallv of float payloads (rows, pooled parts, partials; ``grads``: their
        gradients): ``sendcounts[j]`` elements of x to rank j; returns the received
        (Σ recvcounts,) floats of x's dtype — at full width, or through the direction's codec
        (:attr:`Wire.partials`, :attr:`Wire.partial_grads`:
        :func:`desmpi.strategies.compressed.alltoallv`). The result is a scratch array of the
        direction's own, reused step after step (a fresh multi-megabyte array faults its pages
        in again every step: DeepFM a2a on one rank at batch 2048, 98-105 ms a step against
        89-91 reused), valid until the same direction's exchange of the next step."""
        x = np.ascontiguousarray(x).reshape(-1)
        codec = self.wire.partial_grads if grads else self.wire.partials
        name = "grads_in" if grads else "floats_in"
        if codec == "none":
            out = self.bufs.get(name, int(np.sum(recvcounts)), x.dtype)
            return self.comm.alltoallv(x, sendcounts, recvcounts, out=out)[0]
        return compressed.alltoallv(self.comm, x, sendcounts, recvcounts, codec, bufs=self.bufs,
                                    out=name)

    def owners(self, keys: np.ndarray) -> np.ndarray:
        P = self.comm.size
        return owners(keys, P) if P > 1 else np.zeros(keys.shape[0], np.int64)
