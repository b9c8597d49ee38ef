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
(at most :data:`MAX_ROUNDS`, and at most half the run), and past that, blocks of several steps
per candidate a round: a 5% difference between steps of a millisecond needs more than a few
samples of one step each to show. Each block starts from a barrier (:meth:`Trial.sync`), its
steps then run free as training does, and its time is the slowest rank's: otherwise a block
would inherit the previous candidate's stragglers (the work a rank finishes after its last
collective shows up in the next step's first wait), and a candidate that leaves its work to the
end would look fast. ``desmpi bench variants`` measures the variants the same way, in longer
blocks.
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
    """The schedule of the trial's blocks and the decision (collective at its last step).

    The schedule is a list of blocks (variant, steps): one warm step each, then rounds of one
    block per candidate. A block starts from a barrier, its steps then run free as training
    does, and its time is the slowest rank's mean step in it."""

    def __init__(self, comm, strategies: dict[Variant, object], rounds: int,
                 budget_s: float = 0.0, max_rounds: int = MAX_ROUNDS,
                 max_steps: int | None = None) -> None:
        """``rounds`` timed rounds at least; with ``budget_s`` > 0, as many as fit in it after
        the first (at most ``max_rounds``, then blocks of more steps; at most ``max_steps``
        steps in all)."""
        self.comm = comm
        self.strategies = strategies
        order = list(strategies)  # the predicted choice first
        self.predicted = order[0]
        self.order = order
        self.budget_s, self.max_rounds = budget_s, max(rounds, max_rounds)
        self.max_steps = max_steps
        self.blocks: list[tuple[Variant, int]] = [(v, 1) for v in order] + self._rounds(
            0, rounds, 1)
        self.n_warm = len(order)
        self.times: dict[Variant, list[float]] = {v: [] for v in order}
        self.local: list[float] = []  # this rank's mean step of each block so far
        self.pos = 0  # the block running
        self.in_block = 0  # steps of it done
        self.acc = 0.0  # their seconds
        self.winner: Variant | None = None
        self.measured: dict[str, float] = {}

    @property
    def active(self) -> bool:
        return self.winner is None

    @property
    def schedule(self) -> list[Variant]:
        """The variant of every trial step, in order."""
        return [v for v, n in self.blocks for _ in range(n)]

    @property
    def block_steps(self) -> int:
        """Steps of the timed blocks (the last round's)."""
        return self.blocks[-1][1]

    def sync(self) -> None:
        """Before a trial step (outside its timing): at a block's start, every rank starts it
        together."""
        if self.in_block == 0:
            with self.comm.acct.scoped("meta"):
                self.comm.barrier()

    def _rounds(self, first: int, n: int, steps: int) -> list[tuple[Variant, int]]:
        k = len(self.order)
        return [(self.order[(i + j) % k], steps) for i in range(first, first + n)
                for j in range(k)]

    def _extend(self) -> None:
        """After the first timed round (every rank at once): as many rounds as fit in the
        budget, from that round's slowest-rank step times; past ``max_rounds``, blocks of
        more steps (a 5% lead between steps of a millisecond needs more than one step per
        sample to show)."""
        k = len(self.order)
        with self.comm.acct.scoped("meta"):
            slowest = self.comm.allreduce(np.array(self.local[k:2 * k]), op="max")
        per_round = float(np.sum(slowest))  # seconds of a round of one-step blocks
        have = len(self.blocks) // k - 1
        used = sum(n for _, n in self.blocks)
        fit = self.budget_s / per_round if per_round > 0 else float("inf")
        if self.max_steps is not None:  # one-step rounds the step cap leaves room for
            fit = min(fit, have + (self.max_steps - used) / k)
        steps = 1
        if math.isinf(fit):  # rounds took no measurable time: the most rounds, one step each
            want = self.max_rounds
        elif fit >= 2 * self.max_rounds:
            steps = int(fit // self.max_rounds)
            want = self.max_rounds
        else:
            want = min(self.max_rounds, int(fit))
        # the rounds already scheduled (one-step blocks) stay; the rest take ``steps`` steps
        want = max(have, want)
        extra = want - have
        if steps > 1 and self.max_steps is not None:
            steps = max(1, min(steps, (self.max_steps - used) // max(1, extra * k)))
        self.blocks += self._rounds(have, extra, steps)

    def next(self) -> tuple[Variant, object]:
        v = self.blocks[self.pos][0]
        return v, self.strategies[v]

    def record(self, seconds: float) -> Variant | None:
        """Log the step just run; at the end of the schedule decide (all ranks) and return
        the winner."""
        self.acc += seconds
        self.in_block += 1
        n = self.blocks[self.pos][1]
        if self.in_block < n:
            return None
        self.local.append(self.acc / n)
        self.acc, self.in_block = 0.0, 0
        self.pos += 1
        if self.budget_s > 0 and self.pos == 2 * len(self.order):
            self._extend()
        if self.pos < len(self.blocks):
            return None
        with self.comm.acct.scoped("meta"):  # each block's time: its slowest rank's
            slowest = self.comm.allreduce(np.array(self.local), op="max")
        for (v, _), t in zip(self.blocks[self.n_warm:], slowest[self.n_warm:]):
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
        ms = ", ".join(f"{k} {t * 1e3:.2f} ms" for k, t in sorted(self.measured.items(),
                                                                   key=lambda kv: kv[1]))
        rounds = len(self.times[self.predicted])
        return (f"auto: measured on the first {len(self.schedule)} steps ({rounds} rounds, "
                f"blocks of up to {self.block_steps} step(s); median per candidate of the "
                f"slowest rank's mean step): {ms}; running {self.winner}")
