"""DeepFM: LR + FM + DNN sharing one embedding per key.

Partials: pooling [L | E (F·d) | Q] (S = Σ_f E_f) or fused [L | S (d) | Q | h (H)]; the
narrower layout wins.
"""

from __future__ import annotations

from desmpi.kernels.dense import add_to_fields
from desmpi.models.deep import DeepTower, choose_deep_input
from desmpi.models.lr import LR
from desmpi.ops import FM


class DeepFM(LR):
    name = "deepfm"
    no_input_grad = frozenset({"w1_dense"})

    def build(self) -> None:
        super().build()
        mode = choose_deep_input(self.cfg.deep_input, self.F, self.d, self.cfg.hidden[0],
                                 extra_fused=self.d)
        self.deep = DeepTower(self.params, self.F, self.d, self.Dn, self.cfg.hidden, mode)
        self.fm = FM(self.d, s_from_pooling=mode == "pooling")
        self.ops += [self.fm, self.deep.op]

    @property
    def substitutions(self):
        return {"linear": "linear", "fm": "fm", "deep": self.deep.op.name}

    def forward(self, Z, x):
        zd = Z[:, self.deep.op.cols]
        e = zd if self.fm.s_from_pooling else None  # pooled E (n, F·d): S = Σ_f E_f
        S, Q = self.fm.split(Z[:, self.fm.cols], e,
                             self.params.scratch("fm:S", (x.shape[0], self.d)))
        out, c = self.deep.forward(self.params, x, zd)
        return self.wide(Z, x) + FM.finish(S, Q) + out, {"x": x, "S": S, "deep": c}

    def backward(self, cache, g):
        n = g.shape[0]
        gZ = self.params.scratch("gZ", (n, self.W))  # every column is written below
        self.wide_backward(cache["x"], g, gZ)
        gS, gQ = FM.finish_backward(g, cache["S"])
        gZ[:, self.fm.cols] = self.fm.pack_grad(gS, gQ)
        gd = self.deep.backward(self.params, cache["deep"], g, out=gZ[:, self.deep.op.cols])
        if self.fm.s_from_pooling:  # S = Σ_f E_f: its gradient reaches every field
            add_to_fields(gd, gS, self.d)
        return gZ
