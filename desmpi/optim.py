"""Sparse optimizers (touched rows of a shard, state beside the rows) and dense optimizers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from desmpi.kernels import optim as k

ADAGRAD_EPS = 1e-10  # as torch.optim.Adagrad
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8  # Kingma & Ba 2015 defaults


def sparse_slots(name: str, width: int) -> int:
    """Optimizer slot columns per row of width ``width``."""
    return {"sgd": 0, "adagrad": width, "ftrl": 2 * width, "adam": 2 * width}[name]


@dataclass
class SparseOptimizer:
    name: str
    lr: float
    l2: float = 0.0
    ftrl_l1: float = 0.0
    ftrl_l2: float = 0.0
    ftrl_beta: float = 1.0

    # False once an update of this step wrote a non-finite weight or slot (the kernels check as
    # they write); the strategy resets it before the step's update
    finite: bool = True

    def apply(self, table, urows: np.ndarray, grad: np.ndarray, t: int) -> None:
        """Update rows ``urows`` (nu,) of ``table`` with gradients ``grad`` (nu, R); t >= 1."""
        w, s = table.weights, table.slots
        x = w.dtype.type  # scalars in the table's precision: no float64 promotion per element
        if self.name == "sgd":
            ok = k.sgd(w, urows, grad, x(self.lr), x(self.l2))
        elif self.name == "adagrad":
            ok = k.adagrad(w, s, urows, grad, x(self.lr), x(ADAGRAD_EPS), x(self.l2))
        elif self.name == "ftrl":
            ok = k.ftrl(w, s, urows, grad, x(self.lr), x(self.ftrl_beta), x(self.ftrl_l1),
                        x(self.ftrl_l2 + self.l2))
        elif self.name == "adam":
            ok = k.adam(w, s, urows, grad, x(self.lr), x(ADAM_B1), x(ADAM_B2), x(ADAM_EPS),
                        x(1 - ADAM_B1 ** t), x(1 - ADAM_B2 ** t), x(self.l2))
        else:
            raise ValueError(f"unknown sparse optimizer {self.name!r}")
        self.finite = self.finite and bool(ok)


class DenseOptimizer:
    """SGD / Adagrad / Adam on one flat parameter vector."""

    def __init__(self, name: str, lr: float, size: int, dtype, adagrad_init: float = 0.0
                 ) -> None:
        if name not in ("sgd", "adagrad", "adam"):
            raise ValueError(f"unknown dense optimizer {name!r}")
        self.name, self.lr = name, lr
        self.finite = True
        n_state = {"sgd": 0, "adagrad": 1, "adam": 2}[name]
        self.state = np.zeros((n_state, size), dtype=dtype)
        if name == "adagrad":
            self.state[0] = adagrad_init

    def apply(self, params: np.ndarray, grad: np.ndarray, t: int) -> None:
        """One update of the flat vectors (the sparse kernels on one row: one fused pass)."""
        if not (params.flags.c_contiguous and grad.flags.c_contiguous):
            raise ValueError("dense parameters and gradients must be contiguous vectors")
        x = params.dtype.type
        one = np.zeros(1, dtype=np.int64)
        w, g = params.reshape(1, -1), grad.reshape(1, -1)
        if self.name == "sgd":
            ok = k.sgd(w, one, g, x(self.lr), x(0.0))
        elif self.name == "adagrad":
            ok = k.adagrad(w, self.state.reshape(1, -1), one, g, x(self.lr), x(ADAGRAD_EPS),
                           x(0.0))
        else:  # state (2, size) is the row [m | v] of the sparse Adam kernel
            ok = k.adam(w, self.state.reshape(1, -1), one, g, x(self.lr), x(ADAM_B1),
                        x(ADAM_B2), x(ADAM_EPS), x(1 - ADAM_B1 ** t), x(1 - ADAM_B2 ** t),
                        x(0.0))
        self.finite = bool(ok)  # whether this update wrote only finite values
