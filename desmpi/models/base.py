"""A model = substituted sparse operators (producing partials Z) + a dense part on Z."""

from __future__ import annotations

import numpy as np

from desmpi.config import ModelConfig
from desmpi.models.layers import Params
from desmpi.ops.base import Op, Pools


class Model:
    """Base of the six models.

    Subclasses create ``self.ops`` (their column order is the layout of Z, width W) and their
    dense parameters in :meth:`build`, then implement :meth:`forward` and :meth:`backward` on
    the aggregated partials. Shapes: Z (n, W), x (n, Dn) dense features, logits (n,).
    """

    name = "model"
    # 2-D weights applied to the raw dense features: their input needs no gradient (the GEMM
    # limit of ``desmpi bench train`` leaves that product out)
    no_input_grad: frozenset[str] = frozenset()

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
        # where each pooled quantity lives: a column of Z (an op's partial is the quantity
        # itself) or, for E needed only as an input (fused first layer), an array of its own
        self.role_col: dict[str, int] = {}
        for op in self.ops:
            for q, c in op.roles.items():
                if q in self.role_col:
                    raise ValueError(f"model {self.name}: two operators pool {q}")
                self.role_col[q] = op.start + c
        self.E_input = any(op.needs_E for op in self.ops)
        if self.E_input and "E" in self.role_col:
            raise ValueError(f"model {self.name}: E both pooled as a partial and as an input")
        L, E, Q = self.needs()
        # table rows: [w] when a linear op exists, then [v (d)] when any op uses embeddings
        self.emb_col = 1 if L else 0
        self.emb_dim = self.d if (E or Q) else 0
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

    # ---- cost (the simulator's compute model reads these; no name switches outside) ---------
    @property
    def dense_macs(self) -> float:
        """Multiply-adds per sample of the dense part's forward (every 2-D weight once, plus
        :meth:`extra_macs`), the fused first layer's sparse block left out (its rows are
        counted apart: :attr:`fused_macs`). A training step costs about 3x (forward, two
        backward products)."""
        macs = float(self.extra_macs())
        for name, (_, size, shape) in self.params.offsets.items():
            if len(shape) == 2 and not (self.partial_grad_size and name == "w1_sparse"):
                macs += size
        return macs

    @property
    def fused_macs(self) -> float:
        """Multiply-adds per row of partials of a fused first layer (F·d·H), 0 without one."""
        return float(self.partial_grad_size)

    def extra_macs(self) -> float:
        """Multiply-adds per sample outside the weight products (interactions, crosses)."""
        return 0.0

    def interaction_timer(self, rows: int):
        """A function timing the model's feature interaction kernels (forward + backward) on
        ``rows`` samples alone (``desmpi bench train``); None for models without one."""
        return None

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
        """(L, v, Q): whether a key contributes its linear weight, its embedding (to E or S),
        its squared norm."""
        r = self.role_col
        return "L" in r, "E" in r or "S" in r or self.E_input, "Q" in r

    def _pools(self, Z: np.ndarray) -> Pools:
        """Pools laid out in Z (n, W) (E in an array of its own when only an input)."""
        r = self.role_col
        EZ, cE = Z, r.get("E", -1)
        if self.E_input:
            EZ, cE = self.params.scratch("EZ", (Z.shape[0], self.F * self.d), zero=True), 0
        return Pools(Z, EZ, r.get("L", -1), cE, r.get("S", -1), r.get("Q", -1), self.F,
                      self.d)

    def empty_pooled(self, n: int) -> Pools:
        """Zeroed pools of n samples: Z (n, W) (and E) for the kernels to add into."""
        return self._pools(self.params.scratch("Z", (n, self.W), zero=True))

    def partial(self, p: Pools) -> np.ndarray:
        """Local partial Z^(r) (n, W) from this rank's pooled owned keys (p.Z, completed)."""
        for op in self.ops:
            if not op.roles:
                op.partial(p, self.params, p.Z[:, op.cols])
        return p.Z

    def key_grads(self, gZ: np.ndarray, p: Pools) -> Pools:
        """Gradients of the pooled quantities: gZ (n, W) itself, plus E's of its own for a
        fused first layer (set by its key_grads)."""
        gZ = np.ascontiguousarray(gZ)
        r = self.role_col
        kg = Pools(gZ, gZ, r.get("L", -1), r.get("E", -1), r.get("S", -1), r.get("Q", -1),
                      self.F, self.d)
        for op in self.ops:
            if not op.roles:
                op.key_grads(gZ[:, op.cols], kg, p, self.params)
        return kg
