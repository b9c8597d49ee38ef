"""Wide & Deep: LR (wide, linear op) + DNN on [x, pooled embeddings] (pooling or fused)."""

from __future__ import annotations

from desmpi.models.deep import DeepTower, choose_deep_input
from desmpi.models.lr import LR


class WDL(LR):
    name = "wdl"
    no_input_grad = frozenset({"w1_dense"})

    def build(self) -> None:
        super().build()
        mode = choose_deep_input(self.cfg.deep_input, self.F, self.d, self.cfg.hidden[0])
        self.deep = DeepTower(self.params, self.F, self.d, self.Dn, self.cfg.hidden, mode)
        self.ops.append(self.deep.op)

    @property
    def substitutions(self):
        return {"linear": "linear", "deep": self.deep.op.name}

    def forward(self, Z, x):
        out, c = self.deep.forward(self.params, x, Z[:, self.deep.op.cols])
        return self.wide(Z, x) + out, {"x": x, "deep": c}

    def backward(self, cache, g):
        gZ = self.params.scratch("gZ", (g.shape[0], self.W))  # every column is written
        self.wide_backward(cache["x"], g, gZ)
        self.deep.backward(self.params, cache["deep"], g, out=gZ[:, self.deep.op.cols])
        return gZ
