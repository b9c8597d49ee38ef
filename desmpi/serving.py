"""A single-file model for serving: every key's weights + dense parameters + the config.

``export`` writes it from a (P = 1 restored) trainer; :class:`ServingModel` loads it in any
Python process — no MPI, no checkpoint directory — and predicts probabilities of a Batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from desmpi import reference
from desmpi.comm import Comm
from desmpi.config import from_dict
from desmpi.data.batch import Batch
from desmpi.models import build_model
from desmpi.table.shard import ShardTable

FORMAT = "desmpi-model"


def export(path: str | Path, tr, cfg) -> None:
    n = tr.table.n
    tmp = Path(str(path) + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("keys", data=tr.table.keys())
        f.create_dataset("weights", data=tr.table.weights[:n])
        f.create_dataset("dense_params", data=tr.model.params.data)
        f.attrs["format"] = FORMAT
        f.attrs["config"] = json.dumps(cfg.to_dict())
        f.attrs["n_fields"] = tr.model.F
        f.attrs["n_dense"] = tr.model.Dn
    tmp.replace(path)


class ServingModel:
    """Load an exported model and predict; keys never trained contribute zero."""

    def __init__(self, path: str | Path) -> None:
        from desmpi.checkpoint import CheckpointError, read_dataset

        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a desmpi exported model")
            cfg = from_dict(json.loads(f.attrs["config"]), str(path))
            keys = read_dataset(f, "keys")
            w = read_dataset(f, "weights", finite=True)
            p = read_dataset(f, "dense_params", finite=True)
            F, Dn = int(f.attrs["n_fields"]), int(f.attrs["n_dense"])
        self.cfg = cfg
        self.model = build_model(cfg.model, F, Dn, w.dtype, cfg.train.seed,  # as trained
                                 cfg.dist.variant.deep_input(cfg.model.deep_input))
        m = self.model
        self.model.params.data[:] = p
        self.table = ShardTable(m.row_width, m.emb_col, 0, w.dtype, cfg.train.seed,
                                cfg.model.init_std, capacity=max(len(keys), 1))
        self.table.load_rows(keys, w, np.zeros((len(keys), 0), w.dtype))
        self.comm = Comm.local()

    def predict(self, b: Batch) -> np.ndarray:
        """(n,) probabilities of batch ``b``."""
        return reference.predict(self.model, self.table, b)
