#!/usr/bin/env python
"""Checkpoint write and restore time and size for a shard of N keys (default 10M, d = 16,
Adagrad slots, float32), one process.

    python scripts/bench_checkpoint.py [--keys 10000000] [--dim 16] [--dir /tmp] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from desmpi.checkpoint import newest_valid, restore, save
from desmpi.comm import Comm
from desmpi.config import ModelConfig
from desmpi.models import build_model
from desmpi.optim import DenseOptimizer, sparse_slots
from desmpi.table.shard import ShardTable


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    model = build_model(ModelConfig(name="deepfm", embed_dim=a.dim), 26, 13, np.float32, 0)
    R = model.row_width
    S = sparse_slots("adagrad", R)

    def table():
        return ShardTable(R, model.emb_col, S, np.float32, 0, 0.01)

    t = table()
    keys = np.random.default_rng(0).integers(1, 1 << 52, size=a.keys)
    t0 = time.perf_counter()
    for i in range(0, a.keys, 1 << 20):
        t.lookup_or_insert(keys[i:i + (1 << 20)])
    t_fill = time.perf_counter() - t0
    t.slots[: t.n] = 0.5
    opt = DenseOptimizer("adagrad", 0.01, model.params.size, np.float32)
    comm = Comm.local()
    tmp = Path(tempfile.mkdtemp(dir=a.dir))
    try:
        t0 = time.perf_counter()
        d = save(tmp, 1, comm, t, model, opt, {"config": {}}, keep=1)
        t_save = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in d.iterdir())
        t0 = time.perf_counter()
        found = newest_valid(tmp)
        t_verify = time.perf_counter() - t0
        t2 = table()
        t0 = time.perf_counter()
        restore(found[0], found[1], comm, t2, model, opt)
        t_restore = time.perf_counter() - t0
        assert t2.n == t.n
        k = t.keys()[:1000]
        assert np.array_equal(t2.weights[t2.lookup(k)], t.weights[t.lookup(k)])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rep = {"keys": t.n, "dim": a.dim, "row_bytes": (R + S) * 4, "file_bytes": size,
           "fill_s": t_fill, "save_s": t_save, "save_rows_per_s": t.n / t_save,
           "save_MB_per_s": size / t_save / 1e6, "verify_s": t_verify,
           "restore_s": t_restore, "restore_rows_per_s": t.n / t_restore}
    print(json.dumps(rep) if a.json else
          f"{t.n} keys, d={a.dim}: {size / 1e6:.0f} MB; save {t_save:.2f} s "
          f"({rep['save_rows_per_s']:.3g} rows/s, {rep['save_MB_per_s']:.0f} MB/s incl. "
          f"SHA-256); verify {t_verify:.2f} s; restore {t_restore:.2f} s "
          f"({rep['restore_rows_per_s']:.3g} rows/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
