#!/usr/bin/env python
"""Throughput at P ranks against P = 1, alternating runs so both see the same machine state.

    python scripts/bench_scaling.py [--model deepfm] [--ranks 1,2] [--repeats 5] [--json]
        [--aggregate reduce_scatter] [--p1-aggregate allreduce] [--json-out FILE]
        [-- extra bench arguments]

Each repeat runs ``desmpi bench train --json`` once per P (under ``mpiexec -n P`` for P > 1,
one thread per rank); the report gives every run's samples/s, the median per P and the ratio
of medians to P = 1 (run with ``--p1-aggregate``, by default the same aggregate; at P = 1
``allreduce`` is the copy-free single-process baseline), the median of the ratios of each
P-run to the P = 1 run just before it (paired: robust to slow drifts of the machine), and the
same speed-up of the GEMM limit each run measured (what the cores gave the dense products
alone while they all ran). On a shared or virtual machine single runs vary by tens of
percent: quote the medians of one invocation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from desmpi import launch


def one_run(P: int, model: str, aggregate: str, extra: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "desmpi", "bench", "train", "--model", model,
           "--strategy", "des", "--aggregate", aggregate, "--json", *extra]
    if P > 1:
        cmd = [launch.find_mpiexec(), "-n", str(P), *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=launch.env())
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deepfm")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--aggregate", default="reduce_scatter")
    ap.add_argument("--p1-aggregate", default=None, help="aggregate of the P = 1 runs")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--json-out", default=None, help="also write the JSON report to this file")
    ap.add_argument("extra", nargs="*", help="more arguments for desmpi bench train")
    a = ap.parse_args()
    ranks = [int(p) for p in a.ranks.split(",")]
    if ranks[0] != 1:
        ranks = [1, *ranks]
    runs: dict[int, list[float]] = {P: [] for P in ranks}
    lims: dict[int, list[float | None]] = {P: [] for P in ranks}
    for _ in range(a.repeats):
        for P in ranks:
            agg = (a.p1_aggregate or a.aggregate) if P == 1 else a.aggregate
            r = one_run(P, a.model, agg, a.extra, a.timeout)
            runs[P].append(r["samples_per_s"])
            lims[P].append(r["gemm_limit_samples_per_s"])
    med = {P: statistics.median(v) for P, v in runs.items()}
    paired = {P: statistics.median(x / y for x, y in zip(runs[P], runs[1], strict=True))
              for P in ranks}
    lim_up = ({P: statistics.median(lims[P]) / statistics.median(lims[1]) for P in ranks}
              if None not in lims[1] else None)
    rep = {"model": a.model, "aggregate": a.aggregate,
           "p1_aggregate": a.p1_aggregate or a.aggregate, "repeats": a.repeats,
           "runs_samples_per_s": {str(P): v for P, v in runs.items()},
           "median_samples_per_s": {str(P): m for P, m in med.items()},
           "speedup_vs_1": {str(P): m / med[1] for P, m in med.items()},
           "paired_speedup_vs_1": {str(P): v for P, v in paired.items()},
           "runs_gemm_limit_samples_per_s": {str(P): v for P, v in lims.items()},
           "gemm_limit_speedup_vs_1": (None if lim_up is None
                                       else {str(P): v for P, v in lim_up.items()})}
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(rep, f, indent=1)
    if a.json:
        print(json.dumps(rep))
    else:
        print(f"{a.model} ({a.aggregate}; P = 1: {rep['p1_aggregate']}), {a.repeats} "
              "alternating runs per P")
        print("| P | median samples/s | speed-up vs P = 1 | paired speed-up | GEMM-limit "
              "speed-up | runs |")
        print("|---:|---:|---:|---:|---:|---|")
        for P in ranks:
            runs_s = ", ".join(f"{x:,.0f}" for x in runs[P])
            lu = "—" if lim_up is None else f"{lim_up[P]:.2f}"
            print(f"| {P} | {med[P]:,.0f} | {med[P] / med[1]:.2f} | {paired[P]:.2f} | {lu} "
                  f"| {runs_s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
