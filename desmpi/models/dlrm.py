"""DLRM (Naumov et al. 2019): bottom MLP on dense features to d, pairwise dot interaction of
[z, E_1..E_F], top MLP on [z, dots]. Embeddings are field-pooled (W = F·d)."""

from __future__ import annotations

import numpy as np

from desmpi.models.base import Model
from desmpi.models.layers import MLP
from desmpi.ops import FieldPooling


class DLRM(Model):
    name = "dlrm"

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

    def forward(self, Z, x):
        n = x.shape[0]
        z, bacts = self.bottom.forward(self.params, x)
        T = np.concatenate([z[:, None, :], self.pool.finish(Z[:, self.pool.cols])], axis=1)
        dots = np.matmul(T, T.transpose(0, 2, 1))[:, self.li, self.lj]  # batched GEMM
        top_in = np.concatenate([z, dots], axis=1)
        out, tacts = self.top.forward(self.params, top_in)
        return out[:, 0], {"bacts": bacts, "T": T, "tacts": tacts, "n": n}

    def backward(self, c, g):
        n, T = c["n"], c["T"]
        gin = self.top.backward(self.params, c["tacts"], g[:, None])
        gz = gin[:, : self.d].copy()
        gd = gin[:, self.d:]
        gI = np.zeros((n, T.shape[1], T.shape[1]), dtype=self.dtype)
        gI[:, self.li, self.lj] = gd
        gT = np.matmul(gI + gI.transpose(0, 2, 1), T)
        gz += gT[:, 0]
        self.bottom.backward(self.params, c["bacts"], gz, need_gx=False)
        gZ = np.zeros((n, self.W), dtype=self.dtype)
        gZ[:, self.pool.cols] = gT[:, 1:].reshape(n, -1)
        return gZ
