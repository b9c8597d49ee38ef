"""Time of each collective under each algorithm MPI libraries use (α-β model).

Closed forms from Thakur, Rabenseifner & Gropp, "Optimization of Collective Communication
Operations in MPICH", IJHPCA 19(1), 2005 (n = bytes, α = latency s, β = s/byte, lg = ⌈log2 P⌉):

| collective | algorithm | time |
|---|---|---|
| allreduce | ring | 2(P−1)α + 2(P−1)/P·nβ |
| allreduce | recursive_doubling | lg·(α + nβ) |
| allreduce | rabenseifner (halving RS + doubling AG) | 2·lg·α + 2(P−1)/P·nβ |
| allreduce | binomial (reduce + bcast) | 2·lg·(α + nβ) |
| reduce_scatter | ring / pairwise | (P−1)α + (P−1)·max_block·β |
| reduce_scatter | recursive_halving | lg·α + (P−1)/P·nβ |
| allgather(v) | ring | (P−1)α + (P−1)·max_block·β |
| allgather(v) | recursive_doubling / bruck | lg·α + (P−1)/P·nβ |
| alltoall(v) | pairwise | (P−1)α + max_rank(max(sent, received))·β |
| alltoall | bruck | lg·(α + n_rank/2·β) |
| bcast | binomial | lg·(α + nβ) |
| bcast | scatter_allgather | (lg + P − 1)α + 2(P−1)/P·nβ |
| allreduce, allgather, reduce_scatter, bcast | two_level | intra part + inter part (*) |

(*) ``node_aware`` here: reduce in the node, allreduce among node leaders, broadcast in the
node — on one level, 2·lg·(α + nβ) like ``binomial``.

These closed forms are what :mod:`sim.calibrate` fits α and β with (they are linear in both).
Predictions use :func:`sized_time`: the step-by-step forms of :mod:`sim.algorithms` (the level
each step crosses, NIC sharing, γ, non-power-of-two P, measured curves) with the algorithm the
cluster's MPI library selects (:mod:`sim.selection`); on one plain α-β level with P a power of
two and γ = 0 both agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim import algorithms as A
from sim.accounting import Collective
from sim.algorithms import THROTTLE
from sim.cluster import Cluster
from sim.selection import FAMILY, LIBRARIES, select

# closed forms of cost() (one α-β level)
ALGORITHMS = {
    "allreduce": ("ring", "recursive_doubling", "rabenseifner", "binomial"),
    "reduce_scatter": ("ring", "pairwise", "recursive_halving"),
    "allgather": ("ring", "recursive_doubling", "bruck"),
    "alltoall": ("pairwise", "bruck"),
    "bcast": ("binomial", "scatter_allgather"),
}
# algorithms cost() treats as one of the above on a single level (same steps, same bytes)
_SAME_ON_ONE_LEVEL = {"node_aware": "binomial", "nonoverlapping": "binomial",
                      "segmented_ring": "ring", "butterfly": "recursive_halving",
                      "neighbor": "ring", "scatter_rd_allgather": "scatter_allgather",
                      "scatter_ring_allgather": "scatter_allgather"}
_FAMILY = FAMILY


def _lg(P: int) -> int:
    return max(0, math.ceil(math.log2(P))) if P > 1 else 0


def _pof2(P: int) -> bool:
    return P & (P - 1) == 0


def cost(kind: str, algorithm: str, P: int, n: float, alpha: float, beta: float,
         max_block: float | None = None, max_rank: float | None = None) -> float:
    """Seconds of one collective on one (α, β) level.

    n: total bytes (allreduce, bcast: the vector; allgather/reduce_scatter: all blocks;
    alltoall: bytes one rank sends in total). max_block: largest block (ring forms; default
    n/P). max_rank: largest of any rank's bytes sent or received (alltoallv; default n).
    """
    fam = _FAMILY[kind]
    algorithm = _SAME_ON_ONE_LEVEL.get(algorithm, algorithm)
    if P <= 1:
        return 0.0
    lg = _lg(P)
    mb = n / P if max_block is None else max_block
    if fam == "barrier":
        return lg * alpha
    if fam == "allreduce":
        if algorithm == "ring":
            return 2 * (P - 1) * alpha + 2 * (P - 1) / P * n * beta
        if algorithm == "recursive_doubling":
            return lg * (alpha + n * beta)
        if algorithm == "rabenseifner":
            return 2 * lg * alpha + 2 * (P - 1) / P * n * beta
        if algorithm == "binomial":
            return 2 * lg * (alpha + n * beta)
    elif fam == "reduce_scatter":
        if algorithm in ("ring", "pairwise"):
            return (P - 1) * alpha + (P - 1) * mb * beta
        if algorithm == "recursive_halving":
            return lg * alpha + (P - 1) / P * n * beta
    elif fam == "allgather":
        if algorithm == "ring":
            return (P - 1) * alpha + (P - 1) * mb * beta
        if algorithm in ("recursive_doubling", "bruck"):
            return lg * alpha + (P - 1) / P * n * beta
    elif fam == "alltoall":
        mr = n if max_rank is None else max_rank
        if algorithm == "pairwise":
            return (P - 1) * alpha + mr * beta
        if algorithm == "bruck":
            return lg * (alpha + mr / 2 * beta)
        if algorithm in ("scattered", "linear", "linear_sync"):  # messages in flight at once
            batches = -(-(P - 1) // THROTTLE) if algorithm == "scattered" else 1
            return batches * alpha + mr * beta
    elif fam == "bcast":
        if algorithm == "binomial":
            return lg * (alpha + n * beta)
        if algorithm == "scatter_allgather":
            return (lg + P - 1) * alpha + 2 * (P - 1) / P * n * beta
    raise ValueError(f"no algorithm {algorithm!r} for {kind}; known: {ALGORITHMS.get(fam)}")


@dataclass(frozen=True)
class Sizes:
    """What a collective's time depends on (bytes): see :func:`cost`."""

    kind: str
    n: float
    max_block: float | None = None
    max_rank: float | None = None
    itemsize: int = 4


def sizes(c: Collective, P: int) -> Sizes:
    counts = np.asarray(c.counts)
    s = c.itemsize
    fam = _FAMILY[c.kind]
    if fam in ("allreduce", "bcast"):
        return Sizes(c.kind, float(counts[0]) * s, itemsize=s)
    if fam in ("allgather", "reduce_scatter"):
        return Sizes(c.kind, float(counts.sum()) * s, float(counts.max()) * s, itemsize=s)
    if fam == "alltoall":
        diag = np.diagonal(counts)  # self-sends stay in memory
        sent = counts.sum(axis=1) - diag
        recv = counts.sum(axis=0) - diag
        return Sizes(c.kind, float(sent.mean()) * s, None,
                     float(max(sent.max(), recv.max())) * s, itemsize=s)
    return Sizes(c.kind, 0.0)


def chosen(z: Sizes, cl: Cluster, P: int, algorithm: str = "auto") -> str:
    """The algorithm a collective of sizes ``z`` runs over P ranks of ``cl``: ``algorithm``
    itself when it names one, else the selection of the library it names (``auto``: the
    cluster's ``mpi``)."""
    lib = cl.mpi if algorithm == "auto" else algorithm
    if lib not in LIBRARIES:
        return "node_aware" if lib == "two_level" else lib
    ppn = max(1, min(cl.ranks_per_node, P))
    per_peer = z.max_rank / max(P - 1, 1) if z.max_rank is not None else None
    return select(lib, z.kind, P, z.n, mb=z.max_block, per_peer=per_peer,
                  nodes=-(-P // ppn), ppn=ppn, itemsize=z.itemsize)


def algorithm_time(kind: str, alg: str, net: A.Net, z: Sizes) -> float:
    """Seconds of algorithm ``alg`` for ``kind`` on ``net`` (:mod:`sim.algorithms`)."""
    fam = _FAMILY[kind]
    P, n = net.P, z.n
    mb = z.max_block if z.max_block is not None else n / P
    mr = z.max_rank if z.max_rank is not None else n
    if fam == "barrier":
        return A.barrier(net)
    if fam == "allreduce":
        flat = {"recursive_doubling": A.allreduce_recursive_doubling,
                "rabenseifner": A.allreduce_rabenseifner, "ring": A.allreduce_ring,
                "segmented_ring": A.allreduce_ring, "binomial": A.allreduce_reduce_bcast,
                "nonoverlapping": A.allreduce_reduce_bcast, "linear": A.allreduce_linear,
                "basic_linear": A.allreduce_linear}
        if alg == "node_aware":
            return A.allreduce_node_aware(net, n, _leaders_allreduce(z))
        if alg in flat:
            return flat[alg](net, n)
    elif fam in _BLOCKED:  # f(net, n, largest block) or f(net, n, busiest rank's bytes)
        f = _BLOCKED[fam].get(alg)
        if f is not None:
            return f(net, n, mr if fam == "alltoall" else mb)
    elif fam == "bcast":
        if alg == "binomial":
            return A.bcast_binomial(net, n)
        if alg in ("scatter_allgather", "scatter_ring_allgather"):
            return A.bcast_scatter_allgather(net, n, ring=True)
        if alg == "scatter_rd_allgather":
            return A.bcast_scatter_allgather(net, n, ring=False)
        if alg in ("linear", "basic_linear"):
            return A.bcast_linear(net, n)
        if alg == "knomial":
            return A.bcast_knomial(net, n)
        if alg in ("pipeline", "chain"):
            return A.bcast_pipeline(net, n)
        if alg in ("binary_tree", "split_binary_tree"):
            depth = A.lg_ceil(P + 1)
            return A.bcast_pipeline(net, n, seg=8192.0 if alg == "split_binary_tree" else n,
                                    tree_depth=2 * depth)
    raise ValueError(f"no algorithm {alg!r} for {kind}")


_BLOCKED = {
    "reduce_scatter": {"recursive_halving": A.reduce_scatter_recursive_halving,
                       "pairwise": A.reduce_scatter_pairwise, "ring": A.reduce_scatter_ring,
                       "butterfly": A.reduce_scatter_butterfly,
                       "nonoverlapping": lambda net, n, mb: A.allreduce_reduce_bcast(net, n)},
    "allgather": {"ring": A.allgather_ring, "recursive_doubling": A.allgather_recursive_doubling,
                  "bruck": A.allgather_bruck, "neighbor": A.allgather_neighbor,
                  "linear": A.allgather_linear, "two_proc": A.allgather_ring},
    "alltoall": {"pairwise": A.alltoall_pairwise, "bruck": A.alltoall_bruck,
                 "scattered": A.alltoall_scattered, "linear": A.alltoall_linear,
                 "linear_sync": A.alltoall_linear, "two_proc": A.alltoall_pairwise},
}


def _leaders_allreduce(z: Sizes):
    """The flat MPICH rule among node leaders (composition alpha's inter-node step)."""
    def run(net: A.Net, n: float) -> float:
        alg = select("mpich", "allreduce", net.P, n, nodes=net.P, ppn=1, itemsize=z.itemsize)
        return algorithm_time("allreduce", alg, net, z)
    return run


def sized_time(z: Sizes, cl: Cluster, P: int, algorithm: str = "auto") -> float:
    """Seconds of a collective of sizes ``z`` over P ranks of cluster ``cl``: ``algorithm``
    names a library (``mpich``, ``openmpi``, ``openmpi-4.0``; ``auto``: the cluster's) or one
    algorithm; step by step (:mod:`sim.algorithms`)."""
    if P <= 1:
        return 0.0
    alg = chosen(z, cl, P, algorithm)
    net = A.Net.of(cl, P)
    return algorithm_time(z.kind, alg, net, z) + net.slowest()


def collective_time(c: Collective, cl: Cluster, P: int | None = None,
                    algorithm: str = "auto") -> float:
    """Seconds of collective ``c`` on cluster ``cl`` (:func:`sized_time`)."""
    P = cl.ranks if P is None else P
    return sized_time(sizes(c, P), cl, P, algorithm)
