#!/usr/bin/env python
"""dist.strategy = "auto" against every variant, measured: is the chosen one the fastest?

    python scripts/bench_auto.py --models lr,fm,wdl,deepfm,dcn,dlrm --ranks 2,4 \
        --batch 512,4096 --out docs/auto.md

For each (model, P, batch): ``desmpi bench train`` with ``auto`` once, to learn its choice, how
long choosing took and the step's length; then ``desmpi bench variants``: every variant auto
chooses among, side by side in one job (each its own model and shard, the same batches, blocks
of steps in turns, ``--rounds`` rounds): separate runs of one variant differ by 10-30 % on a
shared machine, more than the 5 % the target asks to resolve. A block lasts about ``--block-s``
seconds (at least ``--steps`` steps). The figure is the median samples/s of the chosen variant
against the best median (target: within 5%).

``--variants-from JSON`` takes every variant's measurement from an earlier report's JSON and runs
only ``auto``: a change to how auto chooses is then judged against the same measured variants
(the variants' own code unchanged since that report).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from desmpi.launch import run_json
from desmpi.variants import Variant

VARIANTS = [Variant("des", "allreduce"), Variant("des", "reduce_scatter"), Variant("des-a2a"),
            Variant("a2a"), Variant("ps")]
MAX_BLOCK_STEPS = 200


def bench_auto(model: str, P: int, batch: int, steps: int) -> dict:
    return run_json(P, ["bench", "train", "--model", model, "--batch", str(batch), "--steps",
                        str(steps), "--warmup", "2", "--strategy", "auto", "--aggregate",
                        "auto"], timeout=1800)


def bench_variants(model: str, P: int, batch: int, steps: int, rounds: int) -> dict:
    return run_json(P, ["bench", "variants", "--model", model, "--batch", str(batch),
                        "--steps", str(steps), "--rounds", str(rounds), "--warmup", "2",
                        "--variants", ",".join(v.name for v in VARIANTS)], timeout=3600)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lr,fm,wdl,deepfm,dcn,dlrm")
    ap.add_argument("--ranks", default="2,4")
    ap.add_argument("--batch", default="512,4096")
    ap.add_argument("--steps", type=int, default=4, help="steps of a block at least")
    ap.add_argument("--block-s", type=float, default=0.1,
                    help="seconds a block lasts (more steps where steps are short)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default="docs/auto.md")
    ap.add_argument("--variants-from", default=None,
                    help="JSON of an earlier run: reuse its variant measurements, run only auto")
    a = ap.parse_args()
    earlier = {}
    if a.variants_from:
        for r in json.loads(Path(a.variants_from).read_text()):
            earlier[(r["model"], r["P"], r["batch"])] = r["paired"]
    rows = []
    for model in a.models.split(","):
        for P in [int(x) for x in a.ranks.split(",")]:
            for B in [int(x) for x in a.batch.split(",")]:
                r = bench_auto(model, P, B, 8)
                if a.variants_from:
                    if (model, P, B) not in earlier:
                        raise SystemExit(f"{a.variants_from}: no runs of {model} P={P} B={B}")
                    paired = earlier[(model, P, B)]
                else:
                    k = min(MAX_BLOCK_STEPS,
                            max(a.steps, math.ceil(a.block_s / r["step_time_s"])))
                    paired = bench_variants(model, P, B, k, a.rounds)
                got = paired["samples_per_s"]
                best = paired["fastest"]
                chosen = r["variant"]
                ch = r.get("choice") or {}
                predicted = ch["ranking"][0]["variant"] if ch.get("ranking") else chosen
                row = {"model": model, "P": P, "batch": B, "auto": chosen,
                       "auto_samples_per_s": got[chosen], "best": best,
                       "best_samples_per_s": got[best], "variants": got, "paired": paired,
                       "auto_vs_best": got[chosen] / got[best],
                       "predicted": predicted, "predicted_vs_best": got[predicted] / got[best],
                       "trial": ch.get("trial"), "auto_run_samples_per_s": r["samples_per_s"],
                       "choose_s": ch.get("seconds")}
                rows.append(row)
                print(f"{model} P={P} B={B}: auto chose {chosen} "
                      f"{got[chosen]:.0f}/s (the simulator alone: {predicted}); best {best} "
                      f"{got[best]:.0f}/s ({row['auto_vs_best']:.2f})", file=sys.stderr)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    write_markdown(out, rows, a)
    return 0


def write_markdown(out: Path, rows: list[dict], a) -> None:
    ok = sum(r["auto_vs_best"] >= 0.95 for r in rows)
    ok_sim = sum(r["predicted_vs_best"] >= 0.95 for r in rows)
    src = f" --variants-from {a.variants_from}" if a.variants_from else ""
    L = ["# dist.strategy = \"auto\" against every variant, measured", "",
         f"Generated by `python scripts/bench_auto.py --models {a.models} --ranks {a.ranks} "
         f"--batch {a.batch} --steps {a.steps} --block-s {a.block_s} --rounds {a.rounds} "
         f"--out {a.out}{src}` (one thread per rank, Criteo-schema synthetic data). auto's "
         "choice from one `desmpi bench train` run with `auto`; the variants measured side by "
         "side in one `desmpi bench variants` job per case (each its own model, the same "
         f"batches, blocks of steps in turns, {a.rounds} rounds; *steps* = a block's)"
         + (f" (those measurements taken from {a.variants_from}, an earlier run of this "
            "script; only auto ran again)" if a.variants_from else "")
         + "; samples/s are medians over the rounds. auto / best = the "
         "median of the variant auto chose over the best median; target >= 0.95. *Simulator "
         "alone*: the variant the prediction ranked first, before the trial of the close "
         "candidates on the first steps (`desmpi/whatif/trial.py`) measured them.", "",
         f"**auto within 5% of the fastest in {ok} of {len(rows)} cases** (the simulator's "
         f"ranking alone: {ok_sim} of {len(rows)}).", "",
         "| model | P | batch | auto chose | its samples/s | fastest | its samples/s | auto / "
         "best | simulator alone (/ best) | trial | s to choose | steps | "
         + " | ".join(v.name for v in VARIANTS) + " |",
         "|---|---:|---:|---|---:|---|---:|---:|---|---|---:|---:|" + "---:|" * len(VARIANTS)]
    for r in rows:
        tr = r["trial"]
        trs = "" if not tr else ", ".join(
            f"{k} {v * 1e3:.1f} ms" for k, v in sorted(tr["measured_step_time_s"].items(),
                                                      key=lambda kv: kv[1]))
        L.append(f"| {r['model']} | {r['P']} | {r['batch']} | {r['auto']} | "
                 f"{r['auto_samples_per_s']:.0f} | {r['best']} | {r['best_samples_per_s']:.0f}"
                 f" | {r['auto_vs_best']:.2f} | {r['predicted']} ({r['predicted_vs_best']:.2f})"
                 f" | {trs} | "
                 + ("" if r["choose_s"] is None else f"{r['choose_s']:.1f}")
                 + f" | {r['paired']['steps']} | "
                 + " | ".join(f"{r['variants'][v.name]:.0f}" for v in VARIANTS) + " |")
    out.write_text("\n".join(L) + "\n")



if __name__ == "__main__":
    sys.exit(main())
