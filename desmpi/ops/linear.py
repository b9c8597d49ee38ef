"""Linear (LR, wide part): partial L = Σ_k w_k x_k over owned keys; finish: logit += L."""

from __future__ import annotations

import numpy as np

from desmpi.ops.base import KeyGrads, Op, Pooled


class Linear(Op):
    name = "linear"
    needs_L = True

    def __init__(self) -> None:
        super().__init__()
        self.width = 1

    def partial(self, p: Pooled, params) -> np.ndarray:
        return p.L[:, None]

    @staticmethod
    def finish(z: np.ndarray) -> np.ndarray:
        """(n, 1) aggregated partial -> (n,) logit contribution."""
        return z[:, 0]

    def key_grads(self, gz: np.ndarray, kg: KeyGrads, p: Pooled, params) -> None:
        kg.gL += gz[:, 0]
