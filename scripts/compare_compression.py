#!/usr/bin/env python
"""Compressed communication (dist.compress, dist.keys): bytes saved and what it costs in AUC.

    python scripts/compare_compression.py --out docs/compression          # the committed report
    python scripts/compare_compression.py --quick --out /tmp/cc            # a CI-sized run

1. **Planned bytes**, P = 1 … 1,024, batch 4096, Criteo-schema synthetic data: wire bytes per
   step and rank of des/allreduce, des/allreduce+replicate and des/reduce_scatter under every
   method (none, bf16, fp16, topk at ``--ratio``, whose bytes threshold shares; narrow keys),
   against uncompressed DES and
   against ps (the plan: exact, the bytes a run counts; algorithms of ``--mpi`` with
   ``--ranks-per-node``).
2. **Real runs** (``mpiexec``) at ``--ranks`` on the real Criteo rows shipped in
   ``tests/data/criteo`` (first 12,000 rows train, last 3,000 evaluate) and on synthetic data
   with a known oracle, for every model × method × seed: eval AUC and logloss (evaluation at
   full width, as the trained model is served), counted wire bytes, step time. ΔAUC is
   paired by seed (same initialisation, same data order) against ``none``; its spread over
   seeds is the noise band, and ``none`` at P against ``none`` at P = 1 (the same model up to
   the order of float32 sums) the summation-order band. The
   default protocol is the engine table's (docs/engine_table.md): global batch 256, one epoch.
   A second epoch over the same 12,000 rows overfits (W&D eval logloss 0.57 against 0.48 after
   one) and makes the deep models' AUC chaotic: at batch 512 and 2 epochs summation order
   alone moved W&D's AUC by up to 0.019, far above the 0.0005 to be resolved.
3. **Pack/unpack cost**: each method's codec work in one DeepFM des/reduce_scatter step at
   batch 4096 (the partials under their codec, the dense gradients under theirs), measured
   inside 2-rank steps (``bench train``'s ``codec_s``) and alone on one rank, and the step
   time measured with each method at 2 ranks.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from compression_report import write_markdown  # scripts/, beside this file

from desmpi.bench.mirror import MirrorComm
from desmpi.comm import Comm
from desmpi.config import load
from desmpi.data.convert import convert
from desmpi.data.h5 import CtrDataset
from desmpi.data.schema import CRITEO_TSV
from desmpi.data.slicing import split_counts
from desmpi.data.synth import SynthSpec, generate
from desmpi.launch import run_json
from desmpi.models import build_model
from desmpi.samples import criteo_sample
from desmpi.strategies import compressed
from desmpi.strategies.counts import ModelDims, count_step
from desmpi.strategies.plans import traffic
from desmpi.strategies.wire import Wire
from desmpi.variants import Variant
from sim.accounting import Layout

ROOT = Path(__file__).resolve().parents[1]
PLAN_VARIANTS = [Variant("des", "allreduce"), Variant("des", "allreduce", "replicate"),
                 Variant("des", "reduce_scatter")]
PS = Variant("ps")


def methods(ratio: float) -> dict[str, Wire]:
    """Every method (planned bytes)."""
    return {"none": Wire(), "none+narrow": Wire(keys="narrow"), "bf16": Wire("bf16"),
            "fp16": Wire("fp16"), "int8": Wire("int8"), f"topk {ratio:g}": Wire("topk", ratio),
            f"topk {ratio:g}+narrow": Wire("topk", ratio, "narrow"),
            "bf16+narrow": Wire("bf16", keys="narrow"),
            f"topk {ratio:g}+int8 Z+narrow": Wire("topk", ratio, "narrow", partial="int8")}


def trained(ratio: float) -> dict[str, Wire]:
    """The methods the real runs train with (narrow keys change no bit: one seed shows their
    bytes)."""
    return {"none": Wire(), "bf16": Wire("bf16"), "fp16": Wire("fp16"), "int8": Wire("int8"),
            f"topk {ratio:g}": Wire("topk", ratio), f"threshold {ratio:g}":
            Wire("threshold", ratio), f"topk {ratio:g}+int8 Z": Wire("topk", ratio,
                                                                      partial="int8"),
            "bf16+narrow": Wire("bf16", keys="narrow"),
            # bf16's two payload classes apart: the partials and their gradients only, the
            # dense gradients only
            "bf16 Z only": Wire("none", partial="bf16"),
            "bf16 dense only": Wire("bf16", partial="none"),
            # and the partials' two directions apart (dist.compress_partial_grads)
            "bf16 Z forward only": Wire("none", partial="bf16", partial_grad="none"),
            "bf16 gZ only": Wire("none", partial="none", partial_grad="bf16")}


def planned(models, ranks, batch, ratio, layout_of) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = f"{tmp}/plan.h5"
        generate(SynthSpec(rows=batch * 2, seed=1), data)
        ds = CtrDataset(data, in_memory=True)
        counts = {P: [count_step(ds.read(t * batch, (t + 1) * batch), P) for t in range(2)]
                  for P in ranks}
        for name in models:
            cfg = load(ROOT / "configs" / f"{name}.toml", [f"data.train={data}"])
            dims = {v: ModelDims.of(build_model(cfg.model, ds.n_fields, ds.n_dense,
                                                np.float32, 0,
                                                v.deep_input(cfg.model.deep_input)))
                    for v in [*PLAN_VARIANTS, PS]}

            def wire(v, P, w, dims=dims):
                return float(np.mean([traffic(v, c, dims[v], layout_of(P), w)[1].mean()
                                      for c in counts[P]]))
            for P in ranks:
                ps = wire(PS, P, Wire())
                # ps under the same codec: its rows and row gradients take the partials'
                # codec, its dense gradients the dense one
                ps_w = {m: wire(PS, P, w) for m, w in methods(ratio).items()}
                for v in PLAN_VARIANTS:
                    full = wire(v, P, Wire())
                    for m, w in methods(ratio).items():
                        x = wire(v, P, w)
                        rows.append({"model": name, "P": P, "variant": v.name, "method": m,
                                     "wire_bytes_per_step": x, "ps_bytes_per_step": ps,
                                     "ps_same_codec_bytes_per_step": ps_w[m],
                                     "saving_vs_des": 1 - x / full if full else 0.0,
                                     "saving_vs_ps": 1 - x / ps if ps else 0.0})
    return rows


def real_data(tmp: str) -> tuple[str, str]:
    src = criteo_sample().read_text().splitlines(keepends=True)
    tr, ev = Path(tmp, "criteo_train.tsv"), Path(tmp, "criteo_eval.tsv")
    tr.write_text("".join(src[:12000]))
    ev.write_text("".join(src[-3000:]))
    convert([str(tr)], f"{tmp}/criteo_train.h5", CRITEO_TSV)
    convert([str(ev)], f"{tmp}/criteo_eval.h5", CRITEO_TSV)
    return f"{tmp}/criteo_train.h5", f"{tmp}/criteo_eval.h5"


def synth_data(tmp: str, rows: int) -> tuple[str, str, float]:
    generate(SynthSpec(rows=rows, seed=11, cap=100_000), f"{tmp}/syn_train.h5")
    rep = generate(SynthSpec(rows=rows // 4, seed=12, cap=100_000), f"{tmp}/syn_eval.h5")
    return f"{tmp}/syn_train.h5", f"{tmp}/syn_eval.h5", float(rep["oracle_auc"])


def run(model: str, P: int, data: tuple[str, str], w: Wire, seed: int, batch: int,
        epochs: int, variant: Variant) -> dict:
    s = run_json(P, ["train", str(ROOT / "configs" / f"{model}.toml"),
                     "--set", f"data.train={data[0]}", "--set", f"data.eval={data[1]}",
                     "--set", f"train.batch_size={batch}", "--set", f"train.epochs={epochs}",
                     "--set", "train.steps=0", "--set", f"train.seed={seed}",
                     "--set", f"dist.compress={w.compress}",
                     "--set", f"dist.compress_ratio={w.ratio}", "--set", f"dist.keys={w.keys}",
                     "--set", f"dist.compress_partials={w.partial}",
                     "--set", f"dist.compress_partial_grads={w.partial_grad}",
                     "--set", "train.log_every=1000", *variant.overrides()])
    return {k: s[k] for k in ("eval_auc", "eval_logloss", "wire_bytes_per_step",
                              "step_time_s", "samples_per_s")}


CODEC_ALONE_RANKS = 2  # codec_cost times a rank of this many


def codec_cost(B: int, dims: ModelDims, methods: dict[str, Wire], reps: int = 15) -> dict:
    """Median seconds of one des/reduce_scatter step's compressed calls under each method, as
    rank 0 of two in one process (:class:`desmpi.bench.mirror.MirrorComm`: the peer sends what the
    rank sends it): the partials' compressed Reduce_scatter (B × W floats) and their
    gradients' Allgatherv under ``wire.partial_grads``, and the dense gradients' Allreduce (D
    floats, error feedback; threshold keeps its τ from call to call, re-estimated every 16th)
    under ``wire.dense`` — what one rank of two packs, decodes and sums in a step, with the
    local copies that stand in for the network."""
    rng = np.random.default_rng(0)
    z0 = rng.normal(size=B * dims.W).astype(np.float32)
    g0 = rng.normal(size=dims.D).astype(np.float32) * 1e-3
    comm = MirrorComm(CODEC_ALONE_RANKS)
    n = split_counts(B * dims.W, CODEC_ALONE_RANKS)
    out = {}
    for name, w in methods.items():
        if not w.packed:
            continue
        ts = []
        thr = compressed.Threshold(every=w.every) if w.dense == "threshold" else None
        bufs = compressed.Buffers()  # reused from step to step, as a strategy keeps one
        res = np.full_like(g0, 0.0)  # written zeros, as a strategy's residuals
        zout = np.empty(B * dims.W, np.float32)
        for rep in range(reps):
            z, g = z0.copy(), g0.copy()
            t0 = time.perf_counter()
            if w.partials != "none":
                compressed.reduce_scatter(comm, z, n, w.partials, zout[:n[0]], w.ratio, bufs)
            if w.partial_grads != "none":
                compressed.allgatherv(comm, z[:n[0]], n, w.partial_grads, zout, w.ratio,
                                      bufs)
            if w.dense != "none":
                compressed.allreduce(comm, g, w.dense, res, w.ratio, bufs, thr,
                                     own_clean=rep > 0)  # as a strategy's calls
            ts.append(time.perf_counter() - t0)
        out[name] = statistics.median(ts)
    return out


def payload_precision(train: str, models=("wdl", "deepfm"), batches=(256, 4096),
                      steps: int = 3) -> list[dict]:
    """Each dense codec's relative error ‖decode(encode(x)) − x‖ / ‖x‖ on the payloads a real
    step sends: the partials Z and their per-sample gradients gZ of the ``steps``-th
    single-process des/reduce_scatter step on the Criteo rows (one chunk each), with the
    share of gZ's non-zero entries below 2^-14 (subnormal as plain IEEE halves). fp16 plain:
    :func:`desmpi.kernels.compress.pack`; fp16: the scaled chunks the collectives send."""
    from desmpi.kernels.compress import pack, pack_chunks, unpack, unpack_chunks
    from desmpi.trainer import Trainer

    def err(x, y):
        return float(np.linalg.norm(y - x) / np.linalg.norm(x))

    rows = []
    for model in models:
        for B in batches:
            cfg = load(ROOT / "configs" / f"{model}.toml",
                       [f"data.train={train}", "data.eval=", f"train.batch_size={B}",
                        "dist.strategy=des", "dist.aggregate=reduce_scatter"])
            tr = Trainer(cfg, Comm.local())
            tr.strategy.probe = {}
            for t in range(steps):
                b, sizes = tr.local_batch(tr.train_ds, t)
                tr.strategy.train_step(b, sizes, t + 1)
            row = {"model": model, "batch": B, "step": steps}
            for name in ("Z", "gZ"):
                x = np.ascontiguousarray(tr.strategy.probe[name], np.float32).reshape(-1)
                n = [x.size]
                row[name] = {"bf16": err(x, unpack("bf16", pack("bf16", x))),
                             "fp16 plain": err(x, unpack("fp16", pack("fp16", x))),
                             "fp16": err(x, unpack_chunks("fp16", pack_chunks("fp16", x, n), n)),
                             "int8": err(x, unpack_chunks("int8", pack_chunks("int8", x, n), n))}
                nz = np.abs(x[x != 0])
                row[name]["subnormal_share"] = float(np.mean(nz < 2.0 ** -14)) if nz.size else 0.0
            rows.append(row)
    return rows


def bench_step(wire: Wire, reps: int = 3) -> tuple[float, float]:
    """DeepFM des/reduce_scatter at batch 4096 on 2 ranks: the median over ``reps`` runs of
    the step time and of the codec's own work inside it (``bench train``'s ``codec_s``)."""
    runs = [run_json(2, [
        "bench", "train", "--model", "deepfm", "--batch", "4096", "--steps", "8", "--warmup",
        "2", "--json", "--strategy", "des", "--aggregate", "reduce_scatter",
        "--set", f"dist.compress={wire.compress}", "--set", f"dist.keys={wire.keys}",
        "--set", f"dist.compress_partials={wire.partial}",
        "--set", f"dist.compress_partial_grads={wire.partial_grad}"]) for _ in range(reps)]
    return (statistics.median(r["step_time_s"] for r in runs),
            statistics.median(r["codec_s"] for r in runs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/compression")
    ap.add_argument("--models", default="lr,fm,wdl,deepfm,dlrm")
    ap.add_argument("--ranks", default="1,2,4", help="real runs")
    ap.add_argument("--plan-ranks", default="1,2,4,8,16,32,64,128,256,512,1024")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256, help="real runs' global batch")
    ap.add_argument("--plan-batch", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=1,
                    help="real runs (a second pass over 12,000 rows overfits: see the module "
                         "docstring)")
    ap.add_argument("--ratio", type=float, default=0.1, help="topk's kept fraction")
    ap.add_argument("--variant", default="des/reduce_scatter", help="of the real runs")
    ap.add_argument("--mpi", default="mpich")
    ap.add_argument("--ranks-per-node", type=int, default=1)
    ap.add_argument("--methods", default=None,
                    help="real runs: only these methods (comma-separated names as in the "
                         "report, e.g. 'none,topk 0.1,threshold 0.1'); none is always run")
    ap.add_argument("--real-from", default=None,
                    help="take the real runs from an earlier report's JSON (same methods and "
                         "code of the runs); plans and codec costs are measured again")
    ap.add_argument("--data", default="criteo,synthetic", help="real runs' data sets")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    a.argv = [shlex.quote(x) for x in sys.argv[1:]]
    if a.quick:
        a.models, a.ranks, a.plan_ranks, a.seeds, a.epochs = "lr,deepfm", "1,2", "1,4,64", 1, 1
    from desmpi.variants import parse

    variant = parse(a.variant)
    methods_run = trained(a.ratio)
    if a.methods:
        want = ["none", *(m.strip() for m in a.methods.split(",") if m.strip() != "none")]
        unknown = [m for m in want if m not in methods_run]
        if unknown:
            raise SystemExit(f"--methods {unknown}: known {list(methods_run)}")
        methods_run = {m: methods_run[m] for m in want}
    models = a.models.split(",")
    ranks = [int(x) for x in a.ranks.split(",")]
    plan_ranks = [int(x) for x in a.plan_ranks.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan_rows = planned(models, plan_ranks, a.plan_batch, a.ratio,
                        lambda P: Layout(a.mpi, min(a.ranks_per_node, P)))
    print(f"planned {len(plan_rows)} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    real = []
    earlier = json.loads(Path(a.real_from).read_text()) if a.real_from else None
    with tempfile.TemporaryDirectory() as tmp:
        crit = real_data(tmp)
        syn_tr, syn_ev, oracle = synth_data(tmp, 12000 if not a.quick else 4000)
        if earlier is not None:
            real = [r for r in earlier["real"] if r["model"] in models and r["P"] in ranks
                    and r["method"] in methods_run]
            oracle = earlier["oracle_auc_synthetic"]
        for dname, data in (("criteo", crit), ("synthetic", (syn_tr, syn_ev))):
            if earlier is not None:
                break
            if dname not in a.data.split(","):
                continue
            for model in models:
                for P in ranks:
                    for m, w in methods_run.items():
                        for seed in range(1, 2 if w.keys == "narrow" else a.seeds + 1):
                            r = run(model, P, data, w, seed, a.batch, a.epochs, variant)
                            r.update(data=dname, model=model, P=P, method=m, seed=seed)
                            real.append(r)
                            print(f"{dname} {model} P={P} {m} seed {seed}: AUC "
                                  f"{r['eval_auc']:.4f} wire {r['wire_bytes_per_step']:.0f}",
                                  file=sys.stderr)
        dm = ModelDims.of(build_model(load(ROOT / "configs" / "deepfm.toml",
                                           [f"data.train={syn_tr}"]).model, 26, 13,
                                      np.float32, 0, "auto"))
        kern = codec_cost(4096, dm, methods_run)
        precision = payload_precision(crit[0], batches=(256,) if a.quick else (256, 4096))
        both = {} if a.quick else {m: bench_step(w) for m, w in methods_run.items()
                                   if w.keys == "int64"}
        steps = {m: v[0] for m, v in both.items()}
        in_step = {m: v[1] for m, v in both.items()}
    rep = {"args": vars(a), "oracle_auc_synthetic": oracle, "planned": plan_rows,
           "real": real, "codec_s": kern, "payload_precision": precision,
           "deepfm_b4096_step_s": steps,
           "deepfm_b4096_codec_in_step_s": in_step, "deepfm_W": dm.W,
           "deepfm_D": dm.D, "eval_full_width": True, "codec_alone_ranks": CODEC_ALONE_RANKS}
    if earlier is not None:  # the command of the run that made the real runs, and how they
        rep["real_args"] = earlier.get("real_args") or earlier["args"]  # evaluated
        rep["eval_full_width"] = bool(earlier.get("eval_full_width"))
    (out / "compression.json").write_text(json.dumps(rep, indent=1))
    write_markdown(out / "compression.md", rep, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
