"""Compute time of a step from its work: GEMM flops and sparse key-columns per rank."""

from __future__ import annotations

from dataclasses import dataclass

from sim.cluster import ComputeRates


@dataclass(frozen=True)
class Work:
    """Per-rank work of one step: dense GEMM flops (forward + backward), sparse key-columns
    (keys routed, looked up, pooled and updated, times row width)."""

    gemm_flops: float
    sparse_keys: float
    calls: float = 0.0  # collective calls (each has a fixed software cost around it)

    def __add__(self, o: Work) -> Work:
        return Work(self.gemm_flops + o.gemm_flops, self.sparse_keys + o.sparse_keys,
                    self.calls + o.calls)


def compute_time(w: Work, rates: ComputeRates, share: float = 1.0) -> float:
    """Seconds: overhead + flops / GEMM rate + key-columns / sparse rate + calls × per-call
    cost, on ``share`` of a core (oversubscribed ranks get less)."""
    t = rates.overhead_s + w.gemm_flops / rates.gemm_flops + w.sparse_keys / \
        rates.sparse_keys_per_s + w.calls * rates.per_call_s
    return t / share
