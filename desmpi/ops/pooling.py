"""Field pooling: partial E_f = Σ_{k in field f} v_k x_k for every field (W = F·d)."""

from __future__ import annotations

import numpy as np

from desmpi.ops.base import Op


class FieldPooling(Op):
    """Its partial is the pooled E itself (written in place into Z by the pooling kernel)."""

    name = "field_pooling"
    roles = {"E": 0}

    def __init__(self, n_fields: int, d: int) -> None:
        super().__init__()
        self.F, self.d = n_fields, d
        self.width = n_fields * d

    def finish(self, z: np.ndarray) -> np.ndarray:
        """(n, F·d) aggregated partial -> (n, F, d) pooled embeddings (a view)."""
        return z.reshape(z.shape[0], self.F, self.d)
