"""``desmpi simulate --validate``: predict real runs on this machine and report the error.

1. the network: ``desmpi bench comm`` at each network P (by default every P > 1 of the runs:
   a micro-benchmark, as a cluster file or OSU numbers describe a target cluster, not a
   training run), run before the training runs and after each repeat of them, each sample's
   median taken (:func:`median_samples`: a slow spell of the machine during one of them does
   not set the network); α and β fitted per P (one node: ranks share memory, and past the
   core count they share cores too), and γ (reduction rate), the sparse rates' ratios and
   the codec's rates from ``desmpi bench compute`` on the runs' own keys and codecs;
2. every (model, variant, P) case runs ``repeats`` times, repeat after repeat over all cases;
   its measured collective time comes from the run's own counters (the rank that waits least:
   the others add their wait for the slowest), its compute time is the step time less that.
   Steps 1-2 are :func:`measure`, kept in the report; ``--reuse`` runs 3-5 (:func:`analyse`)
   again on them;
3. **communication first**: each case's predicted collective time against the measured one.
   The counters hold each call's software cost (desmpi.comm's wrapper, the MPI binding,
   buffers) beside the network's: measured where no network is crossed — a P = 1 run's
   collective time per call, median over the P = 1 cases — it is added to every prediction's
   collectives (and charged in the step as the compute model's per-call cost, not fitted);
4. compute rates and the node's contention are fitted to the *measured compute time* of the
   training runs at P = 1 and the calibrated P — never to a residual that would absorb network
   error; a run at any other P is held out by P;
5. predictions, reported in four groups apart: in-sample (fitted P, fitted model), held out by
   P, held out by model (leave-one-model-out: the compute fit without that model), held out by
   both; each with its median, interquartile range and a bootstrap 90% interval of the median.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np

from desmpi.bench.comm import fit_network
from desmpi.config import load
from desmpi.data.h5 import CtrDataset
from desmpi.data.synth import SynthSpec, generate
from desmpi.launch import ROOT, run_json
from desmpi.strategies.wire import rated_codecs
from desmpi.variants import Variant
from desmpi.whatif.simulate import ModelInfo, comm_time, predict, profile
from sim.accounting import Layout
from sim.calibrate import CODEC_TERMS, KEY_TERMS, fit_compute
from sim.cluster import Cluster, ComputeRates, Level

log = logging.getLogger("desmpi.whatif.validate")
_NO_RATES = ComputeRates()  # comm_time does not read compute rates
_run = run_json


def _config_path(model: str) -> Path:
    p = ROOT / "configs" / f"{model}.toml"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: --validate runs from a source checkout")
    return p


def network_source(P: int, calibrated: list[int]) -> int | None:
    """The calibrated rank count whose fitted network predicts a run at ``P`` ranks.

    ``P`` itself when calibrated, else the largest calibrated count below it (extrapolation
    upwards, what a user does when the cluster at hand is smaller than the target), else the
    smallest calibrated count; None at P = 1 (no network) or when nothing was calibrated.
    """
    if P == 1 or not calibrated:
        return None
    if P in calibrated:
        return P
    below = [c for c in calibrated if c < P]
    return max(below) if below else min(calibrated)


def _spread(errs: list[float], seed: int = 0) -> dict | None:
    """Median |error|, its interquartile range and a bootstrap 90% interval of the median."""
    if not errs:
        return None
    a = np.abs(np.asarray(errs, dtype=np.float64))
    rng = np.random.default_rng(seed)
    boots = np.median(rng.choice(a, size=(2000, a.size), replace=True), axis=1)
    return {"cases": int(a.size), "median_abs_error": float(np.median(a)),
            "iqr": [float(np.percentile(a, 25)), float(np.percentile(a, 75))],
            "median_ci90": [float(np.percentile(boots, 5)), float(np.percentile(boots, 95))],
            "under": int(np.sum(np.asarray(errs) < 0))}


def groups_of(cases: list[dict], cores: int) -> dict:
    """The error groups of a validation, each with :func:`_spread`: in-sample, held out by P,
    by model, by both, the collective time alone and the codec's work alone — all, then the
    runs with at most one rank a core and the oversubscribed ones apart (with more ranks than
    cores a rank waiting in a collective spins on a core another rank needs to finish its
    compute: the counters then hold compute of others, and the split of a step between the
    two is no longer the network's)."""
    comm = [c for c in cases if c.get("comm_error") is not None]
    codec = [c for c in cases if c.get("codec_error") is not None]
    return {
        "in_sample": _spread([c["error"] for c in cases if not c["held_out_P"]]),
        "held_out_P": _spread([c["error"] for c in cases if c["held_out_P"]]),
        "held_out_model": _spread([c["error_model_held_out"] for c in cases
                                   if not c["held_out_P"] and "error_model_held_out" in c]),
        "held_out_model_and_P": _spread([c["error_model_held_out"] for c in cases
                                         if c["held_out_P"] and "error_model_held_out" in c]),
        "communication": _spread([c["comm_error"] for c in comm]),
        "communication_within_cores": _spread([c["comm_error"] for c in comm
                                               if c["P"] <= cores]),
        "communication_oversubscribed": _spread([c["comm_error"] for c in comm
                                                 if c["P"] > cores]),
        # dist.compress: the codec's own work (packing, decoding, summing) against the runs'
        # codec_time_s_per_step; oversubscribed apart, as the collectives
        "codec": _spread([c["codec_error"] for c in codec]),
        "codec_within_cores": _spread([c["codec_error"] for c in codec if c["P"] <= cores]),
        "codec_oversubscribed": _spread([c["codec_error"] for c in codec if c["P"] > cores]),
    }


def measure(models: list[str], variants: list[Variant], ranks: list[int], batch: int,
            steps: int, repeats: int = 1, network_ranks: list[int] | None = None,
            workdir: str | None = None, sets: list[str] | None = None) -> dict:
    """Every measurement a validation predicts (no fitting): ``bench compute`` once, ``bench
    comm`` at each network P before the runs and after each repeat, and ``repeats`` training
    runs of each (model, variant, P) with their step time and collective time (the
    least-waiting rank's and the mean rank's).

    The result is plain JSON, kept in the report (``measurements``) so that the analysis can be
    run again on the same runs (``simulate --validate --reuse FILE``)."""
    if repeats < 1:
        raise ValueError("--repeats must be >= 1")
    above = sorted(P for P in ranks if P > 1)
    net_P = sorted({P for P in (above if network_ranks is None else network_ranks) if P > 1})
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        data = _data(tmp, batch, steps)
        # the sparse rates on the runs' own keys (their repeats decide the cache hits)
        # the codec's rates under the runs' own codecs
        dense, select = rated_codecs(load(_config_path(models[0]), list(sets or [])).dist.wire)
        bench = _run(1, ["bench", "compute", "--data", data, "--batch", str(batch),
                         "--codec", dense, "--select", select])
        # the network before the runs and after each repeat of them: a slow spell of the
        # machine during one measurement is then one of several, which the medians discard
        nets: dict[str, list] = {str(P): [] for P in net_P}

        def network() -> None:
            for P in net_P:
                nets[str(P)].append(_run(P, ["bench", "comm"])["samples"])

        network()
        cases = [(m, v, P) for m in models for v in variants for P in ranks]
        got: dict = {c: [] for c in cases}
        # repeat after repeat over all cases (not a case's repeats back to back): a slow spell
        # of the machine then falls on one run of many cases, which their medians discard,
        # instead of on every run of one case
        for rep in range(repeats):
            for m, v, P in cases:
                s = _run(P, ["train", str(_config_path(m)), "--set", f"data.train={data}",
                             "--set", "data.eval=", "--set", f"train.batch_size={batch}",
                             "--set", f"train.steps={steps}", *v.overrides(),
                             "--set", f"train.log_every={steps}",
                             *[x for kv in sets or [] for x in ("--set", kv)]])
                got[(m, v, P)].append({k: s.get(k) for k in _RUN_KEYS})
                log.info("%s %s P=%d, run %d of %d: %.4f s/step, collectives %.4f s", m, v, P,
                         rep + 1, repeats, s["step_time_s"], s["comm_time_s_per_step_min"])
            network()
        runs = [{"model": m, "variant": v.name, "P": P, "runs": got[(m, v, P)]}
                for m, v, P in cases]
    return {"models": models, "variants": [v.name for v in variants], "ranks": ranks,
            "batch": batch, "steps": steps, "repeats": repeats, "network_ranks": net_P,
            "cores": os.cpu_count() or 1, "bench_compute": bench,
            "bench_comm": {P: median_samples(x) for P, x in nets.items()},
            "bench_comm_runs": nets, "runs": runs, "sets": list(sets or [])}


def median_samples(runs: list[list[dict]]) -> list[dict]:
    """One ``bench comm`` sample list from several runs of it (the same kinds and sizes in the
    same order): each sample's median time."""
    out = []
    for same in zip(*runs):
        if len({(s["kind"], s["n"]) for s in same}) != 1:
            raise ValueError("bench comm runs of different kinds or sizes cannot be combined")
        out.append({**same[0], "time_s": statistics.median(s["time_s"] for s in same)})
    return out


# what a validation keeps of each training run's summary
_RUN_KEYS = ("step_time_s", "comm_time_s_per_step_min", "comm_time_s_per_step",
             "wire_bytes_per_step", "wire_bytes_total", "mpi", "ranks_per_node",
             "codec_time_s_per_step")


def _data(tmp: str, batch: int, steps: int) -> str:
    """The synthetic training file every validation run reads (seeded: the same rows again
    when a validation is analysed anew)."""
    data = os.path.join(tmp, "train.h5")
    generate(SynthSpec(rows=batch * steps, seed=1, cap=100_000), data)
    return data


def validate(models: list[str], variants: list[Variant], ranks: list[int], batch: int, steps: int,
             workdir: str | None = None, calibrate_ranks: list[int] | None = None,
             repeats: int = 1, network_ranks: list[int] | None = None,
             reuse: dict | None = None, sets: list[str] | None = None) -> dict:
    """Predict each (model, variant, P) run and compare with the real run (module docstring).

    ``calibrate_ranks``: the rank counts whose training runs, with those at P = 1, fit the
    compute rates; by default the smallest P > 1 in ``ranks``. A run at any other P is a
    prediction out of sample. ``network_ranks``: the rank counts at which the network is
    measured (``bench comm``), by default every P > 1 in ``ranks``; a run's network is the
    one fitted at ``network_source(P, network_ranks)`` (``network_ranks = calibrate_ranks``
    extrapolates the network too, as from a smaller cluster). ``reuse``: the ``measurements``
    of an earlier report (:func:`measure`): its runs are analysed again instead of new ones
    (models, variants, ranks, batch, steps, repeats, network ranks and ``sets`` are then the
    report's). ``sets``: config overrides of every run and of its prediction (``--set``, e.g.
    ``dist.compress=bf16``: the plans and the cost model then see the compressed payloads).
    """
    if reuse is None:
        _calibrated(calibrate_ranks, ranks)  # a bad choice fails before any run
        reuse = measure(models, variants, ranks, batch, steps, repeats, network_ranks, workdir,
                        sets)
    return analyse(reuse, calibrate_ranks, workdir)


def _calibrated(calibrate_ranks: list[int] | None, ranks: list[int]) -> list[int]:
    """The rank counts > 1 whose runs fit the compute (by default the smallest P > 1 of
    ``ranks``); each must be among ``ranks``."""
    if calibrate_ranks is None:
        calibrate_ranks = sorted(P for P in ranks if P > 1)[:1]
    calibrated = sorted({P for P in calibrate_ranks if P > 1})
    missing = [P for P in calibrated if P not in ranks]
    if missing:
        raise ValueError(f"--calibrate-ranks {missing} not in --ranks {ranks}: the calibration "
                         "needs the training runs at those P too")
    return calibrated


def analyse(meas: dict, calibrate_ranks: list[int] | None = None,
            workdir: str | None = None) -> dict:
    """Fit and predict the runs of :func:`measure` (module docstring, steps 3-5)."""
    from desmpi.variants import parse_list

    models, ranks = meas["models"], meas["ranks"]
    variants = parse_list(",".join(meas["variants"]))
    batch, steps, cores = meas["batch"], meas["steps"], meas["cores"]
    calibrated = _calibrated(calibrate_ranks, ranks)
    net_P = meas["network_ranks"]
    fit_P = {1, *calibrated}
    bench = meas["bench_compute"]
    gamma = float(bench.get("reduce_Bps", 0.0))
    # a key look-up's and a routed, bucketed or sorted key's cost in key-columns, measured
    # apart (fit_compute; a report from before a rate was measured leaves that one fitted)
    costs = {t: bench["sparse_keys_per_s"] / bench[r] for t, r in KEY_TERMS if r in bench}
    # the codec's rates, measured apart (a report from before they were: fitted to the runs)
    codec_rates = ComputeRates(**{r: float(bench[r]) for _, r in CODEC_TERMS}) \
        if all(r in bench for _, r in CODEC_TERMS) else None
    levels, fits = {}, {}
    for P in net_P:
        levels[P], fits[P] = fit_network(meas["bench_comm"][str(P)])
        log.info("P=%d: fitted latency %.2e s, bandwidth %.3g B/s (median error %.1f%%)",
                 P, levels[P].latency_s, levels[P].bandwidth_Bps, 100 * fits[P].median_rel_error)

    def cluster_at(P: int, rates: ComputeRates) -> Cluster:
        src = network_source(P, net_P)
        lvl = levels[src] if src is not None else Level(0.0, float("inf"))  # P = 1
        return Cluster("this machine", 1, P, lvl, lvl, cores, rates, reduce_Bps=gamma)

    by_case = {(r["model"], r["variant"], r["P"]): r["runs"] for r in meas["runs"]}
    cases = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        ds = CtrDataset(_data(tmp, batch, steps), in_memory=True)
        for m in models:
            cfg = load(_config_path(m), [f"data.train={ds.path}", *meas.get("sets", [])])
            info = ModelInfo.per_variant(cfg.model, ds.n_fields, ds.n_dense, "float32",
                                         variants)
            for v in variants:
                for P in ranks:
                    runs = by_case[(m, v.name, P)]
                    steps_s = [s["step_time_s"] for s in runs]
                    s = runs[0]  # planned with the library and layout the run counted under
                    prof = profile(ds, info, P, batch, steps, [v],
                                   layout=Layout(s.get("mpi", ""), s.get("ranks_per_node", 1)),
                                   wire=cfg.dist.wire)[0]
                    cases.append({
                        "model": m, "variant": v.name, "P": P, "prof": prof,
                        "measured_step_time_s": statistics.median(steps_s),
                        "measured_step_time_range_s": [min(steps_s), max(steps_s)],
                        "measured_comm_s": statistics.median(
                            s["comm_time_s_per_step_min"] for s in runs),
                        "counted_wire_bytes_per_step": s["wire_bytes_per_step"],
                        "planned_wire_bytes_per_step": prof.wire_bytes,
                        "counted_wire_bytes_total": s["wire_bytes_total"],
                        "planned_wire_bytes_total": prof.wire_total})
        # each call's software cost: a P = 1 run's collective time crosses no network
        sw = [c["measured_comm_s"] / c["prof"].work.calls for c in cases
              if c["P"] == 1 and c["prof"].work.calls > 0]
        per_call = statistics.median(sw) if sw else None  # None: fitted with the compute
        call_s = per_call or 0.0
        if per_call is not None:
            log.info("collectives' software cost %.1f us a call (median of %d P = 1 cases)",
                     per_call * 1e6, len(sw))
        # communication first: the network model (and the software cost) against the runs'
        # own collective time
        for c in cases:
            c["predicted_network_s"] = comm_time(c["prof"], cluster_at(c["P"], _NO_RATES))
            c["predicted_comm_s"] = c["predicted_network_s"] + call_s * c["prof"].work.calls
            c["comm_error"] = ((c["predicted_comm_s"] - c["measured_comm_s"])
                               / c["measured_comm_s"]) \
                if c["P"] > 1 and c["measured_comm_s"] > 0 else None  # P = 1: local copies
            c["measured_compute_s"] = max(c["measured_step_time_s"] - c["measured_comm_s"],
                                          1e-9)

        def fit(exclude_model: str | None) -> ComputeRates:
            # the compute model's time includes the per-call software cost the counters hold
            samples = [(c["prof"].work, c["measured_compute_s"] + call_s * c["prof"].work.calls,
                        cluster_at(c["P"], _NO_RATES).busy_cores)
                       for c in cases if c["P"] in fit_P and c["model"] != exclude_model]
            if len(samples) < 4:
                raise ValueError(f"only {len(samples)} calibration runs"
                                 f"{' without ' + exclude_model if exclude_model else ''}; the "
                                 "compute fit needs 4 (more models or variants, or other P)")
            return fit_compute(samples, costs=costs, per_call_s=per_call,
                               codec=codec_rates)[0]

        rates = fit(None)
        per_model = {m: fit(m) for m in models} if len(models) > 1 else {}
        log.info("compute: %.3g flop/s GEMM, %.3g key-columns/s, %.2e s overhead, %.2e s per "
                 "call, contention %.2f (fitted to the measured compute of the P = %s runs)",
                 rates.gemm_flops, rates.sparse_keys_per_s, rates.overhead_s, rates.per_call_s,
                 rates.contention, ", ".join(str(P) for P in sorted(fit_P)))
        out = []
        for c in cases:
            P = c["P"]
            c["network_from_P"] = network_source(P, net_P)
            c["held_out_P"] = P not in fit_P
            c["extrapolated"] = c["held_out_P"]  # the name earlier reports used
            prof = c.pop("prof")
            pr = predict(prof, cluster_at(P, rates), rates)
            c["predicted_step_time_s"] = pr["step_time_s"]
            # dist.compress's own work, predicted against measured (runs that recorded it)
            codec = [r.get("codec_time_s_per_step") for r in by_case[(c["model"], c["variant"],
                                                                       P)]]
            if prof.codec.codec_calls > 0 and all(x is not None for x in codec):
                c["measured_codec_s"] = statistics.median(codec)
                c["predicted_codec_s"] = pr["codec_s"]
                c["codec_error"] = (pr["codec_s"] - c["measured_codec_s"]) / \
                    c["measured_codec_s"] if c["measured_codec_s"] > 0 else None
            c["error"] = (pr["step_time_s"] - c["measured_step_time_s"]) / \
                c["measured_step_time_s"]
            if per_model:
                pm = predict(prof, cluster_at(P, per_model[c["model"]]), per_model[c["model"]])
                c["predicted_step_time_s_model_held_out"] = pm["step_time_s"]
                c["error_model_held_out"] = (pm["step_time_s"] - c["measured_step_time_s"]) / \
                    c["measured_step_time_s"]
            c["bytes_equal"] = c["counted_wire_bytes_total"] == c["planned_wire_bytes_total"]
            out.append(c)
    groups = groups_of(out, cores)
    held = groups["held_out_P"]
    # how far one run lands from its case's median (the closest run left out: with an odd
    # count, the median run itself): the floor under any prediction's error
    dev = [d for c in out for d in sorted(
        abs(r["step_time_s"] - c["measured_step_time_s"]) / c["measured_step_time_s"]
        for r in by_case[(c["model"], c["variant"], c["P"])])[1:]] or [0.0]
    return {"cases": out, "groups": groups,
            "median_abs_error": groups["in_sample"]["median_abs_error"],
            "median_abs_error_extrapolated": held["median_abs_error"] if held else None,
            "calibrated_ranks": calibrated, "network_ranks": net_P,
            "repeats": meas["repeats"],
            "calibration": {"compute": {"gemm_flops": rates.gemm_flops,
                                        "sparse_keys_per_s": rates.sparse_keys_per_s,
                                        "overhead_s": rates.overhead_s,
                                        "per_call_s": rates.per_call_s,
                                        "per_call_measured": per_call is not None,
                                        "contention": rates.contention,
                                        "mem_Bps": rates.mem_Bps,
                                        **{r: getattr(rates, r) for _, r in KEY_TERMS},
                                        **{r: getattr(rates, r) for _, r in CODEC_TERMS},
                                        "codec_measured": codec_rates is not None,
                                        "fitted_on_P": sorted(fit_P)},
                            "reduce_Bps": gamma,
                            "network": {str(P): {"latency_s": lv.latency_s,
                                                 "bandwidth_Bps": lv.bandwidth_Bps,
                                                 "median_rel_error": fits[P].median_rel_error}
                                        for P, lv in levels.items()}},
            "batch": batch, "steps": steps, "cores": cores,
            "run_spread": {"median_abs_dev_from_case_median": float(np.median(dev)),
                           "p90": float(np.percentile(dev, 90))},
            "measurements": meas}
