"""What the key-level kernels hand to operators, and what operators hand back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Pooled:
    """Owned-key pools of n samples (empty arrays for what no operator needs).

    L: (n,) Σ w·x; E: (n, F, d) Σ over each field of v·x; Q: (n,) Σ ‖v·x‖².
    """

    L: np.ndarray
    E: np.ndarray
    Q: np.ndarray


@dataclass
class KeyGrads:
    """Per-sample gradients w.r.t. the pooled quantities; operators add into them.

    gL: (n,); G: (n, F, d) w.r.t. E; gQ: (n,). Empty when unused.
    """

    gL: np.ndarray
    G: np.ndarray
    gQ: np.ndarray


class Op:
    """An operator owning columns [start, start + width) of the partial-result matrix Z."""

    name = "op"
    needs_L = needs_E = needs_Q = False

    def __init__(self) -> None:
        self.start = 0
        self.width = 0

    @property
    def cols(self) -> slice:
        return slice(self.start, self.start + self.width)

    def partial(self, p: Pooled, params) -> np.ndarray:  # (n, width)
        raise NotImplementedError

    def key_grads(self, gz: np.ndarray, kg: KeyGrads, p: Pooled, params) -> None:
        raise NotImplementedError
