"""Compute time of a step from its work: GEMM flops and sparse key-columns per rank."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from sim.cluster import ComputeRates, expected_max_normal


@dataclass(frozen=True)
class Work:
    """Per-rank work of one step: dense GEMM flops (forward + backward), sparse key-columns
    (keys pooled, their gradients and updates, times row width), key operations (a table
    look-up or a row's update: a random row, once, whatever its width), routed keys (each
    key hashed to its owner where it enters: DES), bucketed keys (each key hashed and grouped
    by owner and bag or sample for an Alltoallv: a2a, des-a2a) and sorted keys (the batch's
    keys deduplicated by a sort, then grouped by owner: ps)."""

    gemm_flops: float
    sparse_keys: float
    calls: float = 0.0  # collective calls (each has a fixed software cost around it)
    mem_bytes: float = 0.0  # streamed: partial matrices (zeroed, reduced, gathered), own blocks
    key_ops: float = 0.0  # table look-ups and row updates (per key, not per column)
    route_keys: float = 0.0  # keys hashed to their owner (a vectorised pass)
    bucket_keys: float = 0.0  # keys grouped by owner and segment (a stable sort by owner)
    sort_keys: float = 0.0  # keys deduplicated (np.unique: a sort) and grouped by owner
    # compressed communication's own work: element passes of its pack / decode kernels,
    # elements a sparse codec selects from, collectives of packed words (their wrapping)
    codec_elems: float = 0.0
    select_elems: float = 0.0
    codec_calls: float = 0.0

    def __add__(self, o: Work) -> Work:
        return Work(*(getattr(self, f.name) + getattr(o, f.name) for f in fields(Work)))

    def scaled(self, f: float) -> Work:
        """This work times ``f`` (means over profiled batches)."""
        return Work(*(getattr(self, x.name) * f for x in fields(Work)))


def slowdown(rates: ComputeRates, busy: int) -> float:
    """Factor on a rank's compute time when ``busy`` cores of its node compute at once."""
    return 1.0 + rates.contention * math.log2(max(1, busy))


def compute_time(w: Work, rates: ComputeRates, share: float = 1.0, busy: int = 1) -> float:
    """Seconds: overhead + flops / GEMM rate + key-columns / sparse rate + key operations /
    key rate + routed, bucketed and sorted keys / their rates + calls × per-call cost +
    streamed bytes / memory rate + the codec's work (:func:`codec_time`), on ``share`` of a
    core
    (oversubscribed ranks get less), slowed by :func:`slowdown` when ``busy`` cores of the
    node compute at once."""
    t = rates.overhead_s + w.gemm_flops / rates.gemm_flops + w.sparse_keys / \
        rates.sparse_keys_per_s + w.calls * rates.per_call_s + w.mem_bytes / rates.mem_Bps + \
        w.key_ops / rates.keys_per_s + w.route_keys / rates.route_keys_per_s + \
        w.bucket_keys / rates.bucket_keys_per_s + w.sort_keys / rates.sort_keys_per_s + \
        codec_time(w, rates)
    return t * slowdown(rates, busy) / share


def codec_time(w: Work, rates: ComputeRates) -> float:
    """Seconds of compressed communication's own work on one core alone: element passes /
    codec rate + selected elements / selection rate + calls × each call's software cost."""
    return w.codec_elems / rates.codec_elems_per_s + \
        w.select_elems / rates.select_elems_per_s + w.codec_calls * rates.codec_call_s


def wait_time(compute_s: float, rates: ComputeRates, P: int) -> float:
    """Seconds a bulk-synchronous step waits for its slowest rank beyond the mean one: ranks'
    compute times spread by ``rates.jitter`` (standard deviation over mean), the step ends with
    the slowest of P, jitter · compute · E[max of P standard normals] (0 at P = 1)."""
    return rates.jitter * compute_s * float(expected_max_normal(P))
