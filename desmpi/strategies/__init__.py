"""Strategies: ways to run the sparse part of a step (route -> partials -> aggregate -> finish).

Each strategy can also *plan* a step — the list of collectives with their counts, in
:mod:`sim.accounting`'s vocabulary — from the batch layout alone; the executed step performs
exactly that plan (tests compare them with ``==``).
"""

from desmpi.strategies.des import DesStrategy

__all__ = ["DesStrategy", "make_strategy"]


def make_strategy(name: str, **kw):
    if name == "des":
        return DesStrategy(**kw)
    raise ValueError(f"unknown strategy {name!r}")
