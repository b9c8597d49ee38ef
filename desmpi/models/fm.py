"""Factorization machine: LR + ½(‖Σ v_k x_k‖² − Σ ‖v_k x_k‖²) (linear and FM ops)."""

from __future__ import annotations

from desmpi.models.lr import LR
from desmpi.ops import FM


class FMModel(LR):
    name = "fm"

    def build(self) -> None:
        super().build()
        self.fm = FM(self.d)
        self.ops.append(self.fm)

    def forward(self, Z, x):
        S, Q = self.fm.split(Z[:, self.fm.cols], None)
        return self.wide(Z, x) + FM.finish(S, Q), {"x": x, "S": S}

    def backward(self, cache, g):
        gZ = self.params.scratch("gZ", (g.shape[0], self.W), zero=True)
        self.wide_backward(cache["x"], g, gZ)
        gS, gQ = FM.finish_backward(g, cache["S"])
        gZ[:, self.fm.cols] = self.fm.pack_grad(gS, gQ)
        return gZ
