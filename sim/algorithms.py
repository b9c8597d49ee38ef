"""Step-by-step cost of each collective algorithm on a cluster.

Each algorithm is the sequence of communication steps its implementation takes (MPICH
``src/mpi/coll/*``, Open MPI ``ompi/mca/coll/base/coll_base_*.c``; Thakur, Rabenseifner & Gropp,
IJHPCA 19(1), 2005). A step exchanges messages between partners at some distance; its time is
the slowest pair's (bulk synchronous), so the step pays

* the **level it crosses**: ranks are placed in blocks of ``ranks_per_node`` (rank r on node
  r // ppn), and a step whose slowest pair spans two nodes pays the inter-node level, else the
  intra-node one — with the level's measured point-to-point curve where it has one
  (:meth:`sim.cluster.Level.time`), so each step's message size falls in its own protocol
  regime;
* **NIC sharing**: when k ranks of a node send off-node in the same step, their k messages go
  through one NIC: the step takes T(m) + (k − 1)·m / bandwidth;
* **the slowest rank**: each rank's path through the algorithm is a chain of its steps (a step
  repeated k times, as in a ring, is k steps of the chain); the collective ends with the
  slowest of the P chains. Where a level carries the spread of its
  measured repeats (σ per message size), a chain's time has mean Σ T(m) and variance Σ σ(m)²
  over its steps, and the expected slowest of P such chains adds √(Σ σ²) times the expected
  maximum of P standard normal draws (:func:`sim.cluster.expected_max_normal`). The cluster's
  ``waits = "step"`` charges instead every step the slowest of its P ranks (Σ σ·E[max of P]):
  the pessimistic bound, where the chain form is the optimistic one (a rank that waits for a
  late partner passes the delay on: the true longest path lies between the two);
* **reduction arithmetic** (γ): reducing m bytes takes m / ``reduce_Bps`` (0: left out);
* **non-power-of-two P**: recursive doubling / halving fold the P − 2^⌊lg P⌋ extra ranks in
  with one step before and one after (MPICH's and Open MPI's implementations).

With one level, a plain α-β level, γ = 0 and P a power of two, every form reduces to the closed
forms of :func:`sim.collectives.cost` (tests/test_sim.py checks that).

Sizes: ``n`` is the collective's bytes (allreduce, bcast: the vector; allgather,
reduce_scatter: all blocks together; alltoall: what one rank sends to the others, mean over
ranks), ``mb`` the largest block, ``mr`` the largest of any rank's bytes sent or received
(alltoallv).
"""

from __future__ import annotations

import math

import numpy as np

from sim.cluster import Cluster, Level, expected_max_normal

THROTTLE = 32  # MPICH MPIR_CVAR_ALLTOALL_THROTTLE default: messages in flight per rank
WAITS = ("step", "chain")  # how the slowest rank is charged (Net.slowest)


def lg_floor(P: int) -> int:
    return P.bit_length() - 1 if P > 0 else 0


def lg_ceil(P: int) -> int:
    return (P - 1).bit_length() if P > 1 else 0


class Net:
    """The levels P ranks of a cluster see, with block placement (rank r on node r // ppn)."""

    def __init__(self, P: int, ppn: int, intra: Level, inter: Level, gamma: float = 0.0,
                 waits: str = "chain") -> None:
        if waits not in WAITS:
            raise ValueError(f"waits = {waits!r}; known: {', '.join(WAITS)}")
        self.P = P
        self.ppn = max(1, min(ppn, P))
        self.nodes = -(-P // self.ppn)
        self.intra, self.inter, self.gamma = intra, inter, gamma
        self.waits = waits
        self.var = 0.0  # Σ σ² of the steps costed so far (chain form of slowest)
        self.lock = 0.0  # Σ σ·E[max of P] of the steps costed so far (step form)
        self._emax = float(expected_max_normal(P))

    @staticmethod
    def of(cl: Cluster, P: int) -> Net:
        return Net(P, cl.ranks_per_node, cl.intra, cl.inter, cl.reduce_Bps, cl.waits)

    def red(self, m) -> float:
        """Seconds to reduce m bytes (γ)."""
        return float(np.sum(m)) / self.gamma if self.gamma > 0 else 0.0

    def _acc(self, lvl: Level, m, reps: int = 1) -> None:
        """Accumulate the spread of ``reps`` rounds of steps of m bytes on ``lvl``."""
        if not lvl.curve_sd_s:  # no measured spread: nothing to accumulate
            return
        sd = lvl.spread(np.asarray(m, dtype=np.float64))
        self.var += reps * float(np.sum(sd ** 2))
        self.lock += reps * float(np.sum(sd)) * self._emax

    def _t(self, lvl: Level, m, k=1, reps: int = 1) -> np.ndarray:
        """Steps of m bytes, k messages sharing a NIC in each (one round; ``reps`` rounds of
        spread are accumulated)."""
        m = np.asarray(m, dtype=np.float64)
        self._acc(lvl, m, reps)
        return lvl.time(m) + (np.asarray(k) - 1) * m / lvl.bandwidth_Bps

    def absorb(self, other: Net) -> None:
        """Add the waits of a sub-collective run on ``other`` (e.g. among node leaders)."""
        self.var += other.var
        self.lock += other.lock

    def slowest(self) -> float:
        """Expected extra time of waiting for slow ranks, over the mean step times: ``step``:
        every step waits for the slowest of its ranks (Σ over steps of σ·E[max of P]);
        ``chain``: each rank runs its chain of steps on its own and the collective waits for
        the slowest chain (√(Σ σ²)·E[max of P])."""
        if self.waits == "step":
            return self.lock
        return float(np.sqrt(self.var) * self._emax) if self.var else 0.0

    def xor(self, d, m, reps: int = 1) -> float:
        """Time of steps whose partner is r XOR d (d: a distance or an array of them), done
        ``reps`` times."""
        d = np.atleast_1d(np.asarray(d, dtype=np.int64))
        m = np.broadcast_to(np.asarray(m, dtype=np.float64), d.shape)
        if self.nodes == 1:
            return reps * float(np.sum(self._t(self.intra, m, reps=reps)))
        ppn = self.ppn
        aligned = (ppn % (2 * d) == 0) & (d < ppn)  # partner always inside the node
        k = np.where(d >= ppn, ppn, np.minimum(d, ppn))  # ranks of a node crossing at once
        t_in = self._t(self.intra, m[aligned], reps=reps)
        t_out = self._t(self.inter, m[~aligned], k[~aligned], reps=reps)
        return reps * float(np.sum(t_in) + np.sum(t_out))

    def shift(self, s, m, reps: int = 1) -> float:
        """Time of steps whose partner is r + s (mod P): rings (s = 1), pairwise, Bruck; done
        ``reps`` times."""
        s = np.atleast_1d(np.asarray(s, dtype=np.int64))
        m = np.broadcast_to(np.asarray(m, dtype=np.float64), s.shape)
        if self.nodes == 1:
            return reps * float(np.sum(self._t(self.intra, m, reps=reps)))
        # ranks of a node whose partner sits on another node: the last s of the node's block
        k = np.maximum(1, np.minimum(np.minimum(s, self.ppn), self.P - s))
        return reps * float(np.sum(self._t(self.inter, m, k, reps=reps)))

    def flat(self, m_per_peer: float, peers: int, throttle: int | None) -> float:
        """Every rank sends m bytes to each of ``peers`` others at once (Isend/Irecv in batches
        of ``throttle``): latency per batch, bytes at the bandwidth of the busiest link."""
        if peers <= 0:
            return 0.0
        batches = 1 if not throttle else -(-peers // throttle)
        self._acc(self.intra if self.nodes == 1 else self.inter, m_per_peer, batches)
        if self.nodes == 1:
            return batches * float(self.intra.time(0.0)) + peers * m_per_peer / \
                self.intra.bandwidth_Bps
        off = min(peers, self.P - self.ppn)  # peers on other nodes, per rank
        on = peers - off
        t_out = batches * float(self.inter.time(0.0)) + \
            self.ppn * off * m_per_peer / self.inter.bandwidth_Bps
        t_in = on * m_per_peer / self.intra.bandwidth_Bps
        return max(t_out, t_in) + float(self.inter.time(m_per_peer)) - \
            float(self.inter.time(0.0))


# ---- allreduce -------------------------------------------------------------------------------
def _fold(net: Net, n: float) -> float:
    """Non-power-of-two P: the extra ranks hand their vector to a partner and get the result
    back (one step each way, distance 1), reduced once."""
    P = net.P
    if P & (P - 1) == 0:
        return 0.0
    return net.shift(1, n, reps=2) + net.red(n)


def allreduce_recursive_doubling(net: Net, n: float) -> float:
    p2 = 1 << lg_floor(net.P)
    d = 1 << np.arange(lg_floor(p2))
    return _fold(net, n) + net.xor(d, n) + net.red(np.full(d.shape, n))


def allreduce_rabenseifner(net: Net, n: float) -> float:
    """Reduce-scatter by recursive halving (distance 1, 2, 4, ... with n/2, n/4, ...), then
    allgather by recursive doubling back (MPICH reduce_scatter_allgather, Open MPI
    redscat_allgather)."""
    p2 = 1 << lg_floor(net.P)
    k = np.arange(lg_floor(p2))
    d, m = 1 << k, n / (2.0 ** (k + 1))
    return _fold(net, n) + net.xor(d, m, reps=2) + net.red(m)


def allreduce_ring(net: Net, n: float) -> float:
    P = net.P
    m = math.ceil(n / P)
    return net.shift(1, m, reps=2 * (P - 1)) + (P - 1) * net.red(m)


def allreduce_reduce_bcast(net: Net, n: float) -> float:
    """Binomial reduce then binomial broadcast (MPICH/Open MPI "nonoverlapping")."""
    d = 1 << np.arange(lg_ceil(net.P))
    return net.xor(d, n, reps=2) + net.red(np.full(d.shape, n))


def allreduce_linear(net: Net, n: float) -> float:
    """Open MPI basic_linear: every rank sends to rank 0, which reduces and sends back."""
    P = net.P
    return 2 * net.flat(n, P - 1, None) + (P - 1) * net.red(n)


def allreduce_node_aware(net: Net, n: float, inter_alg) -> float:
    """MPICH's node-aware composition: reduce inside each node (binomial over shared memory),
    ``inter_alg`` among one leader per node, broadcast inside each node."""
    ppn = net.ppn
    d = 1 << np.arange(lg_ceil(ppn))
    intra = 2 * float(np.sum(net._t(net.intra, np.full(d.shape, n), reps=2))) + \
        net.red(np.full(d.shape, n))
    if net.nodes == 1:
        return intra
    leaders = Net(net.nodes, 1, net.inter, net.inter, net.gamma, net.waits)
    t = inter_alg(leaders, n)
    net.absorb(leaders)
    return intra + t


# ---- reduce_scatter (n = all blocks, mb = largest block) ---------------------------------------
def reduce_scatter_recursive_halving(net: Net, n: float, mb: float) -> float:
    """MPICH: distance p2/2 with n/2 first, halving both (extra ranks folded in first)."""
    p2 = 1 << lg_floor(net.P)
    k = np.arange(lg_floor(p2))
    d, m = p2 >> (k + 1), n / (2.0 ** (k + 1))
    extra = 0.0 if net.P == p2 else net.shift(1, n) + net.red(n) + net.shift(1, mb)
    return extra + net.xor(d, m) + net.red(m)


def reduce_scatter_pairwise(net: Net, n: float, mb: float) -> float:
    P = net.P
    return net.shift(np.arange(1, P), mb) + (P - 1) * net.red(mb)


def reduce_scatter_ring(net: Net, n: float, mb: float) -> float:
    P = net.P
    return net.shift(1, mb, reps=P - 1) + (P - 1) * net.red(mb)


def reduce_scatter_butterfly(net: Net, n: float, mb: float) -> float:
    """Open MPI butterfly: recursive-halving exchanges at doubling distance (like the reduce-
    scatter half of Rabenseifner's allreduce), then each rank keeps its block."""
    p2 = 1 << lg_floor(net.P)
    k = np.arange(lg_floor(p2))
    d, m = 1 << k, n / (2.0 ** (k + 1))
    extra = 0.0 if net.P == p2 else net.shift(1, n, reps=2) + net.red(n)
    return extra + net.xor(d, m) + net.red(m)


# ---- allgather(v) (n = all blocks, mb = largest block) ------------------------------------------
def allgather_ring(net: Net, n: float, mb: float) -> float:
    return net.shift(1, mb, reps=net.P - 1)


def allgather_recursive_doubling(net: Net, n: float, mb: float) -> float:
    P = net.P
    if P & (P - 1):
        return allgather_bruck(net, n, mb)  # both libraries fall back for non-powers of two
    k = np.arange(lg_floor(P))
    return net.xor(1 << k, n * (2.0 ** k) / P)


def allgather_bruck(net: Net, n: float, mb: float) -> float:
    P = net.P
    k = np.arange(lg_ceil(P))
    blocks = np.minimum(1 << k, P - (1 << k))
    return net.shift(1 << k, blocks * n / P)


def allgather_neighbor(net: Net, n: float, mb: float) -> float:
    """Open MPI neighbor exchange: P/2 steps with the left and right neighbours, two blocks
    per step after the first."""
    P = net.P
    return net.shift(1, mb) + net.shift(1, 2 * mb, reps=max(P // 2 - 1, 0))


def allgather_linear(net: Net, n: float, mb: float) -> float:
    return net.flat(mb, net.P - 1, None)


# ---- alltoall(v) (n = bytes a rank sends to others, mr = the busiest rank's) ---------------------
def alltoall_pairwise(net: Net, n: float, mr: float) -> float:
    P = net.P
    return net.shift(np.arange(1, P), mr / (P - 1))


def alltoall_bruck(net: Net, n: float, mr: float) -> float:
    k = np.arange(lg_ceil(net.P))
    return net.shift(1 << k, np.full(k.shape, mr / 2))


def alltoall_scattered(net: Net, n: float, mr: float) -> float:
    """MPICH scattered: Isend/Irecv to every peer, THROTTLE at a time."""
    return net.flat(mr / (net.P - 1), net.P - 1, THROTTLE)


def alltoall_linear(net: Net, n: float, mr: float) -> float:
    """Open MPI basic_linear / linear_sync: every message posted at once."""
    return net.flat(mr / (net.P - 1), net.P - 1, None)


# ---- bcast (n = the vector) ------------------------------------------------------------------
def bcast_binomial(net: Net, n: float) -> float:
    """One sender per node at a time: a step crosses nodes once its distance reaches ppn."""
    d = 1 << np.arange(lg_ceil(net.P))
    inside = (d < net.ppn) | (net.nodes == 1)
    m = np.full(d.shape, float(n))
    return float(np.sum(net._t(net.intra, m[inside])) + np.sum(net._t(net.inter, m[~inside])))


def bcast_scatter_allgather(net: Net, n: float, ring: bool = True) -> float:
    P = net.P
    k = np.arange(lg_ceil(P))
    scatter = net.xor(1 << k, n / (2.0 ** (k + 1)))
    return scatter + (allgather_ring(net, n, n / P) if ring else
                      allgather_recursive_doubling(net, n, n / P))


def bcast_linear(net: Net, n: float) -> float:
    return net.flat(n, net.P - 1, None)


def bcast_knomial(net: Net, n: float, radix: int = 4) -> float:
    """Open MPI knomial (radix 4): at each of ⌈log_radix P⌉ levels a parent sends to up to
    radix − 1 children, one after the other."""
    levels = math.ceil(math.log(net.P, radix)) if net.P > 1 else 0
    lvl = net.inter if net.nodes > 1 else net.intra
    net._acc(lvl, n, levels * (radix - 1))
    return levels * (radix - 1) * float(lvl.time(n))


def bcast_pipeline(net: Net, n: float, seg: float = 65536.0, tree_depth: int | None = None
                   ) -> float:
    """Segmented broadcast down a chain (tree_depth None: P − 1 hops) or a tree: the first
    segment crosses every hop, the others follow one step behind."""
    S = max(1, math.ceil(n / seg))
    hops = (net.P - 1) if tree_depth is None else tree_depth
    m = min(n, seg)
    lvl = net.inter if net.nodes > 1 else net.intra
    net._acc(lvl, m, hops + S - 1)
    return (hops + S - 1) * float(lvl.time(m))


def barrier(net: Net) -> float:
    return net.xor(1 << np.arange(lg_ceil(net.P)), 0.0)
