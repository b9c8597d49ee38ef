"""Per-scope, per-kind counters of collective calls (no MPI here; see :mod:`desmpi.comm`)."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from sim.accounting import Call


@dataclass
class KindTotals:
    """Running totals of one collective kind in one scope."""

    calls: int = 0
    elements: int = 0
    payload_bytes: int = 0
    wire_bytes: int = 0
    time_s: float = 0.0
    algorithms: dict[str, int] = field(default_factory=dict)  # calls per algorithm run

    def add(self, call: Call, time_s: float) -> None:
        self.calls += 1
        a = call.algorithm or "textbook"
        self.algorithms[a] = self.algorithms.get(a, 0) + 1
        self.elements += call.elements
        self.payload_bytes += call.payload_bytes
        self.wire_bytes += call.wire_bytes
        self.time_s += time_s


Counters = dict[str, KindTotals]


class Accounting:
    """Records every collective: totals per scope and kind, and optionally the call log.

    Scopes separate traffic that users compare (``train``) from evaluation, metadata and
    checkpoint traffic. ``log`` (when ``keep_log``) holds ``(scope, Call, time_s, t_start)``
    tuples in call order (t_start: ``time.perf_counter()``); the planned-vs-counted tests and
    ``--trace`` read it.
    """

    def __init__(self, keep_log: bool = False) -> None:
        self.scope = "train"
        self.totals: dict[str, Counters] = {}
        self.keep_log = keep_log
        self.log: list[tuple[str, Call, float, float]] = []

    @contextmanager
    def scoped(self, name: str):
        prev, self.scope = self.scope, name
        try:
            yield self
        finally:
            self.scope = prev

    def record(self, call: Call, time_s: float, t_start: float = 0.0) -> None:
        kinds = self.totals.setdefault(self.scope, {})
        kinds.setdefault(call.kind, KindTotals()).add(call, time_s)
        if self.keep_log:
            self.log.append((self.scope, call, time_s, t_start))

    def time_s(self, scope: str = "train") -> float:
        """Seconds spent in the collectives of ``scope`` so far (cheap: no copy)."""
        return sum(v.time_s for v in self.totals.get(scope, {}).values())

    def counters(self, scope: str = "train") -> Counters:
        """A copy of the totals of ``scope`` (kind -> totals)."""
        return copy.deepcopy(self.totals.get(scope, {}))

    @staticmethod
    def total(counters: Counters, field: str) -> float:
        return sum(getattr(v, field) for v in counters.values())

    @staticmethod
    def as_dict(counters: Counters) -> dict[str, dict]:
        return {k: asdict(v) for k, v in sorted(counters.items())}
