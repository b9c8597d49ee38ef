"""Exact byte accounting of one rank's part in a collective (DESIGN.md §3).

Two figures per call and rank r of P:

* payload: the bytes the rank hands to MPI for *other* ranks (self-sends excluded; 0 at P = 1);
* wire: the bytes the rank sends under the algorithm the MPI library runs.

A call names its algorithm when the library is known (:class:`Layout`: the library's own
selection rules, :mod:`sim.selection`, applied to the call's sizes; the exact bytes of each
algorithm in :mod:`sim.wire`). A call with no algorithm named (``algorithm = ""``) takes the
textbook ring / pairwise forms, exact with integer chunking, so that planned == counted holds
with ``==``:

* Allreduce (ring = reduce-scatter ring + allgather ring) of n elements split into P chunks as
  ``numpy.array_split`` does (first n mod P chunks one larger): rank r sends every chunk but
  chunk r in the first half and every chunk but chunk r+1 in the second, so
  ``wire = 2n - c[r] - c[(r+1) % P]``. Summed over ranks this is 2(P-1)n; per rank it is
  2(P-1)/P·n when P divides n (the textbook figure).
* Reduce_scatter (ring) with receive counts c: rank r sends every block except its own,
  ``wire = n - c[r]`` = (P-1)/P·n for equal blocks.
* Allgather(v) (ring) with counts c: rank r forwards every block except block r+1, the last one
  to reach it, ``wire = n - c[(r+1) % P]`` = (P-1)/P·n for equal blocks.
* Alltoall(v) (pairwise exchange): the sum of what is sent to other ranks.
* Bcast (binomial tree): n times the number of children of r in the tree.
* Barrier: 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

KINDS = ("allreduce", "reduce_scatter", "allgather", "allgatherv", "alltoall", "alltoallv",
         "bcast", "barrier")


@dataclass(frozen=True)
class Call:
    """One collective as seen by one rank.

    ``counts`` is, per kind (element counts, not bytes):

    * allreduce, bcast: ``(n,)`` (bcast also names ``root``);
    * reduce_scatter: the P receive counts; allgather(v): the P block counts;
    * alltoall(v): this rank's P send counts;
    * barrier: ``()``.
    """

    kind: str
    counts: tuple[int, ...]
    itemsize: int
    rank: int
    size: int
    root: int = 0
    algorithm: str = ""  # what the library runs ("" = the textbook forms)
    ppn: int = 1  # ranks per node, block placement (node-aware algorithms)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown collective kind {self.kind!r}; expected one of {KINDS}")

    @property
    def elements(self) -> int:
        """Elements in this rank's send buffer (what the rank hands to MPI)."""
        k, c, r = self.kind, self.counts, self.rank
        if k in ("allreduce", "bcast"):
            return c[0]
        if k == "reduce_scatter":
            return sum(c)
        if k in ("allgather", "allgatherv"):
            return c[r]
        if k in ("alltoall", "alltoallv"):
            return sum(c)
        return 0

    @property
    def payload_bytes(self) -> int:
        return payload_bytes(self)

    @property
    def wire_bytes(self) -> int:
        return wire_bytes(self)


def payload_bytes(call: Call) -> int:
    """Bytes handed to MPI for other ranks (self-sends excluded)."""
    k, c, r, p, s = call.kind, call.counts, call.rank, call.size, call.itemsize
    if p == 1 or k == "barrier":
        return 0
    if k == "allreduce":
        return c[0] * s
    if k == "bcast":
        return c[0] * s if r == call.root else 0
    if k == "reduce_scatter":
        return (sum(c) - c[r]) * s
    if k in ("allgather", "allgatherv"):
        return c[r] * s
    if k in ("alltoall", "alltoallv"):
        return (sum(c) - c[r]) * s
    raise AssertionError(k)


def wire_bytes(call: Call) -> int:
    """Bytes this rank sends under its algorithm (:mod:`sim.wire`; "" the textbook forms)."""
    if call.size == 1 or call.kind == "barrier":
        return 0
    return _algorithm_wire(call.kind, call.algorithm, call.counts, call.itemsize, call.rank,
                           call.size, call.root, call.ppn)


@lru_cache(maxsize=4096)
def _algorithm_wire(kind: str, alg: str, counts: tuple[int, ...], itemsize: int, rank: int,
                    P: int, root: int, ppn: int) -> int:
    """Bytes rank sends under ``alg`` (cached: a training run repeats the same calls)."""
    from sim import wire

    if kind in ("alltoall", "alltoallv"):  # one rank's row is all it takes
        return int(wire.alltoall_row(alg, counts, rank, P)) * itemsize
    return int(wire.sent(kind, alg, counts, P, root, ppn, itemsize)[rank]) * itemsize


@dataclass(frozen=True)
class Collective:
    """One collective of a step seen from all P ranks at once (the simulator's unit).

    counts (element counts) by kind: allreduce, bcast: shape (1,) ``[n]``; allgather(v),
    reduce_scatter: shape (P,) block per rank; alltoall(v): shape (P, P), entry [r, j] sent by
    rank r to rank j; barrier: empty.
    """

    kind: str
    itemsize: int
    counts: np.ndarray
    root: int = 0
    algorithm: str = ""  # as in Call
    ppn: int = 1

    def call(self, rank: int, size: int) -> Call:
        """This rank's :class:`Call`."""
        c = self.counts
        if self.kind in ("alltoall", "alltoallv"):
            cc = tuple(int(x) for x in c[rank])
        else:
            cc = tuple(int(x) for x in c)
        return Call(self.kind, cc, self.itemsize, rank, size, self.root, self.algorithm,
                    self.ppn)

    def bytes_per_rank(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(payload, wire) bytes of every rank, (P,) each; equal to each rank's Call."""
        import numpy as np

        P, s, c = size, self.itemsize, np.asarray(self.counts, dtype=np.int64)
        z = np.zeros(P, dtype=np.int64)
        if P == 1 or self.kind == "barrier":
            return z, z.copy()
        from sim import wire

        r, k = np.arange(P), self.kind
        if k == "allreduce":
            pay = np.full(P, int(c[0]) * s)
        elif k == "reduce_scatter":
            pay = (c.sum() - c) * s
        elif k in ("allgather", "allgatherv"):
            pay = c * s
        elif k in ("alltoall", "alltoallv"):
            pay = (c.sum(axis=1) - c[r, r]) * s
        elif k == "bcast":
            pay = np.where(r == self.root, int(c[0]) * s, 0)
        else:
            raise ValueError(k)
        return pay, wire.sent(k, self.algorithm, c, P, self.root, self.ppn, s) * s


@dataclass(frozen=True)
class Layout:
    """The MPI library that runs the collectives (``mpi``: a name of
    :data:`sim.selection.LIBRARIES`, or ``""`` for none named: the textbook forms) and the
    ranks per node (block placement: rank r on node r // ppn)."""

    mpi: str = ""
    ppn: int = 1

    def __post_init__(self) -> None:
        from sim.selection import LIBRARIES

        if self.mpi and self.mpi not in LIBRARIES:
            raise ValueError(f"unknown MPI library {self.mpi!r}; known: {', '.join(LIBRARIES)}")
        if self.ppn < 1:
            raise ValueError(f"ranks per node must be >= 1, got {self.ppn}")

    def algorithm(self, kind: str, counts, itemsize: int, P: int) -> str:
        """What the library runs for a call of ``kind`` with these element counts over P
        ranks (counts as in :class:`Call` or :class:`Collective`; alltoall: equal counts)."""
        if not self.mpi or P <= 1 or kind == "barrier":
            return ""
        if isinstance(counts, tuple):  # a rank's Call: cached (the same calls every step)
            return _algorithm_of(self, kind, counts, itemsize, P)
        return self._select(kind, counts, itemsize, P)

    def _select(self, kind: str, counts, itemsize: int, P: int) -> str:
        from sim.selection import select

        ppn = min(self.ppn, P)
        nodes = -(-P // ppn)
        if kind in ("allreduce", "bcast"):
            n = int(counts[0]) * itemsize
            return select(self.mpi, kind, P, n, nodes=nodes, ppn=ppn, itemsize=itemsize)
        if kind in ("allgather", "allgatherv", "reduce_scatter"):
            tot = sum(int(x) for x in counts) * itemsize
            mb = max(int(x) for x in counts) * itemsize
            return select(self.mpi, kind, P, tot, mb=mb, nodes=nodes, ppn=ppn,
                          itemsize=itemsize)
        if kind == "alltoall":  # equal counts: bytes per peer
            import numpy as np

            pp = int(np.max(counts)) * itemsize
            return select(self.mpi, kind, P, pp * (P - 1), per_peer=pp, nodes=nodes, ppn=ppn,
                          itemsize=itemsize)
        return select(self.mpi, kind, P, 0, per_peer=0, nodes=nodes, ppn=ppn,
                      itemsize=itemsize)  # alltoallv: by P alone in every library ported


@lru_cache(maxsize=4096)
def _algorithm_of(layout: Layout, kind: str, counts: tuple[int, ...], itemsize: int,
                  P: int) -> str:
    return layout._select(kind, counts, itemsize, P)


TEXTBOOK = Layout()  # no library named: the textbook ring / pairwise / binomial forms
