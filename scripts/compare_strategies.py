#!/usr/bin/env python
"""Communication of every strategy on the same model, data and batch: the DES paper's claim.

For LR, FM, W&D and DeepFM on Criteo-schema data (Kaggle cardinalities, power-law ids):
planned wire bytes per step and per sample for P up to 1024 (counted from the same batches, no
training), real ``mpiexec`` runs at small P with their counted bytes (must equal the plan) and
measured step time, the saving of each DES variant against ``ps``, and the crossover P where
``des`` (allreduce) stops beating ``ps`` and ``des-a2a``. Writes Markdown and CSV.

    python scripts/compare_strategies.py --out docs/strategies          # the committed report
    python scripts/compare_strategies.py --quick --out /tmp/cmp         # a CI-sized run
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from desmpi.config import load
from desmpi.data.h5 import CtrDataset
from desmpi.data.synth import SynthSpec, generate
from desmpi.launch import run_json
from desmpi.models import build_model
from desmpi.strategies.counts import ModelDims, count_step
from desmpi.strategies.plans import traffic
from desmpi.strategies.wire import FULL, Wire
from desmpi.variants import COMPARED, Variant
from sim.accounting import Layout

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = list(COMPARED)
PS = Variant("ps")


def planned(ds: CtrDataset, dims: dict, P: int, B: int, steps: int, layout: Layout,
            variants=VARIANTS, wire: Wire = FULL) -> dict:
    """Mean over ranks and steps of planned wire bytes per step, per variant (``dims``: the
    ModelDims of each variant's model), under ``layout``'s algorithms and the payload
    encodings ``wire`` (``--set dist.compress=...``: every variant compressed alike)."""
    out = {v: 0.0 for v in variants}
    for t in range(steps):
        c = count_step(ds.read(t * B, (t + 1) * B), P, ds.onehot, ds.has("values"))
        for v in variants:
            _, sent = traffic(v, c, dims[v], layout, wire)
            out[v] += sent.mean() / steps
    return out


def real_run(cfg_path: Path, data: str, P: int, v: Variant, B: int, steps: int,
             extra: list[str]) -> dict:
    return run_json(P, ["train", str(cfg_path), "--set", f"data.train={data}", "--set",
                        "data.eval=", "--set", f"train.batch_size={B}", "--set",
                        f"train.steps={steps}", "--set", f"train.log_every={steps}",
                        *v.overrides(), *extra])


def crossover(ranks, a, b):
    """Smallest P at which series a exceeds series b (None if never)."""
    for P in ranks:
        if a[P] > b[P]:
            return P
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/strategies")
    ap.add_argument("--models", default="lr,fm,wdl,deepfm")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=3, help="batches profiled and run")
    ap.add_argument("--real-ranks", default="1,2,4")
    ap.add_argument("--plan-ranks", default="1,2,4,8,16,32,64,128,256,512,1024")
    ap.add_argument("--cap", type=int, default=None, help="cap on field cardinalities")
    ap.add_argument("--mpi", default="mpich", help="library whose algorithms the planned bytes "
                    "follow (mpich, openmpi, openmpi-4.0; '' for the textbook ring forms)")
    ap.add_argument("--ranks-per-node", type=int, default=1,
                    help="ranks per node of the planned cluster (block placement)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override every model's config (e.g. model.embed_dim=64)")
    ap.add_argument("--quick", action="store_true", help="small CI-sized run")
    a = ap.parse_args()
    extra = [x for kv in a.set for x in ("--set", kv)]
    if a.quick:
        a.models, a.batch, a.steps, a.real_ranks, a.plan_ranks = \
            "lr,deepfm", 512, 2, "1,2", "1,2,4,16,64"
    models = a.models.split(",")
    real_ranks = [int(x) for x in a.real_ranks.split(",") if x]
    plan_ranks = [int(x) for x in a.plan_ranks.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "criteo_synth.h5")
        generate(SynthSpec(rows=a.batch * a.steps, seed=1, cap=a.cap), data)
        ds = CtrDataset(data, in_memory=True)
        for name in models:
            cfg_path = ROOT / "configs" / f"{name}.toml"
            cfg = load(cfg_path, [f"data.train={data}", *a.set])
            # the substitution of the first dense layer depends on the strategy
            dims = {v: ModelDims.of(build_model(cfg.model, ds.n_fields, ds.n_dense, np.float32,
                                                0, v.deep_input(cfg.model.deep_input)))
                    for v in VARIANTS}
            t0 = time.perf_counter()
            plan = {P: planned(ds, dims, P, a.batch, a.steps,
                               Layout(a.mpi, min(a.ranks_per_node, P)), wire=cfg.dist.wire)
                    for P in plan_ranks}
            print(f"{name}: planned {len(plan_ranks)} P values in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
            for P in plan_ranks:
                for v in VARIANTS:
                    w = plan[P][v]
                    rows.append({"model": name, "W": dims[v].W, "P": P, "variant": v.name,
                                 "wire_bytes_per_step": w,
                                 "wire_bytes_per_sample": w * P / a.batch,
                                 "saving_vs_ps": 1 - w / plan[P][PS]
                                 if plan[P][PS] else float("nan"),
                                 "counted_wire_bytes_per_step": "",
                                 "planned_here_wire_bytes_per_step": "", "step_time_s": ""})
            for P in real_ranks:
                for v in VARIANTS:
                    s = real_run(cfg_path, data, P, v, a.batch, a.steps, extra)
                    row = next(r for r in rows if r["model"] == name and r["P"] == P
                               and r["variant"] == v.name)
                    # the run's own library and layout (this machine: one node)
                    here = planned(ds, dims, P, a.batch, a.steps,
                                   Layout(s["mpi"], s["ranks_per_node"]), [v],
                                   cfg.dist.wire)[v]
                    row["counted_wire_bytes_per_step"] = s["wire_bytes_per_step"]
                    row["planned_here_wire_bytes_per_step"] = here
                    row["step_time_s"] = s["step_time_s"]
                    print(f"  real P={P} {v}: counted {s['wire_bytes_per_step']:.0f}"
                          f" planned {here:.0f} B/step ({s['mpi'] or 'textbook'}, "
                          f"{s['ranks_per_node']} rank(s)/node), step "
                          f"{s['step_time_s']:.3f} s", file=sys.stderr)
    with open(out / "strategies.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_markdown(out / "strategies.md", rows, models, plan_ranks, a)
    return 0


def write_markdown(path: Path, rows, models, plan_ranks, a) -> None:
    cmd = "python scripts/compare_strategies.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("out", a.out), ("models", a.models),
                                                    ("batch", a.batch), ("steps", a.steps),
                                                    ("mpi", a.mpi or "''"),
                                                    ("ranks-per-node", a.ranks_per_node))) \
        + "".join(f" --set {kv}" for kv in a.set)
    L = [f"# Communication per strategy (generated by `{cmd}`)", "",
         f"Criteo-schema synthetic data (26 fields, Kaggle cardinalities"
         f"{'' if a.cap is None else f' capped at {a.cap}'}, power-law ids), global batch "
         f"{a.batch}, float32, default configs (`configs/*.toml`). Wire bytes are what one rank "
         "sends per step (mean over ranks and over "
         f"{a.steps} batches), planned from the batches' keys under the algorithms "
         f"{a.mpi or 'textbook (ring/pairwise)'} selects for each call's sizes with "
         f"{a.ranks_per_node} rank(s) per node (`sim.wire`). *Counted* is what the real "
         "`mpiexec` run on this one machine recorded under its own library and layout, and "
         "*planned here* the plan for that library and layout (the two must be equal). "
         "Saving = 1 − wire(variant)/wire(ps). "
         "`+replicate`: every rank reads the whole global batch from the data set (no input "
         "Allgatherv; the DES paper's setting, I/O instead of MPI)."
         + (" Payloads compressed as the `--set` options say, every variant alike (ps's rows "
            "and a2a's and des-a2a's exchanges take the partials' codec; "
            "docs/compression/compression.md)."
            if any(kv.startswith("dist.compress") or kv.startswith("dist.keys")
                   for kv in a.set) else ""), ""]
    for name in models:
        mr = [r for r in rows if r["model"] == name]
        widths = {}
        for r in mr:
            widths.setdefault(r["W"], []).append(r["variant"])
        wtxt = ", ".join(f"{w} ({', '.join(dict.fromkeys(s))})" for w, s in widths.items())
        L += [f"## {name} (partial width W = {wtxt})" if len(widths) > 1
              else f"## {name} (partial width W = {mr[0]['W']})", "",
              "| P | variant | wire MB/step/rank | wire B/sample | saving vs ps | counted "
              "MB/step/rank | planned here | step time s |",
              "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in mr:
            cw, ph, st = (r["counted_wire_bytes_per_step"], r["planned_here_wire_bytes_per_step"],
                          r["step_time_s"])
            cws = "" if cw == "" else f"{cw / 1e6:.4f}"
            phs = "" if ph == "" else f"{ph / 1e6:.4f}"
            sts = "" if st == "" else f"{st:.3f}"
            L.append(f"| {r['P']} | {r['variant']} | {r['wire_bytes_per_step'] / 1e6:.4f} | "
                     f"{r['wire_bytes_per_sample']:.1f} | {r['saving_vs_ps']:+.1%} | "
                     f"{cws} | {phs} | {sts} |")
        ser = {lab: {r["P"]: r["wire_bytes_per_step"] for r in mr if r["variant"] == lab}
               for lab in {r["variant"] for r in mr}}
        L.append("")
        for lab in ("des/allreduce", "des/allreduce+replicate"):
            x_ps = crossover(plan_ranks, ser[lab], ser["ps"])
            x_da = crossover(plan_ranks, ser[lab], ser["des-a2a"])
            L.append(f"Crossover: {lab} moves more than ps from P = {x_ps}, more than des-a2a "
                     f"from P = {x_da} (first P of the table where it does; None: never).")
        L.append("")
    path.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    sys.exit(main())
