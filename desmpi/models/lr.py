"""Logistic regression: logit = b + x·w_d + Σ_k w_k x_k (linear op)."""

from __future__ import annotations

import numpy as np

from desmpi.models.base import Model
from desmpi.ops import Linear


class LR(Model):
    name = "lr"

    def build(self) -> None:
        self.lin = Linear()
        self.ops = [self.lin]
        self.params.add("bias", (1,))
        self.params.add("w_dense", (self.Dn,))

    def wide(self, Z: np.ndarray, x: np.ndarray) -> np.ndarray:
        p = self.params
        return p["bias"][0] + x @ p["w_dense"] + Linear.finish(Z[:, self.lin.cols])

    def wide_backward(self, x: np.ndarray, g: np.ndarray, gZ: np.ndarray) -> None:
        p = self.params
        p.grad("bias")[0] += g.sum()
        p.grad("w_dense")[...] += x.T @ g
        gZ[:, self.lin.start] = g

    def forward(self, Z, x):
        return self.wide(Z, x), {"x": x}

    def backward(self, cache, g):
        gZ = self.params.scratch("gZ", (g.shape[0], self.W), zero=True)
        self.wide_backward(cache["x"], g, gZ)
        return gZ
