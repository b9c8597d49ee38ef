"""The synchronous training loop: data -> step -> metrics -> outputs.

Rank 0 logs progress and writes ``metrics.jsonl``, ``summary.json`` and
``eval_predictions.npy`` (every eval row's final probability, in row order, the same file at
every P) into the output directory.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from desmpi.accounting import Accounting
from desmpi.comm import Comm
from desmpi.config import Config, ConfigError
from desmpi.rundirs import (
    claim_checkpoint_dir,
    find_checkpoint,
    keep_choice,
    lock_dirs,
    resume_point,
)
from desmpi.runreport import fmt_eta, step_events, summary_of, write_trace
from desmpi.strategies import DivergedError, NonFiniteError
from desmpi.trainer import Trainer

log = logging.getLogger("desmpi.train")
__all__ = ["Trainer", "run"]


def run(cfg: Config, comm: Comm, out: str | Path | None, trace: str | None = None,
        resume: bool = False, force: bool = False, allow_fresh: bool = False) -> dict:
    """Train as configured (see :func:`_run`), holding the locks of the directories it
    writes (:mod:`desmpi.locks`) for the whole run."""
    locks = lock_dirs(cfg, comm, out)
    try:
        return _run(cfg, comm, out, trace, resume, force, allow_fresh)
    finally:
        for lk in locks:
            lk.release()


def _run(cfg: Config, comm: Comm, out: str | Path | None, trace: str | None = None,
         resume: bool = False, force: bool = False, allow_fresh: bool = False) -> dict:
    """Train as configured; returns the summary (the same dict on every rank).

    ``trace``: write every step's compute spans and collectives (with counts and measured
    times) of every rank to this JSON file (rank 0 writes; ``desmpi simulate --replay``).
    ``resume``: continue from the newest complete checkpoint in ``checkpoint.dir`` (none is
    an error unless ``allow_fresh``). Without it a ``checkpoint.dir`` holding checkpoints is an
    error unless ``force`` (which deletes them). Checkpoints carry the run's id; pruning keeps
    the newest of this run only.
    """
    import uuid

    from desmpi.checkpoint import save

    if trace and not comm.acct.keep_log:
        raise ValueError("tracing needs a Comm created with keep_log=True")
    if resume and not cfg.checkpoint.dir:
        raise ConfigError("--resume needs checkpoint.dir")
    found = find_checkpoint(cfg, comm) if resume else None
    kept = keep_choice(cfg, found, comm)  # dist 'auto' resumed: the variant it settled on
    # the checkpoint whose variant the run keeps (no new choice: the summary's "choice" is null)
    variant_from = found[0] if kept is not cfg else None
    tr = Trainer(kept, comm)
    cfg = tr.cfg  # with dist 'auto' resolved
    tc = cfg.train
    rank0 = comm.rank == 0
    if rank0 and tr.choice is not None:
        log.info("%s", tr.choice.describe())
    run_id = None
    if resume:
        start, run_id = resume_point(tr, cfg, comm, allow_fresh=allow_fresh, found=found)
    else:
        start = 0
        if cfg.checkpoint.dir:
            claim_checkpoint_dir(cfg, comm, force)
    run_id = run_id or comm.bcast_object(uuid.uuid4().hex if rank0 else None)
    out = Path(out) if out else None
    if out is not None and rank0:
        out.mkdir(parents=True, exist_ok=True)
        if not start:
            (out / "metrics.jsonl").write_text("")
    m = tr.model
    if rank0:
        log.info("%s on %d rank(s), variant %s, global batch %d, %d steps, partial width "
                 "W=%d, substitutions %s, dtype %s", m.name, comm.size, tr.variant,
                 tc.batch_size, tr.total_steps, m.W, m.substitutions,
                 tc.dtype)
    step_times: list[float] = []
    comm_times: list[float] = []  # this rank's seconds inside collectives, per step
    codec_times: list[float] = []  # and in dist.compress's own work (packing, summing ...)
    losses: list[float] = []
    samples = 0
    interval_loss, interval_n, interval_t = 0.0, 0, 0.0
    before = comm.acct.counters("train")
    last_eval: tuple[float, float] | None = None
    last_interval = float("nan")
    traced: list[dict] = []
    skipped = 0
    ck = cfg.checkpoint

    def checkpoint_if_due(step: int) -> None:
        if ck.dir and ((ck.every and step % ck.every == 0) or step == tr.total_steps):
            save(ck.dir, step, comm, tr.table, tr.model, tr.dense_opt,
                 {"config": tr.cfg.to_dict(), "next_batch": step % tr.nb, "epoch": step // tr.nb,
                  "sparse_opt_t": step, "run_id": run_id,
                  # dist 'auto': the variant in config is final (no trial, or it is over)
                  "variant_settled": tr.trial is None or not tr.trial.active}, ck.keep,
                 tr.strategy.feedback_state())

    current = [start]
    for step in range(start + 1, tr.total_steps + 1):
        current[0] = step
        t = (step - 1) % tr.nb
        b, sizes = tr.local_batch(tr.train_ds, t)
        n_log = len(comm.acct.log)
        lc = tr.table.lifecycle
        if lc is not None:
            lc.step = step
        tr.before_step()  # dist 'auto': the trial's steps start together
        c0 = comm.acct.time_s()
        k0 = tr.strategy.bufs.codec_s  # one Buffers for every strategy of a trial
        t0 = time.perf_counter()
        try:
            loss = tr.step_strategy().train_step(b, sizes, step)
        except NonFiniteError as e:
            # a diverged update is already applied: nothing to skip back to, always fatal
            if tc.nan_policy != "skip" or isinstance(e, DivergedError):
                raise
            skipped += 1
            if rank0:
                log.warning("skipped: %s", e)
            checkpoint_if_due(step)  # a skipped step still saves when one is due
            continue
        t1 = time.perf_counter()
        dt = t1 - t0
        tr.after_step(dt)  # dist 'auto': the trial's timing, then its decision
        if trace:
            traced.append({"step": step, "step_s": dt,
                           "events": step_events(comm.acct.log[n_log:], t0, t1)})
        n = int(sizes.sum())
        if step == start + 1:
            tr.first_step_samples = n
        step_times.append(dt)
        comm_times.append(comm.acct.time_s() - c0)
        codec_times.append(tr.strategy.bufs.codec_s - k0)
        if len(step_times) == 1:  # compiled and warm: from now on a stuck collective aborts
            comm.watchdog(cfg.dist.timeout_s, lambda: f"at or after step {current[0]}")
        samples += n
        losses.append(loss / n)
        interval_loss += loss
        interval_n += n
        interval_t += dt
        fc = cfg.features
        if lc is not None and (fc.ttl_steps or fc.max_keys) and step % fc.evict_every == 0:
            lc.evict(tr.table, step)
        if cfg.dist.check_every and step % cfg.dist.check_every == 0:
            tr.strategy.check_replicas(step)
        do_eval = tr.eval_ds is not None and tc.eval_every and step % tc.eval_every == 0
        if do_eval:
            auc, ll, _ = tr.evaluate()
            last_eval = (auc, ll)
        checkpoint_if_due(step)
        if step % tc.log_every == 0 or step == tr.total_steps or do_eval:
            wire = Accounting.total(comm.acct.counters("train"), "wire_bytes") - \
                Accounting.total(before, "wire_bytes")
            rec = {"step": step, "samples": samples,
                   "train_logloss": interval_loss / interval_n,
                   "samples_per_s": interval_n / interval_t if interval_t > 0 else 0.0,
                   "wire_bytes_per_step": wire / (step - start)}
            if do_eval:
                rec.update(eval_auc=last_eval[0], eval_logloss=last_eval[1])
            if lc is not None:  # table size and evictions over all ranks
                with comm.acct.scoped("meta"):
                    tk = comm.allreduce(np.array([tr.table.n, lc.evicted], dtype=np.int64))
                rec.update(table_keys=int(tk[0]), evicted_keys=int(tk[1]))
            if rank0:
                eta = (tr.total_steps - step) * (sum(step_times) / len(step_times))
                log.info("step %d/%d | %.0f samples/s | loss %.5f | comm %.3f MB/step (rank 0) "
                         "| ETA %s%s", step, tr.total_steps, rec["samples_per_s"],
                         rec["train_logloss"], rec["wire_bytes_per_step"] / 1e6, fmt_eta(eta),
                         f" | eval AUC {last_eval[0]:.4f}" if do_eval else "")
                if out is not None:
                    with open(out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(rec) + "\n")
            last_interval = interval_loss / interval_n
            interval_loss, interval_n, interval_t = 0.0, 0, 0.0
    tr.strategy.check_replicas(tr.total_steps)
    if trace:
        write_trace(trace, traced, cfg, comm)
    summary = summary_of(tr, cfg, comm, step_times, samples, last_interval, losses, comm_times,
                         codec_times)
    summary["resumed_from_step"] = start
    summary["variant_from_checkpoint"] = variant_from
    summary["skipped_steps"] = skipped
    if tr.eval_ds is not None:
        auc, ll, preds = tr.evaluate()
        summary.update(eval_auc=auc, eval_logloss=ll, eval_rows=int(preds.shape[0]))
        if rank0 and out is not None:
            np.save(out / "eval_predictions.npy", preds)
    if rank0:
        if summary["eval_auc"] is not None:
            log.info("eval AUC %.5f, logloss %.5f over %d rows", summary["eval_auc"],
                     summary["eval_logloss"], summary["eval_rows"])
        log.info("%.0f samples/s, median step %.4f s, %.3f MB/step on the wire (mean over "
                 "ranks), %d keys, %.1f bytes/key", summary["samples_per_s"],
                 summary["step_time_s"], summary["wire_bytes_per_step"] / 1e6,
                 summary["table_keys"], summary["bytes_per_key"])
        if summary["codec_time_s_per_step"] is not None and summary["step_time_s"] > 0:
            log.info("dist.compress's own work %.2f ms per step, %.1f%% of the median step",
                     summary["codec_time_s_per_step"] * 1e3,
                     100 * summary["codec_time_s_per_step"] / summary["step_time_s"])
        if out is not None:
            (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
