"""Strategy ``des-a2a``: sparse DES.

Keys go to their owners grouped per (sample, owner) pair; each owner computes the model's
partial results (W wide) of each pair over its keys and sends them back only for the pairs that
exist; the requester sums them into Z (b×W), runs the dense part on its b samples, and sends gZ
of each pair back to its owner, which needs nothing else for its keys' gradients. Per-rank
traffic is bounded by distinct owners per sample, not by the global batch.
"""

from __future__ import annotations

import numpy as np

from desmpi.data.batch import Batch
from desmpi.kernels.hashing import key_field
from desmpi.strategies.common import Occurrences, pool_owned, sparse_update
from desmpi.strategies.exchange import ExchangeStrategy, group_by_owner, runs


class DesA2AStrategy(ExchangeStrategy):
    name = "des-a2a"

    def _sparse_forward(self, b: Batch, insert: bool):
        comm, table, model, tm = self.comm, self.table, self.model, self.timer
        P, W = comm.size, model.W
        dt = table.dtype
        s, _ = b.sample_field()
        order, kcnt = group_by_owner(self.owners(b.keys), P)
        ss = s[order]
        own_sorted = np.repeat(np.arange(P), kcnt)
        first = runs(own_sorted, ss)
        starts = np.flatnonzero(first)
        lens = np.diff(np.append(starts, ss.shape[0]))
        pcnt = np.bincount(own_sorted[first], minlength=P).astype(np.int64)
        pair_s = ss[first]
        tm.lap("route")
        rc = comm.alltoall_counts(np.stack([kcnt, pcnt], axis=1))
        rk, rp = rc[:, 0], rc[:, 1]
        keys_in, _ = comm.alltoallv(b.keys[order], kcnt, rk)
        lens_in, _ = comm.alltoallv(lens, pcnt, rp)
        if b.values is not None:
            vals_in, _ = comm.alltoallv(np.ascontiguousarray(b.values[order], dtype=dt), kcnt,
                                        rk)
        else:
            vals_in = np.empty(0, dt)
        tm.lap("exchange")
        rows = table.lookup_or_insert(keys_in) if insert else table.lookup(keys_in)
        tm.lap("lookup")
        n_in = int(rp.sum())
        occ = Occurrences(np.repeat(np.arange(n_in, dtype=np.int64), lens_in),
                          key_field(keys_in), rows, vals_in)
        pooled_pairs = pool_owned(model, occ, n_in, table)
        Zp = model.partial(pooled_pairs)
        tm.lap("partials")
        back, _ = comm.alltoallv(np.ascontiguousarray(Zp).reshape(-1), rp * W, pcnt * W)
        tm.lap("exchange")
        Z = np.zeros((b.n, W), dtype=dt)
        np.add.at(Z, pair_s, back.reshape(-1, W))  # owner order, the same at every run
        return Z, (pair_s, pcnt, rp, occ, pooled_pairs)

    def _sparse_backward(self, state, gZ: np.ndarray):
        comm, table, model, tm = self.comm, self.table, self.model, self.timer
        pair_s, pcnt, rp, occ, pooled_pairs = state
        W = model.W
        g_in, _ = comm.alltoallv(np.ascontiguousarray(gZ[pair_s]).reshape(-1), pcnt * W, rp * W)
        tm.lap("exchange")
        kg = model.key_grads(g_in.reshape(-1, W), pooled_pairs)  # fused: local part of dW1
        tm.lap("key_grads")
        return lambda t: sparse_update(model, occ, kg, table, self.sparse_opt, t)
