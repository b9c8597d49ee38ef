"""What a compressed collective keeps from call to call (:mod:`desmpi.strategies.compressed`):
scratch arrays and layouts (:class:`Buffers`, with the time its codec spent) and a vector's
hard threshold under ``threshold`` (:class:`Threshold`)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from desmpi.comm import Comm
from desmpi.kernels.slots import estimate_threshold


class Buffers:
    """Scratch arrays reused from call to call (a strategy keeps one): fresh multi-megabyte
    arrays every step would cost their page faults again each time. ``codec_s``: the seconds
    the calls given these buffers spent on their own work — packing, selecting, decoding,
    summing — that is their time less that of the collectives inside them (as the
    accounting records those), so that a run measures its codec cost where it is paid."""

    def __init__(self) -> None:
        self._a: dict[str, np.ndarray] = {}
        self._memo: dict[tuple, object] = {}
        self.codec_s = 0.0

    @contextmanager
    def timing(self, comm: Comm):
        """Add the enclosed work's time, less its collectives', to :attr:`codec_s`."""
        acct = comm.acct
        scope = acct.scope
        t0, c0 = time.perf_counter(), acct.time_s(scope)
        try:
            yield
        finally:
            self.codec_s += time.perf_counter() - t0 - (acct.time_s(scope) - c0)

    def memo(self, key: tuple, make):
        """``make()``, computed once per key: a call's layout (chunks, words, counts) is the
        same every step, and rebuilding it took about a tenth of the codec's time (80 of
        890 µs a step, 2-rank DeepFM at batch 512 under bf16)."""
        v = self._memo.get(key)
        if v is None:
            v = self._memo[key] = make()
        return v

    def get(self, name: str, n: int, dtype) -> np.ndarray:
        a = self._a.get(name)
        if a is None or a.dtype != np.dtype(dtype) or a.size < n:
            a = self._a[name] = np.empty(max(n, 1), dtype=dtype)
        return a[:n]


@dataclass
class Threshold:
    """τ of one vector under ``threshold``: re-estimated on every ``every``-th call (the first
    included) from a uniform sample of max(``sample``, 1%) of its entries."""

    every: int = 16
    sample: int = 4096
    tau: float = 0.0
    calls: int = 0

    def value(self, x: np.ndarray, ratio: float) -> float:
        if self.calls % self.every == 0:
            self.tau = estimate_threshold(x, ratio, max(self.sample, x.size // 100), self.calls)
        self.calls += 1
        return self.tau
