"""What one rank holds for a run: data sets, model, shard of the table, optimizers, strategy
(the 'auto' variant resolved here, before any table exists)."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from desmpi import metrics
from desmpi.comm import Comm
from desmpi.config import Config, ConfigError
from desmpi.data.h5 import CtrDataset
from desmpi.data.slicing import n_batches, rank_slice, split_counts
from desmpi.models import build_model
from desmpi.optim import DenseOptimizer, SparseOptimizer, sparse_slots
from desmpi.strategies import make_strategy
from desmpi.table.lifecycle import Lifecycle
from desmpi.table.shard import ShardTable
from desmpi.timer import Timer
from desmpi.whatif.choose import resolve
from desmpi.whatif.trial import MAX_ROUNDS, Trial, trial_candidates
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
        self.strategy = self._strategy(v)
        self.nb = n_batches(ds.n, tc.batch_size)
        self.total_steps = tc.steps or self.nb * tc.epochs
        self.trial = self._trial()

    def _strategy(self, v):
        return make_strategy(v, model=self.model, table=self.table, sparse_opt=self.sparse_opt,
                             dense_opt=self.dense_opt, comm=self.comm, timer=self.timer,
                             wire=self.cfg.dist.wire)

    def _trial(self) -> Trial | None:
        """The measured second stage of 'auto' when close candidates share this model."""
        dc, ch = self.cfg.dist, self.choice
        if ch is None or not ch.ranking or dc.auto_trial_steps == 0:
            return None
        cands = trial_candidates(ch.ranking, self.variant, self._same_model, dc.auto_band,
                                 dc.auto_trial_max)
        if len(cands) < 2 or 2 * len(cands) * (1 + dc.auto_trial_steps) > self.total_steps:
            return None  # nothing to tell apart, or a run too short to spend steps on it
        strategies = {c: self.strategy if c == self.variant else self._strategy(c)
                      for c in cands}
        for s in strategies.values():  # one error-feedback state and scratch for all
            s._residuals, s.bufs = self.strategy._residuals, self.strategy.bufs
            s._thresholds, s._own_clean = self.strategy._thresholds, self.strategy._own_clean
        return Trial(self.comm, strategies, dc.auto_trial_steps, dc.auto_trial_s,
                     MAX_ROUNDS, max_steps=self.total_steps // 2)  # at most half the run

    def _same_model(self, v) -> bool:
        """Does variant v build this run's model (the same first-layer substitution)?"""
        cfg, m = self.cfg, self.model
        o = build_model(cfg.model, self.train_ds.n_fields, self.train_ds.n_dense, self.dtype,
                        cfg.train.seed, v.deep_input(cfg.model.deep_input))
        return (o.W, o.params.size, o.substitutions) == (m.W, m.params.size, m.substitutions)

    @property
    def trial_steps(self) -> int:
        return len(self.trial.schedule) if self.trial is not None else 0

    def before_step(self) -> None:
        """Call before timing a step: during the trial, a barrier (:meth:`Trial.sync`)."""
        if self.trial is not None and self.trial.active:
            self.trial.sync()

    def step_strategy(self):
        """The strategy that runs the next step (a trial candidate during the trial)."""
        if self.trial is not None and self.trial.active:
            return self.trial.next()[1]
        return self.strategy

    def after_step(self, seconds: float) -> None:
        """Time of the step just run; at the trial's end every rank switches to the winner."""
        if self.trial is None or not self.trial.active:
            return
        w = self.trial.record(seconds)
        if w is None:
            return
        self.strategy, self.variant = self.trial.strategies[w], w
        self.cfg = replace(self.cfg, dist=self.cfg.dist.resolved(w))
        self.choice = replace(self.choice, trial={
            "measured_step_time_s": self.trial.measured, "steps": len(self.trial.schedule),
            "chosen": w.name})
        if self.comm.rank == 0:
            log.info("%s", self.trial.describe())

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
