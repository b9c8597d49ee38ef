"""Closed forms of every collective and algorithm, MPICH selection, calibration recovering
known α/β, and replay of a hand-made trace."""

import math
from dataclasses import replace

import numpy as np
import pytest

from sim.accounting import Collective
from sim.calibrate import CommSample, fit_compute, fit_level
from sim.cluster import PRESETS, Cluster, ComputeRates, Level, load_cluster
from sim.collectives import ALGORITHMS, collective_time, cost, mpich_default
from sim.compute import Work, compute_time
from sim.replay import replay

A, Bt = 2e-6, 1e-9  # α = 2 µs, β = 1 ns/byte (1 GB/s)


@pytest.mark.parametrize("P", [2, 3, 4, 8, 16, 1024])
def test_closed_forms(P):
    n = 1_000_000.0
    lg = math.ceil(math.log2(P))
    f = (P - 1) / P
    exp = {
        ("allreduce", "ring"): 2 * (P - 1) * A + 2 * f * n * Bt,
        ("allreduce", "recursive_doubling"): lg * (A + n * Bt),
        ("allreduce", "rabenseifner"): 2 * lg * A + 2 * f * n * Bt,
        ("allreduce", "binomial"): 2 * lg * (A + n * Bt),
        ("reduce_scatter", "ring"): (P - 1) * A + f * n * Bt,
        ("reduce_scatter", "pairwise"): (P - 1) * A + f * n * Bt,
        ("reduce_scatter", "recursive_halving"): lg * A + f * n * Bt,
        ("allgather", "ring"): (P - 1) * A + f * n * Bt,
        ("allgather", "recursive_doubling"): lg * A + f * n * Bt,
        ("allgather", "bruck"): lg * A + f * n * Bt,
        ("alltoall", "pairwise"): (P - 1) * A + n * Bt,
        ("alltoall", "bruck"): lg * (A + n / 2 * Bt),
        ("bcast", "binomial"): lg * (A + n * Bt),
        ("bcast", "scatter_allgather"): (lg + P - 1) * A + 2 * f * n * Bt,
    }
    for (kind, alg), want in exp.items():
        assert cost(kind, alg, P, n, A, Bt) == pytest.approx(want, rel=1e-12), (kind, alg)
    covered = {(k, a) for k, a in exp}
    for kind, algs in ALGORITHMS.items():
        for alg in algs:
            assert alg == "two_level" or (kind, alg) in covered
    assert cost("allreduce", "ring", 1, n, A, Bt) == 0.0


def test_mpich_selection_by_size():
    assert mpich_default("allreduce", 8, 1024) == "recursive_doubling"
    assert mpich_default("allreduce", 8, 1 << 20) == "rabenseifner"
    assert mpich_default("allgatherv", 8, 1000) == "recursive_doubling"
    assert mpich_default("allgatherv", 6, 1000) == "bruck"
    assert mpich_default("allgatherv", 6, 1 << 20) == "ring"
    assert mpich_default("reduce_scatter", 4, 1000) == "recursive_halving"
    assert mpich_default("reduce_scatter", 4, 1 << 20) == "pairwise"
    assert mpich_default("alltoall", 16, 16 * 100) == "bruck"
    assert mpich_default("alltoallv", 16, 16 * 100) == "pairwise"
    assert mpich_default("bcast", 4, 1 << 20) == "binomial"
    assert mpich_default("bcast", 16, 1 << 20) == "scatter_allgather"


def test_two_level_allreduce():
    cl = Cluster("t", nodes=4, ranks_per_node=8, intra=Level(1e-7, 1e10), inter=Level(A, 1e9))
    n = 8e6
    c = Collective("allreduce", 1, np.array([int(n)]))
    t = collective_time(c, cl, algorithm="two_level")
    a, b = 1e-7, 1e-10
    want = (7 * a + 7 / 8 * n * b) + (2 * 2 * A + 2 * 3 / 4 * (n / 8) * Bt) + \
        (7 * a + 7 / 8 * n * b)
    assert t == pytest.approx(want, rel=1e-12)
    # flat ring over 32 ranks spanning nodes pays the inter-node link on every step
    assert collective_time(c, cl, algorithm="ring") == pytest.approx(
        2 * 31 * A + 2 * 31 / 32 * n * Bt)


def test_alltoallv_time_uses_the_busiest_rank():
    m = np.array([[0, 10, 10], [1, 0, 1], [1, 1, 0]]) * 1000
    c = Collective("alltoallv", 8, m)
    cl = Cluster("t", 1, 3, Level(A, 1 / Bt), Level(A, 1 / Bt))
    assert collective_time(c, cl) == pytest.approx(2 * A + 20000 * 8 * Bt)


@pytest.mark.parametrize("kind", ["allreduce", "allgather", "reduce_scatter", "alltoall"])
def test_calibration_recovers_alpha_beta(kind):
    rng = np.random.default_rng(0)
    samples = []
    for P in (2, 4, 8):
        for n in np.logspace(1, 7, 13):
            t = cost(kind, mpich_default(kind, P, n), P, n, A, Bt)
            samples.append(CommSample(kind, P, n, t * (1 + 0.01 * rng.normal())))
    lvl, fit = fit_level(samples)
    assert lvl.latency_s == pytest.approx(A, rel=0.05)
    assert lvl.bandwidth_Bps == pytest.approx(1 / Bt, rel=0.05)
    assert fit.rel_rms < 0.03


def test_compute_fit_and_time():
    true = ComputeRates(gemm_flops=2e10, sparse_keys_per_s=5e7, overhead_s=1e-4,
                        per_call_s=3e-5)
    rng = np.random.default_rng(1)
    samples = []
    for _ in range(30):
        w = Work(rng.uniform(1e8, 1e10), rng.uniform(1e5, 1e7), rng.integers(1, 9))
        samples.append((w, compute_time(w, true)))
    rates, fit = fit_compute(samples)
    assert rates.gemm_flops == pytest.approx(2e10, rel=1e-6)
    assert rates.sparse_keys_per_s == pytest.approx(5e7, rel=1e-6)
    assert rates.per_call_s == pytest.approx(3e-5, rel=1e-6)
    assert fit.rel_rms < 1e-9
    assert compute_time(Work(2e10, 0), true, share=0.5) == pytest.approx(2 * (1 + 1e-4))
    assert compute_time(Work(0, 0, 10), true) == pytest.approx(1e-4 + 3e-4)
    assert rates.contention == 0.0  # every sample ran alone: nothing to fit it from


def test_compute_fit_recovers_node_contention():
    true = ComputeRates(gemm_flops=5e10, sparse_keys_per_s=1e8, overhead_s=2e-4,
                        per_call_s=1e-5, contention=0.3)
    rng = np.random.default_rng(2)
    samples = []
    for busy in (1, 2, 4):
        for _ in range(8):
            w = Work(rng.uniform(1e8, 1e10), rng.uniform(1e5, 1e7), rng.integers(1, 6))
            samples.append((w, compute_time(w, true, busy=busy), busy))
    rates, fit = fit_compute(samples)
    assert rates.contention == pytest.approx(0.3, abs=1e-9)
    assert rates.gemm_flops == pytest.approx(5e10, rel=1e-6)
    assert rates.sparse_keys_per_s == pytest.approx(1e8, rel=1e-6)
    assert fit.rel_rms < 1e-9
    # the factor itself: 16 busy cores = 4 doublings
    assert compute_time(Work(5e10, 0), replace(true, overhead_s=0.0), busy=16) == \
        pytest.approx(1 + 0.3 * 4)


def test_cluster_busy_cores_and_contention_key(tmp_path):
    cl = Cluster("c", 2, 8, Level(1e-6, 1e10), Level(1e-6, 1e9))
    assert cl.busy_cores == 8
    assert replace(cl, cores_per_node=4).busy_cores == 4  # oversubscribed: 4 cores compute
    toml = tmp_path / "c.toml"
    toml.write_text("nodes = 2\nranks_per_node = 4\n[intra]\nlatency_s = 1e-6\n"
                    "bandwidth_Bps = 1e10\n[inter]\nlatency_s = 2e-6\nbandwidth_Bps = 1e9\n"
                    "[compute]\ncontention = 0.25\n")
    assert load_cluster(str(toml)).compute.contention == 0.25


def test_replay_hand_made_trace():
    """2 ranks: rank 1 computes longer; they meet in an allreduce and an allgatherv."""
    cl = Cluster("t", 1, 2, Level(A, 1 / Bt), Level(A, 1 / Bt))
    ev = [
        [{"compute_s": 0.010}, {"kind": "allreduce", "counts": [1000], "itemsize": 4},
         {"compute_s": 0.001}, {"kind": "allgatherv", "counts": [100, 300], "itemsize": 8}],
        [{"compute_s": 0.020}, {"kind": "allreduce", "counts": [1000], "itemsize": 4},
         {"compute_s": 0.003}, {"kind": "allgatherv", "counts": [100, 300], "itemsize": 8}],
    ]
    out = replay({"world_size": 2, "steps": [{"step": 7, "ranks": ev}]}, cl)
    ar = 2 * A + 4000 * Bt  # 4000 B > 2048: Rabenseifner, 2·lg·α + 2(P-1)/P·n·β
    ag = 1 * A + 0.5 * 3200 * Bt  # recursive doubling (P = 2 is a power of two)
    want = 0.020 + ar + 0.003 + ag
    s = out[0]
    assert s.step == 7 and s.time_s == pytest.approx(want, rel=1e-12)
    assert s.comm_s == pytest.approx(ar + ag) and s.critical_rank == 1
    # a cluster with half the compute speed doubles the compute part only
    s2 = replay({"world_size": 2, "steps": [{"step": 7, "ranks": ev}]}, cl, compute_scale=2)[0]
    assert s2.time_s == pytest.approx(2 * 0.023 + ar + ag)


def test_cluster_presets_and_toml(tmp_path):
    assert set(PRESETS) >= {"10gbe", "25gbe", "edr", "hdr"}
    assert all(c.source for c in PRESETS.values())
    f = tmp_path / "c.toml"
    f.write_text("nodes = 2\nranks_per_node = 4\n[intra]\nlatency_s = 1e-7\n"
                 "bandwidth_Bps = 1e10\n[inter]\nlatency_s = 2e-6\nbandwidth_Bps = 3e9\n")
    cl = load_cluster(str(f))
    assert cl.ranks == 8 and cl.inter.bandwidth_Bps == 3e9
    f.write_text("nodes = 2\nranks_per_node = 4\nspeed = 3\n")
    with pytest.raises(ValueError, match=r"unknown keys \['speed'\]"):
        load_cluster(str(f))
    with pytest.raises(FileNotFoundError, match="preset"):
        load_cluster("nope")
