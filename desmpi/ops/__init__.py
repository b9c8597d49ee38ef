"""Weights-rich operators substituted by sub-operators over a rank's own keys (DESIGN.md §2).

Each operator module gives the local partial (from the owned keys' pooled quantities), the
finish applied to the aggregated partial, and the backward, which needs only the gradient of the
aggregated partial and the rank's own weights. Where the partial *is* a pooled quantity (linear,
field pooling, FM) the operator only names its columns (``roles``): the pooling kernel writes it
into Z and the gradient kernel reads its gradient from gZ.
"""

from desmpi.ops.base import Pools
from desmpi.ops.fm import FM
from desmpi.ops.fused import FusedFirstLayer
from desmpi.ops.linear import Linear
from desmpi.ops.pooling import FieldPooling

__all__ = ["Pools", "Linear", "FM", "FieldPooling", "FusedFirstLayer"]
