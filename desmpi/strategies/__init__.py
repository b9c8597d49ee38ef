"""Strategies: ways to run the sparse part of a step (route -> partials -> aggregate -> finish).

One class per variant family, each in its own module:

| variant | class | module |
|---|---|---|
| des/allreduce (+replicate) | DesReplicated | des_replicated.py |
| des/reduce_scatter (+replicate) | DesReduceScatter | des_rs.py |
| des-a2a | DesA2AStrategy | des_a2a.py |
| a2a | A2AStrategy | a2a.py |
| ps | PsStrategy | ps.py |

All but the first share the data-parallel step template (template.py). Each strategy can also
*plan* a step — the list of collectives with their counts, in :mod:`sim.accounting`'s vocabulary
— from the batch's counts alone (plans.py); the executed step performs exactly that plan (tests
compare them with ``==``).
"""

from desmpi.strategies.a2a import A2AStrategy
from desmpi.strategies.des_a2a import DesA2AStrategy
from desmpi.strategies.des_replicated import DesReplicated
from desmpi.strategies.des_rs import DesReduceScatter
from desmpi.strategies.ps import PsStrategy
from desmpi.strategies.template import DivergedError, NonFiniteError, Strategy
from desmpi.variants import Variant

CLASSES: dict[tuple[str, str], type[Strategy]] = {
    (c.strategy, c.aggregate): c
    for c in (DesReplicated, DesReduceScatter, DesA2AStrategy, A2AStrategy, PsStrategy)}
__all__ = ["CLASSES", "DivergedError", "NonFiniteError", "Strategy", "make_strategy"]


def make_strategy(variant: Variant, **kw) -> Strategy:
    """The strategy object that runs ``variant`` (see :mod:`desmpi.variants`)."""
    return CLASSES[(variant.strategy, variant.aggregate)](variant=variant, **kw)
