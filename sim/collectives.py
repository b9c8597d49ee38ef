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

(*) the intra-node phase with the intra (α, β), the inter-node phase among node leaders with the
inter (α, β).

Reduction arithmetic (γ) is not modelled. ``mpich`` picks the algorithm MPICH's defaults pick
by message size (CVAR defaults: ALLREDUCE_SHORT_MSG_SIZE 2048, ALLGATHER_SHORT/LONG_MSG_SIZE
81920/524288, REDSCAT_COMMUTATIVE_LONG_MSG_SIZE 524288, ALLTOALL_SHORT/MEDIUM_MSG_SIZE
256/32768, BCAST_SHORT/LONG_MSG_SIZE 12288/524288, BCAST_MIN_PROCS 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.accounting import Collective
from sim.cluster import Cluster, Level

ALGORITHMS = {
    "allreduce": ("ring", "recursive_doubling", "rabenseifner", "binomial", "two_level"),
    "reduce_scatter": ("ring", "pairwise", "recursive_halving", "two_level"),
    "allgather": ("ring", "recursive_doubling", "bruck", "two_level"),
    "alltoall": ("pairwise", "bruck"),
    "bcast": ("binomial", "scatter_allgather", "two_level"),
}
_FAMILY = {"allreduce": "allreduce", "reduce_scatter": "reduce_scatter",
           "allgather": "allgather", "allgatherv": "allgather", "alltoall": "alltoall",
           "alltoallv": "alltoall", "bcast": "bcast", "barrier": "barrier"}


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
    if P <= 1 or fam == "barrier" and P <= 1:
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
    elif fam == "bcast":
        if algorithm == "binomial":
            return lg * (alpha + n * beta)
        if algorithm == "scatter_allgather":
            return (lg + P - 1) * alpha + 2 * (P - 1) / P * n * beta
    raise ValueError(f"no algorithm {algorithm!r} for {kind}; known: {ALGORITHMS.get(fam)}")


def mpich_default(kind: str, P: int, n: float, per_peer: float | None = None) -> str:
    """The algorithm MPICH's default selection uses for this size (module docstring)."""
    fam = _FAMILY[kind]
    if fam == "allreduce":
        return "recursive_doubling" if n <= 2048 else "rabenseifner"
    if fam == "allgather":
        if n < 524288 and _pof2(P):
            return "recursive_doubling"
        return "bruck" if n < 81920 else "ring"
    if fam == "reduce_scatter":
        return "recursive_halving" if n < 524288 else "pairwise"
    if fam == "alltoall":
        pp = n / max(P, 1) if per_peer is None else per_peer
        return "bruck" if (pp <= 256 and P >= 8 and kind == "alltoall") else "pairwise"
    if fam == "bcast":
        return "binomial" if (n < 12288 or P < 8) else "scatter_allgather"
    if fam == "barrier":
        return "dissemination"
    raise ValueError(kind)


def _two_level(kind: str, n: float, cl: Cluster) -> float:
    """Intra-node phase, inter-node phase among node leaders, intra-node phase."""
    ppn, N = cl.ranks_per_node, cl.nodes
    a, b = cl.intra.latency_s, cl.intra.beta_s_per_byte
    A, Bt = cl.inter.latency_s, cl.inter.beta_s_per_byte
    fam = _FAMILY[kind]
    if fam == "allreduce":  # RS in node, allreduce of n/ppn over nodes, AG in node
        return (cost("reduce_scatter", "ring", ppn, n, a, b)
                + cost("allreduce", mpich_default("allreduce", N, n / ppn), N, n / ppn, A, Bt)
                + cost("allgather", "ring", ppn, n, a, b))
    if fam == "allgather":  # gather in node, allgather among leaders, bcast in node
        return (cost("allgather", "ring", ppn, n / N, a, b)
                + cost("allgather", mpich_default("allgather", N, n), N, n, A, Bt)
                + cost("bcast", "binomial", ppn, n, a, b))
    if fam == "reduce_scatter":
        return (cost("reduce_scatter", "ring", ppn, n, a, b)
                + cost("reduce_scatter", mpich_default("reduce_scatter", N, n / ppn), N,
                       n / ppn, A, Bt))
    if fam == "bcast":
        return cost("bcast", "binomial", N, n, A, Bt) + cost("bcast", "binomial", ppn, n, a, b)
    raise ValueError(f"no two-level form for {kind}")


@dataclass(frozen=True)
class Sizes:
    """What a collective's time depends on (bytes): see :func:`cost`."""

    kind: str
    n: float
    max_block: float | None = None
    max_rank: float | None = None


def sizes(c: Collective, P: int) -> Sizes:
    counts = np.asarray(c.counts)
    s = c.itemsize
    fam = _FAMILY[c.kind]
    if fam in ("allreduce", "bcast"):
        return Sizes(c.kind, float(counts[0]) * s)
    if fam in ("allgather", "reduce_scatter"):
        return Sizes(c.kind, float(counts.sum()) * s, float(counts.max()) * s)
    if fam == "alltoall":
        diag = np.diagonal(counts)  # self-sends stay in memory
        sent = counts.sum(axis=1) - diag
        recv = counts.sum(axis=0) - diag
        return Sizes(c.kind, float(sent.mean()) * s, None,
                     float(max(sent.max(), recv.max())) * s)
    return Sizes(c.kind, 0.0)


def sized_time(z: Sizes, cl: Cluster, P: int, algorithm: str = "mpich") -> float:
    """Seconds of a collective of sizes ``z`` over P ranks of cluster ``cl``."""
    if P <= 1:
        return 0.0
    fam = _FAMILY[z.kind]
    lvl: Level = cl.inter if cl.nodes > 1 else cl.intra
    alg = algorithm
    if alg == "mpich":
        per_peer = z.max_rank / max(P - 1, 1) if z.max_rank is not None else None
        alg = mpich_default(z.kind, P, z.n, per_peer)
    if alg == "two_level":
        if cl.nodes == 1 or fam == "alltoall":
            alg = mpich_default(z.kind, P, z.n)
        else:
            return _two_level(z.kind, z.n, cl)
    if fam == "barrier":
        return _lg(P) * lvl.latency_s
    return cost(z.kind, alg, P, z.n, lvl.latency_s, lvl.beta_s_per_byte, z.max_block,
                z.max_rank)


def collective_time(c: Collective, cl: Cluster, P: int | None = None,
                    algorithm: str = "mpich") -> float:
    """Seconds of collective ``c`` on cluster ``cl`` (flat algorithms use the slowest level
    they cross: inter-node when the ranks span nodes)."""
    P = cl.ranks if P is None else P
    return sized_time(sizes(c, P), cl, P, algorithm)
