"""Compute time of a step from its work: GEMM flops and sparse key-columns per rank."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sim.cluster import ComputeRates, expected_max_normal


@dataclass(frozen=True)
class Work:
    """Per-rank work of one step: dense GEMM flops (forward + backward), sparse key-columns
    (keys pooled, their gradients and updates, times row width), key operations (a table
    look-up or a row's update: a random row, once, whatever its width) and routed keys (each
    key hashed to its owner where it enters)."""

    gemm_flops: float
    sparse_keys: float
    calls: float = 0.0  # collective calls (each has a fixed software cost around it)
    mem_bytes: float = 0.0  # streamed over the partial matrices (zeroed, reduced, gathered)
    key_ops: float = 0.0  # table look-ups and row updates (per key, not per column)
    route_keys: float = 0.0  # keys hashed to their owner (a vectorised pass)

    def __add__(self, o: Work) -> Work:
        return Work(self.gemm_flops + o.gemm_flops, self.sparse_keys + o.sparse_keys,
                    self.calls + o.calls, self.mem_bytes + o.mem_bytes,
                    self.key_ops + o.key_ops, self.route_keys + o.route_keys)

    def scaled(self, f: float) -> Work:
        """This work times ``f`` (means over profiled batches)."""
        return Work(self.gemm_flops * f, self.sparse_keys * f, self.calls * f,
                    self.mem_bytes * f, self.key_ops * f, self.route_keys * f)


def slowdown(rates: ComputeRates, busy: int) -> float:
    """Factor on a rank's compute time when ``busy`` cores of its node compute at once."""
    return 1.0 + rates.contention * math.log2(max(1, busy))


def compute_time(w: Work, rates: ComputeRates, share: float = 1.0, busy: int = 1) -> float:
    """Seconds: overhead + flops / GEMM rate + key-columns / sparse rate + key operations /
    key rate + routed keys / route rate + calls × per-call cost + streamed bytes / memory
    rate, on ``share`` of a core
    (oversubscribed ranks get less), slowed by :func:`slowdown` when ``busy`` cores of the
    node compute at once."""
    t = rates.overhead_s + w.gemm_flops / rates.gemm_flops + w.sparse_keys / \
        rates.sparse_keys_per_s + w.calls * rates.per_call_s + w.mem_bytes / rates.mem_Bps + \
        w.key_ops / rates.keys_per_s + w.route_keys / rates.route_keys_per_s
    return t * slowdown(rates, busy) / share


def wait_time(compute_s: float, rates: ComputeRates, P: int) -> float:
    """Seconds a bulk-synchronous step waits for its slowest rank beyond the mean one: ranks'
    compute times spread by ``rates.jitter`` (standard deviation over mean), the step ends with
    the slowest of P, jitter · compute · E[max of P standard normals] (0 at P = 1)."""
    return rates.jitter * compute_s * float(expected_max_normal(P))
