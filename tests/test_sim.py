"""Closed forms of every collective and algorithm, MPICH selection, calibration recovering
known α/β, and replay of a hand-made trace."""

import math
from dataclasses import replace

import numpy as np
import pytest

from sim.accounting import Collective
from sim.algorithms import Net
from sim.calibrate import CommSample, fit_compute, fit_level
from sim.cluster import PRESETS, Cluster, ComputeRates, Level, expected_max_normal, load_cluster
from sim.collectives import (
    ALGORITHMS,
    Sizes,
    algorithm_time,
    collective_time,
    cost,
    sized_time,
)
from sim.compute import Work, compute_time
from sim.replay import replay
from sim.selection import select

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


def test_mpich_selection_follows_its_csel_rules():
    # maint/tuning/coll/mpir/generic.json and ch4/generic.json (module docstring of
    # sim.selection), one case on each side of every switch point
    one = {"nodes": 1, "ppn": 8}
    many = {"nodes": 4, "ppn": 8}
    assert select("mpich", "allreduce", 8, 1 << 20, **one) == "node_aware"  # shm (gamma)
    assert select("mpich", "allreduce", 32, 32768, **many) == "node_aware"  # alpha
    assert select("mpich", "allreduce", 32, 32772, **many) == "rabenseifner"  # beta
    assert select("mpich", "allreduce", 32, 8, nodes=32, ppn=1) == "recursive_doubling"
    assert select("mpich", "allreduce", 32, 16, nodes=32, ppn=1) == "recursive_doubling"
    assert select("mpich", "allreduce", 32, 128, nodes=32, ppn=1) == "rabenseifner"
    assert select("mpich", "allgatherv", 8, 524287) == "recursive_doubling"
    assert select("mpich", "allgatherv", 8, 524288) == "ring"
    assert select("mpich", "allgatherv", 6, 81919) == "bruck"
    assert select("mpich", "allgatherv", 6, 81920) == "ring"
    assert select("mpich", "reduce_scatter", 4, 524287) == "recursive_halving"
    assert select("mpich", "reduce_scatter", 4, 524288) == "pairwise"
    assert select("mpich", "alltoall", 16, 0, per_peer=256) == "bruck"
    assert select("mpich", "alltoall", 16, 0, per_peer=257) == "scattered"
    assert select("mpich", "alltoall", 16, 0, per_peer=32769) == "pairwise"
    assert select("mpich", "alltoall", 4, 0, per_peer=100) == "scattered"
    assert select("mpich", "alltoallv", 16, 1600) == "scattered"
    assert select("mpich", "bcast", 4, 1 << 20) == "binomial"
    assert select("mpich", "bcast", 16, 12288) == "binomial"
    assert select("mpich", "bcast", 16, 1 << 20) == "scatter_rd_allgather"
    assert select("mpich", "bcast", 16, 1 << 21) == "scatter_ring_allgather"
    assert select("mpich", "bcast", 12, 12 * 12289) == "scatter_ring_allgather"


def test_openmpi_selection_tables():
    # coll_tuned_decision_fixed.c (>= 4.1), commutative
    assert select("openmpi", "allreduce", 4, 8191) == "recursive_doubling"
    assert select("openmpi", "allreduce", 4, 8192) == "rabenseifner"
    assert select("openmpi", "allreduce", 40, 127) == "segmented_ring"
    assert select("openmpi", "allreduce", 40, 128) == "rabenseifner"
    assert select("openmpi", "allreduce", 100, 262143) == "recursive_doubling"
    assert select("openmpi", "alltoallv", 100, 1) == "pairwise"
    assert select("openmpi", "alltoallv", 40, 1) == "linear"
    assert select("openmpi", "allgather", 16, 1 << 20) == "recursive_doubling"
    assert select("openmpi", "reduce_scatter", 16, 1 << 20) == "ring"
    # <= 4.0: recursive doubling below 10000 bytes, ring up to P MiB, segmented beyond
    assert select("openmpi-4.0", "allreduce", 32, 9999) == "recursive_doubling"
    assert select("openmpi-4.0", "allreduce", 32, 10000) == "ring"
    assert select("openmpi-4.0", "allreduce", 2, 3 << 20) == "segmented_ring"
    assert select("openmpi-4.0", "allgather", 8, 49999) == "recursive_doubling"
    assert select("openmpi-4.0", "allgather", 6, 49999) == "bruck"
    assert select("openmpi-4.0", "allgather", 7, 50000) == "ring"
    assert select("openmpi-4.0", "allgather", 6, 50000) == "neighbor"
    assert select("openmpi-4.0", "alltoall", 16, 0, per_peer=199) == "bruck"
    with pytest.raises(ValueError, match="unknown MPI library"):
        select("lam", "allreduce", 4, 8)


@pytest.mark.parametrize("P", [2, 4, 8, 64])
def test_step_model_reduces_to_the_closed_forms(P):
    """One plain α-β level, P a power of two, γ = 0, no spread: every algorithm's steps add up
    to its textbook closed form (an independent reference written in cost())."""
    n = float(1 << 20)
    cl = Cluster("flat", 1, P, Level(A, 1 / Bt), Level(A, 1 / Bt))
    net = lambda: Net.of(cl, P)  # noqa: E731 - a fresh accumulator per algorithm
    for kind, algs in ALGORITHMS.items():
        for alg in algs:
            mb = n / P
            z = Sizes(kind, n, mb, n if kind == "alltoall" else None)
            want = cost(kind, alg, P, n, A, Bt, mb, n if kind == "alltoall" else None)
            got = algorithm_time(kind, alg, net(), z)
            assert got == pytest.approx(want, rel=1e-12), (kind, alg, P)


def test_non_power_of_two_folds_in_the_extra_ranks():
    n, P = 1e6, 6  # 2 extra ranks: one step in, one step out, around recursive doubling on 4
    cl = Cluster("flat", 1, P, Level(A, 1 / Bt), Level(A, 1 / Bt))
    t = algorithm_time("allreduce", "recursive_doubling", Net.of(cl, P), Sizes("allreduce", n))
    assert t == pytest.approx(2 * (A + n * Bt) + 2 * (A + n * Bt))
    t = algorithm_time("allreduce", "rabenseifner", Net.of(cl, P), Sizes("allreduce", n))
    assert t == pytest.approx(2 * (A + n * Bt) + 2 * (2 * A + 3 / 4 * n * Bt))


def test_levels_nic_sharing_and_reduction():
    """8 ranks on 2 nodes of 4: recursive doubling's distances 1 and 2 stay in the node, the
    distance-4 step crosses with all 4 ranks of a node on one NIC; γ adds n per step."""
    a, b = 1e-7, 1e-10
    n = 1e6
    cl = Cluster("t", 2, 4, Level(a, 1 / b), Level(A, 1 / Bt), reduce_Bps=2e9)
    t = algorithm_time("allreduce", "recursive_doubling", Net.of(cl, 8), Sizes("allreduce", n))
    assert t == pytest.approx(2 * (a + n * b) + (A + n * Bt + 3 * n * Bt) + 3 * n / 2e9)
    # the ring crosses nodes at the node boundary only: one rank per NIC, 2(P-1) steps
    t = algorithm_time("allreduce", "ring", Net.of(replace(cl, reduce_Bps=0.0), 8),
                       Sizes("allreduce", n))
    assert t == pytest.approx(14 * (A + n / 8 * Bt))


def test_measured_curve_and_spread():
    lv = Level(2e-5, 1e9, (0.0, 1024.0, 65536.0), (2e-5, 3e-5, 1.5e-4), (3e-6, 3e-6, 9e-6))
    assert lv.time(512.0) == pytest.approx(2.5e-5)  # interpolated inside a segment
    assert lv.time(65536.0 + 1e6) == pytest.approx(1.5e-4 + 1e-3)  # past the end: bandwidth
    assert lv.spread(0.0) == pytest.approx(3e-6)
    assert float(expected_max_normal(1)) == 0.0
    # E[max of 2 standard normals] = 1/sqrt(pi) = 0.564; Blom's approximation gives 0.589
    assert float(expected_max_normal(2)) == pytest.approx(0.5642, abs=0.03)
    assert float(expected_max_normal(64)) == pytest.approx(2.4175, abs=0.1)  # exact 2.4175
    # the slowest of P chains: mean + sqrt(Σσ²)·E[max of P normals]
    cl = Cluster("t", 4, 1, lv, lv)
    z = Sizes("allreduce", 512.0)
    got = sized_time(z, cl, 4, "recursive_doubling")
    want = 2 * 2.5e-5 + np.sqrt(2 * 3e-6 ** 2) * float(expected_max_normal(4))
    assert got == pytest.approx(want)


def test_alltoallv_time_uses_the_busiest_rank():
    m = np.array([[0, 10, 10], [1, 0, 1], [1, 1, 0]]) * 1000
    c = Collective("alltoallv", 8, m)
    cl = Cluster("t", 1, 3, Level(A, 1 / Bt), Level(A, 1 / Bt))
    # MPICH alltoallv: scattered (all messages in flight): one latency, the busiest rank's
    # 20000 elements at the bandwidth
    assert collective_time(c, cl) == pytest.approx(A + 20000 * 8 * Bt)
    assert collective_time(c, cl, algorithm="pairwise") == pytest.approx(2 * A + 20000 * 8 * Bt)


@pytest.mark.parametrize("kind", ["allreduce", "allgather", "reduce_scatter", "alltoall"])
def test_calibration_recovers_alpha_beta(kind):
    rng = np.random.default_rng(0)
    samples = []
    for P in (2, 4, 8):
        for n in np.logspace(1, 7, 13):
            t = cost(kind, select("mpich", kind, P, n, nodes=1, ppn=P), P, n, A, Bt)
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
    assert rates.keys_per_s == float("inf")  # no sample had key operations


def test_compute_fit_separates_key_operations_from_columns():
    """Narrow rows (LR: 1 column a key) and wide ones (FM: 17) cost the same per key look-up
    and differ per column: the fit recovers both rates, and a model left out is predicted."""
    true = ComputeRates(gemm_flops=3e10, sparse_keys_per_s=4e8, overhead_s=2e-4,
                        per_call_s=2e-5, keys_per_s=3e7, route_keys_per_s=2e9)
    rng = np.random.default_rng(3)
    samples = []
    for width in (1, 17, 33):
        for _ in range(6):
            keys = rng.uniform(1e4, 1e6)
            w = Work(rng.uniform(0, 1e9), keys * width, rng.integers(1, 6), key_ops=keys,
                     route_keys=keys * rng.uniform(1, 4))
            samples.append((w, compute_time(w, true)))
    rates, fit = fit_compute(samples[:12])  # widths 1 and 17 only
    assert rates.keys_per_s == pytest.approx(3e7, rel=1e-6)
    assert rates.sparse_keys_per_s == pytest.approx(4e8, rel=1e-6)
    assert rates.route_keys_per_s == pytest.approx(2e9, rel=1e-6)
    for w, t in samples[12:]:  # width 33, never seen
        assert compute_time(w, rates) == pytest.approx(t, rel=1e-6)
    # one width only: key-columns and key operations move together and cannot be told apart;
    # their costs measured apart (bench compute) leave one scale to fit, and width 33 follows
    one = [s for s in samples if s[0].sparse_keys == s[0].key_ops]
    rates, _ = fit_compute(one, costs={"key_ops": 4e8 / 3e7, "route_keys": 4e8 / 2e9})
    assert rates.sparse_keys_per_s == pytest.approx(4e8, rel=1e-6)
    assert rates.keys_per_s == pytest.approx(3e7, rel=1e-6)
    for w, t in samples[12:]:
        assert compute_time(w, rates) == pytest.approx(t, rel=1e-6)


def test_compute_fit_recovers_the_routing_rates_and_checks_its_costs():
    """Routed (DES), bucketed (a2a) and sorted (ps) keys each have a rate: the fit recovers
    the three from samples that mix them, a cost given for one ties it to the key-columns,
    and a cost for a term that does not exist is an error naming it."""
    true = ComputeRates(gemm_flops=3e10, sparse_keys_per_s=4e8, overhead_s=2e-4,
                        per_call_s=2e-5, keys_per_s=3e7, route_keys_per_s=2e8,
                        bucket_keys_per_s=5e7, sort_keys_per_s=3e7)
    rng = np.random.default_rng(5)
    samples = []
    for kind in ("route_keys", "bucket_keys", "sort_keys"):
        for _ in range(6):
            keys = rng.uniform(1e4, 1e6)
            w = Work(rng.uniform(0, 1e9), keys * rng.choice([1, 17]), rng.integers(1, 6),
                     key_ops=keys * rng.uniform(1, 2), **{kind: keys * rng.uniform(0.5, 4)})
            samples.append((w, compute_time(w, true)))
    rates, _ = fit_compute(samples)
    for r in ("route_keys_per_s", "bucket_keys_per_s", "sort_keys_per_s"):
        assert getattr(rates, r) == pytest.approx(getattr(true, r), rel=1e-6)
    rates, _ = fit_compute(samples, costs={"bucket_keys": 4e8 / 5e7})
    assert rates.bucket_keys_per_s == pytest.approx(5e7, rel=1e-6)
    with pytest.raises(ValueError, match="no per-key term \\['buckets'\\]"):
        fit_compute(samples, costs={"buckets": 1.0})


def _on_busy_nodes(true: ComputeRates, seed: int, calls: float | None = None) -> list:
    """(work, seconds, busy cores) samples of ``true`` on nodes with 1, 2 and 4 busy cores;
    ``calls`` a step (None: 1-5 at random)."""
    rng = np.random.default_rng(seed)
    samples = []
    for busy in (1, 2, 4):
        for _ in range(8):
            w = Work(rng.uniform(1e8, 1e10), rng.uniform(1e5, 1e7),
                     rng.integers(1, 6) if calls is None else calls)
            samples.append((w, compute_time(w, true, busy=busy), busy))
    return samples


def test_compute_fit_recovers_node_contention():
    true = ComputeRates(gemm_flops=5e10, sparse_keys_per_s=1e8, overhead_s=2e-4,
                        per_call_s=1e-5, contention=0.3)
    rates, fit = fit_compute(_on_busy_nodes(true, 2))
    assert rates.contention == pytest.approx(0.3, abs=1e-9)
    assert rates.gemm_flops == pytest.approx(5e10, rel=1e-6)
    assert rates.sparse_keys_per_s == pytest.approx(1e8, rel=1e-6)
    assert fit.rel_rms < 1e-9
    # the factor itself: 16 busy cores = 4 doublings
    assert compute_time(Work(5e10, 0), replace(true, overhead_s=0.0), busy=16) == \
        pytest.approx(1 + 0.3 * 4)


def test_compute_fit_with_a_measured_per_call_cost():
    """A per-call cost measured apart (validate: a P = 1 run's collective time a call) is kept
    as given, not fitted, and the other rates and the contention are recovered around it;
    samples that cannot tell calls from overhead (two calls a step each) still predict."""
    true = ComputeRates(gemm_flops=5e10, sparse_keys_per_s=1e8, overhead_s=2e-4,
                        per_call_s=9e-5, contention=0.2)
    samples = _on_busy_nodes(true, 4, calls=2.0)
    rates, fit = fit_compute(samples, per_call_s=9e-5)
    assert rates.per_call_s == 9e-5 and rates.overhead_s == pytest.approx(2e-4, rel=1e-6)
    assert rates.contention == pytest.approx(0.2, abs=1e-9) and fit.rel_rms < 1e-9
    assert rates.gemm_flops == pytest.approx(5e10, rel=1e-6)
    # fitted instead, the per-call cost and the overhead trade off (calls never vary)
    free, _ = fit_compute(samples)
    assert free.overhead_s + 2 * free.per_call_s == pytest.approx(2e-4 + 2 * 9e-5, rel=1e-6)
    with pytest.raises(ValueError, match="per_call_s must be >= 0"):
        fit_compute(samples, per_call_s=-1e-6)


def test_compute_fit_with_codec_work():
    """Compressed steps: the codec's element passes, selected elements and calls are charged
    at their own rates (compute_time = the rest + codec_time); given (bench compute measures
    them on the codec's kernels) they are kept and the other rates recovered around them;
    not given, they are fitted like any rate; uncompressed samples leave them free (inf)."""
    from sim.compute import codec_time

    true = ComputeRates(gemm_flops=5e10, sparse_keys_per_s=1e8, overhead_s=2e-4,
                        per_call_s=1e-5, codec_elems_per_s=3e9, select_elems_per_s=5e8,
                        codec_call_s=6e-5)
    rng = np.random.default_rng(5)
    samples = []
    for i in range(16):
        w = Work(rng.uniform(1e8, 1e10), rng.uniform(1e5, 1e7), rng.integers(1, 6),
                 codec_elems=rng.uniform(1e5, 1e7) * (i % 4 > 0),
                 select_elems=rng.uniform(1e5, 1e6) * (i % 4 == 3), codec_calls=(i % 4) * 2.0)
        samples.append((w, compute_time(w, true)))
    w = samples[5][0]
    assert compute_time(w, true) - compute_time(replace(w, codec_elems=0.0, select_elems=0.0,
                                                        codec_calls=0.0), true) == \
        pytest.approx(codec_time(w, true)) == pytest.approx(
            w.codec_elems / 3e9 + w.select_elems / 5e8 + w.codec_calls * 6e-5)
    given = replace(ComputeRates(), codec_elems_per_s=3e9, select_elems_per_s=5e8,
                    codec_call_s=6e-5)
    rates, fit = fit_compute(samples, codec=given)
    assert (rates.codec_elems_per_s, rates.select_elems_per_s, rates.codec_call_s) == \
        (3e9, 5e8, 6e-5)
    assert rates.gemm_flops == pytest.approx(5e10, rel=1e-6) and fit.rel_rms < 1e-9
    free, fit = fit_compute(samples)
    assert free.codec_elems_per_s == pytest.approx(3e9, rel=1e-6)
    assert free.select_elems_per_s == pytest.approx(5e8, rel=1e-6)
    assert free.codec_call_s == pytest.approx(6e-5, rel=1e-6) and fit.rel_rms < 1e-9
    plain, _ = fit_compute([s for s in samples if s[0].codec_calls == 0])
    assert plain.codec_elems_per_s == float("inf") and plain.codec_call_s == 0.0
    with pytest.raises(ValueError, match="codec"):
        fit_compute(samples, codec=replace(given, codec_call_s=-1.0))


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
    # MPICH 4 with every rank on one node: the shared-memory allreduce (reduce, then
    # broadcast: 2·lg P steps of the whole vector)
    ar = 2 * (A + 4000 * Bt)
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


@pytest.mark.parametrize("P", [4, 6, 8])
def test_every_repeated_step_adds_its_spread(P):
    """A ring repeats one step 2(P - 1) times: the chain's variance is 2(P - 1)·σ² (chain
    form), and every step waits for its slowest rank in the step form: 2(P - 1)·σ·E[max]."""
    lv = Level(2e-5, 1e9, (0.0, 1e6), (2e-5, 1e-3), (3e-6, 3e-6))
    sd, e = 3e-6, float(expected_max_normal(P))
    ring = 2 * (P - 1)
    n = 4096.0 * P
    for waits, extra in (("chain", math.sqrt(ring) * sd * e), ("step", ring * sd * e)):
        cl = Cluster("t", P, 1, lv, lv, waits=waits)
        got = sized_time(Sizes("allreduce", n), cl, P, "ring")
        assert got == pytest.approx(ring * float(lv.time(n / P)) + extra), waits
    # the pessimistic form never charges less than the optimistic one
    for alg in ("recursive_doubling", "rabenseifner", "ring"):
        a = sized_time(Sizes("allreduce", n), Cluster("t", P, 1, lv, lv), P, alg)
        b = sized_time(Sizes("allreduce", n), Cluster("t", P, 1, lv, lv, waits="step"), P, alg)
        assert b >= a, alg


def test_cluster_waits_round_trips_through_toml(tmp_path):
    from sim.cluster import dump_cluster

    cl = replace(PRESETS["edr"], waits="step",
                 compute=replace(PRESETS["edr"].compute, jitter=0.07, keys_per_s=2e7,
                                 route_keys_per_s=4e8, codec_elems_per_s=1.5e9,
                                 select_elems_per_s=2e8, codec_call_s=7e-5))
    f = tmp_path / "c.toml"
    f.write_text(dump_cluster(cl))
    back = load_cluster(str(f))
    assert back.waits == "step" and back.compute == cl.compute
    f.write_text(dump_cluster(cl).replace('waits = "step"', 'waits = "late"'))
    with pytest.raises(ValueError, match="waits"):
        load_cluster(str(f))


def test_wait_for_the_slowest_rank_grows_with_expected_max():
    """P ranks whose compute spreads by jitter σ/μ: the step waits σ·E[max of P normals]
    for the slowest beyond the mean; checked against a Monte Carlo of normal draws."""
    from sim.compute import wait_time

    r = ComputeRates(jitter=0.1)
    assert wait_time(2.0, r, 1) == 0.0 and wait_time(2.0, ComputeRates(), 64) == 0.0
    rng = np.random.default_rng(5)
    for P in (2, 8, 64):
        mc = float(np.mean(np.max(rng.normal(2.0, 0.2, size=(20000, P)), axis=1))) - 2.0
        assert wait_time(2.0, r, P) == pytest.approx(mc, rel=0.03), P
