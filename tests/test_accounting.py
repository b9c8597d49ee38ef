"""Byte accounting against the closed forms of DESIGN.md §3."""

import pytest

from sim.accounting import Call


@pytest.mark.parametrize("P", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 7, 64, 1000])
def test_allreduce_ring(P, n):
    calls = [Call("allreduce", (n,), 8, r, P) for r in range(P)]
    assert sum(c.wire_bytes for c in calls) == 2 * (P - 1) * n * 8
    if n % P == 0:
        assert all(c.wire_bytes == 2 * (P - 1) * n // P * 8 for c in calls)
    assert all(c.payload_bytes == (n * 8 if P > 1 else 0) for c in calls)


@pytest.mark.parametrize("P", [1, 2, 4, 5])
def test_reduce_scatter_and_allgather_equal_blocks(P):
    blk = 12
    for r in range(P):
        rs = Call("reduce_scatter", (blk,) * P, 4, r, P)
        ag = Call("allgatherv", (blk,) * P, 4, r, P)
        assert rs.wire_bytes == (P - 1) * blk * 4  # (P-1)/P * n with n = P*blk
        assert ag.wire_bytes == (P - 1) * blk * 4
        assert rs.payload_bytes == (P - 1) * blk * 4
        assert ag.payload_bytes == (blk * 4 if P > 1 else 0)


def test_unequal_blocks_sum_to_ring_total():
    counts = (3, 0, 9, 5)
    P, n = 4, sum(counts)
    assert sum(Call("allgatherv", counts, 8, r, P).wire_bytes for r in range(P)) == (P - 1) * n * 8
    assert sum(Call("reduce_scatter", counts, 8, r, P).wire_bytes
               for r in range(P)) == (P - 1) * n * 8


def test_alltoallv_excludes_self():
    c = Call("alltoallv", (5, 7, 11), 8, 1, 3)
    assert c.payload_bytes == c.wire_bytes == (5 + 11) * 8
    assert c.elements == 23


@pytest.mark.parametrize("P", [1, 2, 3, 4, 7, 8, 16])
@pytest.mark.parametrize("root", [0, 1])
def test_bcast_binomial_tree_sends_p_minus_1_messages(P, root):
    root = root % P
    n = 10
    total = sum(Call("bcast", (n,), 8, r, P, root).wire_bytes for r in range(P))
    assert total == (P - 1) * n * 8
    # the root of a binomial tree sends ceil(log2 P) messages
    assert Call("bcast", (n,), 8, root, P, root).wire_bytes == (P - 1).bit_length() * n * 8


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown collective"):
        Call("gatherv", (1,), 8, 0, 1)


# ---- wire bytes of the algorithm the library runs (sim.wire) against step-by-step runs -------
# Each reference below runs the algorithm on real data, rank by rank and step by step as MPICH
# writes it (src/mpi/coll/...), checks that it computes the collective, and counts what every
# rank sends: an independent check of the vectorised forms of sim.wire.

def _fold_ranks(P):
    p2 = 1 << (P.bit_length() - 1)
    rem = P - p2
    return p2, rem, [(-1 if r % 2 == 0 else r // 2) if r < 2 * rem else r - rem
                     for r in range(P)]


def _run_allreduce(alg, n, P):
    import numpy as np

    rng = np.random.default_rng(P * 1000 + n)
    data = [rng.integers(0, 9, n) for _ in range(P)]
    sent = [0] * P
    p2, rem, new = _fold_ranks(P)
    buf = [d.copy() for d in data]
    for r in range(0, 2 * rem, 2):  # even ranks hand their vector to r + 1
        sent[r] += n
        buf[r + 1] = buf[r + 1] + buf[r]
    who = {new[r]: r for r in range(P) if new[r] >= 0}  # newrank -> rank
    if alg == "recursive_doubling":
        mask = 1
        while mask < p2:
            nxt = {}
            for nr, r in who.items():
                sent[r] += n
                nxt[nr] = buf[r] + buf[who[nr ^ mask]]
            for nr, r in who.items():
                buf[r] = nxt[nr]
            mask <<= 1
    else:  # rabenseifner: MPICH reduce_scatter_allgather, cnts as there
        cnts = [n // p2 + (1 if i < n % p2 else 0) for i in range(p2)]
        disp = [sum(cnts[:i]) for i in range(p2 + 1)]
        lo = {nr: 0 for nr in who}
        hi = {nr: p2 for nr in who}
        mask, ranges = 1, []
        while mask < p2:
            nxt = {}
            for nr, r in who.items():
                mid = (lo[nr] + hi[nr]) // 2
                keep = (lo[nr], mid) if nr < nr ^ mask else (mid, hi[nr])
                give = (mid, hi[nr]) if nr < nr ^ mask else (lo[nr], mid)
                sent[r] += disp[give[1]] - disp[give[0]]
                a, b = disp[keep[0]], disp[keep[1]]
                part = buf[who[nr ^ mask]]
                v = buf[r].copy()
                v[a:b] += part[a:b]
                nxt[nr] = (v, keep)
            for nr, r in who.items():
                buf[r], (lo[nr], hi[nr]) = nxt[nr]
            ranges.append(mask)
            mask <<= 1
        for mask in reversed(ranges):  # allgather back: send what one holds
            nxt = {}
            for nr, r in who.items():
                sent[r] += disp[hi[nr]] - disp[lo[nr]]
                o = nr ^ mask
                v = buf[r].copy()
                v[disp[lo[o]]:disp[hi[o]]] = buf[who[o]][disp[lo[o]]:disp[hi[o]]]
                nxt[nr] = (v, (min(lo[nr], lo[o]), max(hi[nr], hi[o])))
            for nr, r in who.items():
                buf[r], (lo[nr], hi[nr]) = nxt[nr]
    for r in range(1, 2 * rem, 2):  # the result back to the even ranks
        sent[r] += n
        buf[r - 1] = buf[r]
    for b in buf:
        assert np.array_equal(b, sum(data)), alg
    return sent


@pytest.mark.parametrize("alg", ["recursive_doubling", "rabenseifner"])
@pytest.mark.parametrize("P", [2, 3, 4, 5, 6, 7, 8, 12])
@pytest.mark.parametrize("n", [1, 13, 64, 101])
def test_allreduce_wire_against_step_by_step(alg, P, n):
    from sim import wire

    if alg == "rabenseifner" and n < (1 << (P.bit_length() - 1)):
        return  # MPICH runs recursive doubling below one element per rank
    assert wire.allreduce(alg, n, P).tolist() == _run_allreduce(alg, n, P)


def _run_allgather(alg, c):
    """Blocks held per rank, step by step; returns what each rank sent."""
    P = len(c)
    held = [{r} for r in range(P)]
    sent = [0] * P
    if alg == "recursive_doubling":
        mask = 1
        while mask < P:
            new = [held[r] | held[r ^ mask] for r in range(P)]
            for r in range(P):
                sent[r] += sum(c[b] for b in held[r])
            held = new
            mask <<= 1
    elif alg == "bruck":  # step k: send the first min(k, P - k) blocks held to r - k
        order = [[r] for r in range(P)]
        k = 1
        while k < P:
            cnt = min(k, P - k)
            new = [order[r] + order[(r + k) % P][:cnt] for r in range(P)]
            for r in range(P):
                sent[r] += sum(c[b] for b in order[r][:cnt])
            order = new
            k <<= 1
        held = [set(o) for o in order]
    elif alg == "ring":
        for s in range(P - 1):
            for r in range(P):
                b = (r - s) % P
                sent[r] += c[b]
                held[(r + 1) % P].add(b)
    assert all(h == set(range(P)) for h in held), alg
    return sent


@pytest.mark.parametrize("alg", ["recursive_doubling", "bruck", "ring"])
@pytest.mark.parametrize("P", [2, 3, 4, 5, 8, 11])
def test_allgather_wire_against_step_by_step(alg, P):
    import numpy as np

    from sim import wire

    if alg == "recursive_doubling" and P & (P - 1):
        return  # falls back to Bruck (tested there)
    c = np.random.default_rng(P).integers(0, 50, P)
    got = wire.allgather(alg, c, P).tolist()
    assert got == _run_allgather(alg, c.tolist())
    assert sum(got) == (P - 1) * int(c.sum())  # every block reaches P - 1 ranks once


@pytest.mark.parametrize("P", [2, 3, 5, 6, 8])
def test_reduce_scatter_recursive_halving(P):
    """MPICH recursive halving: even ranks r < 2·rem send all n to r + 1 and get their block
    back; every other rank sends every block but its own (and the odd folded ranks the even
    neighbour's block back, which it did not keep)."""
    import numpy as np

    from sim import wire

    c = np.arange(3, 3 + P)
    n = int(c.sum())
    rem = P - (1 << (P.bit_length() - 1))
    want = [n if (r < 2 * rem and r % 2 == 0) else n - int(c[r]) for r in range(P)]
    assert wire.reduce_scatter("recursive_halving", c, P).tolist() == want


@pytest.mark.parametrize("P", [2, 3, 4, 5, 8, 9])
def test_collective_and_call_agree_for_every_algorithm(P):
    """The simulator's view (all ranks at once) and each rank's Call give the same bytes."""
    import numpy as np

    from sim import wire
    from sim.accounting import Collective

    rng = np.random.default_rng(P)
    blocks = rng.integers(0, 30, P)
    cases = [("allreduce", [97], a) for a in ("ring", "recursive_doubling", "rabenseifner",
                                               "binomial", "linear", "node_aware")]
    cases += [("reduce_scatter", blocks, a) for a in ("pairwise", "recursive_halving",
                                                      "nonoverlapping")]
    cases += [("allgatherv", blocks, a) for a in ("ring", "recursive_doubling", "bruck",
                                                  "linear")]
    cases += [("alltoall", np.full((P, P), 3), a) for a in ("pairwise", "bruck", "scattered")]
    cases += [("alltoallv", rng.integers(0, 9, (P, P)), "scattered")]
    cases += [("bcast", [50], a) for a in ("binomial", "scatter_ring_allgather",
                                           "scatter_rd_allgather", "knomial", "chain")]
    for kind, counts, alg in cases:
        col = Collective(kind, 4, np.asarray(counts), root=P - 1, algorithm=alg, ppn=2)
        _, w = col.bytes_per_rank(P)
        per_call = [col.call(r, P).wire_bytes for r in range(P)]
        assert w.tolist() == per_call, (kind, alg)
        assert (w >= 0).all()
        if kind == "bcast":  # trees: every rank but the root receives the n bytes once;
            tree = alg in ("binomial", "knomial", "chain")  # scatter + allgather: more
            assert (w.sum() == (P - 1) * 50 * 4) if tree else (w.sum() >= (P - 1) * 50 * 4)
    assert wire.bcast("binomial", 10, P, 0).sum() == (P - 1) * 10


def test_layout_names_the_algorithm_the_simulator_costs():
    """The accounting's algorithm is the one sim.collectives times for the same sizes."""
    from dataclasses import replace

    import numpy as np

    from sim.accounting import Collective, Layout
    from sim.cluster import PRESETS
    from sim.collectives import chosen, sizes

    for mpi in ("mpich", "openmpi", "openmpi-4.0"):
        for P, ppn in [(2, 2), (4, 1), (8, 4), (6, 3), (64, 8)]:
            cl = replace(PRESETS["10gbe"], mpi=mpi, ranks_per_node=ppn).with_ranks(P)
            lay = Layout(mpi, ppn)
            for kind, counts in [("allreduce", [10]), ("allreduce", [300000]),
                                 ("reduce_scatter", np.full(P, 7)),
                                 ("allgatherv", np.arange(P) * 1000),
                                 ("alltoall", np.full((P, P), 2)),
                                 ("alltoallv", np.ones((P, P), dtype=int))]:
                col = Collective(kind, 4, np.asarray(counts))
                assert lay.algorithm(kind, col.counts, 4, P) == \
                    chosen(sizes(col, P), cl, P), (mpi, P, kind)


def test_detect_library():
    from desmpi.comm import detect_library

    assert detect_library("MPICH Version:      5.0.2\nMPICH Release date: ...") == "mpich"
    assert detect_library("MPICH Version:\t3.4.3\n") == ""
    assert detect_library("Open MPI v4.1.5, package: Open MPI ...") == "openmpi"
    assert detect_library("Open MPI v5.0.3, package") == "openmpi"
    assert detect_library("Open MPI v4.0.7, package") == "openmpi-4.0"
    assert detect_library("Intel(R) MPI Library 2021.10 for Linux*") == ""
    assert detect_library("MVAPICH2 Version      :\t2.3.7") == ""


def test_every_selected_algorithm_has_exact_wire_bytes():
    """Whatever a ported library selects, for any size and P, sim.wire counts it."""
    import numpy as np

    from sim.accounting import Collective, Layout
    from sim.selection import LIBRARIES

    for mpi in LIBRARIES:
        for P, ppn in [(2, 1), (3, 1), (4, 2), (7, 1), (8, 4), (16, 16), (33, 1), (64, 8),
                       (300, 4), (1024, 16)]:
            lay = Layout(mpi, ppn)
            for n in (1, 40, 3000, 70_000, 2_000_000):
                per = max(1, n // P)
                for kind, counts in [("allreduce", [n]), ("bcast", [n]),
                                     ("reduce_scatter", np.full(P, per)),
                                     ("allgatherv", np.full(P, per)),
                                     ("alltoall", np.full((P, P), per)),
                                     ("alltoallv", np.full((P, P), per))]:
                    c = np.asarray(counts)
                    alg = lay.algorithm(kind, c, 4, P)
                    col = Collective(kind, 4, c, algorithm=alg, ppn=ppn)
                    pay, wire = col.bytes_per_rank(P)
                    assert (wire >= 0).all() and wire.shape == (P,), (mpi, P, kind, alg)
