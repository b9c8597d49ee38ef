"""What a run reports: progress ETA, the per-step trace for ``simulate --replay``, and the
summary (throughput, per-collective bytes and times, table, memory, the 'auto' choice)."""

from __future__ import annotations

import json
import logging
import resource
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from desmpi.accounting import Accounting
from desmpi.comm import Comm
from desmpi.config import Config

if TYPE_CHECKING:  # annotations only: trainer imports nothing from here
    from desmpi.trainer import Trainer

log = logging.getLogger("desmpi.train")


def fmt_eta(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def step_events(log_slice, t_begin: float, t_end: float) -> list[dict]:
    """A step's events for a trace: compute gaps and collectives, in order."""
    ev, t = [], t_begin
    for scope, call, dt, t0 in log_slice:
        if scope != "train":
            continue
        ev.append({"compute_s": max(t0 - t, 0.0)})
        ev.append({"kind": call.kind, "counts": list(call.counts), "itemsize": call.itemsize,
                   "root": call.root, "time_s": dt})
        t = t0 + dt
    ev.append({"compute_s": max(t_end - t, 0.0)})
    return ev


# config keys a checkpoint must agree with to be resumed (the rest may change on resume)
def write_trace(path: str, traced: list[dict], cfg: Config, comm: Comm) -> None:
    every = comm.allgather_object(traced)
    if comm.rank != 0:
        return
    steps = [{"step": s["step"], "step_s": [e[i]["step_s"] for e in every],
              "ranks": [e[i]["events"] for e in every]} for i, s in enumerate(every[0])]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"world_size": comm.size, "model": cfg.model.name,
                                      "variant": cfg.dist.variant.name,
                                      "strategy": cfg.dist.strategy,
                                      "aggregate": cfg.dist.variant.aggregate,
                                      "global_batch": cfg.train.batch_size,
                                      "config": cfg.to_dict(), "steps": steps}))
    log.info("wrote trace of %d steps to %s", len(steps), path)


def summary_of(tr: Trainer, cfg: Config, comm: Comm, step_times, samples, last_loss, losses,
             comm_times=(), codec_times=()) -> dict:
    steps = max(len(step_times), 1)  # per-step figures; 0 steps run (resumed at the end)
    lc = tr.table.lifecycle
    def warm_median(times) -> float:  # the first step compiles and fills caches
        warm = list(times[1:] if len(times) > 1 else times)
        return statistics.median(warm) if warm else 0.0

    mine = {"counters": Accounting.as_dict(comm.acct.counters("train")), "keys": tr.table.n,
            "comm_step_s": warm_median(comm_times), "codec_step_s": warm_median(codec_times),
            "evicted": lc.evicted if lc is not None else 0, "table_bytes": tr.table.nbytes,
            "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "phases": dict(tr.timer.phases)}
    every = comm.allgather_object(mine)
    P = comm.size
    kinds = sorted({k for e in every for k in e["counters"]})
    comm_rep = {}
    for k in kinds:
        tot = {f: sum(e["counters"].get(k, {}).get(f, 0) for e in every)
               for f in ("calls", "payload_bytes", "wire_bytes", "time_s")}
        comm_rep[k] = {"calls_per_step": tot["calls"] / P / steps,
                       "payload_bytes_per_step": tot["payload_bytes"] / P / steps,
                       "wire_bytes_per_step": tot["wire_bytes"] / P / steps,
                       "time_s_per_step": tot["time_s"] / P / steps,
                       # the algorithms MPI ran (rank 0's calls; every rank runs the same)
                       "algorithms": every[0]["counters"].get(k, {}).get("algorithms", {})}
    keys = sum(e["keys"] for e in every)
    # throughput leaves out the first step (JIT compilation or cache loading, table warm-up)
    warm = step_times[1:] if len(step_times) > 1 else step_times
    warm_samples = samples - (tr.first_step_samples if len(step_times) > 1 else 0)
    total_t = sum(warm)
    return {
        "model": cfg.model.name, "variant": tr.variant.name, "strategy": tr.variant.strategy,
        # dist 'auto': what was chosen, its predicted step time beside the measured one
        "choice": tr.choice.as_dict() if tr.choice is not None else None,
        "aggregate": tr.variant.aggregate, "input": tr.variant.input,
        "world_size": P, "global_batch": cfg.train.batch_size, "steps": len(step_times),
        # whose algorithm selection the wire bytes follow ("" = textbook forms)
        "mpi": comm.layout.mpi, "ranks_per_node": comm.layout.ppn,
        "total_steps": tr.total_steps,
        "samples": samples, "train_logloss": last_loss,
        "train_logloss_mean": float(np.mean(losses)) if losses else float("nan"),
        "eval_auc": None, "eval_logloss": None,
        "samples_per_s": warm_samples / total_t if total_t > 0 else 0.0,
        "step_time_s": statistics.median(step_times) if step_times else 0.0,
        # after dist 'auto''s trial steps (the variant the run settled on)
        "step_time_s_after_choice": statistics.median(step_times[tr.trial_steps:])
        if step_times[tr.trial_steps:] else None,
        # seconds a step spends inside collectives (the median warm step of each rank, mean
        # over ranks; waiting for slower ranks included): what the network model predicts
        "comm_time_s_per_step": float(np.mean([e["comm_step_s"] for e in every])),
        # the rank that reaches the collectives last waits least: its time is the closest
        # measurement of the communication itself (the others add their wait for it)
        "comm_time_s_per_step_min": float(min(e["comm_step_s"] for e in every)),
        # dist.compress's own work in a step (packing, selecting, decoding, summing; the
        # median warm step of each rank, the most of any rank); None when uncompressed
        "codec_time_s_per_step": float(max(e["codec_step_s"] for e in every))
        if cfg.dist.wire.packed else None,
        "comm": comm_rep,
        "wire_bytes_per_step": sum(v["wire_bytes_per_step"] for v in comm_rep.values()),
        "wire_bytes_total": int(sum(v.get("wire_bytes", 0) for e in every
                                    for v in e["counters"].values())),
        "payload_bytes_per_step": sum(v["payload_bytes_per_step"] for v in comm_rep.values()),
        "partial_width": tr.model.W, "substitutions": tr.model.substitutions,
        "table_keys": keys,
        "evicted_keys": sum(e["evicted"] for e in every),
        "bytes_per_key": sum(e["table_bytes"] for e in every) / keys if keys else None,
        "peak_rss_bytes": max(e["rss"] for e in every),
        "phases_s_per_step": {k: sum(e["phases"].get(k, 0.0) for e in every) / P / steps
                              for k in sorted({k for e in every for k in e["phases"]})},
        "config": cfg.to_dict(),
    }
