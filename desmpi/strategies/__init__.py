"""Strategies: ways to run the sparse part of a step (route -> partials -> aggregate -> finish).

Each strategy can also *plan* a step — the list of collectives with their counts, in
:mod:`sim.accounting`'s vocabulary — from the batch layout alone; the executed step performs
exactly that plan (tests compare them with ``==``).
"""

from desmpi.strategies.a2a import A2AStrategy
from desmpi.strategies.des import DesStrategy
from desmpi.strategies.des_a2a import DesA2AStrategy
from desmpi.strategies.ps import PsStrategy

STRATEGIES = {"des": DesStrategy, "ps": PsStrategy, "a2a": A2AStrategy,
              "des-a2a": DesA2AStrategy}
__all__ = ["STRATEGIES", "make_strategy"]


def make_strategy(name: str, **kw):
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](**kw)
