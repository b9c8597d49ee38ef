"""Step counts against brute force; plans' closed forms; strategy selection errors."""

import numpy as np
import pytest

from desmpi.data.slicing import split_counts
from desmpi.data.synth import SynthSpec, generate_block
from desmpi.kernels.hashing import owners
from desmpi.strategies.counts import ModelDims, count_step
from desmpi.strategies.plans import plan
from desmpi.variants import ALL, Variant


@pytest.mark.parametrize("P", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("multi", [False, True])
def test_count_step_matches_brute_force(P, multi):
    spec = SynthSpec(rows=300, seed=4, cap=40, multi_hot={1: 3, 5: 2} if multi else {})
    b, _ = generate_block(spec, 0)
    c = count_step(b, P)
    s, f = b.sample_field()
    own = owners(b.keys, P)
    bounds = np.concatenate([[0], np.cumsum(split_counts(b.n, P))])
    for r in range(P):
        m = (s >= bounds[r]) & (s < bounds[r + 1])
        for j in range(P):
            mj = m & (own == j)
            assert c.keys[r, j] == mj.sum()
            assert c.distinct[r, j] == len(set(b.keys[mj].tolist()))
            assert c.bags[r, j] == len(set(zip(s[mj].tolist(), f[mj].tolist())))
            assert c.samples[r, j] == len(set(s[mj].tolist()))
    assert c.nnz.sum() == b.keys.shape[0] and c.sizes.sum() == 300


def test_des_allreduce_plan_is_the_papers_form():
    spec = SynthSpec(rows=256, seed=1, cap=100)
    b, _ = generate_block(spec, 0)
    c = count_step(b, 4)
    dims = ModelDims(W=418, R=17, seg=18, D=1000, partial_grad=0, itemsize=4)
    calls = plan(Variant("des", "allreduce"), c, dims, 0)
    assert [x.kind for x in calls] == ["allgatherv", "allgatherv", "allreduce"]
    ar = calls[-1]
    # ring Allreduce of B×W floats: 2(P-1)/P · n per rank
    assert ar.wire_bytes == 2 * 3 * 256 * 418 * 4 // 4
    ps = plan(Variant("ps"), c, dims, 0)
    assert ps[1].counts == tuple(c.distinct[0]) and ps[-1].counts == (1001,)


@pytest.mark.parametrize("P", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("multi", [False, True])
def test_vectorised_traffic_equals_summed_plans(P, multi):
    from desmpi.strategies.plans import traffic

    spec = SynthSpec(rows=200, seed=2, cap=60, multi_hot={3: 3} if multi else {}, weighted=multi)
    b, _ = generate_block(spec, 0)
    c = count_step(b, P)
    for partial_grad in (0, 640):
        dims = ModelDims(W=21, R=5, seg=6, D=777, partial_grad=partial_grad, itemsize=8)
        for v in ALL:
            pay, wire = traffic(v, c, dims)
            for r in range(P):
                calls = plan(v, c, dims, r)
                assert wire[r] == sum(x.wire_bytes for x in calls), (v, r)
                assert pay[r] == sum(x.payload_bytes for x in calls), (v, r)


def test_distinct_counts_both_kernels_against_a_loop():
    """Distinct (a, b) pairs, each counted at its first item's (rank, owner): the hash-table
    kernel (a in any order, values up to 2**63) and the grouped one (a non-decreasing)."""
    from desmpi.strategies.counts import _distinct

    rng = np.random.default_rng(0)
    P = 4
    for a in (rng.integers(0, 50, 500),  # hash path
              rng.integers(0, 50, 500) + (1 << 62),
              np.sort(rng.integers(0, 50, 500)),  # grouped path
              np.sort(rng.integers(-(1 << 62), 1 << 62, 500))):
        b, kr, own = (rng.integers(0, P, 500) for _ in range(3))
        want = np.zeros((P, P), np.int64)
        seen = set()
        for i, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
            if (x, y) not in seen:
                seen.add((x, y))
                want[kr[i], own[i]] += 1
        got = _distinct(a, b, kr, own, P)
        assert np.array_equal(got, want) and got.sum() == len(seen)
    assert not _distinct(a[:0], b[:0], kr[:0], own[:0], P).any()
    with pytest.raises(ValueError, match="must lie in"):
        _distinct(a, b + P, kr, own, P)


@pytest.mark.parametrize("P", [2, 3, 8])
def test_compressed_plans_per_rank_and_vectorised_agree(P):
    """Every compression method and key encoding: the vectorised traffic equals the summed
    per-rank plans, the partial payloads shrink (the all-to-all strategies' float exchanges
    go as 16-bit words), and narrow keys halve the key Allgatherv."""
    from desmpi.strategies.compressed import Wire
    from desmpi.strategies.plans import collectives, traffic
    from sim.accounting import Layout

    spec = SynthSpec(rows=300, seed=3, cap=1000)
    b, _ = generate_block(spec, 0)
    c = count_step(b, P)
    dims = ModelDims(W=21, R=5, seg=6, D=777, partial_grad=640, itemsize=4)
    lay = Layout("mpich", 2)
    for v in ALL:
        full = traffic(v, c, dims, lay)[1]
        for w in (Wire("bf16"), Wire("fp16"), Wire("topk", 0.1), Wire(keys="narrow"),
                  Wire("topk", 0.25, "narrow"), Wire("threshold", 0.1, every=3),
                  Wire("int8"), Wire("topk", 0.1, partial="int8"), Wire(partial="bf16"),
                  Wire(partial="fp16", partial_grad="int8"),
                  Wire(partial="bf16", partial_grad="none"), Wire(partial_grad="bf16")):
            pay, wire = traffic(v, c, dims, lay, w)
            for r in range(P):
                calls = plan(v, c, dims, r, lay, w)
                assert wire[r] == sum(x.wire_bytes for x in calls), (v, w, r)
                assert pay[r] == sum(x.payload_bytes for x in calls), (v, w, r)
            # the all-to-all strategies' rows and partials too; des/allreduce has no
            # backward exchange (gZ stays on the rank), so its partials' gradients' codec
            # alone compresses nothing
            if (w.partials, w.dense) != ("none", "none") or \
                    w.partial_grads != "none" and not v.replicated_dense:
                assert wire.sum() < full.sum(), (v, w)
            elif w.keys == "int64":
                assert wire.sum() == full.sum(), (v, w)
            if v.strategy != "des":  # rows / parts / partials forward, then their gradients
                floats = [x for x in collectives(v, c, dims, lay, w) if x.kind == "alltoallv"
                          and x.itemsize != 8]
                # (after them, a compressed dense Allreduce's Alltoallv; no weighted keys'
                # values before them in this batch)
                assert len(floats) >= 2 and not c.weighted, (v, w)
                for x, codec in zip(floats[:2], (w.partials, w.partial_grads)):
                    assert x.itemsize == (dims.itemsize if codec == "none" else 2), (v, w)
        if v.strategy == "des" and not v.replicate_input:
            keys = [x for x in collectives(v, c, dims, lay) if x.kind == "allgatherv"
                    and x.itemsize == 8 and x.counts.sum() == c.nnz.sum()]
            narrow = [x for x in collectives(v, c, dims, lay, Wire(keys="narrow"))
                      if x.kind == "allgatherv" and x.itemsize == 4
                      and x.counts.sum() == c.nnz.sum()]
            assert len(keys) == 1 and len(narrow) == 1
            assert narrow[0].bytes_per_rank(P)[0].sum() * 2 == keys[0].bytes_per_rank(P)[0].sum()
