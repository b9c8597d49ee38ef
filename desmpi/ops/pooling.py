"""Field pooling: partial E_f = Σ_{k in field f} v_k x_k for every field (W = F·d)."""

from __future__ import annotations

import numpy as np

from desmpi.ops.base import KeyGrads, Op, Pooled


class FieldPooling(Op):
    name = "field_pooling"
    needs_E = True

    def __init__(self, n_fields: int, d: int) -> None:
        super().__init__()
        self.F, self.d = n_fields, d
        self.width = n_fields * d

    def partial(self, p: Pooled, params) -> np.ndarray:
        return p.E.reshape(p.E.shape[0], -1)

    def finish(self, z: np.ndarray) -> np.ndarray:
        """(n, F·d) aggregated partial -> (n, F, d) pooled embeddings (a view)."""
        return z.reshape(z.shape[0], self.F, self.d)

    def key_grads(self, gz: np.ndarray, kg: KeyGrads, p: Pooled, params) -> None:
        kg.G += gz.reshape(gz.shape[0], self.F, self.d)
