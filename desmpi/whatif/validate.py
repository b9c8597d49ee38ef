"""``desmpi simulate --validate``: predict real runs on this machine and report the error.

1. the network: ``desmpi bench comm`` at each calibrated P (by default the smallest P > 1),
   α and β fitted per P (one node: ranks share memory, and past the core count they share
   cores too);
2. compute rates and the node's contention: fitted on the runs at P = 1 and at the calibrated
   P (measured time less predicted collectives);
3. every (model, strategy, P) case: measured median step time and counted wire bytes of a real
   ``mpiexec`` run against the prediction for the same batches (and the planned bytes); the
   cases at other P than those fitted on are true predictions ("extrapolated").
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
from pathlib import Path

from desmpi.config import load
from desmpi.data.h5 import CtrDataset
from desmpi.data.synth import SynthSpec, generate
from desmpi.launch import ROOT, run_json
from desmpi.variants import Variant
from desmpi.whatif.simulate import ModelInfo, comm_time, predict, profile
from sim.calibrate import CommSample, fit_compute, fit_level
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


def validate(models: list[str], variants: list[Variant], ranks: list[int], batch: int, steps: int,
             workdir: str | None = None, calibrate_ranks: list[int] | None = None) -> dict:
    """Predict each (model, variant, P) run and compare with the real run.

    ``calibrate_ranks``: the rank counts at which the network is measured (``bench comm``)
    and whose runs, with those at P = 1, fit the compute rates; by default the smallest P > 1
    in ``ranks``. A run at any other P is a prediction out of sample: its network is the one
    fitted at ``network_source(P, calibrate_ranks)`` and its case is marked extrapolated.
    """
    cores = os.cpu_count() or 1
    above = sorted(P for P in ranks if P > 1)
    if calibrate_ranks is None:
        calibrate_ranks = above[:1]
    calibrated = sorted({P for P in calibrate_ranks if P > 1})
    missing = [P for P in calibrated if P not in ranks]
    if missing:
        raise ValueError(f"--calibrate-ranks {missing} not in --ranks {ranks}: the calibration "
                         "needs the training runs at those P too")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        data = os.path.join(tmp, "train.h5")
        generate(SynthSpec(rows=batch * steps, seed=1, cap=100_000), data)
        ds = CtrDataset(data, in_memory=True)
        levels, fits = {}, {}
        for P in calibrated:
            rep = _run(P, ["bench", "comm"])
            samples = [CommSample(r["kind"], r["P"], r["n"], r["time_s"],
                                  max_block=r.get("max_block"), max_rank=r.get("max_rank"))
                       for r in rep["samples"]]
            levels[P], fits[P] = fit_level(samples)
            log.info("P=%d: fitted latency %.2e s, bandwidth %.3g B/s (median error %.1f%%)",
                     P, levels[P].latency_s, levels[P].bandwidth_Bps,
                     100 * fits[P].median_rel_error)
        cases = []
        for m in models:
            cfgp = _config_path(m)
            cfg = load(cfgp, [f"data.train={data}"])
            info = ModelInfo.per_variant(cfg.model, ds.n_fields, ds.n_dense, "float32",
                                         variants)
            for v in variants:
                for P in ranks:
                    s = _run(P, ["train", str(cfgp), "--set", f"data.train={data}", "--set",
                                 "data.eval=", "--set", f"train.batch_size={batch}", "--set",
                                 f"train.steps={steps}", *v.overrides(), "--set",
                                 f"train.log_every={steps}"])
                    prof = profile(ds, info, P, batch, steps, [v])[0]
                    cases.append({"model": m, "variant": v.name, "P": P, "prof": prof,
                                  "measured_step_time_s": s["step_time_s"],
                                  "counted_wire_bytes_per_step": s["wire_bytes_per_step"],
                                  "planned_wire_bytes_per_step": prof.wire_bytes,
                                  "counted_wire_bytes_total": s["wire_bytes_total"],
                                  "planned_wire_bytes_total": prof.wire_total})
                    log.info("%s %s P=%d: measured %.4f s/step", m, v, P, s["step_time_s"])
        # compute: fitted on the runs at P = 1 and at the calibrated P (their measured time less
        # their predicted collectives), never on the runs it is then asked to predict
        def cluster_at(P: int, rates: ComputeRates) -> Cluster:
            src = network_source(P, calibrated)
            lvl = levels[src] if src is not None else Level(0.0, float("inf"))  # P = 1
            return Cluster("this machine", 1, P, lvl, lvl, cores, rates)

        fit_on, samples = [], []
        for c in cases:
            if c["P"] != 1 and c["P"] not in calibrated:
                continue
            cl = cluster_at(c["P"], _NO_RATES)
            comp = c["measured_step_time_s"] - comm_time(c["prof"], cl)
            if comp < 0.1 * c["measured_step_time_s"]:  # (nearly) all collectives: no compute
                log.warning("%s %s P=%d: predicted collectives take %.0f%% of the measured "
                            "step; left out of the compute fit", c["model"], c["variant"],
                            c["P"], 100 * (1 - comp / c["measured_step_time_s"]))
                continue
            fit_on.append(c)
            samples.append((c["prof"].work, comp, cl.busy_cores))
        if len(samples) < 4:
            raise ValueError(f"only {len(samples)} calibration runs carry compute time; the "
                             "compute fit needs 4 (more models or strategies, or other P)")
        rates, cfit = fit_compute(samples)
        log.info("compute: %.3g flop/s GEMM, %.3g key-columns/s, %.2e s overhead, %.2e s per "
                 "call, contention %.2f (median error %.1f%% on the P = %s runs)",
                 rates.gemm_flops, rates.sparse_keys_per_s, rates.overhead_s, rates.per_call_s,
                 rates.contention, 100 * cfit.median_rel_error,
                 ", ".join(str(P) for P in sorted({c["P"] for c in fit_on})))
        out = []
        for c in cases:
            P = c["P"]
            src = network_source(P, calibrated)
            c["network_from_P"] = src
            c["extrapolated"] = src is not None and src != P
            pr = predict(c.pop("prof"), cluster_at(P, rates), rates)
            c["predicted_step_time_s"] = pr["step_time_s"]
            c["predicted_comm_s"] = pr["comm_s"]
            c["error"] = (pr["step_time_s"] - c["measured_step_time_s"]) / \
                c["measured_step_time_s"]
            c["bytes_equal"] = c["counted_wire_bytes_total"] == c["planned_wire_bytes_total"]
            out.append(c)
    extra = [abs(c["error"]) for c in out if c["extrapolated"]]
    return {"cases": out, "median_abs_error": statistics.median(abs(c["error"]) for c in out),
            "median_abs_error_extrapolated": statistics.median(extra) if extra else None,
            "calibrated_ranks": calibrated,
            "calibration": {"compute": {"gemm_flops": rates.gemm_flops,
                                        "sparse_keys_per_s": rates.sparse_keys_per_s,
                                        "overhead_s": rates.overhead_s,
                                        "per_call_s": rates.per_call_s,
                                        "contention": rates.contention,
                                        "fitted_on_P": sorted({c["P"] for c in fit_on}),
                                        "median_rel_error": cfit.median_rel_error},
                            "network": {str(P): {"latency_s": lv.latency_s,
                                                 "bandwidth_Bps": lv.bandwidth_Bps,
                                                 "median_rel_error": fits[P].median_rel_error}
                                        for P, lv in levels.items()}},
            "batch": batch, "steps": steps, "cores": cores}

