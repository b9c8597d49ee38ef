"""Deep & Cross Network (Wang et al. 2017): cross layers and a DNN on x0 = [x, E].

x_{l+1} = x0 (x_l · w_l) + b_l + x_l; logit = [x_L, DNN(x0)] · w_out + b_out. The cross
network needs x0 itself, so the embeddings are field-pooled (W = F·d).
"""

from __future__ import annotations

import numpy as np

from desmpi.models.base import Model
from desmpi.models.layers import MLP, Dense
from desmpi.ops import FieldPooling


class DCN(Model):
    name = "dcn"

    def build(self) -> None:
        self.pool = FieldPooling(self.F, self.d)
        self.ops = [self.pool]
        D0 = self.Dn + self.F * self.d
        self.D0 = D0
        for i in range(self.cfg.cross_layers):
            self.params.add(f"cross{i}.w", (D0,), "glorot", fan=(D0, 1))
            self.params.add(f"cross{i}.b", (D0,))
        self.deep = MLP(self.params, "deep", [D0, *self.cfg.hidden], final_relu=True)
        self.out = Dense(self.params, "out", D0 + self.cfg.hidden[-1], 1)

    @property
    def substitutions(self):
        return {"embeddings": "field_pooling"}

    def extra_macs(self) -> float:
        """Each cross layer's element-wise products on x0 (width Dn + F·d): about 3 per entry."""
        return 3.0 * self.cfg.cross_layers * (self.Dn + self.F * self.d)

    def forward(self, Z, x):
        p = self.params
        x0 = np.concatenate([x, Z[:, self.pool.cols]], axis=1)
        xs, ss = [x0], []
        for i in range(self.cfg.cross_layers):
            s = xs[-1] @ p[f"cross{i}.w"]
            ss.append(s)
            xs.append(x0 * s[:, None] + p[f"cross{i}.b"] + xs[-1])
        h, acts = self.deep.forward(p, x0)
        cat = np.concatenate([xs[-1], h], axis=1)
        return self.out.forward(p, cat)[:, 0], {"xs": xs, "ss": ss, "acts": acts, "cat": cat}

    def backward(self, c, g):
        p = self.params
        gcat = self.out.backward(p, c["cat"], g[:, None])
        D0 = self.D0
        gx = gcat[:, :D0].copy()
        x0 = c["xs"][0]
        gx0 = self.deep.backward(p, c["acts"], np.ascontiguousarray(gcat[:, D0:]))
        for i in range(self.cfg.cross_layers - 1, -1, -1):
            xl, s = c["xs"][i], c["ss"][i]
            gs = np.einsum("nd,nd->n", gx, x0)
            gx0 += gx * s[:, None]
            p.grad(f"cross{i}.w")[...] += xl.T @ gs
            p.grad(f"cross{i}.b")[...] += gx.sum(axis=0)
            gx = gx + gs[:, None] * p[f"cross{i}.w"][None, :]
        gx0 += gx  # x_0 is also the input of the first cross layer
        gZ = self.params.scratch("gZ", (g.shape[0], self.W))  # every column written
        gZ[:, self.pool.cols] = gx0[:, self.Dn:]
        return gZ
