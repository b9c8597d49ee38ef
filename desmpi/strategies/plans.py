"""Each strategy's collectives for one training step, from :class:`StepCounts` alone.

These are the plans the strategies execute (tests compare them with the counted calls using
``==``) and the traffic the simulator costs for any P. Per rank r of P, in call order.
"""

from __future__ import annotations

import numpy as np

from desmpi.strategies.counts import ModelDims, StepCounts
from sim.accounting import Call

I64 = 8  # keys, lengths and counts travel as int64


def _mk(rank: int, P: int):
    calls: list[Call] = []

    def c(kind: str, counts, itemsize: int) -> None:
        calls.append(Call(kind, tuple(int(x) for x in np.ravel(counts)), itemsize, rank, P))

    return calls, c


def plan_des(c: StepCounts, m: ModelDims, aggregate: str, rank: int) -> list[Call]:
    calls, add = _mk(rank, c.P)
    F, W, isz = c.n_fields, m.W, m.itemsize
    if not c.onehot:
        add("allgatherv", c.sizes * F, I64)  # bag lengths
    add("allgatherv", c.nnz, I64)
    if c.weighted:
        add("allgatherv", c.nnz, isz)
    B = int(c.sizes.sum())
    if aggregate == "allreduce":
        add("allgatherv", c.sizes * (1 + c.n_dense), isz)  # [label | dense] rows
        add("allreduce", [B * W], isz)
        if m.partial_grad:
            add("allreduce", [m.partial_grad], isz)
    else:
        add("reduce_scatter", c.sizes * W, isz)
        add("allgatherv", c.sizes * W, isz)
        add("allreduce", [m.D + 1], isz)
    return calls


def plan_ps(c: StepCounts, m: ModelDims, rank: int) -> list[Call]:
    calls, add = _mk(rank, c.P)
    P, r, isz = c.P, rank, m.itemsize
    add("alltoall", [1] * P, I64)  # distinct-key counts
    add("alltoallv", c.distinct[r], I64)  # distinct keys to their owners
    add("alltoallv", c.distinct[:, r] * m.R, isz)  # their rows back (as owner)
    add("alltoallv", c.distinct[r] * m.R, isz)  # row gradients to the owners
    add("allreduce", [m.D + 1], isz)
    return calls


def plan_a2a(c: StepCounts, m: ModelDims, rank: int) -> list[Call]:
    calls, add = _mk(rank, c.P)
    P, r, isz = c.P, rank, m.itemsize
    add("alltoall", [2] * P, I64)  # (keys, bags) per peer
    add("alltoallv", c.keys[r], I64)
    if not c.onehot:
        add("alltoallv", c.bags[r], I64)  # lengths of the bag parts
    if c.weighted:
        add("alltoallv", c.keys[r], isz)
    add("alltoallv", c.bags[:, r] * m.seg, isz)  # pooled (sample, field) parts back
    add("alltoallv", c.bags[r] * m.seg, isz)  # their gradients to the owners
    add("allreduce", [m.D + 1], isz)
    return calls


def plan_des_a2a(c: StepCounts, m: ModelDims, rank: int) -> list[Call]:
    calls, add = _mk(rank, c.P)
    P, r, isz = c.P, rank, m.itemsize
    add("alltoall", [2] * P, I64)  # (keys, samples) per peer
    add("alltoallv", c.keys[r], I64)
    add("alltoallv", c.samples[r], I64)  # keys per (sample, owner) pair
    if c.weighted:
        add("alltoallv", c.keys[r], isz)
    add("alltoallv", c.samples[:, r] * m.W, isz)  # partials of the pairs back
    add("alltoallv", c.samples[r] * m.W, isz)  # their gradients to the owners
    add("allreduce", [m.D + 1], isz)
    return calls


def plan(strategy: str, aggregate: str, c: StepCounts, m: ModelDims, rank: int) -> list[Call]:
    if strategy == "des":
        return plan_des(c, m, aggregate, rank)
    if strategy == "ps":
        return plan_ps(c, m, rank)
    if strategy == "a2a":
        return plan_a2a(c, m, rank)
    if strategy == "des-a2a":
        return plan_des_a2a(c, m, rank)
    raise ValueError(f"unknown strategy {strategy!r}")
