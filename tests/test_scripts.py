"""The study drivers and benchmarks run on tiny inputs (their figures live in docs/)."""

import csv
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _run(args, timeout=900):
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_compare_strategies_quick(tmp_path):
    """Compressed (--set reaches both the plans and the runs): counted equals planned."""
    _run(["scripts/compare_strategies.py", "--quick", "--out", str(tmp_path),
          "--set", "dist.compress=bf16"])
    rows = list(csv.DictReader(open(tmp_path / "strategies.csv")))
    real = [r for r in rows if r["counted_wire_bytes_per_step"] != ""]
    assert len(real) == 2 * 2 * 6  # models × real P × variants
    for r in real:
        # the plan for the run's own library and layout (one node here) equals what it counted
        assert float(r["counted_wire_bytes_per_step"]) == \
            float(r["planned_here_wire_bytes_per_step"]), r
    md = (tmp_path / "strategies.md").read_text()
    assert "Crossover" in md and "saving vs ps" in md and "Payloads compressed" in md


def test_compare_compression_names_the_run_its_real_runs_came_from():
    """--real-from: the report names the earlier command, or its arguments where a report from
    before the command line was kept has only them."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from compression_report import _earlier
    finally:
        sys.path.pop(0)
    assert _earlier({"argv": ["--out", "d", "--models", "lr"]}) == \
        "`python scripts/compare_compression.py --out d --models lr`."
    assert _earlier({"models": "lr,fm", "ranks": "1,2", "seeds": 3, "out": "d"}) == \
        "its arguments models = lr,fm, ranks = 1,2, seeds = 3."


def test_compression_order_band_pairs_none_by_seed():
    """The summation-order band: none(P) − none(1) paired by seed, and bf16's ΔAUC at P."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from compression_report import _order_band
    finally:
        sys.path.pop(0)

    def row(P, seed, method, auc):
        return {"data": "criteo", "model": "wdl", "P": P, "seed": seed, "method": method,
                "eval_auc": auc}
    real = [row(1, 1, "none", 0.70), row(1, 2, "none", 0.72), row(2, 1, "none", 0.71),
            row(2, 2, "none", 0.70), row(2, 1, "bf16", 0.715), row(2, 2, "bf16", 0.69),
            row(4, 3, "none", 0.5)]  # no P = 1 run of seed 3: no pair, no row
    lines = _order_band(real)
    body = [x for x in lines if x.startswith("| criteo")]
    assert body == ["| criteo | wdl | 2 | -0.0050 [-0.0200, +0.0100] | 0.0200 | -0.0025 |"]
    assert _order_band([row(1, 1, "none", 0.7)]) == []


def test_compression_auc_targets_check_each_cell():
    """The report's target lines: bf16 |mean ΔAUC| <= 0.0005 per (model, P > 1) on Criteo,
    paired by seed, misses named with their standard error; top-k one-sided at 0.001."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from compression_report import _auc_targets
    finally:
        sys.path.pop(0)

    def row(model, P, seed, method, auc, data="criteo"):
        return {"data": data, "model": model, "P": P, "seed": seed, "method": method,
                "eval_auc": auc}
    real = [row(m, P, s, "none", 0.74) for m in ("wdl", "deepfm") for P in (1, 2)
            for s in (1, 2)]
    real += [row("wdl", 2, 1, "bf16", 0.7390), row("wdl", 2, 2, "bf16", 0.7392),  # -0.0009
             row("deepfm", 2, 1, "bf16", 0.7403), row("deepfm", 2, 2, "bf16", 0.7399),
             row("wdl", 1, 1, "bf16", 0.70),  # P = 1 is not a cell
             row("wdl", 2, 1, "topk 0.1", 0.7395), row("wdl", 2, 2, "topk 0.1", 0.7415),
             row("wdl", 2, 1, "bf16", 0.5, data="synthetic")]  # synthetic is not judged
    lines = _auc_targets(real)
    assert lines[0] == ("Target check (bf16, Criteo): |mean ΔAUC| ≤ 0.0005 in 1/2 (model, P) "
                        "cells; missed: wdl P=2 -0.0009 ± 0.0001.")
    assert lines[1] == ("Target check (topk 0.1, Criteo): mean ΔAUC ≥ −0.001 in 1/1 (model, P) "
                        "cells.")
    assert _auc_targets([row("wdl", 2, 1, "none", 0.7)]) == []


def test_compare_compression_quick(tmp_path):
    _run(["scripts/compare_compression.py", "--quick", "--models", "lr", "--out",
          str(tmp_path)], timeout=900)
    rep = json.loads((tmp_path / "compression.json").read_text())
    real = {(r["data"], r["P"], r["method"]): r for r in rep["real"]}
    for data in ("criteo", "synthetic"):
        none, narrow = real[data, 2, "none"], real[data, 2, "bf16+narrow"]
        bf16 = real[data, 2, "bf16"]
        assert narrow["eval_auc"] == bf16["eval_auc"]  # narrow keys change no bit
        assert narrow["wire_bytes_per_step"] < bf16["wire_bytes_per_step"] < \
            none["wire_bytes_per_step"]
        assert abs(bf16["eval_auc"] - none["eval_auc"]) < 0.01
    plan = {(r["P"], r["variant"], r["method"]): r for r in rep["planned"]}
    full = plan[64, "des/allreduce+replicate", "none"]  # the partials alone
    half = plan[64, "des/allreduce+replicate", "bf16"]
    assert 0.45 < half["wire_bytes_per_step"] / full["wire_bytes_per_step"] < 0.6
    # int8: half a word a float and a scale per 64 (the loss sum stays float64)
    q8 = plan[64, "des/allreduce+replicate", "int8"]
    assert 0.25 < q8["wire_bytes_per_step"] / full["wire_bytes_per_step"] < 0.3
    # ps compressed the same way: its rows (not its int64 keys) as 16-bit words; the baseline
    # column is ps at full width
    assert full["ps_same_codec_bytes_per_step"] == full["ps_bytes_per_step"]
    assert 0.5 < half["ps_same_codec_bytes_per_step"] / half["ps_bytes_per_step"] < 1
    for data in ("criteo", "synthetic"):
        assert real[data, 2, "int8"]["wire_bytes_per_step"] < \
            real[data, 2, "bf16"]["wire_bytes_per_step"]
    assert set(rep["codec_s"]) >= {"bf16", "int8", "topk 0.1", "threshold 0.1"}
    # on the real payloads, fp16's scaled chunks keep 11 significant bits (RMS ~2^-12), ahead
    # of bf16's 8 and never behind plain halves
    for r in rep["payload_precision"]:
        for name in ("Z", "gZ"):
            e = r[name]
            assert e["fp16"] < 3e-4 and e["fp16"] < e["bf16"] / 4, (r["model"], name, e)
            assert e["fp16"] <= e["fp16 plain"] * 1.001, (r["model"], name, e)
    assert "ΔAUC" in (tmp_path / "compression.md").read_text()


def test_bench_whatif_small():
    p = _run(["scripts/bench_whatif.py", "--ranks", "8,64", "--batch", "512,1024",
              "--clusters", "3", "--json"])
    rep = json.loads(p.stdout)
    assert rep["configurations"] == 2 * 2 * 6 * 3 and rep["total_s"] > 0


def test_bench_data_and_compute():
    p = _run(["-m", "desmpi", "bench", "data", "--rows", "20000", "--repeats", "1", "--json"])
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["rows"] == 20000 and rep["convert_rows_per_s_per_rank"] > 0
    p = _run(["-m", "desmpi", "bench", "compute", "--json"])
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["gemm_flops"] > 1e8 and rep["sparse_keys_per_s"] > 1e5
    assert rep["bucket_keys_per_s"] > 0 and rep["sort_keys_per_s"] > 0


def test_bench_compute_on_a_data_file(tmp_path):
    from desmpi.data.synth import SynthSpec, generate

    generate(SynthSpec(rows=1024, seed=1, cap=5_000), tmp_path / "t.h5")
    p = _run(["-m", "desmpi", "bench", "compute", "--data", str(tmp_path / "t.h5"), "--batch",
              "512", "--repeats", "1", "--codec", "int8", "--select", "topk", "--json"])
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert all(rep[k] > 0 for k in ("sparse_keys_per_s", "keys_per_s", "route_keys_per_s",
                                    "bucket_keys_per_s", "sort_keys_per_s",
                                    "codec_elems_per_s", "select_elems_per_s"))
    assert (rep["codec"], rep["select"]) == ("int8", "topk") and rep["codec_call_s"] >= 0
    p = subprocess.run([sys.executable, "-m", "desmpi", "bench", "compute", "--data",
                        str(tmp_path / "none.h5")], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert p.returncode != 0 and "none.h5" in p.stderr


def test_bench_checkpoint_small(tmp_path):
    p = _run(["scripts/bench_checkpoint.py", "--keys", "50000", "--dir", str(tmp_path),
              "--json"])
    rep = json.loads(p.stdout)
    assert rep["keys"] == 50000 and rep["file_bytes"] > 50000 * rep["row_bytes"]


def test_bench_train_small():
    p = _run(["-m", "desmpi", "bench", "train", "--model", "wdl", "--batch", "512", "--steps",
              "3", "--warmup", "1", "--cap", "1000", "--json"])
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["samples_per_s"] > 0 and rep["gemm_limit_samples_per_s"] > 0
    assert 0 < rep["ratio_to_gemm_limit"] and 0 <= rep["outside_gemm_share"] < 1
    # the step's own GEMMs, timed inside it: part of the step, and the share is their rest
    assert 0 < rep["gemm_in_step_s"] < rep["step_time_s"]
    assert rep["interaction_in_step_s"] == 0.0 and rep["interaction_s"] == 0.0
    assert {"lookup", "partials", "sparse_update", "dense"} <= set(rep["phases_s"])
    # auto fuses the first layer under des / allreduce (H = 400 < F·d = 416) ...
    assert rep["substitutions"]["deep"] == "fused_first_layer" and rep["partial_width"] == 401
    # ... and --set reaches the run's config (reduce_scatter would pool under auto)
    p = _run(["-m", "desmpi", "bench", "train", "--model", "wdl", "--batch", "512", "--steps",
              "2", "--warmup", "1", "--cap", "1000", "--aggregate", "reduce_scatter", "--set",
              "model.deep_input='fused'", "--json"])
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["substitutions"]["deep"] == "fused_first_layer" and rep["aggregate"] == \
        "reduce_scatter"
    p = _run(["-m", "desmpi", "bench", "train", "--model", "fm", "--batch", "512", "--steps",
              "3", "--warmup", "1", "--cap", "1000", "--json"])
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["gemm_limit_samples_per_s"] is None and rep["outside_gemm_share"] == 1.0


def test_bench_train_launches_its_ranks():
    p = _run(["-m", "desmpi", "bench", "train", "--ranks", "2", "--model", "fm", "--batch",
              "256", "--steps", "2", "--warmup", "1", "--cap", "1000", "--json"])
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["ranks"] == 2 and len(rep["step_time_s_by_rank"]) == 2
    assert set(rep["collectives_s_by_rank"][0]) >= {"allreduce"}
    assert rep["codec_s"] == 0.0  # nothing compressed
    p = _run(["-m", "desmpi", "bench", "train", "--ranks", "2", "--model", "fm", "--batch",
              "256", "--steps", "2", "--warmup", "1", "--cap", "1000", "--json", "--set",
              "dist.compress=bf16"])
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert 0.0 < rep["codec_s"] < rep["step_time_s"]
    assert rep["codec_share"] == pytest.approx(rep["codec_s"] / rep["step_time_s"])


def test_bench_variants_runs_them_side_by_side_on_the_same_batches():
    """Three variants in one 2-rank job: each its own model and shard, the same batches in
    blocks in turns; afterwards their predictions agree as the equivalence demands (a variant
    fed other batches, or a block skipped, would differ by far more)."""
    p = _run(["-m", "desmpi", "bench", "variants", "--ranks", "2", "--model", "wdl", "--batch",
              "256", "--steps", "2", "--rounds", "3", "--warmup", "1", "--cap", "1000",
              "--variants", "des/allreduce,des-rs,ps", "--json"])
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    names = ["des/allreduce", "des/reduce_scatter", "ps"]
    assert rep["variants"] == names and rep["ranks"] == 2
    assert rep["max_prediction_gap"] < 1e-4
    for n in names:
        rounds = rep["samples_per_s_by_round"][n]
        assert len(rounds) == 3 and min(rounds) > 0
        assert sorted(rounds)[1] == pytest.approx(rep["samples_per_s"][n])  # the median
    assert rep["relative"][rep["fastest"]] == 1.0 and max(rep["relative"].values()) == 1.0
    bad = subprocess.run([sys.executable, "-m", "desmpi", "bench", "variants", "--variants",
                          "des-x,ps"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode != 0 and "unknown variant 'des-x'" in bad.stderr


def test_bench_auto_pools_the_jobs_rounds():
    """Two jobs whose own fastest differ: the pooled figure is the median of all six rounds,
    and the report keeps each job's fastest (the order did not reproduce)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from bench_auto import pooled
    finally:
        sys.path.pop(0)

    def job(a, b):
        med = {"A": sorted(a)[1], "B": sorted(b)[1]}
        best = max(med, key=med.get)
        return {"variants": ["A", "B"], "samples_per_s_by_round": {"A": a, "B": b},
                "fastest": best, "relative": {k: v / med[best] for k, v in med.items()},
                "steps": 5, "rounds": 3}

    p = pooled([job([10, 11, 12], [9, 9.5, 13]), job([8, 8.5, 9], [9, 10, 11])])
    assert p["fastest_by_job"] == ["A", "B"] and p["rounds"] == 6 and p["steps"] == 5
    # A: 8 8.5 9 10 11 12 -> 9.5; B: 9 9 9.5 10 11 13 -> 9.75
    assert p["samples_per_s"] == {"A": 9.5, "B": 9.75} and p["fastest"] == "B"


def test_bench_auto_finals_judge_the_choices_against_the_fastest_alone():
    """Where auto chose another variant than the pooled fastest, the finals run that fastest
    and every other choice side by side; each run's choice is judged by the finals' medians."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from bench_auto import contenders, finals_vs_best
    finally:
        sys.path.pop(0)
    assert contenders("A", ["A", "A", "A"]) == []
    assert contenders("A", ["C", "A", "B", "C"]) == ["A", "B", "C"]

    def job(by_round):
        return {"variants": list(by_round), "samples_per_s_by_round": by_round,
                "fastest": "", "relative": {}, "steps": 5, "rounds": 3}

    jobs = [job({"A": [10, 12, 11], "C": [10.5, 11, 12]}), job({"A": [9, 10, 11],
                                                                 "C": [12, 13, 14]})]
    # A: 9 10 10 11 11 12 -> 10.5; C: 10.5 11 12 12 13 14 -> 12: the finals' fastest is C
    assert finals_vs_best(jobs, ["C", "A"]) == pytest.approx([1.0, 10.5 / 12])


def test_bench_scaling_small():
    p = _run(["scripts/bench_scaling.py", "--model", "wdl", "--repeats", "2", "--json", "--",
              "--batch", "256", "--steps", "2", "--warmup", "1", "--cap", "1000"])
    rep = json.loads(p.stdout)
    assert set(rep["median_samples_per_s"]) == {"1", "2"}
    assert rep["speedup_vs_1"]["1"] == 1.0 and rep["speedup_vs_1"]["2"] > 0
    runs = rep["runs_samples_per_s"]
    pairs = sorted(b / a for a, b in zip(runs["1"], runs["2"], strict=True))
    assert rep["paired_speedup_vs_1"]["2"] == pytest.approx(sum(pairs) / 2)  # median of two
    lim = rep["runs_gemm_limit_samples_per_s"]
    assert rep["gemm_limit_speedup_vs_1"]["2"] == pytest.approx(
        (lim["2"][0] + lim["2"][1]) / (lim["1"][0] + lim["1"][1]))


def test_demo_launches_its_ranks_and_trains(tmp_path):
    _run(["-m", "desmpi", "demo", "--rows", "6000", "--batch", "512", "--eval-every", "4",
          "--out", str(tmp_path)])
    summary = json.load(open(tmp_path / "train" / "summary.json"))
    assert summary["world_size"] == 2 and summary["steps"] > 0
    assert 0.5 < summary["eval_auc"] <= 1.0


def test_gemm_shapes_are_the_products_of_a_step():
    """DLRM (13 dense, 26 fields, d = 8, bottom 32, top 16): the products written out by hand
    — every layer's forward, weight gradient and input gradient, except the bottom's first
    layer, whose input (the raw dense features) needs no gradient."""
    import numpy as np

    from desmpi.bench.train import gemm_shapes
    from desmpi.config import ModelConfig
    from desmpi.models import build_model

    m = build_model(ModelConfig(name="dlrm", embed_dim=8, hidden=(16,), bottom=(32,)), 26, 13,
                    np.float32, 0)
    n, top_in = 100, 8 + 27 * 26 // 2
    layers = [(13, 32, False), (32, 8, True), (top_in, 16, True), (16, 1, True)]
    want = []
    for k, o, gx in layers:
        want += [(n, k, o), (k, n, o)] + ([(n, o, k)] if gx else [])
    assert sorted(gemm_shapes(m, n, n)) == sorted(want)


def test_compare_torch_builds_the_same_models():
    """The PyTorch DLRM and DeepFM that scripts/compare_torch.py (and bench_vs_pytorch.py)
    train have desmpi's dense parameters, one for one (where torch is installed; it is not a
    desmpi dependency)."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_vs_pytorch
    finally:
        sys.path.pop(0)
    from desmpi.bench.workloads import WORKLOADS
    from desmpi.config import from_dict
    from desmpi.models import build_model

    F, Dn = 26, 13
    for name in ("dlrm", "deepfm"):
        cfg = from_dict({"model": {"name": name, **WORKLOADS[name]},
                         "data": {"train": "x.h5"}}).check()
        ours = build_model(cfg.model, F, Dn, "float32", 0, "pooling")
        ids, x = torch.randint(0, 100, (8, F)), torch.randn(8, Dn)

        def dense_of(m):
            return [p for n, p in m.named_parameters() if not n.startswith(("lin.", "emb."))]

        per_field = bench_vs_pytorch.torch_model(torch, name, [100] * F, Dn)
        fused = bench_vs_pytorch.torch_model(torch, name, [100] * F, Dn, fused=True)
        for m in (per_field, fused):
            assert sum(p.numel() for p in dense_of(m)) == ours.params.size, name
        # the same function: the per-field tables and dense weights copied into the fused one
        with torch.no_grad():
            for t in ("emb", "lin"):
                if getattr(fused, t) is not None:
                    getattr(fused, t).weight.copy_(
                        torch.cat([e.weight for e in getattr(per_field, t)]))
            for a, b in zip(dense_of(per_field), dense_of(fused)):
                b.copy_(a)
        want = per_field(x, ids)
        assert want.shape == (8,)
        assert torch.allclose(fused(x, ids), want, rtol=1e-5, atol=1e-6), name


def test_compare_torch_torchrec_model_computes_the_same_function():
    """The TorchRec form (tables in EmbeddingBagCollections, the dense part torch_model's
    head) with the per-field model's weights copied in gives the same outputs (where torchrec
    is installed; it is not a desmpi dependency)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchrec")
    from torchrec import KeyedJaggedTensor

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_vs_pytorch
        import compare_torch
    finally:
        sys.path.pop(0)
    F, Dn, n = 26, 13, 8
    for name in ("dlrm", "deepfm"):
        ref = bench_vs_pytorch.torch_model(torch, name, [100] * F, Dn)
        tr = compare_torch._torchrec_model(torch, name, [100] * F, Dn, device="cpu")
        with torch.no_grad():
            for t in ("emb", "lin"):
                if getattr(ref, t) is not None:
                    for f, e in enumerate(getattr(ref, t)):
                        getattr(tr, t).embedding_bags[f"{t[0]}{f}"].weight.copy_(e.weight)
            head = dict(tr.head.named_parameters())
            for k, p in ref.named_parameters():
                if not k.startswith(("lin.", "emb.")):
                    head[k].copy_(p)
        ids, x = torch.randint(0, 100, (n, F)), torch.randn(n, Dn)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=[f"f{f}" for f in range(F)], values=ids.t().reshape(-1),
            lengths=torch.ones(F * n, dtype=torch.int32))
        assert torch.allclose(tr(x, kjt), ref(x, ids), rtol=1e-5, atol=1e-6), name
