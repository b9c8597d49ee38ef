"""The models' benchmark workloads and the config of a benchmark run."""

from __future__ import annotations

from desmpi.config import Config, from_dict

# the workloads of the PyTorch comparison (issue text): DeepFM d = 16, DNN 400-400-400; DLRM
# d = 64, bottom 512-256-64, top 512-256-1; the others as their default configs
WORKLOADS = {"lr": {}, "fm": {"embed_dim": 16}, "wdl": {"embed_dim": 16, "hidden": [400, 400, 400]},
             "deepfm": {"embed_dim": 16, "hidden": [400, 400, 400]},
             "dcn": {"embed_dim": 16, "hidden": [400, 400], "cross_layers": 3},
             "dlrm": {"embed_dim": 64, "bottom": [512, 256], "hidden": [512, 256]}}


def bench_config(model: str, path: str, batch: int, steps: int, dim: int | None,
                 strategy: str, aggregate: str, optimizer: str, sets: dict | None = None) -> Config:
    """The checked config of a benchmark run (the workload of :data:`WORKLOADS`)."""
    conf = {"model": {"name": model, **WORKLOADS.get(model, {})}, "data": {"train": path},
            "train": {"batch_size": batch, "steps": steps, "optimizer": optimizer, "lr": 0.01},
            "dist": {"strategy": strategy, "aggregate": aggregate, "check_every": 0}}
    if dim:
        conf["model"]["embed_dim"] = dim
    for sec, kv in (sets or {}).items():
        conf.setdefault(sec, {}).update(kv)
    return from_dict(conf).check()
