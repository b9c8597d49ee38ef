"""desmpi simulate: what-if tables and plots, replay of a real trace, validation report."""

import json
import subprocess
import sys

import pytest

from desmpi.data.synth import SynthSpec, generate
from tests.conftest import ROOT, run_mpi


def _desmpi(*args, timeout=600):
    p = subprocess.run([sys.executable, "-m", "desmpi", *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    generate(SynthSpec(rows=4096, seed=1, cap=100_000), d / "t.h5")
    return d


def test_whatif_table_plots_crossovers(data, tmp_path):
    p = _desmpi("simulate", str(ROOT / "configs" / "deepfm.toml"), "--set",
                f"data.train={data}/t.h5", "--cluster", "25gbe", "--cluster", "hdr",
                "--ranks", "8,64,512", "--batch", "1024,2048", "--out", str(tmp_path),
                "--target", "50000", "--json")
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(rep["rows"]) == 3 * 2 * 6 * 2  # P × batch × strategies × clusters
    r = next(x for x in rep["rows"] if x["P"] == 512 and x["variant"] == "ps"
             and x["cluster"].startswith("25"))
    assert r["step_time_s"] == pytest.approx(r["comm_s"] + r["compute_s"] + r["wait_s"])
    assert 0 < r["comm_share"] < 1
    assert (tmp_path / "whatif.md").exists() and (tmp_path / "whatif.csv").exists()
    assert (tmp_path / "whatif_25gbe__tcp.png").stat().st_size > 10_000
    assert rep["recommendation"]["samples_per_s"] >= 50000
    # the crossover is the smallest P of the table where des/allreduce is slower than ps
    xs = rep["crossovers"]["des/allreduce vs ps"]
    assert len(xs) == 4  # clusters x batches
    for cl in ("25GbE (TCP)", "200 Gb/s HDR InfiniBand"):
        for B in (1024, 2048):
            step = {(x["variant"], x["P"]): x["step_time_s"] for x in rep["rows"]
                    if x["cluster"] == cl and x["batch"] == B}
            slower = [P for P in (8, 64, 512) if step["des/allreduce", P] > step["ps", P]]
            assert xs[f"{cl} @ B={B}"] == (slower[0] if slower else None), (cl, B)


def test_replay_of_a_real_trace(data, tmp_path):
    tr = tmp_path / "trace.json"
    run_mpi(2, ["-m", "desmpi", "train", str(ROOT / "configs" / "fm.toml"), "--set",
                f"data.train={data}/t.h5", "--set", "data.eval=", "--set",
                "train.batch_size=512", "--set", "train.steps=4", "--set",
                "dist.strategy=des", "--set", "dist.aggregate=allreduce", "--trace", str(tr)])
    t = json.loads(tr.read_text())
    assert t["world_size"] == 2 and len(t["steps"]) == 4
    kinds = [e["kind"] for e in t["steps"][0]["ranks"][0] if "kind" in e]
    assert kinds == ["allgatherv", "allgatherv", "allreduce"]
    p = _desmpi("simulate", "--replay", str(tr), "--cluster", "hdr", "--cluster", "10gbe",
                "--ranks-per-node", "1", "--json")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    hdr, eth = res
    assert hdr["median_step_s"] < eth["median_step_s"]  # slower network, slower step
    assert hdr["median_comm_s"] > 0 and hdr["world_size"] == 2


def test_validate_reports_every_case(tmp_path):
    """Compressed (--set reaches the runs and the plans): bytes planned == counted."""
    p = _desmpi("simulate", "--validate", "--models", "lr,fm", "--strategies", "des,ps",
                "--ranks", "1,2", "--steps", "4", "--batch", "512", "--out", str(tmp_path),
                "--set", "dist.compress=bf16", "--json", timeout=900)
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(rep["cases"]) == 2 * 2 * 2
    assert all(c["bytes_equal"] for c in rep["cases"])
    assert rep["measurements"]["sets"] == ["dist.compress=bf16"]
    assert all(c["predicted_step_time_s"] > 0 for c in rep["cases"])
    # every case here is in-sample (P = 1 and the calibrated P = 2): a fit that misses its own
    # runs by more than half is broken, whatever the machine's noise
    assert 0 <= rep["median_abs_error"] < 0.5
    assert rep["calibrated_ranks"] == [2] and rep["median_abs_error_extrapolated"] is None
    assert {(c["P"], c["network_from_P"], c["extrapolated"]) for c in rep["cases"]} == \
        {(1, None, False), (2, 2, False)}
    g = rep["groups"]
    assert g["in_sample"]["cases"] == 8 and g["held_out_P"] is None
    assert g["held_out_model"]["cases"] == 8  # leave-one-model-out over lr, fm
    assert g["communication"]["cases"] == 4  # the P = 2 runs (P = 1 has no collective)
    for grp in (g["in_sample"], g["held_out_model"]):
        lo, hi = grp["median_ci90"]
        assert lo <= grp["median_abs_error"] <= hi and grp["iqr"][0] <= grp["iqr"][1]
    # the codec's own work: the runs' codec_time_s_per_step against its streamed bytes
    codec = [c for c in rep["cases"] if "measured_codec_s" in c]
    assert g["codec"]["cases"] == len(codec) >= 4
    # (predicted: streamed bytes at the fitted memory rate, which a fit may leave unbounded:
    # then 0)
    assert all(c["measured_codec_s"] > 0 and c["predicted_codec_s"] >= 0 for c in codec)
    assert all(c["predicted_codec_s"] < c["predicted_step_time_s"] for c in codec)
    md = (tmp_path / "validation.md").read_text()
    assert "held out by model" in md and md.count("| lr |") == 4 + sum(
        c["model"] == "lr" for c in codec)
    assert "under `dist.compress=bf16`" in md and "dist.compress's own work alone" in md


def test_network_source_extrapolates_from_the_largest_smaller_calibration():
    from desmpi.whatif.validate import network_source

    assert network_source(1, [2, 4]) is None
    assert network_source(4, [2, 4]) == 4
    assert network_source(16, [2, 4]) == 4
    assert network_source(3, [2, 4]) == 2
    assert network_source(2, [4, 8]) == 4  # nothing smaller: the smallest calibrated
    assert network_source(8, []) is None


def test_validate_rejects_calibration_without_runs():
    p = subprocess.run([sys.executable, "-m", "desmpi", "simulate", "--validate", "--ranks",
                        "1,8", "--calibrate-ranks", "2"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert p.returncode != 0
    assert "--calibrate-ranks [2] not in --ranks [1, 8]" in p.stderr


def test_validate_reuse_rejects_other_overrides(tmp_path):
    """--reuse predicts the runs as they ran: a --set they were not made under is an error."""
    f = tmp_path / "validation.json"
    f.write_text(json.dumps({"measurements": {"sets": []}}))
    p = subprocess.run([sys.executable, "-m", "desmpi", "simulate", "--validate", "--reuse",
                        str(f), "--set", "dist.compress=bf16"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert p.returncode != 0
    assert "its runs were made under --set nothing, not ['dist.compress=bf16']" in p.stderr


def test_validate_defaults_to_small_ranks(monkeypatch):
    import desmpi.whatif.validate
    from desmpi import cli

    seen = {}

    def fake(models, variants, ranks, batch, steps, calibrate_ranks=None, repeats=1,
             network_ranks=None, reuse=None, sets=None):
        seen.update(ranks=ranks, calibrate=calibrate_ranks, batch=batch, network=network_ranks)
        return {"cases": [], "groups": {}, "median_abs_error": 0.0,
                "median_abs_error_extrapolated": None, "measurements": {}}

    monkeypatch.setattr(desmpi.whatif.validate, "validate", fake)
    assert cli.main(["simulate", "--validate", "--out", ""]) == 0
    assert seen == {"ranks": [1, 2, 4], "calibrate": None, "batch": 2048, "network": None}


def test_validation_groups_keep_held_out_and_oversubscribed_cases_apart():
    from desmpi.whatif.validate import groups_of

    def case(P, held, err, comm):
        return {"P": P, "held_out_P": held, "error": err, "error_model_held_out": 2 * err,
                "comm_error": comm}

    cases = [case(1, False, 0.10, None), case(2, False, -0.20, -0.5),
             case(4, True, 0.30, -0.8), case(4, True, -0.40, -0.9)]
    g = groups_of(cases, cores=2)
    assert g["in_sample"]["cases"] == 2 and g["in_sample"]["median_abs_error"] == \
        pytest.approx(0.15)
    assert g["held_out_P"]["cases"] == 2 and g["held_out_P"]["under"] == 1
    assert g["held_out_model"]["median_abs_error"] == pytest.approx(0.30)
    assert g["held_out_model_and_P"]["median_abs_error"] == pytest.approx(0.70)
    assert g["communication"]["cases"] == 3  # P = 1 moves nothing
    assert g["communication_within_cores"]["cases"] == 1
    assert g["communication_oversubscribed"]["median_abs_error"] == pytest.approx(0.85)


@pytest.mark.parametrize("compress", ["none", "bf16"])
def test_analyse_predicts_runs_of_a_known_machine_back(tmp_path, compress):
    """Runs made up from a known machine — one network level, compute rates, and a software
    cost on every collective call that the run's counters hold beside the network's — are
    predicted back exactly: the per-call cost comes from the P = 1 runs' counters, the rates
    from the compute fit, and the P = 4 runs (held out) follow. Compressed: the codec's rates
    come from bench compute, its work is part of the step, and the runs' codec time is
    predicted back."""
    from desmpi.config import load
    from desmpi.data.h5 import CtrDataset
    from desmpi.variants import parse_list
    from desmpi.whatif.simulate import ModelInfo, comm_time, profile
    from desmpi.whatif.validate import _config_path, _data, analyse
    from sim.accounting import Layout
    from sim.cluster import Cluster, ComputeRates, Level
    from sim.collectives import cost
    from sim.compute import compute_time
    from sim.selection import select

    lvl, sw = Level(2e-5, 2e9), 9e-5
    true = ComputeRates(gemm_flops=3e10, sparse_keys_per_s=4e8, overhead_s=3e-4,
                        per_call_s=sw, mem_Bps=5e9, keys_per_s=4e7, route_keys_per_s=2e8,
                        bucket_keys_per_s=6e7, sort_keys_per_s=3e7, codec_elems_per_s=2e9,
                        select_elems_per_s=1e9, codec_call_s=4e-5)
    from sim.compute import codec_time

    models, variants, ranks, batch, steps, cores = ["lr", "fm"], "des,des-rs,ps", [1, 2, 4], \
        256, 2, 4
    sets = [] if compress == "none" else [f"dist.compress={compress}"]
    bench_comm = {}
    for P in (2, 4):
        rows = []
        for n in (1024, 65536, 1 << 20):
            alg = select("mpich", "allreduce", P, n, nodes=1, ppn=P)
            t = cost("allreduce", alg, P, n, lvl.latency_s, 1 / lvl.bandwidth_Bps)
            rows.append({"kind": "allreduce", "P": P, "n": n, "time_s": t})
        bench_comm[str(P)] = rows
    ds = CtrDataset(_data(str(tmp_path), batch, steps), in_memory=True)
    runs = []
    for m in models:
        cfg = load(_config_path(m), [f"data.train={ds.path}", *sets])
        info = ModelInfo.per_variant(cfg.model, ds.n_fields, ds.n_dense, "float32",
                                     parse_list(variants))
        for v in parse_list(variants):
            for P in ranks:
                p = profile(ds, info, P, batch, steps, [v], layout=Layout("mpich", 1),
                            wire=cfg.dist.wire)[0]
                assert (p.codec.codec_calls > 0) == bool(sets)
                cl = Cluster("made up", 1, P, lvl, lvl, cores, true)
                net = comm_time(p, cl) if P > 1 else 0.0
                step = net + compute_time(p.work, true, busy=P)
                runs.append({"model": m, "variant": v.name, "P": P, "runs": [{
                    "step_time_s": step, "comm_time_s_per_step_min": net + sw * p.work.calls,
                    "comm_time_s_per_step": net + sw * p.work.calls,
                    "wire_bytes_per_step": p.wire_bytes, "wire_bytes_total": p.wire_total,
                    "mpi": "mpich", "ranks_per_node": 1,
                    "codec_time_s_per_step": codec_time(p.codec, true) if sets else None}]})
    meas = {"models": models, "variants": [v.name for v in parse_list(variants)],
            "ranks": ranks, "batch": batch, "steps": steps, "repeats": 1, "network_ranks": [2, 4],
            "cores": cores, "bench_comm": bench_comm, "runs": runs,
            "bench_compute": {"sparse_keys_per_s": 4e8, "keys_per_s": 4e7,
                              "route_keys_per_s": 2e8, "bucket_keys_per_s": 6e7,
                              "sort_keys_per_s": 3e7, "reduce_Bps": 0.0,
                              "codec_elems_per_s": 2e9, "select_elems_per_s": 1e9,
                              "codec_call_s": 4e-5}, "sets": sets}
    rep = analyse(meas, workdir=str(tmp_path))
    cc = rep["calibration"]["compute"]
    assert cc["codec_measured"] and cc["codec_elems_per_s"] == 2e9  # bench's, not fitted
    assert cc["codec_call_s"] == 4e-5
    codec = [c for c in rep["cases"] if "codec_error" in c]
    assert len(codec) == (18 if sets else 0)
    for c in codec:  # P = 4 on 4 cores: each rank a core, no contention
        assert abs(c["codec_error"]) < 1e-6, c
    assert rep["calibration"]["compute"]["per_call_s"] == pytest.approx(sw, rel=1e-9)
    assert rep["calibration"]["compute"]["per_call_measured"]
    for c in rep["cases"]:
        assert abs(c["error"]) < 1e-6, c
        assert c["bytes_equal"]
        if c["P"] > 1:  # the counters: the network and each call's software cost
            assert abs(c["comm_error"]) < 1e-6, c
    assert rep["groups"]["held_out_P"]["cases"] == 6


def test_network_samples_are_the_median_of_their_runs():
    """bench comm runs before the training runs and after each repeat: each sample's median
    time, so that one slow spell of the machine (the second run here, 3x) does not set α, β."""
    from desmpi.whatif.validate import median_samples

    def run(f):
        return [{"kind": "allreduce", "P": 2, "n": n, "time_s": f * (1e-5 + n / 2e9)}
                for n in (1024, 1 << 20)]

    got = median_samples([run(1.0), run(3.0), run(1.1)])
    assert [g["time_s"] for g in got] == [x["time_s"] for x in run(1.1)]
    assert [(g["kind"], g["n"]) for g in got] == [(x["kind"], x["n"]) for x in run(1.0)]
    with pytest.raises(ValueError, match="different kinds or sizes"):
        median_samples([run(1.0), run(1.0)[::-1]])
