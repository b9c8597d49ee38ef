"""Strategy ``a2a``: TorchRec / DLRM row-wise style.

Keys go to their owners grouped in (sample, field) bag parts; each owner pools its part of
every bag and sends the pooled vectors back (one per (sample, field, owner) that exists, of
width ``seg`` = [L | v (d) | Q] as the model needs); the requester sums the parts, runs the model
on its b samples, and sends the parts' gradients back to the owners.
"""

from __future__ import annotations

import numpy as np

from desmpi.data.batch import Batch
from desmpi.kernels.sparse import add_segments, gather_segments, pool
from desmpi.ops.base import Pools
from desmpi.reference import Occurrences, sparse_update
from desmpi.strategies.counts import ModelDims
from desmpi.strategies.exchange import ExchangeStrategy, segments_by_owner


class A2AStrategy(ExchangeStrategy):
    strategy = "a2a"

    def _sparse_forward(self, b: Batch, sizes: np.ndarray, insert: bool):
        comm, table, model, tm = self.comm, self.table, self.model, self.timer
        P, F = comm.size, b.n_fields
        dt = table.dtype
        s, f = b.sample_field()
        order, kcnt, _, lens, scnt, seg_bag = segments_by_owner(self.owners(b.keys), s * F + f,
                                                                 P)
        seg_s, seg_f = seg_bag // F, seg_bag % F
        tm.lap("route")
        _, rows, lens_in, vals_in, rs = self.send_segments(b, order, kcnt, lens, scnt,
                                                           b.offsets is not None, insert)
        nseg_in = int(rs.sum())
        seg_of_key = np.repeat(np.arange(nseg_in, dtype=np.int64), lens_in)
        zf = np.zeros(seg_of_key.shape[0], dtype=np.int64)
        L, E, Q = model.needs()
        d = model.d
        w = ModelDims.of(model).seg
        # segments [L | v (d) | Q]: v is a one-field E (occurrence field 0)
        seg_out = np.zeros((nseg_in, w), dt)
        pool(seg_of_key, zf, rows, vals_in, table.weights, model.emb_col, seg_out,
             0 if L else -1, -1, w - 1 if Q else -1, seg_out, int(L) if E else -1)
        tm.lap("partials")
        back = self.floats(seg_out, rs * w, scnt * w)
        back = back.reshape(-1, w)
        tm.lap("exchange")
        pooled = model.empty_pooled(b.n)  # the parts summed in segment (owner) order
        add_segments(seg_s, seg_f, back, 0 if L else -1, int(L) if E else -1,
                     w - 1 if Q else -1, d, *pooled.kernel_args)
        Z = model.partial(pooled)
        tm.lap("partials")
        occ = Occurrences(seg_of_key, zf, rows, vals_in)
        return Z, (pooled, seg_s, seg_f, scnt, rs, occ, nseg_in, w)

    def _sparse_backward(self, state, gZ: np.ndarray):
        table, model, tm = self.table, self.model, self.timer
        pooled, seg_s, seg_f, scnt, rs, occ, nseg_in, w = state
        kg = model.key_grads(gZ, pooled)
        L, E, Q = model.needs()
        # each segment's gradient [L | v (d) | Q]: v = E[s, f] + S[s]
        gseg = np.empty((seg_s.shape[0], w), dtype=table.dtype)
        gather_segments(seg_s, seg_f, gseg, 0 if L else -1, int(L) if E else -1,
                        w - 1 if Q else -1, model.d, *kg.kernel_args)
        tm.lap("key_grads")
        g_in = self.floats(gseg, scnt * w, rs * w, grads=True)
        g_in = g_in.reshape(-1, w)
        tm.lap("exchange")
        # the owner's segments [L | v (d) | Q]: v is a one-field E (occurrence field 0)
        cE = int(L) if E else -1
        kg_owner = Pools(g_in, g_in, 0 if L else -1, cE, -1, w - 1 if Q else -1, 1, model.d)
        return lambda t: sparse_update(model, occ, kg_owner, table, self.sparse_opt, t)
