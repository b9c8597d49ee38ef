"""Strategy ``ps``: synchronous parameter server on co-located shards (the baseline).

Each rank sends the U_r distinct keys of its local batch to their owners, gets their rows back,
computes the whole model on its b samples, and pushes the U_r row gradients to the owners, which
sum them (in rank order) and apply the optimizer. Dense gradients: one Allreduce.
"""

from __future__ import annotations

import numpy as np

from desmpi.data.batch import Batch
from desmpi.kernels.sparse import add_rows, pool, row_grads
from desmpi.strategies.exchange import ExchangeStrategy, group_by_owner


class PsStrategy(ExchangeStrategy):
    strategy = "ps"

    def _sparse_forward(self, b: Batch, sizes: np.ndarray, insert: bool):
        comm, table, model, tm = self.comm, self.table, self.model, self.timer
        P, R = comm.size, table.R
        s, f = b.sample_field()
        U, inv = np.unique(b.keys, return_inverse=True)
        order, cnt = group_by_owner(self.owners(U), P)
        tm.lap("route")
        rc = comm.alltoall_counts(cnt[:, None])[:, 0]
        keys_in, _ = comm.alltoallv(U[order], cnt, rc)
        tm.lap("exchange")
        rows = table.lookup_or_insert(keys_in) if insert else table.lookup(keys_in)
        w_out = table.weights[rows]
        w_out[rows < 0] = 0.0  # never-trained keys (eval) contribute nothing
        tm.lap("lookup")
        w_back = self.floats(w_out, rc * R, cnt * R)
        tm.lap("exchange")
        Wloc = np.empty((U.shape[0], R), dtype=table.dtype)
        Wloc[order] = w_back.reshape(-1, R)
        vals = b.values if b.values is not None else np.empty(0, table.dtype)
        pooled = model.empty_pooled(b.n)
        pool(s, f.astype(np.int64), inv, vals, Wloc, model.emb_col, *pooled.kernel_args)
        Z = model.partial(pooled)
        tm.lap("partials")
        return Z, (s, f.astype(np.int64), inv, vals, Wloc, order, cnt, rc, rows, pooled)

    def _sparse_backward(self, state, gZ: np.ndarray):
        table, model, tm = self.table, self.model, self.timer
        s, f, inv, vals, Wloc, order, cnt, rc, rows, pooled = state
        R = table.R
        kg = model.key_grads(gZ, pooled)
        gU = np.zeros_like(Wloc)
        row_grads(s, f, inv, np.arange(Wloc.shape[0]), vals, Wloc, model.emb_col, *kg.kernel_args,
                  gU)
        tm.lap("key_grads")
        g_in = self.floats(gU[order], cnt * R, rc * R, grads=True)
        tm.lap("exchange")

        def update(t: int) -> np.ndarray:
            # rows < 0 (keys not admitted yet, feature lifecycle) get no update
            urows, inv2 = table.unique_rows(rows)
            if urows.shape[0] == 0:
                return urows
            grad = np.zeros((urows.shape[0], R), dtype=table.dtype)
            add_rows(grad, inv2, g_in.reshape(-1, R))  # arrival (rank) order
            self.sparse_opt.apply(table, urows, grad, t)
            return urows

        return update
