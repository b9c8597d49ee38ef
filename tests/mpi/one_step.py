"""Run under mpiexec -n P: one training step of every (model, variant) in float64, recording
what each stage produced, so that tests/test_one_step.py can name the stage that broke.

Per case, rank 0 writes OUT/<model>__<variant>.npz with, in global sample order:
Z (B, W) the aggregated partials, gZ (B, W) their gradient, keys and rows (the table after the
step, sorted by key: with SGD the row change is -lr times the row gradient), dense (the dense
parameters after the step) and loss. At P = 1 it also writes OUT/<model>__<variant>.ref.npz,
the same from :func:`desmpi.reference.train_step` (the single-process reference path, no
strategy involved). Any failure aborts every rank (run_or_abort).
"""

import sys
from pathlib import Path

import numpy as np

from desmpi import reference
from desmpi.comm import Comm, run_or_abort
from desmpi.config import from_dict
from desmpi.train import Trainer
from desmpi.variants import ALL

out_dir, data = Path(sys.argv[1]), sys.argv[2]
MODELS = sys.argv[3].split(",")
B = 48
comm = Comm.world()


def one(model: str, v) -> None:
    cfg = from_dict({
        "model": {"name": model, "embed_dim": 4, "hidden": [8, 4], "bottom": [4],
                  "cross_layers": 1, "init_std": 0.1},
        "data": {"train": data},
        "train": {"batch_size": B, "steps": 1, "optimizer": "sgd", "dense_optimizer": "sgd",
                  "lr": 0.5, "dtype": "float64", "seed": 11},
        "dist": {"strategy": v.strategy, "aggregate": v.aggregate or "allreduce",
                 "input": v.input, "check_every": 0},
    }).check()
    if comm.size == 1:
        ref = Trainer(cfg, Comm.local())
        g = ref.train_ds.read(0, B, ref.dtype)
        loss, Z, gZ = reference.train_step(ref.model, ref.table, g, ref.sparse_opt,
                                           ref.dense_opt, 1)
        keys = ref.table.keys()
        order = np.argsort(keys, kind="stable")
        np.savez(out_dir / f"{model}__{v.name.replace('/', '_')}.ref.npz", Z=Z, gZ=gZ,
                 keys=keys[order], rows=ref.table.weights[:keys.shape[0]][order],
                 dense=ref.model.params.data.copy(), loss=np.array(loss))
    tr = Trainer(cfg, comm)
    st = tr.strategy
    st.probe = {}
    b, sizes = tr.local_batch(tr.train_ds, 0)
    loss = st.train_step(b, sizes, 1)
    lo = int(sizes[:comm.rank].sum())
    n = st.probe["Z"].shape[0]
    lo = 0 if n == B else lo  # a replicated dense part holds every sample's rows
    keys = tr.table.keys()
    mine = (lo, st.probe["Z"], st.probe["gZ"], keys, tr.table.weights[:keys.shape[0]].copy())
    every = comm.allgather_object(mine)
    if comm.rank:
        return
    W = st.probe["Z"].shape[1]
    Z, gZ = np.full((B, W), np.nan), np.full((B, W), np.nan)
    for lo_r, z, g, _, _ in every:
        Z[lo_r:lo_r + z.shape[0]] = z
        gZ[lo_r:lo_r + g.shape[0]] = g
    keys = np.concatenate([e[3] for e in every])
    rows = np.concatenate([e[4] for e in every])
    order = np.argsort(keys, kind="stable")
    np.savez(out_dir / f"{model}__{v.name.replace('/', '_')}.npz", Z=Z, gZ=gZ,
             keys=keys[order], rows=rows[order], dense=tr.model.params.data.copy(),
             loss=np.array(loss))


def main() -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for m in MODELS:
        for v in ALL:
            one(m, v)


sys.exit(run_or_abort(main, comm))
