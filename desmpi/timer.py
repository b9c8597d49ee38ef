"""Seconds per phase of a step (the per-phase breakdown of ``desmpi bench train``)."""

from __future__ import annotations

import time
from collections import defaultdict


class Timer:
    """Seconds per phase, accumulated (``phases``) — the per-phase breakdown of benchmarks."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = defaultdict(float)
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        t = time.perf_counter()
        self.phases[name] += t - self._t
        self._t = t

    def start(self) -> None:
        self._t = time.perf_counter()
