"""dist 'auto': candidates, the simulator's ranking, a real 2-rank run, --recommend."""

import json
import subprocess
import sys

import pytest

from desmpi.config import ConfigError, DistConfig, from_dict
from desmpi.data.h5 import CtrDataset
from desmpi.data.synth import SynthSpec, generate
from desmpi.whatif.choose import rank_variants
from desmpi.whatif.simulate import ModelInfo, predict, profile
from sim.cluster import PRESETS
from tests.conftest import ROOT, run_mpi


def _names(d: DistConfig) -> list[str]:
    return [v.name for v in d.candidates()]


def test_candidates_follow_the_explicit_keys():
    assert _names(DistConfig()) == ["des/allreduce", "des/reduce_scatter", "des-a2a", "a2a",
                                    "ps"]
    assert _names(DistConfig(strategy="des")) == ["des/allreduce", "des/reduce_scatter"]
    assert _names(DistConfig(aggregate="reduce_scatter")) == [
        "des/reduce_scatter", "des-a2a", "a2a", "ps"]  # the aggregate constrains des only
    assert _names(DistConfig(strategy="ps")) == ["ps"]
    assert _names(DistConfig(input="replicate")) == ["des/allreduce+replicate",
                                                     "des/reduce_scatter+replicate"]
    with pytest.raises(ConfigError, match="reduce_scatter"):
        DistConfig(strategy="ps", aggregate="reduce_scatter").check()
    with pytest.raises(ConfigError, match="no variant"):
        DistConfig(strategy="a2a", input="replicate").check()
    d = DistConfig(strategy="des")
    assert d.is_auto and d.resolved(d.candidates()[1]).variant.name == "des/reduce_scatter"
    with pytest.raises(ValueError, match="resolves them at start-up"):
        _ = d.variant


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("auto")
    generate(SynthSpec(rows=4096, seed=1, cap=20_000), d / "t.h5")
    return d


def test_ranking_is_the_simulators_prediction_sorted(data):
    cfg = from_dict({"model": {"name": "deepfm", "embed_dim": 8, "hidden": [64, 64]},
                     "data": {"train": str(data / "t.h5")},
                     "train": {"batch_size": 1024}}).check()
    ds = CtrDataset(cfg.data.train)
    cl = PRESETS["25gbe"].with_ranks(16)
    cands = cfg.dist.candidates()
    rows = rank_variants(ds, cfg, 16, cl, cands)
    assert sorted(r["variant"] for r in rows) == sorted(v.name for v in cands)
    assert [r["step_time_s"] for r in rows] == sorted(r["step_time_s"] for r in rows)
    # each entry is the what-if prediction of that variant (one source of truth)
    info = ModelInfo.per_variant(cfg.model, ds.n_fields, ds.n_dense, "float32", cands)
    want = {p.variant.name: predict(p, cl, cl.compute)["step_time_s"]
            for p in profile(ds, info, 16, 1024, 2, cands)}
    assert {r["variant"]: r["step_time_s"] for r in rows} == pytest.approx(want)


def test_two_rank_run_chooses_records_and_caches(data, tmp_path):
    args = ["-m", "desmpi", "train", str(ROOT / "configs" / "fm.toml"), "--set",
            f"data.train={data}/t.h5", "--set", "data.eval=", "--set", "train.batch_size=512",
            "--set", "train.steps=3", "--json"]
    s = json.loads(run_mpi(2, [*args, "--out", str(tmp_path / "r")]).stdout.strip()
                   .splitlines()[-1])
    c = s["choice"]
    assert c["variant"] == s["variant"] and c["predicted_step_time_s"] > 0
    assert len(c["ranking"]) == 5 and c["ranking"][0]["variant"] == c["variant"]
    assert c["runner_up"] == c["ranking"][1]
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())["config"]["dist"]
    assert "auto" not in (saved["strategy"], saved["aggregate"])  # what the run ran
    # P = 1: nothing to choose, no calibration
    s1 = json.loads(subprocess.run([sys.executable, *args], capture_output=True, text=True,
                                   timeout=300, cwd=ROOT).stdout.strip().splitlines()[-1])
    assert s1["choice"]["predicted_step_time_s"] is None and s1["variant"] == "des/allreduce"


def test_recommend_prints_the_ranking(data):
    p = subprocess.run([sys.executable, "-m", "desmpi", "simulate",
                        str(ROOT / "configs" / "dlrm.toml"), "--set", f"data.train={data}/t.h5",
                        "--recommend", "--cluster", "hdr", "--ranks", "2,64", "--batch", "1024",
                        "--json"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert [(o["P"], o["batch"]) for o in out] == [(2, 1024), (64, 1024)]
    for o in out:
        steps = [r["step_time_s"] for r in o["ranking"]]
        assert steps == sorted(steps) and len(steps) == 5


def test_a_damaged_calibration_cache_is_measured_again(data, tmp_path):
    from desmpi.whatif.choose import CACHED
    from tests.conftest import mpi_env, mpiexec_path

    env = {**mpi_env(), "DESMPI_CACHE": str(tmp_path / "cache")}
    cmd = [mpiexec_path(), "-n", "2", sys.executable, "-m", "desmpi", "train",
           str(ROOT / "configs" / "lr.toml"), "--set", f"data.train={data}/t.h5", "--set",
           "data.eval=", "--set", "train.batch_size=512", "--set", "train.steps=2"]
    for junk in (None, "{not json", json.dumps({"latency_s": 1e-6})):  # fresh, broken, old
        for f in (tmp_path / "cache").glob("cluster-*.json") if junk else []:
            f.write_text(junk)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
        assert p.returncode == 0, p.stderr[-2000:]
        files = list((tmp_path / "cache").glob("cluster-*.json"))
        assert len(files) == 1 and set(CACHED) <= set(json.loads(files[0].read_text()))
    # the sparse rates were measured on this data's first batch: another batch is measured anew
    assert json.loads(files[0].read_text())["data"].endswith(":512")
    assert json.loads(files[0].read_text())["codecs"] is None  # uncompressed: not measured
    p = subprocess.run([*cmd[:-1], "train.steps=1", "--set", "train.batch_size=256"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(list((tmp_path / "cache").glob("cluster-*.json"))) == 2


def test_trial_measures_candidates_and_the_model_stays_the_single_process_one(data, tmp_path):
    """The trial runs several variants in turn on the first real steps and switches to the
    fastest: every rank agrees, and the model is still the P = 1 model (float64, to 1e-9)."""
    import numpy as np

    from desmpi.variants import parse

    args = ["-m", "desmpi", "train", str(ROOT / "configs" / "fm.toml"), "--set",
            f"data.train={data}/t.h5", "--set", f"data.eval={data}/t.h5", "--set",
            "train.batch_size=128", "--set", "train.steps=24", "--set", "train.dtype=float64",
            "--set", "dist.auto_band=1000", "--set", "dist.auto_trial_steps=1",
            "--set", "dist.auto_trial_max=5", "--json"]
    s = json.loads(run_mpi(2, [*args, "--out", str(tmp_path / "p2")]).stdout.strip()
                   .splitlines()[-1])
    t = s["choice"]["trial"]
    assert t is not None and t["steps"] == 2 * len(t["measured_step_time_s"])
    assert len(t["measured_step_time_s"]) == 5  # FM: one structure, every variant takes part
    meas, predicted = t["measured_step_time_s"], s["choice"]["variant"]
    fastest = min(meas, key=meas.get)
    assert t["chosen"] == s["variant"]
    # the measured fastest, unless it beats the simulator's choice by no more than the margin
    assert t["chosen"] == fastest or (t["chosen"] == predicted
                                      and meas[fastest] > 0.95 * meas[predicted])
    assert parse(s["variant"]).name == s["variant"]
    subprocess.run([sys.executable, *args[:-1], "--out", str(tmp_path / "p1")],
                   capture_output=True, text=True, timeout=300, cwd=ROOT, check=True)
    p1 = np.load(tmp_path / "p1" / "eval_predictions.npy")
    p2 = np.load(tmp_path / "p2" / "eval_predictions.npy")
    assert np.max(np.abs(p2 - p1) / np.abs(p1)) < 1e-9


def test_trial_decides_on_the_slowest_rank_of_each_step():
    """Rank 0 alone would see candidate B fast (its peer is still working when it ends); the
    step's time is its slowest rank's, so A wins. Every trial step starts at a barrier."""
    import contextlib

    import numpy as np

    from desmpi.variants import parse
    from desmpi.whatif.trial import Trial

    A, B = parse("des/allreduce"), parse("ps")

    class TwoRanks:  # rank 0's view of a 2-rank job whose other rank timed `peer`
        rank, size = 0, 2

        def __init__(self, peer):
            self.peer, self.barriers, self.acct = peer, 0, self

        def scoped(self, name):
            assert name == "meta"  # outside the step's counted traffic
            return contextlib.nullcontext()

        def barrier(self):
            self.barriers += 1

        def allreduce(self, x, op="sum"):
            assert op == "max"
            return np.maximum(x, self.peer)

        def bcast_object(self, obj):
            return obj

    # schedule: warm A, warm B, then rounds A B, B A, A B (the order rotates)
    mine = [9.0, 9.0, 1.0, 0.5, 0.5, 1.0, 1.0, 0.5]   # B looks twice as fast on rank 0
    peer = [9.0, 9.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0]   # but its other rank takes 2 s
    comm = TwoRanks(np.array(peer))
    t = Trial(comm, {A: "a", B: "b"}, rounds=3)
    assert [v for v in t.schedule] == [A, B, A, B, B, A, A, B]
    for s in mine:
        assert t.active
        t.sync()
        w = t.record(s)
    assert w == A and not t.active and comm.barriers == len(mine)
    assert t.measured == {A.name: 1.0, B.name: 2.0}


def test_trial_extends_short_rounds_and_trusts_a_consistent_small_lead():
    """Short steps: after the first timed round the trial runs as many rounds as fit in its
    budget (capped), and past the cap blocks of several steps (each block one barrier, its
    time the mean step); a candidate 2% faster in every one of them beats the prediction by
    the sign test, while three rounds alone (no budget) leave the prediction in place (2% is
    inside the margin). A step cap (half the run) bounds it all."""
    import contextlib

    import numpy as np

    from desmpi.variants import parse
    from desmpi.whatif.trial import Trial, sign_test

    A, B = parse("des/allreduce"), parse("ps")

    class OneRank:
        rank, size = 0, 1

        def __init__(self):
            self.acct, self.barriers = self, 0

        def scoped(self, name):
            return contextlib.nullcontext()

        def barrier(self):
            self.barriers += 1

        def allreduce(self, x, op="sum"):
            return np.asarray(x)

        def bcast_object(self, obj):
            return obj

    assert sign_test(5, 5) == 1 / 32 and sign_test(0, 3) == 1.0 and sign_test(3, 3) == 0.125

    def run(budget, max_steps=None):
        t = Trial(OneRank(), {A: "a", B: "b"}, rounds=3, budget_s=budget, max_rounds=10,
                  max_steps=max_steps)
        w = None
        while t.active:
            t.sync()
            v, _ = t.next()
            w = t.record(0.010 if v == A else 0.0098)
        return t, w

    # 20 ms a round: 50 would fit, 10 at most, so rounds 4-10 run blocks of 5 steps
    t, w = run(1.0)
    assert t.block_steps == 5 and len(t.schedule) == 2 + 2 * 3 + 2 * 7 * 5
    assert t.comm.barriers == 2 + 2 * 10  # one a block
    assert len(t.times[A]) == 10 and w == B
    assert np.allclose(t.times[A], 0.010)  # the mean step of each block
    t, w = run(1.0, max_steps=40)  # 40 steps at most: 10 rounds of one step
    assert t.block_steps == 1 and len(t.schedule) == 2 + 2 * 10 <= 40
    t, w = run(1.0, max_steps=60)  # room for blocks of 2 in rounds 4-10
    assert t.block_steps == 2 and len(t.schedule) == 2 + 2 * 3 + 2 * 7 * 2 <= 60
    t, w = run(0.0)
    assert len(t.schedule) == 2 + 2 * 3 and w == A
    t = Trial(OneRank(), {A: "a", B: "b"}, rounds=3, budget_s=1.0, max_rounds=10)
    while t.active:  # steps too short for the clock: the most rounds, one step each
        t.sync()
        t.record(0.0)
    assert len(t.schedule) == 2 + 2 * 10 and t.block_steps == 1
    t, w = run(0.05)  # 2 rounds fit, 3 at least
    assert len(t.schedule) == 2 + 2 * 3


def _step_of(data, model: dict, variants, B: int = 1024, P: int = 4):
    """(data set, {variant: ModelInfo}, the counts of its first global batch of B at P
    ranks, B, P) for ``model`` on the module's data."""
    from desmpi.strategies.counts import count_step

    cfg = from_dict({"model": model, "data": {"train": str(data / "t.h5")}}).check()
    ds = CtrDataset(cfg.data.train)
    info = ModelInfo.per_variant(cfg.model, ds.n_fields, ds.n_dense, "float32", variants)
    return ds, info, count_step(ds.read(0, B), P, ds.onehot, ds.has("values")), B, P


def test_routing_work_follows_each_strategy(data):
    """Where keys enter: DES hashes every key of the global batch (routed keys), a2a and
    des-a2a group their local keys by owner and bag (bucketed), ps deduplicates and groups
    them (sorted); an Alltoallv's own block is a memory copy (MPI copies it locally), so a
    one-rank a2a streams exactly its self-sends' bytes more than its partial matrices."""
    from desmpi.strategies.counts import count_step
    from desmpi.strategies.plans import collectives
    from desmpi.variants import parse
    from desmpi.whatif.simulate import step_work
    from sim.accounting import TEXTBOOK

    names = ["des/allreduce", "a2a", "des-a2a", "ps"]
    vs = [parse(n) for n in names]
    ds, info, c, B, P = _step_of(data, {"name": "fm", "embed_dim": 8}, vs)
    nnz = float(c.nnz.sum())
    w = {n: step_work(v, c, info[v]) for n, v in zip(names, vs)}
    assert (w["des/allreduce"].route_keys, w["des/allreduce"].bucket_keys,
            w["des/allreduce"].sort_keys) == (nnz, 0.0, 0.0)
    for n in ("a2a", "des-a2a"):
        assert (w[n].route_keys, w[n].bucket_keys, w[n].sort_keys) == (0.0, nnz / P, 0.0)
    assert (w["ps"].route_keys, w["ps"].bucket_keys, w["ps"].sort_keys) == (0.0, 0.0, nnz / P)
    # one rank: every byte an Alltoallv moves is its own block, copied in memory
    a2a = parse("a2a")
    one = count_step(ds.read(0, B), 1, ds.onehot, ds.has("values"))
    own = sum(float(x.counts[0][0]) * x.itemsize
              for x in collectives(a2a, one, info[a2a].dims, TEXTBOOK)
              if x.kind in ("alltoall", "alltoallv"))
    prof = profile(ds, info, 1, B, 1, [a2a])[0]
    assert own > 0
    assert prof.work.mem_bytes == pytest.approx(step_work(a2a, one, info[a2a]).mem_bytes + own)


def test_compression_work_follows_the_compressed_payloads(data):
    """dist.compress in the cost model: the mean rank's element passes and calls, closed forms
    from the step's counts. A compressed Allreduce of n floats (error feedback fused under
    bf16): pack the n − n/P floats of the other ranks' chunks (the own chunk's residual,
    zero, not read), decode and sum n − n/P and start from the own n/P, pack its n/P sums
    and decode them in the pass that adds the last chunk (n/P), decode the others' n − n/P,
    two calls; Reduce_scatter: the same first step; Allgatherv:
    pack n/P, decode n; Alltoallv: pack what a rank sends others, decode what it receives
    from them, copy its own block. DES packs its partials (reduce_scatter: Z and gZ) and its
    dense gradients; ps, a2a and des-a2a their exchanged rows, pooled parts or partials and
    their gradients, and the dense gradients. Compression adds no other work."""
    from dataclasses import replace

    from desmpi.data.slicing import split_counts
    from desmpi.kernels.slots import topk_count
    from desmpi.strategies.compressed import Wire
    from desmpi.variants import parse
    from desmpi.whatif.simulate import step_work

    vs = [parse(n) for n in ("des/reduce_scatter", "ps", "a2a", "des-a2a")]
    _, info, c, B, P = _step_of(data, {"name": "deepfm", "embed_dim": 8, "hidden": [16]}, vs)
    zero = {"codec_elems": 0.0, "select_elems": 0.0, "codec_calls": 0.0}
    for v in vs:
        d = info[v].dims
        full = step_work(v, c, info[v])
        assert {k: getattr(full, k) for k in zero} == zero, v
        bf = step_work(v, c, info[v], Wire("bf16"))
        assert replace(bf, **zero) == full, v  # nothing else changes
        dense = 3 * d.D - d.D / P  # the dense gradients' Allreduce
        if v.strategy == "des":  # Reduce_scatter, Allgatherv
            fwd, bwd = 2 * B * d.W - B * d.W / P, B * d.W / P + B * d.W
        else:
            m = {"ps": c.distinct * d.R, "a2a": c.bags * d.seg,
                 "des-a2a": c.samples * d.W}[v.strategy]
            # sent and received over the mean rank, each rank's own block copied once
            fwd = bwd = (2 * m.sum() - m.trace()) / P
        assert bf.codec_elems == pytest.approx(fwd + bwd + dense), v
        assert bf.codec_calls == 4 and bf.select_elems == 0, v
        # the partials' codec alone: no dense-gradient term; and each direction of it alone
        only = step_work(v, c, info[v], Wire(partial="bf16"))
        assert only.codec_elems == pytest.approx(fwd + bwd) and only.codec_calls == 2, v
        for fw, bw, want in (("bf16", "none", fwd), ("none", "bf16", bwd)):
            one = step_work(v, c, info[v], Wire(partial=fw, partial_grad=bw))
            assert one.codec_elems == pytest.approx(want) and one.codec_calls == 1, (v, fw)
        # threshold's dense gradients: the others' chunks selected from, the residual added
        # (error feedback) and the own chunk's zeroed, the own chunk copied and the P - 1
        # others' slots added, the own sum packed, the bf16 sums gathered and decoded
        thr = step_work(v, c, info[v], Wire("threshold", ratio=0.25, partial="none"))
        assert thr.select_elems == pytest.approx(d.D - d.D / P), v
        ch = split_counts(d.D, P)
        slots = sum((P - 1) * topk_count(int(m), 0.25) for m in ch) / P
        assert thr.codec_elems == pytest.approx(d.D + d.D / P + d.D / P + slots + d.D / P
                                                + d.D), v
