"""The DNN of Wide&Deep / DeepFM on [dense features, pooled embeddings].

Its first layer h1 = x W1d + Σ_f E_f W1s_f + b1 is either computed here from the aggregated
pooled embeddings (field pooling, W = F·d) or arrives already summed over ranks as the partial
of a fused first layer (W = H). ``auto`` takes the fused layer only where it costs no compute
(:meth:`desmpi.variants.Variant.deep_input`) and there the smaller width wins, ties going to
pooling (no W1 Allreduce).
"""

from __future__ import annotations

import numpy as np

from desmpi.kernels.dense import bias_act, relu_grad
from desmpi.models.layers import MLP, Dense, Params
from desmpi.ops import FieldPooling, FusedFirstLayer


def choose_deep_input(mode: str, n_fields: int, d: int, h1: int, extra_fused: int = 0) -> str:
    """'pooling' or 'fused': the smaller partial width (extra_fused: columns fusing adds)."""
    if mode != "auto":
        return mode
    return "fused" if h1 + extra_fused < n_fields * d else "pooling"


class DeepTower:
    def __init__(self, params: Params, F: int, d: int, Dn: int, hidden: tuple[int, ...],
                 mode: str) -> None:
        self.mode, self.F, self.d = mode, F, d
        H1 = hidden[0]
        params.add("w1_sparse", (F * d, H1), "glorot", fan=(F * d + Dn, H1))
        params.add("w1_dense", (Dn, H1), "glorot", fan=(F * d + Dn, H1))
        params.add("b1", (H1,))
        self.rest = MLP(params, "deep", [*hidden, 1], final_relu=False)
        self.op = (FusedFirstLayer(F, d, H1) if mode == "fused" else FieldPooling(F, d))

    def forward(self, p: Params, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, dict]:
        """z: this op's aggregated columns; returns (n,) output and a cache."""
        n = x.shape[0]
        if self.mode == "fused":  # z: Σ_f E_f W1s_f over all ranks' keys
            h = p.matmul(x, p["w1_dense"], p.scratch("deep:h1", z.shape))
            h += z
            e = None
        else:
            # a column slice of Z, rows strided by W: BLAS reads it in place (lda = W), as it
            # writes the input gradient into gZ's columns in the backward
            e = z.reshape(n, z.shape[1] if z.ndim == 2 else -1)  # -1 fails on 0 rows
            w1s = p["w1_sparse"]
            h = p.matmul(e, w1s, p.scratch("deep:h1", (n, w1s.shape[1])))
            h += p.matmul(x, p["w1_dense"], p.scratch("deep:h1x", h.shape))
        bias_act(h, p["b1"], True)  # h becomes a1 = ReLU(h + b1) in place
        out, acts = self.rest.forward(p, h)
        return out[:, 0], {"x": x, "e": e, "acts": acts}

    def backward(self, p: Params, c: dict, g: np.ndarray, out: np.ndarray) -> np.ndarray:
        """g (n,) -> gradient of this op's columns (n, F·d or H), written into ``out`` (a view
        of the model's gZ: the product lands there directly) and returned."""
        gh = self.rest.backward(p, c["acts"], g[:, None])
        relu_grad(gh, c["acts"][0], p.grad("b1"))  # acts[0] = a1; adds b1's gradient
        p.add_product("w1_dense", c["x"].T, gh)
        if self.mode == "fused":
            out[...] = gh  # W1s's gradient is the fused op's (owned keys, summed over ranks)
            return out
        p.add_product("w1_sparse", c["e"].T, gh)
        return p.matmul(gh, p["w1_sparse"].T, out)  # BLAS writes the strided view (ldc = W)


__all__ = ["DeepTower", "choose_deep_input", "Dense"]
