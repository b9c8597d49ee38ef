"""The six models as compositions of substituted operators and dense layers."""

from dataclasses import replace

from desmpi.models.base import Model
from desmpi.models.dcn import DCN
from desmpi.models.deepfm import DeepFM
from desmpi.models.dlrm import DLRM
from desmpi.models.fm import FMModel
from desmpi.models.lr import LR
from desmpi.models.wdl import WDL

REGISTRY = {"lr": LR, "fm": FMModel, "wdl": WDL, "deepfm": DeepFM, "dcn": DCN, "dlrm": DLRM}


def build_model(cfg, n_fields: int, n_dense: int, dtype, seed: int,
                deep_input: str | None = None) -> Model:
    """The model of ``cfg`` (a ModelConfig); ``deep_input`` overrides ``cfg.deep_input`` (a
    run passes :meth:`desmpi.variants.Variant.deep_input` of its variant)."""
    if deep_input is not None:
        cfg = replace(cfg, deep_input=deep_input)
    return REGISTRY[cfg.name](cfg, n_fields, n_dense, dtype, seed)


__all__ = ["Model", "REGISTRY", "build_model"]
