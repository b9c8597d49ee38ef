"""``desmpi simulate``: what-if sweeps, trace replay and validation against real runs."""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

from desmpi.comm import Comm
from desmpi.variants import COMPARED

log = logging.getLogger("desmpi")


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _sized(cl, a):
    """The cluster with ``--ranks-per-node`` applied (1: every rank on its own node)."""
    from dataclasses import replace

    if a.ranks_per_node:
        return replace(cl, ranks_per_node=a.ranks_per_node,
                       name=f"{cl.name}, {a.ranks_per_node} rank(s)/node")
    return cl


def _whatif(a, comm: Comm) -> int:
    from desmpi.config import load
    from desmpi.data.h5 import CtrDataset
    from desmpi.variants import parse, parse_list
    from desmpi.whatif.simulate import ModelInfo, crossovers, layout_of, predict, profile, recommend
    from sim.cluster import ComputeRates, load_cluster

    if a.config is None:
        raise ValueError("simulate needs a CONFIG (or --replay TRACE, or --validate)")
    cfg = load(a.config, a.set)
    ds = CtrDataset(cfg.data.train, in_memory=False)
    clusters = [_sized(load_cluster(c), a) for c in a.cluster]
    variants = parse_list(a.strategies)
    info = ModelInfo.per_variant(cfg.model, ds.n_fields, ds.n_dense, cfg.train.dtype, variants)
    rates = None
    if a.rates:
        r = json.loads(Path(a.rates).read_text())
        r = r.get("calibration", {}).get("compute", r)
        from dataclasses import fields

        missing = {"gemm_flops", "sparse_keys_per_s"} - set(r)
        if missing:
            raise ValueError(f"--rates {a.rates}: no {', '.join(sorted(missing))}")
        known = {f.name for f in fields(ComputeRates)}
        rates = ComputeRates(**{"overhead_s": 0.0, "per_call_s": 0.0,
                                **{k: float(v) for k, v in r.items() if k in known}})
    batches = _ints(a.batch) if a.batch else [cfg.train.batch_size]
    t0 = time.perf_counter()
    # bytes follow each cluster's MPI library and ranks per node: one profile per layout
    profs: dict = {}
    for B in batches:
        for P in _ints(a.ranks):
            for cl in clusters:
                lay = layout_of(cl, P)
                if (B, P, lay) not in profs:
                    profs[B, P, lay] = profile(ds, info, P, B, a.profile_batches, variants,
                                               layout=lay, wire=cfg.dist.wire)
    t1 = time.perf_counter()
    rows = [predict(p, cl, rates, a.algorithm) for B in batches for P in _ints(a.ranks)
            for i in range(len(variants)) for cl in clusters
            for p in [profs[B, P, layout_of(cl, P)][i]]]
    t2 = time.perf_counter()
    log.info("profiled %d (P, batch) points in %.2f s; costed %d configurations in %.3f s",
             len(batches) * len(_ints(a.ranks)), t1 - t0, len(rows), t2 - t1)
    rec = recommend(rows, a.target)
    pairs = [(parse(x), parse(y)) for x, y in (("des", "ps"), ("des", "des-a2a"),
                                                 ("des-read", "ps"))]
    xs = {f"{x} vs {y}": {f"{k[0]} @ B={k[1]}": v
                          for k, v in crossovers(rows, x.name, y.name).items()}
          for x, y in pairs if x in variants and y in variants}
    if comm.rank == 0:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        _write_tables(out, rows, cfg, a, xs, rec)
        _plots(out, rows, clusters, batches, variants)
        log.info("wrote %s/whatif.md, whatif.csv and plots", out)
        if rec:
            log.info("recommendation: %s at P=%d, batch %d on %s: %.0f samples/s",
                     rec["variant"], rec["P"], rec["batch"], rec["cluster"],
                     rec["samples_per_s"])
        if a.json:
            print(json.dumps({"rows": rows, "crossovers": xs, "recommendation": rec,
                              "profile_s": t1 - t0, "cost_s": t2 - t1}))
    return 0


def _command() -> str:
    """This process's command line, as a report names it."""
    import shlex
    import sys

    return "desmpi " + " ".join(shlex.quote(x) for x in sys.argv[1:])


def _write_tables(out: Path, rows, cfg, a, xs, rec) -> None:
    with open(out / "whatif.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    L = [f"# What-if: {cfg.model.name} ({a.config})", "",
         f"Command: `{_command()}`", "",
         f"Ranks {a.ranks}; batch {a.batch or cfg.train.batch_size}; clusters "
         f"{', '.join(a.cluster)}; algorithms: {a.algorithm}. Step time = modelled "
         "collectives + compute (no overlap).", "",
         "| cluster | batch | P | variant | step ms | samples/s | wire MB/step/rank | "
         "comm share |", "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        L.append(f"| {r['cluster']} | {r['batch']} | {r['P']} | {r['variant']} | "
                 f"{r['step_time_s'] * 1e3:.2f} | {r['samples_per_s']:.0f} | "
                 f"{r['wire_bytes_per_step'] / 1e6:.3f} | {r['comm_share']:.0%} |")
    L += ["", "## Crossovers (smallest P where the first is slower than the second)", ""]
    for k, v in xs.items():
        for kk, P in v.items():
            L.append(f"- {k}, {kk}: P = {P}")
    if rec:
        goal = f"Fewest ranks meeting {a.target:.0f} samples/s" if a.target else "Fastest"
        L += ["", "## Recommendation", "",
              f"{goal}: **{rec['variant']}**, P = {rec['P']}, batch {rec['batch']} on "
              f"{rec['cluster']} — {rec['samples_per_s']:.0f} samples/s, step "
              f"{rec['step_time_s'] * 1e3:.2f} ms, comm share {rec['comm_share']:.0%}."]
    (out / "whatif.md").write_text("\n".join(L) + "\n")


def _plots(out: Path, rows, clusters, batches, variants) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed (pip install 'desmpi[plot]'): no plots")
        return
    for cl in clusters:
        fig, axes = plt.subplots(len(batches), 2, figsize=(11, 3.6 * len(batches)),
                                 squeeze=False)
        for i, B in enumerate(batches):
            for v in variants:
                rr = sorted((r for r in rows if r["cluster"] == cl.name and r["batch"] == B
                             and r["variant"] == v.name), key=lambda r: r["P"])
                P = [r["P"] for r in rr]
                axes[i][0].plot(P, [r["samples_per_s"] for r in rr], marker="o", label=v.name)
                axes[i][1].plot(P, [r["wire_bytes_per_step"] / 1e6 for r in rr], marker="o",
                                label=v.name)
            for ax, yl in zip(axes[i], ("samples/s", "wire MB/step/rank")):
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("ranks P")
                ax.set_ylabel(yl)
                ax.set_title(f"{cl.name}, global batch {B}")
                ax.grid(True, which="both", alpha=0.3)
            axes[i][0].legend(fontsize=8)
        fig.tight_layout()
        name = "".join(ch if ch.isalnum() else "_" for ch in cl.name).strip("_").lower()
        fig.savefig(out / f"whatif_{name}.png", dpi=110)
        plt.close(fig)


def _replay(a, comm: Comm) -> int:
    from sim.cluster import load_cluster
    from sim.replay import replay

    trace = json.loads(Path(a.replay).read_text())
    res = []
    for c in a.cluster:
        cl = _sized(load_cluster(c), a)
        steps = replay(trace, cl, a.compute_scale, a.algorithm)
        measured = [float(np.max(s["step_s"])) for s in trace["steps"]]
        res.append({"cluster": cl.name, "world_size": trace["world_size"],
                    "median_step_s": float(np.median([s.time_s for s in steps])),
                    "median_comm_s": float(np.median([s.comm_s for s in steps])),
                    "comm_share": float(np.median([s.comm_s / s.time_s for s in steps])),
                    "measured_median_step_s": float(np.median(measured)),
                    "critical_rank": int(np.bincount([s.critical_rank for s in steps]).argmax())})
    if comm.rank == 0:
        for r in res:
            log.info("%s: median step %.4f s (comm %.4f s, %.0f%%), critical rank %d; traced "
                     "run: %.4f s", r["cluster"], r["median_step_s"], r["median_comm_s"],
                     100 * r["comm_share"], r["critical_rank"], r["measured_median_step_s"])
        if a.json:
            print(json.dumps(res))
    return 0


def _validate(a, comm: Comm) -> int:
    from desmpi.variants import parse_list
    from desmpi.whatif.validate import validate

    if comm.size > 1:
        raise ValueError("run 'desmpi simulate --validate' without mpiexec: it launches runs")
    models = a.models.split(",")
    variants = parse_list(a.strategies)
    reuse = None
    if a.reuse:
        try:
            reuse = json.loads(Path(a.reuse).read_text())["measurements"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"--reuse {a.reuse}: not a validation.json with its measurements "
                             f"({e})") from e
        if a.set and a.set != reuse.get("sets", []):
            raise ValueError(f"--reuse {a.reuse}: its runs were made under --set "
                             f"{reuse.get('sets') or 'nothing'}, not {a.set}; the analysis "
                             "predicts them as they ran (leave --set out)")
    rep = validate(models, variants, _ints(a.ranks), a.batch_int, a.steps,
                   calibrate_ranks=_ints(a.calibrate_ranks) if a.calibrate_ranks else None,
                   repeats=a.repeats,
                   network_ranks=_ints(a.network_ranks) if a.network_ranks else None,
                   reuse=reuse, sets=a.set)
    if reuse is None:  # the command that made the runs, for a later --reuse's report
        rep["measurements"]["command"] = _command()
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "validation.json").write_text(json.dumps(rep, indent=1))
        (Path(a.out) / "validation.md").write_text(validation_markdown(rep))
    for name, g in rep["groups"].items():
        if g:
            log.info("%-22s median |error| %5.1f%% (IQR %.1f-%.1f%%, 90%% interval of the "
                     "median %.1f-%.1f%%) over %d cases", name, 100 * g["median_abs_error"],
                     100 * g["iqr"][0], 100 * g["iqr"][1], 100 * g["median_ci90"][0],
                     100 * g["median_ci90"][1], g["cases"])
    if a.json:
        print(json.dumps(rep))
    return 0


def _recommend(a, comm: Comm) -> int:
    """The ranking dist 'auto' would make for CONFIG on each cluster and P, without running."""
    from dataclasses import replace

    from desmpi.config import load
    from desmpi.data.h5 import CtrDataset
    from desmpi.whatif.choose import rank_variants
    from sim.cluster import load_cluster

    if a.config is None:
        raise ValueError("simulate --recommend needs a CONFIG")
    cfg = load(a.config, a.set)
    ds = CtrDataset(cfg.data.train, in_memory=False)
    batches = _ints(a.batch) if a.batch else [cfg.train.batch_size]
    out = []
    for spec in a.cluster:
        cl = _sized(load_cluster(spec), a)
        for P in _ints(a.ranks or "2,4,8"):
            for B in batches:
                c = replace(cfg, train=replace(cfg.train, batch_size=B))
                rows = rank_variants(ds, c, P, cl, cfg.dist.candidates())
                out.append({"cluster": cl.name, "P": P, "batch": B, "ranking": rows})
                if comm.rank == 0 and not a.json:
                    best = rows[0]["step_time_s"]
                    print(f"{cl.name}, P = {P}, batch {B}:")
                    for i, r in enumerate(rows):
                        print(f"  {i + 1}. {r['variant']:<26} {r['step_time_s'] * 1e3:9.2f} ms "
                              f"(+{r['step_time_s'] / best - 1:6.1%})  comm "
                              f"{r['comm_share']:4.0%}  {r['wire_bytes_per_step'] / 1e6:8.3f} "
                              "MB/step")
    if comm.rank == 0 and a.json:
        print(json.dumps(out))
    return 0


GROUPS = {"in_sample": "in-sample (P and model the compute fit saw)",
          "held_out_P": "held out by P (the fit never saw this P)",
          "held_out_model": "held out by model (leave-one-model-out fit), fitted P",
          "held_out_model_and_P": "held out by model and by P",
          "communication": "collective time alone (network model + each call's software "
                           "cost vs the least-waiting rank's counters)",
          "communication_within_cores": "collective time alone, at most one rank a core",
          "communication_oversubscribed": "collective time alone, more ranks than cores",
          "codec": "dist.compress's own work alone (its element passes, selections and "
                   "calls at the rates bench compute measured vs the runs' "
                   "codec_time_s_per_step)",
          "codec_within_cores": "dist.compress's own work alone, at most one rank a core",
          "codec_oversubscribed": "dist.compress's own work alone, more ranks than cores"}


def validation_markdown(rep: dict) -> str:
    cmd = _command()
    runs = rep.get("measurements", {}).get("command", cmd)
    L = ["# Simulator against real runs on this machine", "",
         f"Command: `{cmd}`" + ("" if runs == cmd else f" (the runs: `{runs}`)"), "",
         f"{rep['cores']} cores; batch {rep['batch']}, {rep['steps']} steps, "
         f"{rep['repeats']} run(s) per case (median); network measured by `desmpi bench comm` "
         f"at P = {rep.get('network_ranks', rep['calibrated_ranks'])}"
         + (f" {len(next(iter(rep['measurements']['bench_comm_runs'].values())))} times (before "
            "the runs and after each repeat; each sample's median)"
            if rep.get("measurements", {}).get("bench_comm_runs") else "")
         + " (a run at another P takes the largest measured P below it), compute fitted to "
         "the measured compute time (step time less the run's own collective time) of the "
         "training runs at P = "
         f"{rep['calibration']['compute']['fitted_on_P']}; every other P is held out."
         + (" Each collective call's software cost (desmpi.comm's wrapper, the MPI binding, "
            f"buffers), {rep['calibration']['compute']['per_call_s'] * 1e6:.0f} µs, is measured "
            "where no network is crossed (a P = 1 run's collective time per call, median over the "
            "P = 1 cases) and added to every predicted collective time (the step charges it "
            "as the compute model's per-call cost, not fitted)."
            if rep["calibration"]["compute"].get("per_call_measured") else "")
         + (f" Every run and its prediction under `{' '.join(rep['measurements']['sets'])}`."
            if rep.get("measurements", {}).get("sets") else ""), "",
         *([f"Run-to-run spread (the floor under any error here): a run's step time lies "
            f"{rep['run_spread']['median_abs_dev_from_case_median']:.1%} from its case's "
            f"median (median over the runs other than the median one; 90th percentile "
            f"{rep['run_spread']['p90']:.1%}).", ""] if "run_spread" in rep else []),
         "| group | cases | median abs error | IQR | 90% interval of the median | under |",
         "|---|---:|---:|---:|---:|---:|"]
    for name, g in rep["groups"].items():
        if g:
            L.append(f"| {GROUPS[name]} | {g['cases']} | {g['median_abs_error']:.1%} | "
                     f"{g['iqr'][0]:.1%}-{g['iqr'][1]:.1%} | {g['median_ci90'][0]:.1%}-"
                     f"{g['median_ci90'][1]:.1%} | {g['under']} |")
    L += ["", "| model | variant | P | held out | measured s/step (range) | collectives "
          "measured / predicted s | predicted s/step | error | error, model held out | "
          "bytes planned == counted |", "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for c in rep["cases"]:
        lo, hi = c["measured_step_time_range_s"]
        mh = c.get("error_model_held_out")
        L.append(f"| {c['model']} | {c['variant']} | {c['P']} | "
                 f"{'P' if c['held_out_P'] else ''} | {c['measured_step_time_s']:.4f} "
                 f"({lo:.4f}-{hi:.4f}) | {c['measured_comm_s']:.4f} / "
                 f"{c['predicted_comm_s']:.4f} | {c['predicted_step_time_s']:.4f} | "
                 f"{c['error']:+.1%} | {'' if mh is None else f'{mh:+.1%}'} | "
                 f"{c['bytes_equal']} |")
    codec = [c for c in rep["cases"] if "measured_codec_s" in c]
    if codec:
        cc = rep["calibration"]["compute"]
        how = (f"at the rates `desmpi bench compute` measured on its own kernels: "
               f"{cc['codec_elems_per_s']:.3g} element passes/s, "
               f"{cc['codec_call_s'] * 1e6:.0f} µs a collective of packed words"
               if cc.get("codec_measured") else "at rates fitted to the runs' compute")
        L += ["", "dist.compress's own work per step (packing, decoding, summing: measured, "
              "`codec_time_s_per_step`; predicted, the codec's element passes, selections "
              f"and calls {how}):", "", "| model | variant | P | measured ms | predicted ms | "
              "error |", "|---|---|---:|---:|---:|---:|"]
        for c in codec:
            e = c.get("codec_error")
            L.append(f"| {c['model']} | {c['variant']} | {c['P']} | "
                     f"{c['measured_codec_s'] * 1e3:.3f} | {c['predicted_codec_s'] * 1e3:.3f} | "
                     f"{'' if e is None else f'{e:+.1%}'} |")
    return "\n".join(L) + "\n"


WHATIF_RANKS = "8,16,32,64,128,256,512,1024"


def _simulate(a, comm: Comm) -> int:
    if a.cluster is None:
        a.cluster = ["25gbe", "hdr"]
    if a.validate:
        a.ranks = a.ranks or "1,2,4"
        a.batch_int = int(a.batch) if a.batch else 2048
        return _validate(a, comm)
    if a.replay:
        return _replay(a, comm)
    if a.recommend:
        return _recommend(a, comm)
    a.ranks = a.ranks or WHATIF_RANKS
    return _whatif(a, comm)


def add_commands(sub) -> None:
    s = sub.add_parser("simulate", help="what-if sweeps, trace replay, validation")
    s.add_argument("config", nargs="?", default=None)
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    s.add_argument("--cluster", action="append", default=None,
                   help="preset (10gbe, 25gbe, edr, hdr) or TOML; repeatable")
    s.add_argument("--ranks", default=None,
                   help=f"rank counts (default: {WHATIF_RANKS}; --validate: 1,2,4)")
    s.add_argument("--strategies", default=",".join(v.name for v in COMPARED),
                   help="variants (desmpi.variants: des/allreduce, des/reduce_scatter, ..., "
                   "ps; short aliases des, des-rs, des-read)")
    s.add_argument("--batch", default=None, help="global batch size(s), comma separated")
    s.add_argument("--profile-batches", type=int, default=2)
    s.add_argument("--ranks-per-node", type=int, default=None,
                   help="override the clusters' ranks per node (1: one rank per node)")
    s.add_argument("--algorithm", "--mpi", default="auto",
                   help="whose selection rules: auto (the cluster's 'mpi'), mpich, openmpi, "
                   "openmpi-4.0; or one algorithm for every call (ring, rabenseifner, ...)")
    s.add_argument("--rates", default=None, help="compute rates JSON (bench compute/validate)")
    s.add_argument("--target", type=float, default=None, help="throughput goal, samples/s")
    s.add_argument("--out", default="runs/simulate")
    s.add_argument("--json", action="store_true")
    s.add_argument("--replay", default=None, metavar="TRACE")
    s.add_argument("--compute-scale", type=float, default=1.0,
                   help="replay: target compute time / traced compute time")
    s.add_argument("--validate", action="store_true")
    s.add_argument("--recommend", action="store_true",
                   help="rank the variants dist 'auto' chooses among, for each --cluster and "
                        "--ranks (default 2,4,8), without running")
    s.add_argument("--calibrate-ranks", default=None,
                   help="validate: rank counts whose training runs fit the compute rates "
                        "(default: the smallest P > 1 in --ranks); the others are held out")
    s.add_argument("--network-ranks", default=None,
                   help="validate: rank counts at which 'bench comm' measures the network "
                        "(default: every P > 1 in --ranks; set it to --calibrate-ranks to "
                        "extrapolate the network too)")
    s.add_argument("--reuse", default=None, metavar="JSON",
                   help="validate: analyse again the runs of an earlier validation.json "
                        "(its models, variants, ranks, batch, repeats and network ranks) "
                        "instead of running")
    s.add_argument("--models", default="lr,fm,wdl,deepfm")
    s.add_argument("--steps", type=int, default=6)
    s.add_argument("--repeats", type=int, default=1,
                   help="validate: runs per case (their median; the range is reported)")
    s.set_defaults(fn=_simulate)
