"""The data-parallel step template shared by des/reduce_scatter, des-a2a, a2a and ps.

Every such strategy runs the dense part on its own b samples and sums dense gradients with one
Allreduce; it differs only in how the sparse part reaches the keys' owners and comes back. The
phases, named as TorchRec names them for row-wise sharding:

1. ``_sparse_forward`` — *input dist* (keys to where their weights live: Allgatherv of keys, or
   Alltoallv to owners), *lookup* and local partials (:mod:`desmpi.reference`), *output dist*
   (partials back to the samples' ranks: Reduce_scatter or Alltoallv) -> Z (b, W);
2. the dense part on Z (forward, loss, backward) -> gZ (b, W);
3. ``_sparse_backward`` — gradients of the partials to the owners (Allgatherv or Alltoallv),
   row gradients; returns the owner-side update, applied after the checks;
4. one Allreduce of the dense gradients with the loss sum riding along; checks; updates.

Replicated DES (des/allreduce, :mod:`desmpi.strategies.des_replicated`) has no step 3 and a
replicated dense part, so it has a step of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np

from desmpi.comm import Comm
from desmpi.data.batch import Batch
from desmpi.kernels.optim import rows_finite
from desmpi.metrics import sigmoid
from desmpi.reference import bce_with_logits
from desmpi.strategies import compressed
from desmpi.strategies.counts import ModelDims, StepCounts
from desmpi.strategies.plans import plan
from desmpi.timer import Timer
from desmpi.variants import Variant
from sim.accounting import Call

log = logging.getLogger("desmpi.strategies")


def allreduce_grads_and_loss(comm, params, loss_local: float,
                             wire: compressed.Wire = compressed.FULL,
                             feedback: Callable[[str, np.ndarray], np.ndarray] | None = None
                             ) -> float:
    """Sum the dense gradients over ranks in place, with the loss sum riding along as one more
    element (one Allreduce of D + 1); returns the global loss sum. Compressed: the gradients
    through ``feedback`` (:meth:`Strategy.feedback_allreduce`: the codec with error feedback)
    and the loss sum in a float64 Allreduce of its own (16 bits would round it)."""
    if wire.dense != "none":
        feedback("dense", params.grads)
        return float(comm.allreduce(np.array([loss_local], dtype=np.float64))[0])
    buf = params.scratch("grads+loss", (params.size + 1,))
    buf[:-1] = params.grads
    buf[-1] = loss_local
    comm.allreduce(buf, out=buf)  # in place
    params.grads[:] = buf[:-1]
    return float(buf[-1])


class NonFiniteError(FloatingPointError):
    """NaN/inf in a step's loss or gradients; raised before any update is applied."""


class DivergedError(NonFiniteError):
    """An update made weights or optimizer state non-finite (already applied: not skippable)."""


def check_state(model, table, rows: np.ndarray, sparse_opt, dense_opt, t: int) -> None:
    """Raise DivergedError when the step's update left non-finite values in the rows it
    updated (weights or optimizer slots), the dense parameters or the dense optimizer's state,
    naming the step and the operators whose weights broke. Adaptive optimizers (Adagrad, Adam)
    can reach inf weights from finite gradients, which the pre-update check cannot see.

    The update kernels report whether they wrote anything non-finite (``.finite``, checked as
    they write: no extra pass); only then are the values read again, to name what broke."""
    if sparse_opt.finite and dense_opt.finite:
        return
    bad = []
    if rows.size and not rows_finite(table.weights, rows):
        w = table.weights[rows]
        fin = np.isfinite(w)
        if not fin.all():
            cols = np.flatnonzero(~fin.all(axis=0))
            lin = model.emb_col and cols[0] == 0
            ops = [op.name for op in model.ops
                   if ("L" in op.roles and lin)
                   or ((set(op.roles) - {"L"} or op.needs_E) and (cols >= model.emb_col).any())]
            bad.append(f"sparse weights of {int((~fin).any(axis=1).sum())} keys (operators "
                       f"{', '.join(ops) or 'none'})")
    if rows.size and table.slots.shape[1] and not rows_finite(table.slots, rows):
        bad.append("sparse optimizer state")
    prm = model.params
    if not np.isfinite(prm.data).all():
        names = [n for n, (o, m, _) in prm.offsets.items()
                 if not np.isfinite(prm.data[o:o + m]).all()]
        bad.append(f"dense parameters {', '.join(names)}")
    if not np.isfinite(dense_opt.state).all():
        bad.append("dense optimizer state")
    if bad:
        raise DivergedError(f"step {t}: the update made {'; '.join(bad)} non-finite in model "
                            f"{model.name} (diverged: try a smaller train.lr)")


def check_finite(model, Z: np.ndarray, loss: float, grads: np.ndarray, t: int) -> None:
    """Raise NonFiniteError naming the step and the first operator whose partial is bad."""
    if np.isfinite(loss) and np.isfinite(grads).all():
        return
    where = "the dense part"
    for op in model.ops:
        if not np.isfinite(Z[:, op.cols]).all():
            where = f"operator {op.name}"
            break
    what = "loss" if not np.isfinite(loss) else "dense gradients"
    raise NonFiniteError(f"step {t}: non-finite {what} in model {model.name}, first seen in "
                         f"{where} (try a smaller train.lr)")


class Strategy:
    """What the trainer sees of a strategy: plan, train_step, predict, check_replicas.

    ``probe``: tests set a dict here to receive this rank's aggregated Z and its gradient gZ of
    each step (the rows of the samples the rank runs the dense part for).
    """

    strategy = ""  # the Variant.strategy this class runs
    aggregate = ""  # and its aggregate ("" for strategies without the choice)

    def __init__(self, model, table, sparse_opt, dense_opt, comm: Comm, variant: Variant,
                 timer: Timer | None = None, wire: compressed.Wire = compressed.FULL
                 ) -> None:
        if (variant.strategy, variant.aggregate) != (self.strategy, self.aggregate):
            raise ValueError(f"{type(self).__name__} runs {self.strategy}"
                             f"{'/' + self.aggregate if self.aggregate else ''}, not {variant}")
        self.model, self.table, self.comm = model, table, comm
        self.sparse_opt, self.dense_opt = sparse_opt, dense_opt
        self.variant = variant
        self.timer = timer or Timer()
        self.probe: dict | None = None
        self.wire = wire  # payload encodings (desmpi.strategies.compressed)
        self.bufs = compressed.Buffers()
        self._residuals: dict[str, np.ndarray] = {}  # error feedback, per gradient vector
        self._own_clean: set[str] = set()  # residuals whose own chunk is known to hold 0
        self._thresholds: dict[str, compressed.Threshold] = {}  # τ per vector (threshold)

    def residual(self, name: str, like: np.ndarray) -> np.ndarray | None:
        """The error-feedback residual of gradient vector ``name`` (None when uncompressed)."""
        if self.wire.dense == "none":
            return None
        r = self._residuals.get(name)
        if r is None or r.shape != like.shape:
            # zeros written, not calloc's lazy zero pages: the own chunk of the residual is
            # read every step and never written (not packed), and reading never-written
            # pages measured 15 ns a float here, against 0.13 once written
            r = self._residuals[name] = np.full_like(like, 0.0)
            self._own_clean.add(name)
        return r

    def feedback_allreduce(self, name: str, x: np.ndarray) -> np.ndarray:
        """Sum gradient vector ``name`` (x, in place) over ranks through ``dist.compress``'s
        codec with its error feedback (:meth:`residual`, :meth:`threshold`). After one call
        the residual's own chunk holds 0 (it is not packed), so later calls skip reading it;
        a restore (:meth:`load_feedback_state`) may fill it, and the next call takes it."""
        compressed.allreduce(self.comm, x, self.wire.dense, self.residual(name, x),
                             self.wire.ratio, self.bufs, self.threshold(name),
                             own_clean=name in self._own_clean)
        self._own_clean.add(name)
        return x

    def threshold(self, name: str) -> compressed.Threshold | None:
        """τ state of gradient vector ``name`` under ``dist.compress = "threshold"``."""
        if self.wire.dense != "threshold":
            return None
        t = self._thresholds.get(name)
        if t is None:
            t = self._thresholds[name] = compressed.Threshold(every=self.wire.every)
        return t

    def feedback_vectors(self) -> tuple[str, ...]:
        """Names of the gradient vectors this strategy sends through a compressed Allreduce
        with error feedback (:meth:`residual`'s names)."""
        return ()

    def feedback_state(self) -> dict[str, np.ndarray]:
        """What error feedback carries from one step to the next on this rank, for a
        checkpoint: ``residual/NAME`` (gradient vector NAME's residual, its shape and dtype)
        and ``threshold/NAME`` ([τ, calls so far], float64). Empty when uncompressed."""
        out = {f"residual/{k}": r for k, r in self._residuals.items()}
        out.update({f"threshold/{k}": np.array([t.tau, t.calls], dtype=np.float64)
                    for k, t in self._thresholds.items()})
        return out

    def load_feedback_state(self, state: dict[str, np.ndarray]) -> None:
        """Take :meth:`feedback_state`'s arrays (from a checkpoint) as this rank's own. The
        dicts are updated in place: the candidates of a trial share them. Residuals are kept
        under any codec with error feedback (what they hold, gradient not yet sent, means
        the same under each); τ only under ``threshold``."""
        res = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("residual/")}
        thr = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("threshold/")}
        if res and self.wire.dense == "none":
            if self.comm.rank == 0:
                log.warning("the checkpoint carries error-feedback residuals (%s) that "
                            "dist.compress = 'none' does not send: dropped",
                            ", ".join(sorted(res)))
            res = {}
        unused = sorted(set(res) - set(self.feedback_vectors()))
        if unused and self.comm.rank == 0:  # the saved run compressed other vectors
            log.warning("the checkpoint carries error-feedback residuals (%s) of gradient "
                        "vectors that %s does not compress: dropped", ", ".join(unused),
                        self.variant)
        res = {k: v for k, v in res.items() if k not in unused}
        self._residuals.clear()
        self._residuals.update({k: np.array(v) for k, v in res.items()})
        self._own_clean.clear()  # (restored onto other chunks, they may hold something)
        self._thresholds.clear()
        if self.wire.dense == "threshold":
            for k, v in thr.items():
                t = compressed.Threshold(every=self.wire.every)
                t.tau, t.calls = float(v[0]), int(v[1])
                self._thresholds[k] = t

    def plan(self, counts: StepCounts, rank: int) -> list[Call]:
        """Collectives of one training step on ``rank``, from the batch's counts alone."""
        return plan(self.variant, counts, ModelDims.of(self.model), rank, self.comm.layout,
                    self.wire)

    @contextmanager
    def evaluating(self):
        """Evaluation's forward: its collectives in the accounting's ``eval`` scope, every float
        at full width whatever ``dist.compress`` says (the keys keep their lossless encoding).
        Compression serves the training step's traffic; the model it trains is the one served
        (:mod:`desmpi.serving`, full width), so the evaluation reports that model's quality,
        not the codec's rounding of one forward on top of it."""
        wire = self.wire
        self.wire = wire.lossless()
        try:
            with self.comm.acct.scoped("eval"):
                yield
        finally:
            self.wire = wire

    def check_replicas(self, step: int) -> None:
        """Nothing is replicated outside the dense Allreduce's result (overridden where it is)."""

    def _check_and_update(self, Z: np.ndarray, loss: float, t: int, sparse_update) -> None:
        """The end of every step: non-finite loss or gradients stop the run before anything is
        applied; then ``sparse_update(t)`` (the owners' rows) and the dense optimizer."""
        prm, tm = self.model.params, self.timer
        check_finite(self.model, Z, loss, prm.grads, t)
        self.sparse_opt.finite = True
        rows = sparse_update(t)
        tm.lap("sparse_update")
        self.dense_opt.apply(prm.data, prm.grads, t)
        tm.lap("dense_update")
        # every rank checks what it updated; one that finds a non-finite value raises, and
        # run_or_abort ends the job before anything is saved
        check_state(self.model, self.table, rows, self.sparse_opt, self.dense_opt, t)
        tm.lap("checks")


class DataParallelStrategy(Strategy):
    """The template (module docstring); subclasses implement the two sparse phases."""

    def _sparse_forward(self, b: Batch, sizes: np.ndarray, insert: bool
                        ) -> tuple[np.ndarray, object]:
        """-> (Z (b, W) aggregated partials of this rank's samples, state for the backward)."""
        raise NotImplementedError

    def _sparse_backward(self, state, gZ: np.ndarray):
        """gZ (b, W) -> the owner-side closure ``update(t)`` applying the sparse optimizer."""
        raise NotImplementedError

    def feedback_vectors(self) -> tuple[str, ...]:
        return ("dense",)  # every dense gradient, data parallel

    def _local_rows(self, b: Batch, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels (b,), dense rows (b, Dn)) of this rank's samples."""
        return b.labels, b.dense

    def train_step(self, b: Batch, sizes: np.ndarray, t: int) -> float:
        """One synchronous step on this rank's slice ``b``; returns the global loss sum."""
        model, comm, tm = self.model, self.comm, self.timer
        prm = model.params
        sizes = np.asarray(sizes, dtype=np.int64)
        B = int(sizes.sum())
        tm.start()
        prm.zero_grad()
        Z, state = self._sparse_forward(b, sizes, insert=True)
        y, x = self._local_rows(b, sizes)
        logits, cache = model.forward(Z, x)
        loss_local, p = bce_with_logits(logits, y)
        gZ = model.backward(cache, (p - y) / B)
        tm.lap("dense")
        if self.probe is not None:
            self.probe.update(Z=np.array(Z), gZ=np.array(gZ))
        update = self._sparse_backward(state, gZ)
        loss = allreduce_grads_and_loss(comm, prm, loss_local, self.wire,
                                        self.feedback_allreduce)
        tm.lap("aggregate")
        self._check_and_update(Z, loss, t, update)
        return loss

    def predict(self, b: Batch, sizes: np.ndarray) -> np.ndarray:
        """Probabilities of the whole global batch, on every rank (:meth:`evaluating`)."""
        sizes = np.asarray(sizes, dtype=np.int64)
        with self.evaluating():
            Z, _ = self._sparse_forward(b, sizes, insert=False)
            _, x = self._local_rows(b, sizes)
            logits, _ = self.model.forward(Z, x)
            allp = self.comm.allgatherv(np.ascontiguousarray(logits), sizes)
        return sigmoid(np.asarray(allp, dtype=np.float64))
