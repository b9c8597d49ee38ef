"""Typed, frozen run configuration loaded from TOML; unknown keys and bad values are errors.

``--set section.key=value`` overrides take TOML literals (``train.lr=0.05``,
``model.hidden=[400,400]``) and fall back to a bare string (``model.name=dcn``).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from desmpi.errors import UserError
from desmpi.tomlcompat import tomllib
from desmpi.variants import AGGREGATES, INPUTS, STRATEGIES, Variant

MODELS = ("lr", "fm", "wdl", "deepfm", "dcn", "dlrm")
SPARSE_OPTIMIZERS = ("sgd", "adagrad", "ftrl", "adam")
DENSE_OPTIMIZERS = ("sgd", "adagrad", "adam")


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the key."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "deepfm"
    embed_dim: int = 16
    hidden: tuple[int, ...] = (400, 400, 400)
    bottom: tuple[int, ...] = (512, 256)  # DLRM bottom MLP (its last layer is embed_dim)
    cross_layers: int = 3  # DCN
    deep_input: str = "auto"  # auto | pooling | fused: substitution of the first dense layer
    init_std: float = 0.01  # embedding init: mean 0, std init_std (approx. normal) of (seed, key)

    def check(self) -> None:
        _choice("model.name", self.name, MODELS)
        _choice("model.deep_input", self.deep_input, ("auto", "pooling", "fused"))
        _positive("model.embed_dim", self.embed_dim)
        for h in (*self.hidden, *self.bottom):
            _positive("model.hidden/bottom width", h)
        if self.name in ("wdl", "deepfm", "dcn", "dlrm") and not self.hidden:
            raise ConfigError(f"model.hidden: {self.name} needs at least one hidden layer")
        if self.cross_layers < 0:
            raise ConfigError("model.cross_layers must be >= 0")
        if self.init_std < 0:
            raise ConfigError("model.init_std must be >= 0")


@dataclass(frozen=True)
class DataConfig:
    train: str = ""
    eval: str = ""
    # "auto": stream rows from disk (peak memory bounded by the batch, not the data set),
    # except data sets under in_memory_max_bytes, loaded once; true / false force it
    in_memory: str = "auto"
    in_memory_max_bytes: int = 256 << 20

    def check(self) -> None:
        if not self.train:
            raise ConfigError("data.train: path of an HDF5 data set is required")
        _choice("data.in_memory", self.in_memory, ("auto", "true", "false"))
        if self.in_memory_max_bytes < 0:
            raise ConfigError("data.in_memory_max_bytes must be >= 0")

    def loads(self, path: str) -> bool:
        """Whether the data set at ``path`` is loaded into memory."""
        if self.in_memory != "auto":
            return self.in_memory == "true"
        import os

        return os.path.getsize(path) <= self.in_memory_max_bytes if os.path.exists(path) \
            else False


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 4096  # global batch B, the same at every P
    steps: int = 0  # 0: run `epochs` epochs
    epochs: int = 1
    optimizer: str = "adagrad"  # sparse optimizer
    dense_optimizer: str = "auto"  # auto: the same as optimizer (adagrad for ftrl)
    lr: float = 0.05
    dense_lr: float = 0.0  # 0: the same as lr
    l2: float = 0.0  # L2 on touched sparse rows (folded into their gradient)
    adagrad_init: float = 0.0  # initial Adagrad accumulator (PyTorch 0, TensorFlow 0.1)
    ftrl_l1: float = 0.0
    ftrl_l2: float = 0.0
    ftrl_beta: float = 1.0
    seed: int = 0
    dtype: str = "float32"
    eval_every: int = 0  # steps; 0: only at the end
    log_every: int = 50
    nan_policy: str = "stop"  # non-finite loss/gradients: stop, or skip the step and count it

    def check(self) -> None:
        _positive("train.batch_size", self.batch_size)
        if self.steps < 0 or self.epochs < 1:
            raise ConfigError("train.steps must be >= 0 and train.epochs >= 1")
        _choice("train.optimizer", self.optimizer, SPARSE_OPTIMIZERS)
        _choice("train.dense_optimizer", self.dense_optimizer, ("auto", *DENSE_OPTIMIZERS))
        _choice("train.dtype", self.dtype, ("float32", "float64"))
        _choice("train.nan_policy", self.nan_policy, ("stop", "skip"))
        if self.lr <= 0 or self.dense_lr < 0:
            raise ConfigError("train.lr must be > 0 and train.dense_lr >= 0")
        if self.eval_every < 0 or self.log_every < 1:
            raise ConfigError("train.eval_every must be >= 0 and train.log_every >= 1")

    @property
    def dense_opt(self) -> str:
        if self.dense_optimizer != "auto":
            return self.dense_optimizer
        return self.optimizer if self.optimizer in DENSE_OPTIMIZERS else "adagrad"


@dataclass(frozen=True)
class DistConfig:
    """How a run communicates. ``auto`` (strategy, aggregate, input) lets the simulator choose
    at start-up among the variants the explicit keys allow (:mod:`desmpi.whatif.choose`), on
    ``cluster``: ``auto`` (measured over the run's own ranks, cached per host set), a preset
    or a cluster TOML."""

    strategy: str = "auto"
    aggregate: str = "auto"
    input: str = "gather"  # gather (Allgatherv the local batches) | replicate (read) | auto
    check_every: int = 100  # steps between checksums of replicated dense parameters
    cluster: str = "auto"
    # auto, second stage (desmpi.whatif.trial): candidates predicted within auto_band of the
    # best (at most auto_trial_max, same model structure and input) take turns on the first
    # steps, after one warm step each at least auto_trial_steps timed rounds, more (up to 16,
    # then blocks of several steps) where they fit in auto_trial_s seconds; 0 steps:
    # prediction only. The trial's steps train the model: its cost is only the slower
    # candidates' extra time. 3 s: about 10 rounds of three 100 ms candidates; 1 s gave 3, and
    # DeepFM at P = 4, batch 4096 then ran a variant 6-9% slower in two of three runs, none
    # at 3 s (docs/auto_trial_1s.md, docs/auto.md)
    auto_trial_steps: int = 3
    auto_trial_s: float = 3.0
    auto_band: float = 0.5
    auto_trial_max: int = 3
    # a collective that takes longer aborts the job naming the step (a rank stuck, stopped
    # or gone); armed after the first step (JIT compilation); 0: never
    timeout_s: float = 600.0
    # payload compression (desmpi.strategies.compressed): none | bf16 | fp16 (16-bit DES
    # partials, their gradients, the all-to-all strategies' rows, pooled parts and partials
    # and their gradients, and the dense gradients; error feedback on the dense
    # gradients; fp16 chunks scaled by a power of two each) | int8 (as bf16, 8-bit values
    # with a bf16 scale per 64) | topk (the dense gradients' largest compress_ratio of each
    # chunk as (index, bf16) triples with error feedback; the partials as bf16) | threshold
    # (as topk, the slots filled by a hard threshold re-estimated every compress_every steps
    # from a sample: DCT)
    compress: str = "none"
    compress_ratio: float = 0.1
    compress_every: int = 16
    # the DES partials' and their gradients' own codec (and ps's rows, a2a's pooled parts,
    # des-a2a's partials and their gradients): auto (compress's rule above) | none | bf16 |
    # fp16 | int8 (e.g. compress = "topk" with compress_partials = "int8")
    compress_partials: str = "auto"
    # the backward direction's own codec (the partials' gradients, ps's row gradients, a2a's
    # and des-a2a's gradients): auto (compress_partials's) | none | bf16 | fp16 | int8
    compress_partial_grads: str = "auto"
    # the DES input Allgatherv's keys: int64 | narrow (32-bit words, field implied by
    # position, lossless: desmpi.data.keycodec; multi-hot bag lengths as int32)
    keys: str = "int64"

    def check(self) -> None:
        _choice("dist.strategy", self.strategy, ("auto", *STRATEGIES))
        _choice("dist.compress", self.compress,
                ("none", "bf16", "fp16", "int8", "topk", "threshold"))
        _choice("dist.compress_partials", self.compress_partials,
                ("auto", "none", "bf16", "fp16", "int8"))
        _choice("dist.compress_partial_grads", self.compress_partial_grads,
                ("auto", "none", "bf16", "fp16", "int8"))
        if not 0.0 < self.compress_ratio <= 1.0:
            raise ConfigError(f"dist.compress_ratio = {self.compress_ratio}: must be in (0, 1]")
        if self.compress_every < 1:
            raise ConfigError(f"dist.compress_every = {self.compress_every}: must be >= 1")
        _choice("dist.keys", self.keys, ("int64", "narrow"))
        _choice("dist.aggregate", self.aggregate, ("auto", *AGGREGATES))
        _choice("dist.input", self.input, ("auto", *INPUTS))
        if not self.candidates():
            raise ConfigError(f"dist: no variant has strategy = {self.strategy!r}, aggregate = "
                              f"{self.aggregate!r}, input = {self.input!r}")
        if not self.is_auto:
            try:
                _ = self.variant
            except ValueError as e:
                raise ConfigError(f"dist: {e}") from None
        if self.check_every < 0:
            raise ConfigError("dist.check_every must be >= 0")
        if not self.cluster:
            raise ConfigError("dist.cluster: 'auto', a preset or a cluster TOML")
        if self.auto_trial_steps < 0 or self.auto_trial_max < 1 or not self.auto_band >= 0 \
                or not self.auto_trial_s >= 0:
            raise ConfigError("dist.auto_trial_steps must be >= 0, dist.auto_trial_max >= 1, "
                              "dist.auto_band >= 0 and dist.auto_trial_s >= 0")
        if self.timeout_s < 0:
            raise ConfigError("dist.timeout_s must be >= 0 (0: no timeout)")

    @property
    def is_auto(self) -> bool:
        return "auto" in (self.strategy, self.aggregate, self.input)

    def candidates(self) -> list[Variant]:
        """The variants these keys allow (one when nothing is 'auto'); an explicit aggregate
        constrains des only (the other strategies have no such choice), an explicit input
        every strategy."""
        from desmpi.variants import ALL

        return [v for v in ALL
                if self.strategy in ("auto", v.strategy)
                and (self.aggregate == "auto" or not v.aggregate or v.aggregate == self.aggregate)
                and (self.strategy == "auto" or v.strategy != "des" or self.aggregate == "auto"
                     or v.aggregate == self.aggregate)
                and self.input in ("auto", v.input)]

    def resolved(self, v: Variant) -> DistConfig:
        """These keys with the choice ``v`` written in (what the run then reports)."""
        return dataclasses.replace(self, strategy=v.strategy, aggregate=v.aggregate or "allreduce",
                                   input=v.input)

    @property
    def wire(self):
        """The payload encodings (:class:`desmpi.strategies.compressed.Wire`)."""
        from desmpi.strategies.wire import Wire

        return Wire(self.compress, self.compress_ratio, self.keys, self.compress_every,
                    self.compress_partials, self.compress_partial_grads)

    @property
    def variant(self) -> Variant:
        """The normalised variant (:mod:`desmpi.variants`) these keys select."""
        if self.is_auto:
            raise ValueError("dist has 'auto' keys: the run resolves them at start-up "
                             "(desmpi.whatif.choose.resolve)")
        return Variant.of(self.strategy, self.aggregate, self.input)


@dataclass(frozen=True)
class CheckpointConfig:
    dir: str = ""  # empty: no checkpoints
    every: int = 0  # steps between checkpoints (0: only at the end when dir is set)
    keep: int = 2  # complete checkpoints kept

    def check(self) -> None:
        if self.every < 0 or self.keep < 1:
            raise ConfigError("checkpoint.every must be >= 0 and checkpoint.keep >= 1")


@dataclass(frozen=True)
class FeaturesConfig:
    """Dynamic feature lifecycle (desmpi.table.lifecycle)."""

    min_count: int = 1  # steps of presence before a key gets a row (1: at first sight)
    ttl_steps: int = 0  # evict keys not seen for this many steps (0: never)
    max_keys: int = 0  # per-shard bound, least recently seen evicted first (0: none)
    evict_every: int = 100  # steps between eviction passes

    def check(self) -> None:
        if self.min_count < 1 or self.ttl_steps < 0 or self.max_keys < 0 or \
                self.evict_every < 1:
            raise ConfigError("features: min_count >= 1, ttl_steps >= 0, max_keys >= 0 and "
                              "evict_every >= 1 are required")

    @property
    def active(self) -> bool:
        return self.min_count > 1 or self.ttl_steps > 0 or self.max_keys > 0


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)

    def check(self) -> Config:
        for f in dataclasses.fields(self):
            sec = getattr(self, f.name)
            for g in dataclasses.fields(sec):  # NaN and inf pass every comparison: refuse them
                v = getattr(sec, g.name)
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"{f.name}.{g.name} = {v!r}: must be a finite number")
            sec.check()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _choice(key, v, allowed) -> None:
    if v not in allowed:
        raise ConfigError(f"{key} = {v!r}: expected one of {', '.join(allowed)}")


def _positive(key, v) -> None:
    if not v > 0:
        raise ConfigError(f"{key} = {v!r}: must be positive")


def _coerce(key: str, tp, v):
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {v!r}")
        return tuple(_coerce(key, int, x) for x in v)
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{key}: expected true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{key}: expected an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {v!r}")
        return float(v)
    if tp is str:
        if isinstance(v, bool):  # a TOML boolean where a switch also takes "auto"
            return "true" if v else "false"
        if not isinstance(v, str):
            raise ConfigError(f"{key}: expected a string, got {v!r}")
        return v
    raise AssertionError(tp)


def from_dict(d: dict, source: str = "config") -> Config:
    hints = typing.get_type_hints(Config)
    sections = {}
    for name, sub in d.items():
        if name not in hints:
            raise ConfigError(f"{source}: unknown section [{name}]; allowed: "
                              f"{', '.join(hints)}")
        if not isinstance(sub, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        cls = hints[name]
        fh = typing.get_type_hints(cls)
        kw = {}
        for k, v in sub.items():
            if k not in fh:
                raise ConfigError(f"{source}: unknown key {name}.{k}; allowed: {', '.join(fh)}")
            kw[k] = _coerce(f"{name}.{k}", fh[k], v)
        sections[name] = cls(**kw)
    return Config(**sections)


def parse_set(items: list[str]) -> dict:
    """``["train.lr=0.1", "model.name=dcn"]`` -> nested dict of TOML-typed values."""
    out: dict = {}
    for it in items:
        if "=" not in it or "." not in it.split("=", 1)[0]:
            raise ConfigError(f"--set {it!r}: expected section.key=value")
        path, raw = it.split("=", 1)
        sec, key = path.strip().split(".", 1)
        try:
            v = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            v = raw
        out.setdefault(sec, {})[key] = v
    return out


def merge(base: dict, over: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for sec, kv in over.items():
        out.setdefault(sec, {}).update(kv)
    return out


def load(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Config from a TOML file (or defaults), with ``--set`` overrides applied; checked."""
    base: dict = {}
    src = "defaults"
    if path:
        src = str(path)
        try:
            with open(path, "rb") as f:
                base = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
    cfg = from_dict(merge(base, parse_set(overrides or [])), src)
    return cfg.check()
