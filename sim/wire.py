"""Elements each rank sends under the algorithm an MPI library runs (exact, integer).

:func:`sent` gives, for one collective and every rank r of P, the elements rank r puts on the
wire (point-to-point sends to other ranks, intra-node ones included) when the library runs
``algorithm``. The forms follow the implementations step by step (MPICH ``src/mpi/coll/``,
Open MPI ``ompi/mca/coll/base/``), including how they fold in the extra ranks of a
non-power-of-two P and how they split a vector into blocks:

* allreduce — ``ring``/``segmented_ring``: 2n − c[r] − c[r+1] (``numpy.array_split`` chunks);
  ``recursive_doubling``: n per step over the 2^⌊lg P⌋ ranks left after the fold (an even rank
  r < 2·rem hands its n to r + 1, which sends n back at the end); ``rabenseifner``: the same
  fold, then recursive halving over blocks of n // p2 (the first n mod p2 one larger; MPICH
  ``reduce_scatter_allgather``) and recursive doubling back, which sends n plus every range the
  rank kept but its last; ``node_aware``/``nonoverlapping``/``binomial``: a binomial reduce (every
  rank but the root sends n once) and a binomial broadcast (n per child) — inside each node and
  among the node leaders with MPICH's flat rule for ``node_aware``; ``linear``: n to the root,
  which sends n to each other rank;
* reduce_scatter (block counts c) — ``pairwise``/``ring``: n − c[r]; ``recursive_halving``/
  ``butterfly``: n − c[r] after the fold, except an even rank r < 2·rem, which hands over all n
  and receives its block (MPICH ``reduce_scatter_intra_recursive_halving``);
  ``nonoverlapping``: reduce to rank 0 (n each but the root) then scatter (n − c[0] by rank 0);
* allgather(v) (block counts c) — ``ring``/``two_proc``/``neighbor``: n − c[r+1];
  ``recursive_doubling`` (P a power of two; else Bruck): the aligned group of 2^k blocks it
  holds, at each step k; ``bruck``: blocks r … r + min(2^k, P − 2^k) − 1 at step k; ``linear``:
  its block to every other rank;
* alltoall(v) — ``pairwise``/``scattered``/``linear``/``linear_sync``/``two_proc``: what it sends
  to the others; ``bruck`` (equal counts m): m·Σ_{j<P} popcount(j), the blocks whose rotated
  index has bit k set travel at step k;
* bcast (root, vector n) — ``binomial``: n per child; ``scatter_rd_allgather``/
  ``scatter_ring_allgather``/``scatter_allgather``: MPICH's binomial scatter of pieces of
  ⌈n/P⌉ then an allgather of the pieces; ``linear``: n to each other rank from the root;
  ``chain``/``pipeline``: n from every rank but the last; ``binary_tree``: n per child of a
  binary tree; ``knomial``: n per child of a radix-4 tree; ``split_binary_tree``: n per child
  of a binary tree (the halves' final exchange is not counted);
* barrier: 0.

``""`` (no algorithm named) is the textbook ring/pairwise/binomial form.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from sim.selection import FAMILY, select


def _ring_chunks(n: int, P: int) -> np.ndarray:
    q, m = divmod(n, P)
    return np.where(np.arange(P) < m, q + 1, q).astype(np.int64)


def _lg(P: int) -> int:
    return P.bit_length() - 1


def _fold(P: int) -> tuple[int, int, np.ndarray]:
    """(p2, rem, newrank (P,)): the fold of MPICH/Open MPI recursive algorithms; newrank −1
    for the even ranks below 2·rem that hand their data to r + 1."""
    p2 = 1 << _lg(P)
    rem = P - p2
    r = np.arange(P)
    new = np.where(r < 2 * rem, np.where(r % 2 == 0, -1, r // 2), r - rem)
    return p2, rem, new


def _binomial_children(P: int, root: int = 0) -> np.ndarray:
    """Children of each rank in the binomial tree rooted at ``root`` (MPICH bcast/reduce)."""
    vr = (np.arange(P) - root) % P
    low = np.where(vr == 0, 1 << 62, vr & -vr)  # vr received at its lowest set bit
    kids = np.zeros(P, dtype=np.int64)
    mask = 1
    while mask < P:  # and sends to vr + mask for every mask below it
        kids += ((mask < low) & (vr + mask < P)).astype(np.int64)
        mask <<= 1
    return kids


def _tree_children(P: int, root: int, radix: int) -> np.ndarray:
    """Children per rank of a radix-k tree in relative rank order (child of v: k·v + 1 … k·v +
    k); radix 4 with the k-nomial layout counts the same number of sends per level."""
    vr = (np.arange(P) - root) % P
    first = radix * vr + 1
    return np.clip(P - first, 0, radix).astype(np.int64)


def _knomial_children(P: int, root: int, radix: int = 4) -> np.ndarray:
    vr = (np.arange(P) - root) % P
    kids = np.zeros(P, dtype=np.int64)
    mask = 1
    while mask < P:
        nxt = mask * radix
        low = (vr % nxt) == 0  # vr is a parent at this level
        for j in range(1, radix):
            kids += (low & (vr + j * mask < P)).astype(np.int64)
        mask = nxt
    return kids


def allreduce(alg: str, n: int, P: int, ppn: int = 1, itemsize: int = 4) -> np.ndarray:
    if alg in ("", "ring", "segmented_ring"):
        ch = _ring_chunks(n, P)
        return 2 * n - ch - np.roll(ch, -1)
    if alg == "recursive_doubling":
        p2, rem, new = _fold(P)
        r = np.arange(P)
        out = np.where(new >= 0, n * _lg(p2), 0).astype(np.int64)
        out += np.where(r < 2 * rem, n, 0)  # even: hands n over; odd: sends the result back
        return out
    if alg == "rabenseifner":
        p2, rem, new = _fold(P)
        r = np.arange(P)
        q, m = divmod(n, p2)
        S = np.concatenate([[0], np.cumsum(np.where(np.arange(p2) < m, q + 1, q))])
        nr = np.maximum(new, 0)
        lo = np.zeros(P, dtype=np.int64)
        size = p2
        sent = np.full(P, n, dtype=np.int64)  # recursive halving sends n minus what it keeps,
        for k in range(_lg(p2)):  # doubling back sends each range kept but the last
            size //= 2
            lo = lo + ((nr >> k) & 1) * size
            if k < _lg(p2) - 1:
                sent += S[lo + size] - S[lo]
        # halving sends Σ (range before − kept) = n − last kept; doubling sends every kept
        # range (the last one first): n plus the kept ranges but the last
        out = np.where(new >= 0, sent, 0) + np.where(r < 2 * rem, n, 0)
        return out.astype(np.int64)
    if alg in ("binomial", "nonoverlapping"):
        return np.where(np.arange(P) == 0, 0, n) + n * _binomial_children(P)
    if alg in ("linear", "basic_linear"):
        return np.where(np.arange(P) == 0, n * (P - 1), n).astype(np.int64)
    if alg == "node_aware":
        return _node_aware(n, P, ppn, itemsize)
    raise ValueError(f"no wire form for allreduce algorithm {alg!r}")


def _node_aware(n: int, P: int, ppn: int, itemsize: int) -> np.ndarray:
    """Reduce in each node (binomial), allreduce among the node leaders (MPICH's flat rule),
    broadcast in each node (binomial); ranks placed in blocks of ppn."""
    ppn = max(1, min(ppn, P))
    nodes = -(-P // ppn)

    def in_node(k: int) -> np.ndarray:  # binomial reduce (n from all but the leader) + bcast
        return np.where(np.arange(k) == 0, 0, n) + n * _binomial_children(k)

    full, last = divmod(P, ppn)
    out = np.tile(in_node(ppn), full)
    if last:
        out = np.concatenate([out, in_node(last)])
    if nodes > 1:
        alg = select("mpich", "allreduce", nodes, n * itemsize, nodes=nodes, ppn=1,
                     itemsize=itemsize)
        out[::ppn] += allreduce(alg, n, nodes, 1, itemsize)
    return out


def reduce_scatter(alg: str, c: np.ndarray, P: int) -> np.ndarray:
    n = int(c.sum())
    if alg in ("", "pairwise", "ring"):
        return n - c
    if alg in ("recursive_halving", "butterfly"):
        _, rem, new = _fold(P)
        return np.where(new < 0, n, n - c).astype(np.int64)
    if alg == "nonoverlapping":
        return np.where(np.arange(P) == 0, n - c[0], n).astype(np.int64)
    raise ValueError(f"no wire form for reduce_scatter algorithm {alg!r}")


def allgather(alg: str, c: np.ndarray, P: int) -> np.ndarray:
    n = int(c.sum())
    if alg == "recursive_doubling" and P & (P - 1):
        alg = "bruck"  # both libraries fall back for non-powers of two
    if alg in ("", "ring", "two_proc", "neighbor"):
        return n - np.roll(c, -1)
    S = np.concatenate([[0], np.cumsum(c)])
    r = np.arange(P)
    if alg == "recursive_doubling":
        out = np.zeros(P, dtype=np.int64)
        for k in range(_lg(P)):
            g = (r >> k) << k
            out += S[g + (1 << k)] - S[g]
        return out
    if alg == "bruck":
        SS = np.concatenate([S, n + S[1:]])  # blocks r … r + cnt − 1 modulo P
        out = np.zeros(P, dtype=np.int64)
        k = 1
        while k < P:
            cnt = min(k, P - k)
            out += SS[r + cnt] - SS[r]
            k <<= 1
        return out
    if alg == "linear":
        return (P - 1) * c
    raise ValueError(f"no wire form for allgather algorithm {alg!r}")


@lru_cache(maxsize=256)
def _popcount_sum(P: int) -> int:
    """Σ_{j<P} popcount(j): the blocks Bruck's alltoall moves per rank, over its steps."""
    return int(sum(bin(j).count("1") for j in range(P)))


def alltoall_row(alg: str, row, r: int, P: int) -> int:
    """Elements rank r sends in an alltoall(v) from its own P send counts."""
    c = np.asarray(row, dtype=np.int64)
    if alg in ("", "pairwise", "scattered", "linear", "linear_sync", "two_proc"):
        return int(c.sum() - c[r])
    if alg == "bruck":
        off = np.delete(c, r)
        if off.size and (off != off[0]).any():
            raise ValueError("bruck alltoall needs equal counts")
        return int(off[0]) * _popcount_sum(P) if off.size else 0
    raise ValueError(f"no wire form for alltoall algorithm {alg!r}")


def alltoall(alg: str, rows: np.ndarray, P: int) -> np.ndarray:
    """rows: (P, P) counts, [r, j] sent by r to j."""
    if alg == "bruck":
        off = rows[~np.eye(P, dtype=bool)]
        if off.size and (off != off[0]).any():
            raise ValueError("bruck alltoall needs equal counts")
        m = int(off[0]) if off.size else 0
        return np.full(P, m * _popcount_sum(P), dtype=np.int64)
    if alg in ("", "pairwise", "scattered", "linear", "linear_sync", "two_proc"):
        return rows.sum(axis=1) - np.diagonal(rows)
    raise ValueError(f"no wire form for alltoall algorithm {alg!r}")


def bcast(alg: str, n: int, P: int, root: int) -> np.ndarray:
    r = np.arange(P)
    if alg in ("", "binomial"):
        return n * _binomial_children(P, root)
    if alg in ("linear", "basic_linear"):
        return np.where(r == root, n * (P - 1), 0).astype(np.int64)
    if alg in ("chain", "pipeline"):
        return np.where((r - root) % P == P - 1, 0, n).astype(np.int64)
    if alg in ("binary_tree", "split_binary_tree"):
        return n * _tree_children(P, root, 2)
    if alg == "knomial":
        return n * _knomial_children(P, root)
    if alg in ("scatter_allgather", "scatter_rd_allgather", "scatter_ring_allgather"):
        chunk = -(-n // P)
        piece = np.clip(n - r * chunk, 0, chunk)  # the piece of relative rank i
        Sp = np.concatenate([[0], np.cumsum(piece)])
        rel = np.zeros(P, dtype=np.int64)  # by relative rank
        mask = 1
        while mask < P:  # binomial scatter: a parent sends its child's subtree of pieces
            child = r + mask
            send = (mask < np.where(r == 0, 1 << 62, r & -r)) & (child < P)
            lo, hi = np.minimum(child, P), np.minimum(child + mask, P)
            rel += np.where(send, Sp[hi] - Sp[lo], 0)
            mask <<= 1
        ag = "recursive_doubling" if alg == "scatter_rd_allgather" else "ring"
        rel += allgather(ag, piece, P)
        return rel[(r - root) % P]
    raise ValueError(f"no wire form for bcast algorithm {alg!r}")


def sent(kind: str, alg: str, counts, P: int, root: int = 0, ppn: int = 1,
         itemsize: int = 4) -> np.ndarray:
    """Elements each of the P ranks sends, (P,) int64. ``counts`` as in
    :class:`sim.accounting.Collective` (allreduce/bcast ``[n]``, blocked kinds (P,),
    alltoall(v) (P, P))."""
    c = np.asarray(counts, dtype=np.int64)
    if P == 1 or kind == "barrier":
        return np.zeros(P, dtype=np.int64)
    fam = FAMILY[kind]
    if fam == "allreduce":
        return allreduce(alg, int(c[0]), P, ppn, itemsize)
    if fam == "reduce_scatter":
        return reduce_scatter(alg, c, P)
    if fam == "allgather":
        return allgather(alg, c, P)
    if fam == "alltoall":
        return alltoall(alg, c, P)
    if fam == "bcast":
        return bcast(alg, int(c[0]), P, root)
    raise ValueError(kind)
