"""Fused first dense layer: partial h = Σ_f E_f W1_f over owned keys (W = H), W1 replicated.

Backward: ∂/∂E_f = gh W1_fᵀ for every sample (gh is known everywhere), and ∂/∂W1 = Σ_r
E^(r)ᵀ gh, the rank's share of which goes into the dense gradient for one Allreduce of W1's size.

Cost: three dense products over every row of partials the rank computes (E^(r) holds zeros
where other ranks own the keys), i.e. over all B samples under des: free when the dense part
is replicated (aggregate = allreduce), P times the data-parallel work under reduce_scatter,
which is why ``deep_input = auto`` fuses only in the former
(:meth:`desmpi.variants.Variant.deep_input`).
"""

from __future__ import annotations

import numpy as np

from desmpi.ops.base import Op, Pools


class FusedFirstLayer(Op):
    name = "fused_first_layer"
    needs_E = True

    def __init__(self, n_fields: int, d: int, hidden: int, w1_name: str = "w1_sparse") -> None:
        super().__init__()
        self.F, self.d, self.H = n_fields, d, hidden
        self.width = hidden
        self.w1_name = w1_name  # (F·d, H) replicated parameter

    def partial(self, p: Pools, params, out: np.ndarray) -> None:
        """out (n, H) = E W1 with E = p.EZ (n, F·d) of its own; BLAS writes Z's columns in
        place (ldc = W)."""
        params.matmul(p.EZ, params[self.w1_name], out)

    def key_grads(self, gz: np.ndarray, kg: Pools, p: Pools, params) -> None:
        """Sets the gradient of E: (n, F·d) = gz W1ᵀ; adds Eᵀ gz into W1's gradient."""
        w1 = params[self.w1_name]
        kg.EZ = params.matmul(gz, w1.T, params.scratch("fused:gE", (gz.shape[0], w1.shape[0])))
        kg.cE = 0
        params.add_product(self.w1_name, p.EZ.T, gz)
