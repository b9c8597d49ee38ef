"""The one registry of ways to run a step: :class:`Variant` = strategy + its options.

Every component that names a way of communicating (the trainer, the plans, the simulator, the
validation, ``scripts/compare_strategies.py``, the tests) takes a :class:`Variant` from here, so
one variant has one name everywhere:

| name | strategy | aggregate | input | dense part |
|---|---|---|---|---|
| ``des/allreduce`` | des | allreduce | gather | replicated over the global batch |
| ``des/allreduce+replicate`` | des | allreduce | replicate | replicated |
| ``des/reduce_scatter`` | des | reduce_scatter | gather | data parallel |
| ``des/reduce_scatter+replicate`` | des | reduce_scatter | replicate | data parallel |
| ``des-a2a`` | des-a2a | — | gather | data parallel |
| ``a2a`` | a2a | — | gather | data parallel |
| ``ps`` | ps | — | gather | data parallel |

``input = replicate`` means every rank reads the whole global batch itself (no input Allgatherv).
Strategies without an aggregation choice reject ``reduce_scatter`` and normalise ``allreduce``
(the config's default) away, so logs and reports never print "ps/allreduce".

The first-layer rule lives here too (:meth:`Variant.deep_input`): which substitution of the first
dense layer ``model.deep_input = 'auto'`` takes under this variant. Models know nothing of
strategies; they get the resolved mode.
"""

from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("des", "des-a2a", "a2a", "ps")
AGGREGATES = ("allreduce", "reduce_scatter")
INPUTS = ("gather", "replicate")


@dataclass(frozen=True)
class Variant:
    """A strategy with its options, normalised (see the module table)."""

    strategy: str
    aggregate: str = ""  # "" for strategies without an aggregation choice
    input: str = "gather"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; expected one of "
                             f"{', '.join(STRATEGIES)}")
        if self.strategy == "des":
            if self.aggregate not in AGGREGATES:
                raise ValueError(f"strategy 'des' needs aggregate in {AGGREGATES}, got "
                                 f"{self.aggregate!r}")
        elif self.aggregate:
            raise ValueError(f"strategy {self.strategy!r} has no aggregate option (got "
                             f"{self.aggregate!r}); it sums its partials by all-to-all")
        if self.input not in INPUTS:
            raise ValueError(f"unknown input {self.input!r}; expected one of {INPUTS}")
        if self.input == "replicate" and self.strategy != "des":
            raise ValueError("input = 'replicate' applies to strategy 'des' only")

    @staticmethod
    def of(strategy: str, aggregate: str = "allreduce", input: str = "gather") -> Variant:
        """The variant of config values: ``aggregate`` is dropped for strategies without the
        choice when it is the default ``allreduce``, rejected when it is ``reduce_scatter``."""
        if strategy != "des":
            if aggregate == "reduce_scatter":
                raise ValueError(f"dist.aggregate = 'reduce_scatter' applies to dist.strategy = "
                                 f"'des' only, not {strategy!r}")
            aggregate = ""
        return Variant(strategy, aggregate, input)

    @property
    def name(self) -> str:
        base = f"{self.strategy}/{self.aggregate}" if self.aggregate else self.strategy
        return base + ("+replicate" if self.input == "replicate" else "")

    def __str__(self) -> str:
        return self.name

    def overrides(self) -> list[str]:
        """``--set`` arguments selecting this variant on a ``desmpi train`` command line."""
        return ["--set", f"dist.strategy={self.strategy}",
                "--set", f"dist.aggregate={self.aggregate or 'allreduce'}",
                "--set", f"dist.input={self.input}"]

    @property
    def replicate_input(self) -> bool:
        return self.input == "replicate"

    @property
    def replicated_dense(self) -> bool:
        """Whether every rank runs the dense part over the whole global batch (des/allreduce)."""
        return self.strategy == "des" and self.aggregate == "allreduce"

    @property
    def fused_repeats_work(self) -> bool:
        """Whether a fused first layer would run its products, on every rank, over rows other
        ranks cover too: all B samples under des/reduce_scatter, every (sample, owner) pair
        under des-a2a. Under des/allreduce the whole dense part is replicated anyway; under a2a
        and ps the partials never leave the rank, so fusing narrows nothing."""
        return self.strategy == "des-a2a" or (self.strategy == "des"
                                              and self.aggregate == "reduce_scatter")

    def deep_input(self, mode: str) -> str:
        """``model.deep_input`` for this variant: 'auto' stays 'auto' (the model then takes the
        narrower partial) only where the dense part is replicated; elsewhere it pools. An
        explicit 'pooling' or 'fused' is kept."""
        if mode != "auto" or self.replicated_dense:
            return mode
        return "pooling"


# Every variant, in report order, and the short names earlier command lines used.
ALL = (Variant("des", "allreduce"), Variant("des", "allreduce", "replicate"),
       Variant("des", "reduce_scatter"), Variant("des", "reduce_scatter", "replicate"),
       Variant("des-a2a"), Variant("a2a"), Variant("ps"))
BY_NAME = {v.name: v for v in ALL}
# what reports and what-if sweeps compare by default (des/reduce_scatter+replicate is left out:
# its traffic is des/reduce_scatter's less the input Allgatherv, as +replicate is for allreduce)
COMPARED = tuple(v for v in ALL if v.name != "des/reduce_scatter+replicate")
ALIASES = {"des": BY_NAME["des/allreduce"], "des-rs": BY_NAME["des/reduce_scatter"],
           "des-read": BY_NAME["des/allreduce+replicate"],
           "des/allreduce+read": BY_NAME["des/allreduce+replicate"],
           "des-rs-read": BY_NAME["des/reduce_scatter+replicate"]}


def parse(name: str) -> Variant:
    """A variant from its name (``des/reduce_scatter``) or a short alias (``des-rs``)."""
    v = BY_NAME.get(name) or ALIASES.get(name)
    if v is None:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(BY_NAME)} "
                         f"(aliases: {', '.join(ALIASES)})")
    return v


def parse_list(names: str) -> list[Variant]:
    """Comma-separated variant names, in order, without repeats."""
    out: list[Variant] = []
    for n in names.split(","):
        v = parse(n.strip())
        if v not in out:
            out.append(v)
    return out
