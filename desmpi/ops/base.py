"""What the key-level kernels hand to operators, and what operators hand back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Pools:
    """Per-sample pooled quantities of n samples, or their gradients, in 2-D C arrays.

    L (n,) Σ w·x; E (n, F, d) Σ over each field of v·x; S (n, d) Σ over all fields of v·x;
    Q (n,) Σ ‖v·x‖². ``Z`` (n, W) holds L at column ``cL``, S at ``cS`` … ``cS + d``, Q at
    ``cQ``; ``EZ`` holds E from column ``cE`` (field f at ``cE + f·d``): Z itself when E is an
    operator's partial, an array of its own when E is only an input (fused first layer).
    A column of -1: the quantity is absent. For the forward pools Z is the partial-result
    matrix, so an operator whose partial is a pooled quantity costs no copy; for gradients Z
    is gZ. The kernels take ``kernel_args`` (contiguous rows: vectorised inner loops).
    """

    Z: np.ndarray
    EZ: np.ndarray
    cL: int
    cE: int
    cS: int
    cQ: int
    F: int
    d: int

    @property
    def kernel_args(self) -> tuple:
        return self.Z, self.cL, self.cS, self.cQ, self.EZ, self.cE

    def _col(self, c: int) -> np.ndarray:
        return self.Z[:, c] if c >= 0 else np.zeros(0, self.Z.dtype)

    @property
    def L(self) -> np.ndarray:
        return self._col(self.cL)

    @property
    def Q(self) -> np.ndarray:
        return self._col(self.cQ)

    @property
    def S(self) -> np.ndarray:
        if self.cS < 0:
            return np.zeros((0, 0), self.Z.dtype)
        return self.Z[:, self.cS: self.cS + self.d]

    @property
    def E(self) -> np.ndarray:
        if self.cE < 0:
            return np.zeros((0, 0, 0), self.Z.dtype)
        n, w = self.EZ.shape[0], self.F * self.d
        return self.EZ[:, self.cE: self.cE + w].reshape(n, self.F, self.d)




class Op:
    """An operator owning columns [start, start + width) of the partial-result matrix Z.

    ``roles`` maps the pooled quantities that *are* this operator's partial ('L', 'E', 'S',
    'Q') to their first column within it; an operator with other partials (the fused first
    layer) has no roles and implements :meth:`partial` and :meth:`key_grads`.
    """

    name = "op"
    needs_E = False  # needs the per-field pooled embeddings E as an input (not as a role)
    roles: dict[str, int] = {}

    def __init__(self) -> None:
        self.start = 0
        self.width = 0

    @property
    def cols(self) -> slice:
        return slice(self.start, self.start + self.width)

    def partial(self, p: Pools, params, out: np.ndarray) -> None:
        """Write the partial (n, width) into ``out`` (its columns of Z, rows strided)."""
        raise NotImplementedError

    def key_grads(self, gz: np.ndarray, kg: Pools, p: Pools, params) -> None:
        raise NotImplementedError
