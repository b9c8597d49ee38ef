"""The synchronous training loop: data -> step -> metrics -> outputs.

Rank 0 logs progress and writes ``metrics.jsonl``, ``summary.json`` and
``eval_predictions.npy`` (every eval row's final probability, in row order, the same file at
every P) into the output directory.
"""

from __future__ import annotations

import json
import logging
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from desmpi import metrics
from desmpi.accounting import Accounting
from desmpi.comm import Comm
from desmpi.config import Config, ConfigError
from desmpi.data.h5 import CtrDataset
from desmpi.data.slicing import n_batches, rank_slice, split_counts
from desmpi.locks import DirLock, LockedError
from desmpi.models import build_model
from desmpi.optim import DenseOptimizer, SparseOptimizer, sparse_slots
from desmpi.strategies import DivergedError, NonFiniteError, make_strategy
from desmpi.table.lifecycle import Lifecycle
from desmpi.table.shard import ShardTable
from desmpi.timer import Timer
from desmpi.whatif.choose import resolve
from desmpi.workspace import Workspace

log = logging.getLogger("desmpi.train")


class Trainer:
    """Everything one rank holds for a run: data, model, shard, strategy."""

    def __init__(self, cfg: Config, comm: Comm) -> None:
        self.cfg, self.comm = cfg, comm
        tc = cfg.train
        self.dtype = np.dtype(tc.dtype)
        self.train_ds = CtrDataset(cfg.data.train, in_memory=cfg.data.loads(cfg.data.train))
        self.eval_ds = CtrDataset(cfg.data.eval, in_memory=cfg.data.loads(cfg.data.eval)) \
            if cfg.data.eval else None
        ds = self.train_ds
        for key, d in (("data.train", ds), ("data.eval", self.eval_ds)):
            if d is not None and d.n == 0:
                raise ConfigError(f"{key} = {d.path}: the data set has no rows")
        if self.eval_ds is not None and (self.eval_ds.n_fields, self.eval_ds.n_dense) != \
                (ds.n_fields, ds.n_dense):
            raise ConfigError(f"data.eval {cfg.data.eval} has {self.eval_ds.n_fields} fields / "
                              f"{self.eval_ds.n_dense} dense, data.train {ds.n_fields} / "
                              f"{ds.n_dense}")
        if tc.batch_size < comm.size:
            raise ConfigError(f"train.batch_size = {tc.batch_size} is smaller than the "
                              f"{comm.size} ranks")
        # dist 'auto': the simulator picks the variant now, before any table exists
        cfg, self.choice = resolve(cfg, comm, ds)
        self.cfg = cfg
        self.variant = v = cfg.dist.variant
        self.model = build_model(cfg.model, ds.n_fields, ds.n_dense, self.dtype, tc.seed,
                                 v.deep_input(cfg.model.deep_input))
        m = self.model
        if m.partial_grad_size and comm.size > 1 and comm.rank == 0 and v.fused_repeats_work:
            log.warning("model.deep_input = 'fused' under %s: every rank computes the first "
                        "dense layer over every row of partials it makes (all B samples or "
                        "(sample, owner) pairs), where 'pooling' (the auto choice here) splits "
                        "it over the ranks", v)
        m.params.ws = Workspace(reuse=True)  # the step's large arrays, kept across steps
        self.table = ShardTable(m.row_width, m.emb_col, sparse_slots(tc.optimizer, m.row_width),
                                self.dtype, tc.seed, cfg.model.init_std,
                                slot_init=tc.adagrad_init if tc.optimizer == "adagrad" else 0.0)
        if cfg.features.active:
            fc = cfg.features
            self.table.lifecycle = Lifecycle(fc.min_count, fc.ttl_steps, fc.max_keys)
        self.sparse_opt = SparseOptimizer(tc.optimizer, tc.lr, tc.l2, tc.ftrl_l1, tc.ftrl_l2,
                                          tc.ftrl_beta)
        self.dense_opt = DenseOptimizer(tc.dense_opt, tc.dense_lr or tc.lr, m.params.size,
                                        self.dtype, adagrad_init=tc.adagrad_init)
        self.timer = Timer()
        self.strategy = make_strategy(v, model=m, table=self.table, sparse_opt=self.sparse_opt,
                                      dense_opt=self.dense_opt, comm=comm, timer=self.timer)
        self.nb = n_batches(ds.n, tc.batch_size)
        self.total_steps = tc.steps or self.nb * tc.epochs

    def local_batch(self, ds: CtrDataset, t: int):
        B = self.cfg.train.batch_size
        sizes = split_counts(min(B, ds.n - t * B), self.comm.size)
        if self.cfg.dist.input == "replicate":  # every rank reads the whole global batch
            return ds.read(t * B, (t + 1) * B, self.dtype), sizes
        lo, hi = rank_slice(t, B, ds.n, self.comm.size, self.comm.rank)
        return ds.read(lo, hi, self.dtype), sizes

    def evaluate(self) -> tuple[float, float, np.ndarray]:
        """(AUC, logloss, predictions) over the whole eval set, on every rank."""
        ds = self.eval_ds
        preds = []
        for t in range(n_batches(ds.n, self.cfg.train.batch_size)):
            b, sizes = self.local_batch(ds, t)
            preds.append(self.strategy.predict(b, sizes))
        p = np.concatenate(preds)
        y = ds.labels()
        return metrics.auc(y, p), metrics.logloss(y, p), p


def _fmt_eta(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _step_events(log_slice, t_begin: float, t_end: float) -> list[dict]:
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
_RESUME_KEYS = (("model", None), ("data", "train"), ("train", "batch_size"),
                ("train", "optimizer"), ("train", "dense_optimizer"), ("train", "dtype"),
                ("train", "seed"))


def _check_resumable(saved: dict, cfg: Config, where: Path) -> None:
    from desmpi.config import from_dict

    saved = from_dict(saved, f"{where}/manifest.json").to_dict()  # JSON lists -> tuples
    now = cfg.to_dict()
    for sec, key in _RESUME_KEYS:
        a = saved[sec] if key is None else saved[sec][key]
        b = now[sec] if key is None else now[sec][key]
        if a != b:
            name = sec if key is None else f"{sec}.{key}"
            raise ConfigError(f"--resume: {name} is {b!r} but checkpoint {where} was trained "
                              f"with {a!r}")


def resume_point(tr: Trainer, cfg: Config, comm: Comm, check_config: bool = True,
                 allow_fresh: bool = False) -> tuple[int, str | None]:
    """Restore the newest complete checkpoint of checkpoint.dir; returns (its step, the run id
    it belongs to). Nothing usable is an error unless ``allow_fresh`` (then (0, None))."""
    from desmpi.checkpoint import newest_valid, restore

    found = newest_valid(cfg.checkpoint.dir) if comm.rank == 0 else None
    found = comm.bcast_object(None if found is None else (str(found[0]), found[1]))
    if found is None:
        if not allow_fresh:
            raise ConfigError(f"--resume: no usable checkpoint in checkpoint.dir = "
                              f"{cfg.checkpoint.dir!r}; pass --allow-fresh to start from step 0")
        log.warning("--resume: no usable checkpoint in %r; starting from step 0 "
                    "(--allow-fresh)", cfg.checkpoint.dir)
        return 0, None
    d, manifest = Path(found[0]), found[1]
    if check_config:
        _check_resumable(manifest["config"], cfg, d)
    restore(d, manifest, comm, tr.table, tr.model, tr.dense_opt)
    if comm.rank == 0:
        log.info("resumed from %s (step %d, saved at P=%d)", d, manifest["step"],
                 manifest["world_size"])
    return int(manifest["step"]), manifest.get("run_id")


def claim_checkpoint_dir(cfg: Config, comm: Comm, force: bool) -> None:
    """A new run refuses a checkpoint.dir that holds another run's checkpoints (pruning and
    --resume would mix the two runs); ``force`` removes them instead."""
    from desmpi.checkpoint import complete_steps, step_dir

    root = Path(cfg.checkpoint.dir)
    old = complete_steps(root) if comm.rank == 0 and root.exists() else []
    old = comm.bcast_object(old)
    if not old:
        return
    if not force:
        raise ConfigError(f"checkpoint.dir = {str(root)!r} holds checkpoints of another run "
                          f"(steps {old[0]}-{old[-1]}): pass --resume to continue it, --force "
                          "to delete them, or choose a new directory")
    if comm.rank == 0:
        import shutil

        for s in old:
            shutil.rmtree(step_dir(root, s), ignore_errors=True)
        log.warning("--force: deleted %d earlier checkpoint(s) in %s", len(old), root)
    comm.barrier()


def _lock_dirs(cfg: Config, comm: Comm, out) -> list[DirLock]:
    """Rank 0 takes the locks of ``--out`` and ``checkpoint.dir``; every rank raises the same
    LockedError when another run holds one."""
    held, err = [], None
    if comm.rank == 0:
        seen = set()
        try:
            for d, what in ((out, "--out"), (cfg.checkpoint.dir, "checkpoint.dir")):
                if d and Path(d).resolve() not in seen:
                    seen.add(Path(d).resolve())
                    held.append(DirLock(d, what).acquire())
        except LockedError as e:
            err = str(e)
            for lk in held:
                lk.release()
            held = []
    err = comm.bcast_object(err)
    if err:
        raise LockedError(err)
    return held


def run(cfg: Config, comm: Comm, out: str | Path | None, trace: str | None = None,
        resume: bool = False, force: bool = False, allow_fresh: bool = False) -> dict:
    """Train as configured (see :func:`_run`), holding the locks of the directories it
    writes (:mod:`desmpi.locks`) for the whole run."""
    locks = _lock_dirs(cfg, comm, out)
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
    tr = Trainer(cfg, comm)
    cfg = tr.cfg  # with dist 'auto' resolved
    tc = cfg.train
    rank0 = comm.rank == 0
    if rank0 and tr.choice is not None:
        log.info("%s", tr.choice.describe())
    run_id = None
    if resume:
        start, run_id = resume_point(tr, cfg, comm, allow_fresh=allow_fresh)
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
                 {"config": cfg.to_dict(), "next_batch": step % tr.nb, "epoch": step // tr.nb,
                  "sparse_opt_t": step, "run_id": run_id}, ck.keep)

    current = [start]
    for step in range(start + 1, tr.total_steps + 1):
        current[0] = step
        t = (step - 1) % tr.nb
        b, sizes = tr.local_batch(tr.train_ds, t)
        n_log = len(comm.acct.log)
        lc = tr.table.lifecycle
        if lc is not None:
            lc.step = step
        c0 = comm.acct.time_s()
        t0 = time.perf_counter()
        try:
            loss = tr.strategy.train_step(b, sizes, step)
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
        if trace:
            traced.append({"step": step, "step_s": dt,
                           "events": _step_events(comm.acct.log[n_log:], t0, t1)})
        n = int(sizes.sum())
        if step == start + 1:
            tr.first_step_samples = n
        step_times.append(dt)
        comm_times.append(comm.acct.time_s() - c0)
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
                         rec["train_logloss"], rec["wire_bytes_per_step"] / 1e6, _fmt_eta(eta),
                         f" | eval AUC {last_eval[0]:.4f}" if do_eval else "")
                if out is not None:
                    with open(out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(rec) + "\n")
            last_interval = interval_loss / interval_n
            interval_loss, interval_n, interval_t = 0.0, 0, 0.0
    tr.strategy.check_replicas(tr.total_steps)
    if trace:
        _write_trace(trace, traced, cfg, comm)
    summary = _summary(tr, cfg, comm, step_times, samples, last_interval, losses, comm_times)
    summary["resumed_from_step"] = start
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
        if out is not None:
            (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _write_trace(path: str, traced: list[dict], cfg: Config, comm: Comm) -> None:
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


def _summary(tr: Trainer, cfg: Config, comm: Comm, step_times, samples, last_loss, losses,
             comm_times=()) -> dict:
    steps = max(len(step_times), 1)  # per-step figures; 0 steps run (resumed at the end)
    lc = tr.table.lifecycle
    warm_comm = list(comm_times[1:] if len(comm_times) > 1 else comm_times)
    mine = {"counters": Accounting.as_dict(comm.acct.counters("train")), "keys": tr.table.n,
            "comm_step_s": statistics.median(warm_comm) if warm_comm else 0.0,
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
                       "time_s_per_step": tot["time_s"] / P / steps}
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
        "total_steps": tr.total_steps,
        "samples": samples, "train_logloss": last_loss,
        "train_logloss_mean": float(np.mean(losses)) if losses else float("nan"),
        "eval_auc": None, "eval_logloss": None,
        "samples_per_s": warm_samples / total_t if total_t > 0 else 0.0,
        "step_time_s": statistics.median(step_times) if step_times else 0.0,
        # seconds a step spends inside collectives (the median warm step of each rank, mean
        # over ranks; waiting for slower ranks included): what the network model predicts
        "comm_time_s_per_step": float(np.mean([e["comm_step_s"] for e in every])),
        # the rank that reaches the collectives last waits least: its time is the closest
        # measurement of the communication itself (the others add their wait for it)
        "comm_time_s_per_step_min": float(min(e["comm_step_s"] for e in every)),
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
