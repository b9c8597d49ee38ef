"""What the key-level kernels hand to operators, and what operators hand back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Pooled:
    """Owned-key pools of n samples (empty arrays for what no operator needs).

    L: (n,) Σ w·x; E: (n, F, d) Σ over each field of v·x; S: (n, d) Σ over all fields of v·x;
    Q: (n,) Σ ‖v·x‖². Z: (n, W) the partial results. A quantity that is an operator's partial
    itself is a view into Z (pooling writes the partial in place); others are arrays of their
    own (E of a fused first layer).
    """

    L: np.ndarray
    E: np.ndarray
    S: np.ndarray
    Q: np.ndarray
    Z: np.ndarray


@dataclass
class KeyGrads:
    """Per-sample gradients w.r.t. the pooled quantities: gL (n,), G (n, F, d) w.r.t. E,
    gS (n, d), gQ (n,). Views into gZ where the quantity is a partial itself; empty when
    unused."""

    gL: np.ndarray
    G: np.ndarray
    gS: np.ndarray
    gQ: np.ndarray


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

    def partial(self, p: Pooled, params) -> np.ndarray:  # (n, width)
        raise NotImplementedError

    def key_grads(self, gz: np.ndarray, kg: KeyGrads, p: Pooled, params) -> None:
        raise NotImplementedError
