"""DLRM (Naumov et al. 2019): bottom MLP on dense features to d, pairwise dot interaction of
[z, E_1..E_F], top MLP on [z, dots]. Embeddings are field-pooled (W = F·d)."""

from __future__ import annotations

import time

import numpy as np

from desmpi.kernels.dense import dot_interaction, dot_interaction_backward
from desmpi.models.base import Model
from desmpi.models.layers import MLP
from desmpi.ops import FieldPooling


class DLRM(Model):
    name = "dlrm"
    no_input_grad = frozenset({"bottom0.w"})

    def build(self) -> None:
        self.pool = FieldPooling(self.F, self.d)
        self.ops = [self.pool]
        self.bottom = MLP(self.params, "bottom", [self.Dn, *self.cfg.bottom, self.d],
                          final_relu=True)
        T = self.F + 1
        self.li, self.lj = np.tril_indices(T, -1)
        self.top = MLP(self.params, "top", [self.d + len(self.li), *self.cfg.hidden, 1],
                       final_relu=False)

    @property
    def substitutions(self):
        return {"embeddings": "field_pooling"}

    def extra_macs(self) -> float:
        """The pairwise dot interaction: (F + 1)² · d per sample (all dots, as BLAS would)."""
        return float((self.F + 1) ** 2 * self.d)

    def interaction_timer(self, rows: int):
        import time

        rng = np.random.default_rng(0)
        d, W, dt = self.d, self.W, self.dtype
        z, E = rng.random((rows, d)).astype(dt), rng.random((rows, W)).astype(dt)
        out = np.empty((rows, d + len(self.li)), dt)
        gz, gE = np.empty((rows, d), dt), np.empty((rows, W), dt)

        def once() -> float:
            t0 = time.perf_counter()
            dot_interaction(z, E, out)
            dot_interaction_backward(out, z, E, gz, gE)
            return time.perf_counter() - t0
        return once

    def forward(self, Z, x):
        n = x.shape[0]
        z, bacts = self.bottom.forward(self.params, x)
        E = np.ascontiguousarray(Z[:, self.pool.cols])  # Z is all pooled E: a view
        top_in = self.params.scratch("dlrm:top_in", (n, self.d + len(self.li)))
        t0 = time.perf_counter()
        dot_interaction(z, E, top_in)  # [z | dots of the lower triangle]
        self.params.add_time("interaction", t0)
        out, tacts = self.top.forward(self.params, top_in)
        return out[:, 0], {"bacts": bacts, "z": z, "E": E, "tacts": tacts}

    def backward(self, c, g):
        n = g.shape[0]
        gin = self.top.backward(self.params, c["tacts"], g[:, None])
        gz = self.params.scratch("dlrm:gz", (n, self.d))
        gZ = self.params.scratch("gZ", (n, self.W))  # W = F·d: all pooled E
        t0 = time.perf_counter()
        dot_interaction_backward(gin, c["z"], c["E"], gz, gZ)
        self.params.add_time("interaction", t0)
        self.bottom.backward(self.params, c["bacts"], gz, need_gx=False)
        return gZ
