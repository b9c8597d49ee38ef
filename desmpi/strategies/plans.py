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


def plan_des(c: StepCounts, m: ModelDims, aggregate: str, rank: int,
             replicate_input: bool = False) -> list[Call]:
    calls, add = _mk(rank, c.P)
    F, W, isz = c.n_fields, m.W, m.itemsize
    if not replicate_input:
        if not c.onehot:
            add("allgatherv", c.sizes * F, I64)  # bag lengths
        add("allgatherv", c.nnz, I64)
        if c.weighted:
            add("allgatherv", c.nnz, isz)
    B = int(c.sizes.sum())
    if aggregate == "allreduce":
        if not replicate_input:
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


def plan(strategy: str, aggregate: str, c: StepCounts, m: ModelDims, rank: int,
         replicate_input: bool = False) -> list[Call]:
    if strategy == "des":
        return plan_des(c, m, aggregate, rank, replicate_input)
    if strategy == "ps":
        return plan_ps(c, m, rank)
    if strategy == "a2a":
        return plan_a2a(c, m, rank)
    if strategy == "des-a2a":
        return plan_des_a2a(c, m, rank)
    raise ValueError(f"unknown strategy {strategy!r}")


def _ring_chunks(n: int, P: int) -> np.ndarray:
    q, m = divmod(n, P)
    return np.where(np.arange(P) < m, q + 1, q)


def traffic(strategy: str, aggregate: str, c: StepCounts, m: ModelDims,
            replicate_input: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(payload, wire) bytes of one step for every rank, (P,) each, without building Calls.

    Vectorised over ranks for large P (the simulator's sweeps); equal to summing
    :func:`plan` over its calls (tested).
    """
    P = c.P
    pay = np.zeros(P, dtype=np.int64)
    wire = np.zeros(P, dtype=np.int64)
    if P == 1:
        return pay, wire
    r = np.arange(P)
    isz = m.itemsize

    def allgatherv(counts, s):
        counts = np.asarray(counts, dtype=np.int64)
        pay[:] += counts * s
        wire[:] += (counts.sum() - np.roll(counts, -1)) * s

    def allreduce(n, s):
        ch = _ring_chunks(int(n), P)
        pay[:] += n * s
        wire[:] += (2 * n - ch - np.roll(ch, -1)) * s

    def reduce_scatter(counts, s):
        counts = np.asarray(counts, dtype=np.int64)
        pay[:] += (counts.sum() - counts) * s
        wire[:] += (counts.sum() - counts) * s

    def alltoallv(M, s):  # M[r, j]: what rank r sends to rank j
        M = np.asarray(M, dtype=np.int64)
        x = (M.sum(axis=1) - M[r, r]) * s
        pay[:] += x
        wire[:] += x

    def alltoall(k):
        alltoallv(np.full((P, P), k), I64)

    F = c.n_fields
    if strategy == "des":
        if not replicate_input:
            if not c.onehot:
                allgatherv(c.sizes * F, I64)
            allgatherv(c.nnz, I64)
            if c.weighted:
                allgatherv(c.nnz, isz)
        B = int(c.sizes.sum())
        if aggregate == "allreduce":
            if not replicate_input:
                allgatherv(c.sizes * (1 + c.n_dense), isz)
            allreduce(B * m.W, isz)
            if m.partial_grad:
                allreduce(m.partial_grad, isz)
        else:
            reduce_scatter(c.sizes * m.W, isz)
            allgatherv(c.sizes * m.W, isz)
            allreduce(m.D + 1, isz)
        return pay, wire
    if strategy == "ps":
        alltoall(1)
        alltoallv(c.distinct, I64)
        alltoallv(c.distinct.T * m.R, isz)
        alltoallv(c.distinct * m.R, isz)
    elif strategy == "a2a":
        alltoall(2)
        alltoallv(c.keys, I64)
        if not c.onehot:
            alltoallv(c.bags, I64)
        if c.weighted:
            alltoallv(c.keys, isz)
        alltoallv(c.bags.T * m.seg, isz)
        alltoallv(c.bags * m.seg, isz)
    elif strategy == "des-a2a":
        alltoall(2)
        alltoallv(c.keys, I64)
        alltoallv(c.samples, I64)
        if c.weighted:
            alltoallv(c.keys, isz)
        alltoallv(c.samples.T * m.W, isz)
        alltoallv(c.samples * m.W, isz)
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    allreduce(m.D + 1, isz)
    return pay, wire
