"""Each strategy's collectives for one training step, from :class:`StepCounts` alone.

:func:`collectives` is the single source of truth: the strategies execute exactly these calls
(tests compare each rank's :meth:`Collective.call` with the counted calls using ``==``), and the
simulator costs them for any P.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from desmpi.data.batch import Batch
from desmpi.strategies import codecwork, compressed
from desmpi.strategies.counts import ModelDims, StepCounts, count_step
from desmpi.variants import Variant
from sim.accounting import TEXTBOOK, Call, Collective, Layout

I64 = 8  # keys, lengths and counts travel as int64


@dataclass(frozen=True)
class Payload:
    """One transfer of a step before compression: a collective ``kind`` on ``counts`` (as in
    :class:`sim.accounting.Collective`) of ``itemsize``-byte elements, through ``codec``
    (:mod:`desmpi.strategies.compressed`; "none": one plain collective); ``feedback``: with
    error feedback (the dense gradients, a fused first layer's W1 gradient)."""

    kind: str
    counts: np.ndarray
    itemsize: int
    codec: str = "none"
    feedback: bool = False


def payloads(v: Variant, c: StepCounts, m: ModelDims,
             wire: compressed.Wire = compressed.FULL) -> list[Payload]:
    """The transfers of one training step of variant ``v``, in call order, for all ranks.
    ``wire`` (dist.compress): the partials, their gradients (and the all-to-all strategies'
    rows, pooled parts and partials: :attr:`Wire.partials`; their gradients:
    :attr:`Wire.partial_grads`) and the dense
    gradients (:attr:`Wire.dense`) go through :mod:`desmpi.strategies.compressed`'s forms;
    ``wire.keys`` (dist.keys) the DES input's keys (:mod:`desmpi.data.keycodec`)."""
    strategy, aggregate, replicate_input = v.strategy, v.aggregate, v.replicate_input
    P, F, W, isz = c.P, c.n_fields, m.W, m.itemsize
    out: list[Payload] = []

    def add(kind: str, counts, itemsize: int) -> None:
        out.append(Payload(kind, np.asarray(counts, dtype=np.int64), itemsize))

    def summed(kind: str, counts, codec: str, feedback: bool = False) -> None:
        """A float sum (allreduce, reduce_scatter), gather or exchange (alltoallv) of floats,
        maybe compressed."""
        out.append(Payload(kind, np.asarray(counts, dtype=np.int64), isz, codec,
                           feedback and codec != "none"))

    def dense_allreduce() -> None:
        if wire.dense == "none":
            add("allreduce", [m.D + 1], isz)  # dense gradients + the loss sum
        else:
            summed("allreduce", [m.D], wire.dense, feedback=True)
            add("allreduce", [1], 8)  # the loss sum, float64

    if strategy == "des":
        if not replicate_input:
            if not c.onehot:  # bag lengths (narrow: int32)
                add("allgatherv", c.sizes * F, 4 if wire.keys == "narrow" else I64)
            if wire.keys == "narrow":
                add("allgatherv", c.nnz, 4)  # 32-bit words
                if c.escapes.sum():
                    add("allgatherv", c.escapes, I64)  # the keys that did not fit
            else:
                add("allgatherv", c.nnz, I64)
            if c.weighted:
                add("allgatherv", c.nnz, isz)
        B = int(c.sizes.sum())
        if aggregate == "allreduce":
            if not replicate_input:
                add("allgatherv", c.sizes * (1 + c.n_dense), isz)  # [label | dense] rows
            summed("allreduce", [B * W], wire.partials)
            if m.partial_grad:
                summed("allreduce", [m.partial_grad], wire.dense, feedback=True)
        elif aggregate == "reduce_scatter":
            summed("reduce_scatter", c.sizes * W, wire.partials)
            summed("allgatherv", c.sizes * W, wire.partial_grads)
            dense_allreduce()
        else:
            raise ValueError(f"unknown aggregate {aggregate!r}")
        return out
    if strategy == "ps":
        add("alltoall", np.ones((P, P)), I64)  # distinct-key counts
        add("alltoallv", c.distinct, I64)  # distinct keys to their owners
        summed("alltoallv", c.distinct.T * m.R, wire.partials)  # their rows back
        summed("alltoallv", c.distinct * m.R, wire.partial_grads)  # row gradients to owners
    elif strategy == "a2a":
        add("alltoall", np.full((P, P), 2), I64)  # (keys, bags) per peer
        add("alltoallv", c.keys, I64)
        if not c.onehot:
            add("alltoallv", c.bags, I64)  # lengths of the bag parts
        if c.weighted:
            add("alltoallv", c.keys, isz)
        summed("alltoallv", c.bags.T * m.seg, wire.partials)  # pooled (sample, field) parts
        summed("alltoallv", c.bags * m.seg, wire.partial_grads)  # their gradients to owners
    elif strategy == "des-a2a":
        add("alltoall", np.full((P, P), 2), I64)  # (keys, samples) per peer
        add("alltoallv", c.keys, I64)
        add("alltoallv", c.samples, I64)  # keys per (sample, owner) pair
        if c.weighted:
            add("alltoallv", c.keys, isz)
        summed("alltoallv", c.samples.T * W, wire.partials)  # partials of the pairs back
        summed("alltoallv", c.samples * W, wire.partial_grads)  # their gradients to owners
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    dense_allreduce()
    return out


def collectives(v: Variant, c: StepCounts, m: ModelDims, layout: Layout = TEXTBOOK,
                wire: compressed.Wire = compressed.FULL) -> list[Collective]:
    """The collectives of one training step of variant ``v`` (its :func:`payloads`, each
    compressed one as the calls :func:`desmpi.strategies.compressed.calls` lists), in call
    order, for all ranks; each names the algorithm ``layout``'s MPI library runs for it (wire
    bytes follow it)."""
    P = c.P
    out: list[Collective] = []

    def add(kind: str, counts, itemsize: int) -> None:
        cc = np.asarray(counts, dtype=np.int64)
        alg = layout.algorithm(kind, cc, itemsize, P)
        out.append(Collective(kind, itemsize, cc, algorithm=alg,
                              ppn=layout.ppn if alg else 1))

    for x in payloads(v, c, m, wire):
        if x.codec == "none":
            add(x.kind, x.counts, x.itemsize)
        else:
            for k, cc, item in compressed.calls(x.kind, x.counts, P, x.codec, wire.ratio):
                add(k, cc, item)
    return out


def codec_work(v: Variant, c: StepCounts, m: ModelDims,
               wire: compressed.Wire = compressed.FULL) -> np.ndarray:
    """(P, 3): each rank's codec work of one step (:data:`codecwork.CODEC_TERMS`: element
    passes, elements selected, collectives of packed words), summed over its compressed
    :func:`payloads` (:func:`desmpi.strategies.codecwork.codec_work`); zeros uncompressed."""
    out = np.zeros((c.P, len(codecwork.CODEC_TERMS)))
    for x in payloads(v, c, m, wire):
        if x.codec != "none":
            out += codecwork.codec_work(x.kind, x.counts, c.P, x.codec, wire.ratio,
                                        x.feedback)
    return out


def plan(v: Variant, c: StepCounts, m: ModelDims, rank: int, layout: Layout = TEXTBOOK,
         wire: compressed.Wire = compressed.FULL) -> list[Call]:
    """Rank ``rank``'s calls of one step, in order."""
    return [x.call(rank, c.P) for x in collectives(v, c, m, layout, wire)]


def plan_batch(v: Variant, b: Batch, P: int, m: ModelDims, layout: Layout = TEXTBOOK,
               wire: compressed.Wire = compressed.FULL) -> list[Collective]:
    """The collectives of global batch ``b`` (B samples) at P ranks: no Trainer, no tables,
    no communication; ``m`` from :meth:`ModelDims.of` of the variant's model."""
    return collectives(v, count_step(b, P), m, layout, wire)


def traffic(v: Variant, c: StepCounts, m: ModelDims, layout: Layout = TEXTBOOK,
            wire: compressed.Wire = compressed.FULL) -> tuple[np.ndarray, np.ndarray]:
    """(payload, wire) bytes of one step for every rank, (P,) each (vectorised over ranks)."""
    pay = np.zeros(c.P, dtype=np.int64)
    sent = np.zeros(c.P, dtype=np.int64)
    for x in collectives(v, c, m, layout, wire):
        p, w = x.bytes_per_rank(c.P)
        pay += p
        sent += w
    return pay, sent
