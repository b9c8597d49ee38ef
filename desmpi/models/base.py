"""A model = substituted sparse operators (producing partials Z) + a dense part on Z."""

from __future__ import annotations

import numpy as np

from desmpi.config import ModelConfig
from desmpi.models.layers import Params
from desmpi.ops.base import KeyGrads, Op, Pooled


class Model:
    """Base of the six models.

    Subclasses create ``self.ops`` (their column order is the layout of Z, width W) and their
    dense parameters in :meth:`build`, then implement :meth:`forward` and :meth:`backward` on
    the aggregated partials. Shapes: Z (n, W), x (n, Dn) dense features, logits (n,).
    """

    name = "model"

    def __init__(self, cfg: ModelConfig, n_fields: int, n_dense: int, dtype, seed: int) -> None:
        self.cfg = cfg
        self.F, self.Dn, self.d = n_fields, n_dense, cfg.embed_dim
        self.dtype = np.dtype(dtype)
        self.params = Params(dtype, np.random.default_rng([seed, 17]))
        self.ops: list[Op] = []
        self.build()
        self.params.build()
        o = 0
        for op in self.ops:
            op.start = o
            o += op.width
        self.W = o
        # table rows: [w] when a linear op exists, then [v (d)] when any op uses embeddings
        self.emb_col = 1 if any(op.needs_L for op in self.ops) else 0
        self.emb_dim = self.d if any(op.needs_E or op.needs_Q for op in self.ops) else 0
        self.row_width = self.emb_col + self.emb_dim
        # dense-gradient entries that are partial sums over ranks even when the dense part is
        # replicated: the fused first layer's W1
        self.partial_grad = slice(0, 0)
        if self.substitutions.get("deep") == "fused_first_layer":
            o, m, _ = self.params.offsets["w1_sparse"]
            self.partial_grad = slice(o, o + m)

    @property
    def partial_grad_size(self) -> int:
        return self.partial_grad.stop - self.partial_grad.start

    # ---- to implement -----------------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def forward(self, Z: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    def backward(self, cache: dict, g: np.ndarray) -> np.ndarray:
        """g: (n,) dLoss/dlogit -> gZ (n, W); adds dense gradients into params.grads."""
        raise NotImplementedError

    @property
    def substitutions(self) -> dict[str, str]:
        """Which sub-operator replaces each weights-rich operator."""
        return {op.name: op.name for op in self.ops}

    # ---- shared -----------------------------------------------------------------------------
    def needs(self) -> tuple[bool, bool, bool]:
        return (any(o.needs_L for o in self.ops), any(o.needs_E for o in self.ops),
                any(o.needs_Q for o in self.ops))

    def empty_pooled(self, n: int) -> Pooled:
        L, E, Q = self.needs()
        z = np.zeros
        return Pooled(z(n if L else 0, self.dtype), z((n, self.F, self.d) if E else (0, 0, 0),
                                                        self.dtype), z(n if Q else 0, self.dtype))

    def partial(self, p: Pooled) -> np.ndarray:
        """Local partial Z^(r) (n, W) from this rank's pooled owned keys."""
        n = max(p.L.shape[0], p.E.shape[0], p.Q.shape[0])
        Z = np.empty((n, self.W), dtype=self.dtype)
        for op in self.ops:
            Z[:, op.cols] = op.partial(p, self.params)
        return Z

    def key_grads(self, gZ: np.ndarray, p: Pooled) -> KeyGrads:
        """Per-sample gradients of the pooled quantities from gZ (n, W)."""
        n = gZ.shape[0]
        L, E, Q = self.needs()
        z = np.zeros
        kg = KeyGrads(z(n if L else 0, self.dtype), z((n, self.F, self.d) if E else (0, 0, 0),
                                                       self.dtype), z(n if Q else 0, self.dtype))
        for op in self.ops:
            op.key_grads(gZ[:, op.cols], kg, p, self.params)
        return kg
