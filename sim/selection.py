"""Which algorithm an MPI library runs for a collective, by its own default rules.

``mpich``: MPICH 4.x/5.x. Collectives select through the csel JSON trees compiled into the
library: ``maint/tuning/coll/ch4/generic.json`` (the ch4 device: node-aware compositions) then
``maint/tuning/coll/mpir/generic.json`` (the algorithms). Ported for the collectives desmpi
uses, commutative built-in operations:

* allreduce — all ranks on one node: composition gamma, the POSIX shared-memory path (modelled
  as reduce + broadcast over shared memory, ``node_aware`` with one node); across nodes with
  several ranks per node and ≤ 32768 bytes: composition alpha (``node_aware``: reduce in the
  node, allreduce among node leaders, broadcast in the node); otherwise composition beta, the
  flat MPIR rules: ≤ 8 bytes or fewer elements than 2^⌊lg P⌋ → recursive doubling, else
  reduce_scatter_allgather (Rabenseifner);
* allgather(v) — P a power of two and < 524288 bytes in all → recursive doubling; otherwise
  < 81920 bytes → Bruck; else ring;
* reduce_scatter — < 524288 bytes in all → recursive halving; else pairwise;
* alltoall — P < 8: ≤ 32768 bytes per peer → scattered, else pairwise; P ≥ 8: ≤ 256 → Bruck,
  ≤ 32768 → scattered, else pairwise; alltoallv → scattered;
* bcast — P < 8 → binomial; P a power of two: ≤ 12288 bytes → binomial, else scatter +
  recursive-doubling allgather up to 65536 bytes per rank, scatter + ring allgather beyond;
  otherwise ≤ 12288 bytes per rank → binomial, else scatter + ring allgather.

``openmpi``: Open MPI ≥ 4.1 ``coll/tuned`` fixed decision rules
(``ompi/mca/coll/tuned/coll_tuned_decision_fixed.c``, generated from the ompi-collectives-tuning
measurements), tables below, commutative operations.

``openmpi-4.0``: the earlier fixed rules (Open MPI ≤ 4.0, same file): allreduce recursive
doubling below 10000 bytes, else ring (segmented beyond P MiB); allgather(v) recursive doubling
(P a power of two) or Bruck below 50000 bytes, else ring (odd P) or neighbor exchange;
reduce_scatter recursive halving when ≤ 12 KiB, or ≤ 256 KiB with P a power of two, or P ≥
0.0012·n + 8, else ring; alltoall two-process exchange (P = 2), Bruck (< 200 bytes per peer and
P > 12), linear (< 3000), else pairwise; alltoallv linear; bcast binomial below 2048 bytes,
else a segmented tree / pipeline.
"""

from __future__ import annotations

LIBRARIES = ("mpich", "openmpi", "openmpi-4.0")
FAMILY = {"allreduce": "allreduce", "reduce_scatter": "reduce_scatter",
          "allgather": "allgather", "allgatherv": "allgather", "alltoall": "alltoall",
          "alltoallv": "alltoall", "bcast": "bcast", "barrier": "barrier"}


def _pof2(P: int) -> bool:
    return P & (P - 1) == 0


def _per_peer(n: float, P: int, per_peer: float | None) -> float:
    """Bytes a rank sends one peer in an alltoall (n: to all others together)."""
    return n / max(P - 1, 1) if per_peer is None else per_peer


def _table(rules: list[tuple[int, list[tuple[int, str]]]], P: int, size: float) -> str:
    """[(P below this, [(size below this, algorithm), ...]), ...]; the last bounds are inf."""
    for p_max, by_size in rules:
        if P < p_max:
            for s_max, alg in by_size:
                if size < s_max:
                    return alg
    raise AssertionError("rules must end with infinite bounds")


INF = 1 << 62
# Open MPI >= 4.1, coll_tuned_decision_fixed.c (commutative ops). Algorithm ids there:
# allreduce 1 basic_linear, 2 nonoverlapping, 3 recursive_doubling, 4 ring, 5 segmented_ring,
# 6 rabenseifner. Size = the vector's bytes.
OMPI_ALLREDUCE = [
    (4, [(8, "ring"), (4096, "recursive_doubling"), (8192, "ring"), (16384, "recursive_doubling"),
         (65536, "ring"), (262144, "segmented_ring"), (INF, "rabenseifner")]),
    (8, [(16, "ring"), (8192, "recursive_doubling"), (INF, "rabenseifner")]),
    (16, [(8192, "recursive_doubling"), (INF, "rabenseifner")]),
    (32, [(64, "segmented_ring"), (4096, "recursive_doubling"), (INF, "rabenseifner")]),
    (64, [(128, "segmented_ring"), (INF, "rabenseifner")]),
    (128, [(262144, "recursive_doubling"), (INF, "rabenseifner")]),
    (256, [(131072, "nonoverlapping"), (262144, "recursive_doubling"), (INF, "rabenseifner")]),
    (512, [(4096, "nonoverlapping"), (INF, "rabenseifner")]),
    (2048, [(2048, "nonoverlapping"), (16384, "recursive_doubling"), (INF, "rabenseifner")]),
    (4096, [(2048, "nonoverlapping"), (4096, "segmented_ring"), (16384, "recursive_doubling"),
            (INF, "rabenseifner")]),
    (INF, [(2048, "nonoverlapping"), (16384, "segmented_ring"), (32768, "recursive_doubling"),
           (INF, "rabenseifner")]),
]
# alltoall: 1 linear, 2 pairwise, 3 modified_bruck, 4 linear_sync, 5 two_proc; size = bytes
# per peer
OMPI_ALLTOALL = [
    (3, [(2, "pairwise"), (4, "two_proc"), (16, "pairwise"), (64, "two_proc"),
         (256, "pairwise"), (4096, "two_proc"), (32768, "pairwise"), (262144, "linear_sync"),
         (1048576, "two_proc"), (INF, "pairwise")]),
    (8, [(8192, "linear_sync"), (16384, "linear"), (65536, "linear_sync"), (524288, "linear"),
         (1048576, "pairwise"), (INF, "linear")]),
    (16, [(262144, "linear_sync"), (INF, "linear")]),
    (32, [(4, "linear_sync"), (512, "bruck"), (8192, "linear_sync"), (32768, "linear"),
          (262144, "linear_sync"), (524288, "linear"), (INF, "linear_sync")]),
    (64, [(512, "bruck"), (524288, "linear"), (INF, "linear_sync")]),
    (128, [(1024, "bruck"), (2048, "linear"), (4096, "linear_sync"), (262144, "linear"),
           (INF, "pairwise")]),
    (256, [(1024, "bruck"), (2048, "linear_sync"), (262144, "linear"), (INF, "pairwise")]),
    (512, [(1024, "bruck"), (8192, "linear_sync"), (32768, "linear"), (INF, "pairwise")]),
    (1024, [(512, "bruck"), (8192, "linear_sync"), (16384, "linear"), (131072, "linear_sync"),
            (262144, "linear"), (INF, "pairwise")]),
    (2048, [(512, "bruck"), (1024, "linear_sync"), (2048, "linear"), (16384, "linear_sync"),
            (262144, "linear"), (INF, "linear_sync")]),
    (4096, [(1024, "bruck"), (4096, "linear_sync"), (8192, "linear"), (131072, "linear_sync"),
            (INF, "linear")]),
    (INF, [(2048, "bruck"), (8192, "linear_sync"), (16384, "linear"), (32768, "linear_sync"),
           (65536, "linear"), (INF, "linear_sync")]),
]
# alltoallv: by P only (1 basic_linear, 2 pairwise)
OMPI_ALLTOALLV = [(4, [(INF, "pairwise")]), (64, [(INF, "linear")]),
                  (128, [(INF, "pairwise")]), (256, [(INF, "linear")]),
                  (1024, [(INF, "pairwise")]), (INF, [(INF, "linear")])]
# allgather: 1 linear, 2 bruck, 3 recursive_doubling, 4 ring, 5 neighbor, 6 two_proc; size =
# one rank's block. Rows up to P < 512 as in the source; the last row (P >= 256) is also used
# beyond 512 ranks, whose rows were not ported
OMPI_ALLGATHER = [
    (3, [(INF, "two_proc")]),
    (32, [(INF, "recursive_doubling")]),
    (64, [(1024, "recursive_doubling"), (65536, "neighbor"), (INF, "ring")]),
    (128, [(512, "recursive_doubling"), (65536, "neighbor"), (INF, "ring")]),
    (256, [(512, "recursive_doubling"), (131072, "neighbor"), (524288, "ring"),
           (1048576, "neighbor"), (INF, "ring")]),
    (INF, [(32, "recursive_doubling"), (128, "bruck"), (1024, "recursive_doubling"),
           (131072, "neighbor"), (524288, "ring"), (1048576, "neighbor"), (INF, "ring")]),
]
# reduce_scatter: 1 non-overlapping, 2 recursive_halving, 3 ring, 4 butterfly; size = all
# blocks
OMPI_REDUCE_SCATTER = [
    (4, [(65536, "ring"), (131072, "butterfly"), (INF, "ring")]),
    (8, [(8, "nonoverlapping"), (262144, "recursive_halving"), (INF, "ring")]),
    (32, [(262144, "recursive_halving"), (INF, "ring")]),
    (64, [(64, "nonoverlapping"), (2048, "recursive_halving"), (524288, "butterfly"),
          (INF, "ring")]),
    (128, [(256, "nonoverlapping"), (512, "recursive_halving"), (2048, "butterfly"),
           (4096, "recursive_halving"), (INF, "butterfly")]),
    (256, [(256, "nonoverlapping"), (512, "recursive_halving"), (INF, "butterfly")]),
    (512, [(256, "nonoverlapping"), (1024, "recursive_halving"), (INF, "butterfly")]),
    (1024, [(512, "nonoverlapping"), (2048, "recursive_halving"), (8192, "butterfly"),
            (16384, "recursive_halving"), (INF, "butterfly")]),
    (2048, [(512, "nonoverlapping"), (4096, "recursive_halving"), (16384, "butterfly"),
            (32768, "recursive_halving"), (INF, "butterfly")]),
    (4096, [(512, "nonoverlapping"), (4096, "recursive_halving"), (INF, "butterfly")]),
    (INF, [(1024, "nonoverlapping"), (8192, "recursive_halving"), (INF, "butterfly")]),
]
# bcast: 1 basic_linear, 2 chain, 3 pipeline, 4 split_binary_tree, 5 binary_tree, 6 binomial,
# 7 knomial, 8 scatter_allgather, 9 scatter_allgather_ring
OMPI_BCAST = [
    (4, [(32, "pipeline"), (256, "binary_tree"), (512, "pipeline"), (1024, "knomial"),
         (32768, "linear"), (131072, "binary_tree"), (262144, "chain"), (524288, "linear"),
         (1048576, "binomial"), (INF, "binary_tree")]),
    (8, [(64, "binary_tree"), (128, "binomial"), (2048, "binary_tree"), (8192, "binomial"),
         (1048576, "linear"), (INF, "chain")]),
    (16, [(8, "knomial"), (64, "binary_tree"), (4096, "knomial"), (16384, "binary_tree"),
          (32768, "binomial"), (INF, "linear")]),
    (32, [(4096, "knomial"), (1048576, "binomial"), (INF, "scatter_allgather")]),
    (64, [(2048, "binomial"), (INF, "knomial")]),
    (128, [(INF, "knomial")]),
    (256, [(2, "binomial"), (16384, "binary_tree"), (32768, "linear"), (65536, "binary_tree"),
           (INF, "knomial")]),
    (1024, [(16384, "knomial"), (32768, "split_binary_tree"), (INF, "knomial")]),
    (2048, [(524288, "knomial"), (INF, "scatter_allgather")]),
    (4096, [(262144, "knomial"), (INF, "scatter_allgather")]),
    (INF, [(8192, "knomial"), (16384, "binary_tree"), (262144, "knomial"),
           (INF, "scatter_allgather")]),
]


def select(mpi: str, kind: str, P: int, n: float, *, mb: float | None = None,
           per_peer: float | None = None, nodes: int = 1, ppn: int = 1,
           itemsize: int = 4) -> str:
    """The algorithm library ``mpi`` runs for ``kind`` over P ranks (``nodes`` nodes of
    ``ppn`` ranks). n: the collective's bytes (see :mod:`sim.algorithms`); mb: largest block;
    per_peer: bytes per peer (alltoall); itemsize: bytes per element (allreduce's count rule).
    """
    fam = FAMILY[kind]
    if fam == "barrier":
        return "barrier"
    if mpi == "mpich":
        return _mpich(kind, fam, P, n, mb, per_peer, nodes, ppn, itemsize)
    if mpi == "openmpi":
        return _openmpi(kind, fam, P, n, mb, per_peer)
    if mpi == "openmpi-4.0":
        return _openmpi40(kind, fam, P, n, mb, per_peer)
    raise ValueError(f"unknown MPI library {mpi!r}; known: {', '.join(LIBRARIES)}")


def _mpich(kind, fam, P, n, mb, per_peer, nodes, ppn, itemsize) -> str:
    if fam == "allreduce":
        if nodes == 1:
            return "node_aware"  # ch4 composition gamma: the POSIX shared-memory allreduce
        if ppn > 1 and n <= 32768:
            return "node_aware"  # ch4 composition alpha
        p2 = 1 << (P.bit_length() - 1)
        if n <= 8 or n / itemsize < p2:
            return "recursive_doubling"
        return "rabenseifner"
    if fam == "allgather":
        if _pof2(P) and n < 524288:
            return "recursive_doubling"
        return "bruck" if n < 81920 else "ring"
    if fam == "reduce_scatter":
        return "recursive_halving" if n < 524288 else "pairwise"
    if fam == "alltoall":
        if kind == "alltoallv":
            return "scattered"
        pp = _per_peer(n, P, per_peer)
        if P < 8:
            return "scattered" if pp <= 32768 else "pairwise"
        return "bruck" if pp <= 256 else ("scattered" if pp <= 32768 else "pairwise")
    if fam == "bcast":
        per_proc = n / P
        if P < 8:
            return "binomial"
        if _pof2(P):
            if n <= 12288:
                return "binomial"
            return "scatter_rd_allgather" if per_proc <= 65536 else "scatter_ring_allgather"
        return "binomial" if per_proc <= 12288 else "scatter_ring_allgather"
    raise ValueError(kind)


def _openmpi(kind, fam, P, n, mb, per_peer) -> str:
    if fam == "allreduce":
        return _table(OMPI_ALLREDUCE, P, n)
    if fam == "alltoall":
        if kind == "alltoallv":
            return _table(OMPI_ALLTOALLV, P, n)
        pp = _per_peer(n, P, per_peer)
        return _table(OMPI_ALLTOALL, P, pp)
    if fam == "allgather":  # allgatherv: the allgather rules on the mean block
        return _table(OMPI_ALLGATHER, P, n / P)
    if fam == "reduce_scatter":
        return _table(OMPI_REDUCE_SCATTER, P, n)
    if fam == "bcast":
        return _table(OMPI_BCAST, P, n)
    raise ValueError(kind)


def _openmpi40(kind, fam, P, n, mb, per_peer) -> str:
    if fam == "allreduce":
        if n < 10000:
            return "recursive_doubling"
        return "ring" if P * (1 << 20) >= n else "segmented_ring"
    if fam == "allgather":
        if P == 2:
            return "two_proc"
        if n < 50000:
            return "recursive_doubling" if _pof2(P) else "bruck"
        return "ring" if P % 2 else "neighbor"
    if fam == "reduce_scatter":
        p2 = 1 << (P - 1).bit_length()
        if n <= 12 * 1024 or (n <= 256 * 1024 and p2 == P) or P >= 0.0012 * n + 8:
            return "recursive_halving"
        return "ring"
    if fam == "alltoall":
        if kind == "alltoallv":
            return "linear"
        if P == 2:
            return "two_proc"
        pp = _per_peer(n, P, per_peer)
        if pp < 200 and P > 12:
            return "bruck"
        return "linear" if pp < 3000 else "pairwise"
    if fam == "bcast":
        if n < 2048:
            return "binomial"
        return "split_binary_tree" if n < 370728 else "pipeline"
    raise ValueError(kind)
