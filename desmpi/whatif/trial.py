"""`dist.strategy = "auto"`, second stage: the close candidates measured on the run's first steps.

The simulator's ranking (:mod:`desmpi.whatif.choose`) is right to within its validated error
band (docs/validation: about 10 % median per step, 25 % upper quartile), so candidates predicted
within ``dist.auto_band`` of the best are not told apart by prediction alone. Every variant
trains the same model from the same state (the equivalence tests hold each to the single-process
run), so they can take turns on the run's first real steps and nothing is wasted: one warm step
each (JIT compilation, first touches), then rounds in turn, the order rotating from round to
round (A B C, B C A, C A B …: the first steps of a run insert the most new keys, and drift in
the machine's speed falls on all alike). ``dist.auto_trial_steps`` rounds at least; when the
first timed round shows that rounds are short, as many as fit in ``dist.auto_trial_s`` seconds
(at most :data:`MAX_ROUNDS`, and at most half the run): a 5% difference between steps of a few
milliseconds needs more than three samples to show. Each trial step starts from a
barrier (:meth:`Trial.sync`) and its time is the slowest rank's: otherwise a step would inherit
the previous candidate's stragglers (the work a rank finishes after its last collective shows up
in the next step's first wait), and a candidate that leaves its work to the end would look fast.
The median of those times per candidate decides, and every rank switches to the winner — but
away from the simulator's first choice only when the measured winner beats it by more than
:data:`MARGIN`, or, closer, when it was faster in so many of the rounds (paired: each round
times both) that a sign test puts the chance of that at :data:`SIGNIFICANCE` or less were the
two equally fast (a few timed steps cannot tell closer ones apart; the prediction decides
those).
Only variants that share the model's structure take part (the same first-layer substitution: W
differs otherwise) and the same input (gather or replicate: the batch a rank reads differs).
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from desmpi.variants import Variant, parse

MARGIN = 0.05  # a measured winner must beat the predicted choice by this much
SIGNIFICANCE = 0.05  # ... or be faster in enough paired rounds (one-sided sign test)
MAX_ROUNDS = 16  # timed rounds at most, whatever the time budget


def sign_test(wins: int, n: int) -> float:
    """One-sided p-value of ``wins`` or more successes in n fair coin tosses."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2.0 ** n


def trial_candidates(ranking: list[dict], chosen: Variant, same_model, band: float,
                     most: int) -> list[Variant]:
    """The chosen variant and the others predicted within ``band`` of it that share its input
    and model structure (``same_model(v)``), at most ``most`` in all, in predicted order."""
    if not ranking:
        return [chosen]
    best = ranking[0]["step_time_s"]
    out = [chosen]
    for r in ranking:
        v = parse(r["variant"])
        if v == chosen or len(out) >= most:
            continue
        if r["step_time_s"] <= best * (1 + band) and v.input == chosen.input and \
                same_model(v):
            out.append(v)
    return out


class Trial:
    """The schedule of the trial steps and the decision (collective at its last step)."""

    def __init__(self, comm, strategies: dict[Variant, object], rounds: int,
                 budget_s: float = 0.0, max_rounds: int = MAX_ROUNDS) -> None:
        """``rounds`` timed rounds at least; with ``budget_s`` > 0, as many as fit in it after
        the first (at most ``max_rounds``)."""
        self.comm = comm
        self.strategies = strategies
        order = list(strategies)  # the predicted choice first
        self.predicted = order[0]
        self.order = order
        self.budget_s, self.max_rounds = budget_s, max(rounds, max_rounds)
        self.schedule = order + self._rounds(0, rounds)
        self.n_warm = len(order)
        self.times: dict[Variant, list[float]] = {v: [] for v in order}
        self.local: list[float] = []  # this rank's time of each step so far
        self.pos = 0
        self.winner: Variant | None = None
        self.measured: dict[str, float] = {}

    @property
    def active(self) -> bool:
        return self.winner is None

    def sync(self) -> None:
        """Before a trial step (outside its timing): every rank starts it together."""
        with self.comm.acct.scoped("meta"):
            self.comm.barrier()

    def _rounds(self, first: int, n: int) -> list[Variant]:
        k = len(self.order)
        return [self.order[(i + j) % k] for i in range(first, first + n) for j in range(k)]

    def _extend(self) -> None:
        """After the first timed round (every rank at once): as many rounds as fit in the
        budget, from that round's slowest-rank step times."""
        k = len(self.order)
        with self.comm.acct.scoped("meta"):
            slowest = self.comm.allreduce(np.array(self.local[k:2 * k]), op="max")
        per_round = float(np.sum(slowest))
        have = len(self.schedule) // k - 1
        want = int(self.budget_s // per_round) if per_round > 0 else self.max_rounds
        want = min(self.max_rounds, max(have, want))
        self.schedule += self._rounds(have, want - have)

    def next(self) -> tuple[Variant, object]:
        v = self.schedule[self.pos]
        return v, self.strategies[v]

    def record(self, seconds: float) -> Variant | None:
        """Log the step just run; at the end of the schedule decide (all ranks) and return
        the winner."""
        self.local.append(seconds)
        self.pos += 1
        if self.budget_s > 0 and self.pos == 2 * len(self.order):
            self._extend()
        if self.pos < len(self.schedule):
            return None
        with self.comm.acct.scoped("meta"):  # each step's time: its slowest rank's
            slowest = self.comm.allreduce(np.array(self.local), op="max")
        for v, t in zip(self.schedule[self.n_warm:], slowest[self.n_warm:]):
            self.times[v].append(float(t))
        med = {x.name: statistics.median(t) for x, t in self.times.items()}
        best = None
        if self.comm.rank == 0:
            best = min(med, key=med.get)
            p = self.predicted.name
            # paired by round: each round ran every candidate once
            wins = sum(a < b for a, b in zip(self.times[parse(best)], self.times[self.predicted]))
            n = len(self.times[self.predicted])
            if med[best] > (1 - MARGIN) * med[p] and sign_test(wins, n) > SIGNIFICANCE:
                best = p
        best = self.comm.bcast_object(best)
        self.measured = self.comm.bcast_object(med)
        self.winner = parse(best)
        return self.winner

    def describe(self) -> str:
        ms = ", ".join(f"{k} {t * 1e3:.1f} ms" for k, t in sorted(self.measured.items(),
                                                                  key=lambda kv: kv[1]))
        return (f"auto: measured on the first {len(self.schedule)} steps (median per "
                f"candidate of the slowest rank's step): {ms}; running {self.winner}")
