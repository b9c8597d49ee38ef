"""Summary of a data set: rows, positives, per-field distinct keys."""

from __future__ import annotations

import numpy as np

from desmpi.data.h5 import CtrDataset
from desmpi.kernels.hashing import key_field

STEP = 1 << 20


def info(path: str) -> dict:
    ds = CtrDataset(path)
    a = ds.attrs()
    pos = 0
    distinct: list[set | np.ndarray] = [np.empty(0, np.int64) for _ in range(ds.n_fields)]
    nnz = 0
    for s in range(0, ds.n, STEP):
        b = ds.read(s, s + STEP)
        pos += int(b.labels.sum())
        nnz += b.keys.shape[0]
        f = key_field(b.keys)
        for j in range(ds.n_fields):
            distinct[j] = np.union1d(distinct[j], b.keys[f == j])
    out = {"file": path, "rows": ds.n, "positives": pos,
           "positive_rate": pos / ds.n if ds.n else float("nan"), "fields": ds.n_fields,
           "dense": ds.n_dense, "onehot": ds.onehot, "keys": nnz,
           "distinct_keys": int(sum(len(d) for d in distinct)),
           "distinct_per_field": {n: int(len(d)) for n, d in
                                  zip(a.get("fields", range(ds.n_fields)), distinct)},
           "bad_lines": int(a.get("bad_lines", 0)), "source": a.get("source")}
    if "oracle_auc" in a:
        out["oracle_auc"] = a["oracle_auc"]
    ds.close()
    return out
