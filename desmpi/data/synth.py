"""Seeded synthetic data with the Criteo Kaggle schema and a hidden model of known AUC.

* 26 categorical fields with the Kaggle per-field cardinalities (optionally capped), ids drawn
  from a truncated power law (Zipf-like, exponent ``zipf``), optional multi-hot fields;
* 13 dense count features (log-normal counts, 20% missing), stored log(1+x) as converted data;
* labels ~ Bernoulli(sigmoid(logit)) of a hidden model: bias + dense weights + an FM over the
  keys whose weights are counter-based functions of (model_seed, key). Its probability is stored
  per row (``oracle_prob``) so the oracle AUC of any row range is known.

Rows are generated in blocks of BLOCK rows seeded by (seed, block): the first N rows are the
same whatever N, and train/eval sets of the same distribution differ only in ``seed``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from desmpi.data.batch import Batch
from desmpi.data.h5 import H5Writer
from desmpi.data.schema import CRITEO_CAT, CRITEO_DENSE
from desmpi.kernels.hashing import FIELD_SHIFT
from desmpi.kernels.synth import hidden_logit
from desmpi.metrics import auc, sigmoid

log = logging.getLogger(__name__)

# Distinct values per categorical field C1..C26 of the Criteo Kaggle (Display Advertising
# Challenge) training set, as counted by facebookresearch/dlrm's Kaggle preprocessing.
KAGGLE_CARDINALITIES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683,
                        8351593, 3194, 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15,
                        286181, 105, 142572)
BLOCK = 1 << 16


@dataclass(frozen=True)
class SynthSpec:
    rows: int
    seed: int = 0
    model_seed: int = 1234
    cap: int | None = None
    zipf: float = 1.1
    multi_hot: dict[int, int] = field(default_factory=dict)  # field index -> max bag length
    weighted: bool = False  # non-unit values in multi-hot fields
    bias: float = -1.3
    sigma_w: float = 0.25
    sigma_v: float = 0.2
    latent: int = 4
    dense_scale: float = 0.15
    signal_ids: int = 100  # ids >= this (the rare tail) carry no signal in the hidden model

    def __post_init__(self) -> None:
        if self.rows <= 0:
            raise ValueError(f"rows must be positive, got {self.rows}")
        if self.cap is not None and self.cap < 1:
            raise ValueError(f"cap must be >= 1, got {self.cap}")
        if self.zipf <= 0:
            raise ValueError(f"zipf exponent must be > 0, got {self.zipf}")
        for f, L in self.multi_hot.items():
            if not 0 <= f < len(KAGGLE_CARDINALITIES) or L < 1:
                raise ValueError(f"multi-hot field {f + 1} with max length {L} is invalid")

    def cardinalities(self) -> np.ndarray:
        c = np.array(KAGGLE_CARDINALITIES, dtype=np.int64)
        return c if self.cap is None else np.minimum(c, self.cap)


def parse_multi_hot(spec: str | None) -> dict[int, int]:
    """``"3:5,10:2"`` (1-based field C3 up to 5 keys, C10 up to 2) -> {2: 5, 9: 2}."""
    if not spec:
        return {}
    out = {}
    for part in spec.split(","):
        try:
            f, L = part.split(":")
            out[int(f.lstrip("Cc")) - 1] = int(L)
        except ValueError:
            raise ValueError(f"--multi-hot item {part!r} is not FIELD:MAXLEN") from None
    return out


def _power_law(rng: np.random.Generator, n: int, card: int, a: float) -> np.ndarray:
    """n ids in [0, card) with P(i) ∝ (i+1)^-a (continuous inverse-CDF approximation)."""
    u = rng.random(n)
    if abs(a - 1.0) < 1e-9:
        x = np.power(card + 1.0, u)
    else:
        x = np.power(1.0 + u * (np.power(card + 1.0, 1.0 - a) - 1.0), 1.0 / (1.0 - a))
    return np.minimum(np.floor(x).astype(np.int64) - 1, card - 1)


def _dense_weights(spec: SynthSpec) -> np.ndarray:
    return np.random.default_rng([spec.model_seed, 7]).normal(0, spec.dense_scale, 13)


def generate_block(spec: SynthSpec, block: int) -> tuple[Batch, np.ndarray]:
    """Rows [block·BLOCK, ...) (at most BLOCK, fewer at the end) and their true probability.

    A full block is always drawn and then cut, so a row never depends on ``spec.rows``.
    """
    n_out = min(BLOCK, spec.rows - block * BLOCK)
    n = BLOCK
    rng = np.random.default_rng([spec.seed, block])
    F = len(KAGGLE_CARDINALITIES)
    cards = spec.cardinalities()
    counts = np.floor(rng.lognormal(1.0, 1.5, size=(n, 13)))
    counts[rng.random((n, 13)) < 0.2] = 0.0
    dense = np.log1p(counts)
    lens = np.ones((n, F), dtype=np.int64)
    for f, L in spec.multi_hot.items():
        lens[:, f] = rng.integers(1, L + 1, size=n)
    offsets = np.zeros(n * F + 1, dtype=np.int64)
    np.cumsum(lens.reshape(-1), out=offsets[1:])
    fid = np.repeat(np.tile(np.arange(F), n), lens.reshape(-1))
    keys = np.empty(offsets[-1], dtype=np.int64)
    for f in range(F):
        m = fid == f
        keys[m] = ((f + 1) << FIELD_SHIFT) | _power_law(rng, int(m.sum()), int(cards[f]),
                                                         spec.zipf)
    values = np.ones(keys.shape[0], dtype=np.float64)
    if spec.weighted and spec.multi_hot:
        mh = np.isin(fid, list(spec.multi_hot))
        values[mh] = rng.uniform(0.5, 1.5, size=int(mh.sum()))
    z = spec.bias + dense @ _dense_weights(spec) + hidden_logit(
        keys, offsets, values, n, F, spec.model_seed, spec.sigma_w, spec.sigma_v, spec.latent,
        spec.signal_ids)
    prob = sigmoid(z).astype(np.float32)  # as stored: the oracle AUC is that of the file
    labels = (rng.random(n) < prob).astype(np.float32)
    onehot = not spec.multi_hot
    nnz = int(offsets[n_out * F])
    b = Batch(labels[:n_out], dense[:n_out].astype(np.float32), keys[:nnz], F,
              None if onehot else offsets[:n_out * F + 1],
              values[:nnz].astype(np.float32) if spec.weighted and spec.multi_hot else None)
    return b, prob[:n_out]


def generate(spec: SynthSpec, out: str | Path) -> dict:
    """Write ``spec.rows`` rows to ``out``; returns a report with the oracle AUC."""
    t0 = time.perf_counter()
    onehot = not spec.multi_hot
    with_values = spec.weighted and bool(spec.multi_hot)
    attrs = dict(source="synthetic", schema="criteo-synthetic", fields=list(CRITEO_CAT),
                 dense_names=list(CRITEO_DENSE), dense_transform="log1p",
                 generator={k: (v if k != "multi_hot" else {str(a + 1): b for a, b in v.items()})
                            for k, v in asdict(spec).items()})
    w = H5Writer(out, len(KAGGLE_CARDINALITIES), 13, onehot=onehot, with_values=with_values,
                 with_oracle=True, attrs=attrs)
    labels, probs = [], []
    try:
        for blk in range(-(-spec.rows // BLOCK)):
            b, p = generate_block(spec, blk)
            w.append(b, oracle_prob=p)
            labels.append(b.labels)
            probs.append(p)
        y = np.concatenate(labels)
        p = np.concatenate(probs)
        report = {"rows": int(y.shape[0]), "positives": int(y.sum()),
                  "positive_rate": float(y.mean()), "oracle_auc": auc(y, p),
                  "seconds": time.perf_counter() - t0}
        w.close({"oracle_auc": report["oracle_auc"], "positives": report["positives"]})
    except BaseException:
        w.abandon()
        raise
    return report
