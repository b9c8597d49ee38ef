"""Linear (LR, wide part): partial L = Σ_k w_k x_k over owned keys; finish: logit += L."""

from __future__ import annotations

import numpy as np

from desmpi.ops.base import Op


class Linear(Op):
    """Its partial is the pooled L itself (written in place into Z by the pooling kernel)."""

    name = "linear"
    roles = {"L": 0}

    def __init__(self) -> None:
        super().__init__()
        self.width = 1

    @staticmethod
    def finish(z: np.ndarray) -> np.ndarray:
        """(n, 1) aggregated partial -> (n,) logit contribution."""
        return z[:, 0]
