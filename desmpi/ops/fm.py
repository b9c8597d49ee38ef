"""FM second order: partials S = Σ v_k x_k (d) and Q = Σ ‖v_k x_k‖²; finish ½(‖S‖² − Q).

With field pooling in the same model S is Σ_f E_f of the pooled embeddings and only Q is a
column of its own (``s_from_pooling``): the partial width is 1 instead of d + 1.
"""

from __future__ import annotations

import numpy as np

from desmpi.kernels.dense import field_sum
from desmpi.ops.base import Op


class FM(Op):
    """Its partial is the pooled [S | Q] (or [Q]) itself, written in place into Z."""

    name = "fm"

    def __init__(self, d: int, s_from_pooling: bool = False) -> None:
        super().__init__()
        self.d = d
        self.s_from_pooling = s_from_pooling
        self.width = 1 if s_from_pooling else d + 1
        self.roles = {"Q": 0} if s_from_pooling else {"S": 0, "Q": d}

    def split(self, z: np.ndarray, e: np.ndarray | None,
              out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(S (n, d), Q (n,)) from this op's aggregated columns (and pooled E (n, F·d), S
        written into ``out`` (n, d) when given)."""
        if self.s_from_pooling:
            S = np.empty((e.shape[0], self.d), e.dtype) if out is None else out
            field_sum(e, self.d, S)
            return S, z[:, 0]
        return z[:, : self.d], z[:, self.d]

    @staticmethod
    def finish(S: np.ndarray, Q: np.ndarray) -> np.ndarray:
        """(n,) ½(‖S‖² − Q)."""
        return 0.5 * (np.einsum("nd,nd->n", S, S) - Q)

    @staticmethod
    def finish_backward(g: np.ndarray, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """g (n,) -> (gS (n, d), gQ (n,))."""
        return g[:, None] * S, -0.5 * g

    def pack_grad(self, gS: np.ndarray, gQ: np.ndarray) -> np.ndarray:
        """Gradient of this op's columns (gS flows into the pooled E when S comes from it)."""
        if self.s_from_pooling:
            return gQ[:, None]
        return np.concatenate([gS, gQ[:, None]], axis=1)
