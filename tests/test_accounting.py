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
