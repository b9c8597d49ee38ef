"""Fit α, β of a network level and compute rates from measurements (least squares).

Each model time is linear in its unknowns — cost = α·A + β·B for a collective with known
algorithm, P and sizes; compute = overhead + flops/g + keys/s + calls·c — so the fit is a
linear least squares with non-negativity enforced by refitting without negative unknowns (the
node contention factor on compute, the one non-linear unknown, by a 1-D search around it). The
error reported is the relative RMS and the median relative error over the samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from sim.cluster import ComputeRates, Level
from sim.collectives import cost
from sim.compute import Work
from sim.selection import LIBRARIES, select


@dataclass(frozen=True)
class CommSample:
    """One measured collective: kind, P, bytes n (as in :func:`sim.collectives.cost`)."""

    kind: str
    P: int
    n: float
    time_s: float
    algorithm: str = "mpich"
    max_block: float | None = None
    max_rank: float | None = None


@dataclass(frozen=True)
class Fit:
    values: tuple[float, ...]
    rel_rms: float
    median_rel_error: float


def _nnls(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Least squares with x >= 0 (active-set on few unknowns), rows weighted by w."""
    Xw, yw = X * w[:, None], y * w
    free = list(range(X.shape[1]))
    while True:
        x = np.zeros(X.shape[1])
        if free:
            x[free] = np.linalg.lstsq(Xw[:, free], yw, rcond=None)[0]
        neg = [i for i in free if x[i] < 0]
        if not neg:
            return x
        free.remove(min(neg, key=lambda i: x[i]))


def _errors(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    rel = (pred - y) / y
    return float(np.sqrt(np.mean(rel ** 2))), float(np.median(np.abs(rel)))


def fit_level(samples: list[CommSample]) -> tuple[Level, Fit]:
    """α and bandwidth of one level from measured collectives (relative least squares)."""
    if len(samples) < 2:
        raise ValueError("need at least two measurements to fit latency and bandwidth")
    rows, y = [], []
    for s in samples:
        # measured on one node (desmpi bench comm): the library's single-node choice
        alg = select(s.algorithm, s.kind, s.P, s.n, mb=s.max_block, nodes=1, ppn=s.P) \
            if s.algorithm in LIBRARIES else s.algorithm
        a = cost(s.kind, alg, s.P, s.n, 1.0, 0.0, s.max_block, s.max_rank)
        b = cost(s.kind, alg, s.P, s.n, 0.0, 1.0, s.max_block, s.max_rank)
        rows.append((a, b))
        y.append(s.time_s)
    X, y = np.array(rows), np.array(y)
    x = _nnls(X, y, 1.0 / y)  # relative errors: small and large messages weigh alike
    alpha, beta = x
    lvl = Level(alpha, 1.0 / beta if beta > 0 else float("inf"))
    return lvl, Fit((alpha, beta), *_errors(X @ x, y))


# the per-key work of a step beside its key-columns, and the rate each is charged at
KEY_TERMS = (("key_ops", "keys_per_s"), ("route_keys", "route_keys_per_s"),
             ("bucket_keys", "bucket_keys_per_s"), ("sort_keys", "sort_keys_per_s"))


# the codec's work (compressed communication) and the rate each is charged at
CODEC_TERMS = (("codec_elems", "codec_elems_per_s"), ("select_elems", "select_elems_per_s"),
               ("codec_calls", "codec_call_s"))


def fit_compute(samples: list[tuple[Work, float]] | list[tuple[Work, float, int]],
                max_contention: float = 1.0, costs: dict[str, float] | None = None,
                per_call_s: float | None = None, codec: ComputeRates | None = None
                ) -> tuple[ComputeRates, Fit]:
    """Overhead, GEMM flop/s, sparse key-columns/s, per-call cost, memory rate, the per-key
    rates (:data:`KEY_TERMS`: key operations, routed, bucketed and sorted keys per second) and
    node contention from (work, seconds[, busy cores of the node]) samples; the codec's
    (:data:`CODEC_TERMS`) too unless ``codec`` gives them.

    The linear unknowns are fitted together; the contention κ (compute × (1 + κ·log2 busy),
    see :func:`sim.compute.slowdown`) is found by a search over [0, max_contention] in steps
    of 0.01, each step a linear fit, keeping the smallest relative RMS. Samples that all ran
    alone (busy = 1) leave κ at 0. ``Fit.values`` = (overhead, 1/GEMM rate, 1/sparse rate,
    per-call cost, 1/memory rate, 1/key rate, 1/route rate, 1/bucket rate, 1/sort rate,
    1/codec rate, 1/selection rate, codec call cost, κ).

    ``costs``: {per-key term of :data:`KEY_TERMS` (``key_ops``, ``route_keys``, ...): the cost
    of one in key-columns}, as a micro-benchmark measures them (``desmpi bench compute``:
    sparse_keys_per_s over the term's rate). Given, the fit scales that work with the
    key-columns as one instead of fitting its rate apart: samples
    whose models share a row width cannot tell them apart, and a model of another width (LR's
    one column against FM's seventeen) is then predicted from the fit without it.

    ``per_call_s``: the software cost of a collective call, measured apart (e.g. where no
    network is crossed); the samples' times include it, and it is not fitted.

    ``codec``: rates whose codec terms (``codec_elems_per_s``, ``select_elems_per_s``,
    ``codec_call_s``) were measured apart (``desmpi bench compute``: the codec's own kernels);
    the samples' times include that work, and it is not fitted.
    """
    work = [s[0] for s in samples]
    y = np.array([s[1] for s in samples])
    busy = np.array([s[2] if len(s) > 2 else 1 for s in samples], dtype=float)
    X = np.array([(1.0, w.gemm_flops, w.sparse_keys, w.calls, w.mem_bytes,
                   *(getattr(w, t) for t, _ in KEY_TERMS),
                   *(getattr(w, t) for t, _ in CODEC_TERMS)) for w in work])
    nk = 5 + len(KEY_TERMS)  # the codec's columns follow
    costs = costs or {}
    unknown = set(costs) - {t for t, _ in KEY_TERMS}
    if unknown:
        raise ValueError(f"no per-key term {sorted(unknown)}; known: "
                         f"{', '.join(t for t, _ in KEY_TERMS)}")
    cost = [costs.get(t) for t, _ in KEY_TERMS]
    for col, c in enumerate(cost, start=5):
        if c is not None:
            if not c > 0:
                raise ValueError(f"a key cost must be > 0, not {c}")
            X[:, 2] += c * X[:, col]
            X[:, col] = 0.0
    known = np.zeros(len(y))
    if codec is not None:
        inv = [1.0 / codec.codec_elems_per_s, 1.0 / codec.select_elems_per_s,
               codec.codec_call_s]
        if not all(v >= 0 for v in inv):
            raise ValueError("the codec's rates must be > 0 and its call cost >= 0")
        known = known + X[:, nk:] @ np.array(inv)
        X[:, nk:] = 0.0
    if per_call_s is not None:
        if not per_call_s >= 0:
            raise ValueError(f"per_call_s must be >= 0, not {per_call_s}")
        known, X[:, 3] = known + X[:, 3] * per_call_s, 0.0
    grid = np.arange(0.0, max_contention + 1e-9, 0.01) if (busy > 1).any() else np.zeros(1)
    best = None
    for k in grid:
        f = 1.0 + k * np.log2(busy)
        x = _nnls(X, y / f - known, f / y)  # relative errors of the slowed time
        err = _errors((X @ x + known) * f, y)
        if best is None or err[0] < best[0][0] - 1e-12:
            best = (err, x, float(k))
    (rms, med), x, k = best
    if per_call_s is not None:
        x[3] = per_call_s
    if codec is not None:
        x[nk:] = inv
    o, ig, ik, ic, im = x[:5]
    keys = [ik * c if c is not None else v for c, v in zip(cost, x[5:nk])]

    def rate(v: float) -> float:
        return 1 / v if v > 0 else float("inf")

    rates = ComputeRates(gemm_flops=rate(ig), sparse_keys_per_s=rate(ik), overhead_s=o,
                         per_call_s=ic, contention=k, mem_Bps=rate(im),
                         **{r: rate(v) for (_, r), v in zip(KEY_TERMS, keys)},
                         codec_elems_per_s=rate(x[nk]), select_elems_per_s=rate(x[nk + 1]),
                         codec_call_s=float(x[nk + 2]))
    if codec is not None:  # as given
        rates = replace(rates, **{r: getattr(codec, r) for _, r in CODEC_TERMS})
    return rates, Fit((*x, k), rms, med)
