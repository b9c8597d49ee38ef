#!/usr/bin/env python
"""dist.strategy = "auto" against every variant, measured: is the chosen one the fastest?

    python scripts/bench_auto.py --models lr,fm,wdl,deepfm,dcn,dlrm --ranks 2,4 \
        --batch 512,4096 --out docs/auto.md

For each (model, P, batch), ``--jobs`` times in turn: ``desmpi bench train`` with ``auto``, to
learn its choice, how long choosing took and the step's length; and ``desmpi bench variants``:
every variant auto chooses among, side by side in one job (each its own model and shard, the
same batches, blocks of steps in turns, ``--rounds`` rounds): separate runs of one variant
differ by 10-30 % on a shared machine, more than the 5 % the target asks to resolve, and even
side by side the order of two close variants can change from one job to the next (hence several
jobs, pooled). A block lasts about ``--block-s`` seconds (at least ``--steps`` steps): its
first step finds the caches filled by the other variants' blocks, a cost that differs between
variants (DeepFM at P = 4, batch 512: des/reduce_scatter 6% ahead of ps in 5-step blocks among
five variants, level in 24-step blocks of the two alone), so blocks are long. The
figure is, for each auto run, the pooled median samples/s of the variant it chose against the
best pooled median (target: within 5%).

The finals: every variant side by side is as many models' tables and caches on the machine at
once, a load that a run of one variant does not carry and that does not fall on all variants
alike (LR at P = 4, batch 4096, on 2 cores: des/allreduce 0.88 of des/reduce_scatter among five
variants, 0.98-0.99 with the two alone, two jobs each). So where auto chose another variant
than the pooled fastest, ``--jobs`` more jobs run that fastest and auto's choices alone, side by
side, and each auto run is also judged against their fastest.

``--variants-from JSON`` takes every variant's measurement from an earlier report's JSON and runs
only ``auto``: a change to how auto chooses is then judged against the same measured variants
(the variants' own code unchanged since that report).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from desmpi.launch import run_json
from desmpi.variants import Variant

VARIANTS = [Variant("des", "allreduce"), Variant("des", "reduce_scatter"), Variant("des-a2a"),
            Variant("a2a"), Variant("ps")]
MAX_BLOCK_STEPS = 200


def _sets(sets: list[str]) -> list[str]:
    return [x for kv in sets for x in ("--set", kv)]


def bench_auto(model: str, P: int, batch: int, steps: int, sets: list[str] = ()) -> dict:
    return run_json(P, ["bench", "train", "--model", model, "--batch", str(batch), "--steps",
                        str(steps), "--warmup", "2", "--strategy", "auto", "--aggregate",
                        "auto", *_sets(sets)], timeout=1800)


def bench_variants(model: str, P: int, batch: int, steps: int, rounds: int,
                   sets: list[str] = (), variants: list[str] | None = None) -> dict:
    names = variants or [v.name for v in VARIANTS]
    return run_json(P, ["bench", "variants", "--model", model, "--batch", str(batch),
                        "--steps", str(steps), "--rounds", str(rounds), "--warmup", "2",
                        "--variants", ",".join(names), *_sets(sets)], timeout=3600)


def _predicted(r: dict) -> str:
    """The variant the simulator ranked first in an auto run's report (before its trial)."""
    ranking = (r.get("choice") or {}).get("ranking") or []
    return ranking[0]["variant"] if ranking else r["variant"]


def trial_overhead(trial: dict | None) -> float:
    """Seconds a trial's steps cost beyond running its winner throughout (about: each
    candidate ran steps / candidates of them at its median)."""
    if not trial:
        return 0.0
    med = trial["measured_step_time_s"]
    fastest = min(med.values())
    return trial["steps"] / len(med) * sum(t - fastest for t in med.values())


def pooled(jobs: list[dict]) -> dict:
    """The variants' figures over several ``bench variants`` jobs: the median of every round
    of every job, the fastest by it, and each job's own fastest."""
    names = jobs[0]["variants"]
    rounds = {n: [x for j in jobs for x in j["samples_per_s_by_round"][n]] for n in names}
    med = {n: statistics.median(x) for n, x in rounds.items()}
    best = max(med, key=med.get)
    return {"samples_per_s": med, "fastest": best,
            "fastest_by_job": [j["fastest"] for j in jobs],
            "relative_by_job": [j["relative"] for j in jobs],
            "steps": jobs[0]["steps"], "rounds": sum(j["rounds"] for j in jobs)}


def contenders(best: str, chosen: list[str]) -> list[str]:
    """The finals' variants: the pooled fastest and every other variant auto chose (none
    where auto always chose the fastest)."""
    others = sorted(set(chosen) - {best})
    return [best, *others] if others else []


def finals_vs_best(final_jobs: list[dict], chosen: list[str]) -> list[float]:
    """Each auto run's choice against the finals' fastest (their pooled medians)."""
    got = pooled(final_jobs)["samples_per_s"]
    top = max(got.values())
    return [got[c] / top for c in chosen]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lr,fm,wdl,deepfm,dcn,dlrm")
    ap.add_argument("--ranks", default="2,4")
    ap.add_argument("--batch", default="512,4096")
    ap.add_argument("--steps", type=int, default=4, help="steps of a block at least")
    ap.add_argument("--block-s", type=float, default=0.4,
                    help="seconds a block lasts (more steps where steps are short)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of a bench variants job")
    ap.add_argument("--jobs", type=int, default=3,
                    help="auto runs and bench variants jobs per case, alternating")
    ap.add_argument("--out", default="docs/auto.md")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override for every run, auto and the variants alike "
                         "(e.g. dist.compress=bf16)")
    ap.add_argument("--variants-from", default=None,
                    help="JSON of an earlier run: reuse its variant measurements, run only auto")
    ap.add_argument("--render-from", default=None,
                    help="JSON of an earlier run (with these arguments): write its table again, "
                         "run nothing")
    a = ap.parse_args()
    if a.render_from:
        write_markdown(Path(a.out), json.loads(Path(a.render_from).read_text()), a)
        return 0
    earlier = {}
    if a.variants_from:
        for r in json.loads(Path(a.variants_from).read_text()):
            earlier[(r["model"], r["P"], r["batch"])] = r["paired_jobs"]
    rows = []
    for model in a.models.split(","):
        for P in [int(x) for x in a.ranks.split(",")]:
            for B in [int(x) for x in a.batch.split(",")]:
                if a.variants_from and (model, P, B) not in earlier:
                    raise SystemExit(f"{a.variants_from}: no runs of {model} P={P} B={B}")
                autos, jobs = [], earlier.get((model, P, B), [])
                for _ in range(a.jobs):
                    autos.append(bench_auto(model, P, B, 8, a.set))
                    if not a.variants_from:
                        k = min(MAX_BLOCK_STEPS,
                                max(a.steps, math.ceil(a.block_s / autos[0]["step_time_s"])))
                        jobs.append(bench_variants(model, P, B, k, a.rounds, a.set))
                pool = pooled(jobs)
                got, best = pool["samples_per_s"], pool["fastest"]
                chosen = [r["variant"] for r in autos]
                # the finals: auto's choices against the fastest alone, side by side
                final = contenders(best, chosen)
                final_jobs = [bench_variants(model, P, B, pool["steps"], a.rounds, a.set,
                                             final) for _ in range(a.jobs if final else 0)]
                predicted = [_predicted(r) for r in autos]
                row = {"model": model, "P": P, "batch": B, "auto": chosen,
                       "auto_vs_best": [got[c] / got[best] for c in chosen],
                       "finals": final, "final_jobs": final_jobs,
                       "auto_vs_best_finals": (finals_vs_best(final_jobs, chosen) if final
                                               else [1.0] * len(chosen)),
                       "best": best, "variants": got, "pooled": pool, "paired_jobs": jobs,
                       "predicted": predicted,
                       "predicted_vs_best": [got[c] / got[best] for c in predicted],
                       "trials": [(r.get("choice") or {}).get("trial") for r in autos],
                       "choose_s": [(r.get("choice") or {}).get("seconds") for r in autos]}
                rows.append(row)
                print(f"{model} P={P} B={B}: auto chose {', '.join(chosen)} "
                      f"({', '.join(f'{x:.2f}' for x in row['auto_vs_best'])} of the fastest, "
                      f"{best}; the fastest of each job: {', '.join(pool['fastest_by_job'])})",
                      file=sys.stderr)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    write_markdown(out, rows, a)
    return 0


def _measured_best(trial: dict | None, chosen: str) -> str:
    """The trial's measured fastest (the choice itself where no trial ran)."""
    m = (trial or {}).get("measured_step_time_s") or {}
    return min(m, key=m.get) if m else chosen


def write_markdown(out: Path, rows: list[dict], a) -> None:
    runs = [x for r in rows for x in r["auto_vs_best"]]
    ok = sum(x >= 0.95 for x in runs)
    ok_case = sum(min(r["auto_vs_best"]) >= 0.95 for r in rows)
    fin = [r.get("auto_vs_best_finals") for r in rows]
    has_finals = all(f is not None for f in fin)
    ok_fin = sum(x >= 0.95 for f in fin if f for x in f)
    ok_fin_case = sum(bool(f) and min(f) >= 0.95 for f in fin)
    n_finals = sum(bool(r.get("finals")) for r in rows)
    ok_sim = sum(x >= 0.95 for r in rows for x in r["predicted_vs_best"])
    same = sum(len(set(r["pooled"]["fastest_by_job"])) == 1 for r in rows)
    # the decision rule against the simplest other: take the trial's measured fastest always
    alt = [[r["variants"][_measured_best(t, c)] / r["variants"][r["best"]]
            for c, t in zip(r["auto"], r["trials"])] for r in rows]
    src = "".join(f" --set {kv}" for kv in getattr(a, "set", []))
    src += f" --variants-from {a.variants_from}" if a.variants_from else ""
    if a.render_from:
        src += f"`, table written again by `--render-from {a.render_from}"
    L = ["# dist.strategy = \"auto\" against every variant, measured", "",
         f"Generated by `python scripts/bench_auto.py --models {a.models} --ranks {a.ranks} "
         f"--batch {a.batch} --steps {a.steps} --block-s {a.block_s} --rounds {a.rounds} "
         f"--jobs {a.jobs} --out {a.out}{src}` (one thread per rank, Criteo-schema synthetic "
         f"data). Per case, {a.jobs} times in turn: one `desmpi bench train` run with `auto` "
         "(its choice), and one `desmpi bench variants` job measuring every variant side by "
         "side (each its own model and shard, the same batches, blocks of *steps* steps in "
         f"turns, {a.rounds} rounds)"
         + (f" (those jobs taken from {a.variants_from}, an earlier run of this script; only "
            "auto ran again)" if a.variants_from else "")
         + ". Samples/s: the median over every round of every job. auto / best: the chosen "
         "variant's median over the fastest's, for each auto run; target >= 0.95. *Simulator "
         "alone*: the variant the prediction ranked first, before the trial of the close "
         "candidates on the first steps (`desmpi/whatif/trial.py`) measured them. *Fastest "
         "by job*: each job's own fastest — where they differ, the variants' order is not "
         "reproducible from one job to the next on this machine."
         + (" *Finals*: where auto chose another variant than the fastest, that fastest and "
            f"auto's choices alone, side by side, in {a.jobs} more `bench variants` jobs "
            "(the same blocks and rounds): every variant side by side is as many models' "
            "tables and caches on the machine's cores at once, a load a run of one variant "
            "does not carry, and it does not fall on all variants alike (compare a case's "
            "two auto / best columns). auto / best, "
            "finals: each auto run's choice against the finals' fastest." if has_finals
            else ""), ""]
    if has_finals:
        L += [f"**By the finals: auto within 5% of the fastest in {ok_fin} of {len(runs)} "
              f"runs; every run of the case within 5% in {ok_fin_case} of {len(rows)} "
              f"cases** ({n_finals} case{'' if n_finals == 1 else 's'} went to finals). "
              "By the five side by side alone: "
              f"{ok} of {len(runs)} runs, {ok_case} of {len(rows)} cases.", ""]
    else:
        L += [f"**auto within 5% of the fastest in {ok} of {len(runs)} runs; every run of the "
              f"case within 5% in {ok_case} of {len(rows)} cases**.", ""]
    L += [f"The simulator's ranking alone: {ok_sim} of {len(runs)} runs (against the five "
          "side by side). The fastest variant was the same in every job in "
          f"{same} of {len(rows)} cases. Had the trial always switched to its measured "
         "fastest (no margin, no sign test: `desmpi/whatif/trial.py`), "
          f"{sum(x >= 0.95 for v in alt for x in v)} of {len(runs)} runs and "
          f"{sum(min(v) >= 0.95 for v in alt)} of {len(rows)} cases would have been within "
          "5% (against the five side by side).", "",
          "*s to choose*: the simulator's ranking with the start-up calibration; *trial "
          "overhead*: what the trial's steps cost beyond running the winner throughout, about "
          "(its steps / candidates) × the sum of the others' median steps less the winner's "
          "(the trial's steps train the model; only that excess is lost).", "",
          "| model | P | batch | auto chose | auto / best | "
          + ("auto / best, finals | finals (samples/s) | " if has_finals else "")
          + "simulator alone (/ best) | fastest | fastest by job | s to choose | "
          "trial overhead s | steps | " + " | ".join(v.name for v in VARIANTS) + " |",
          "|---|---:|---:|---|---|" + ("---|---|" if has_finals else "")
          + "---|---|---|---|---|---:|" + "---:|" * len(VARIANTS)]
    for r in rows:
        pool = r["pooled"]
        fin_cells = ""
        if has_finals:
            fin_got = pooled(r["final_jobs"])["samples_per_s"] if r["finals"] else {}
            fin_cells = (", ".join(f"{x:.2f}" for x in r["auto_vs_best_finals"]) + " | "
                         + (", ".join(f"{v} {fin_got[v]:.0f}" for v in r["finals"])
                            or "(auto chose the fastest)") + " | ")
        L.append(f"| {r['model']} | {r['P']} | {r['batch']} | {', '.join(r['auto'])} | "
                 + ", ".join(f"{x:.2f}" for x in r["auto_vs_best"]) + " | " + fin_cells
                 + ", ".join(f"{p} ({x:.2f})" for p, x in zip(r["predicted"],
                                                              r["predicted_vs_best"]))
                 + f" | {r['best']} | {', '.join(pool['fastest_by_job'])} | "
                 + ", ".join("" if s is None else f"{s:.1f}" for s in r["choose_s"]) + " | "
                 + ", ".join(f"{trial_overhead(t):.2f}" for t in r["trials"])
                 + f" | {pool['steps']} | "
                 + " | ".join(f"{r['variants'][v.name]:.0f}" for v in VARIANTS) + " |")
    out.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    sys.exit(main())
