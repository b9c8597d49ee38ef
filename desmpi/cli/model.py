"""``desmpi eval | predict | export``: use a checkpoint at any number of ranks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from desmpi.comm import Comm

log = logging.getLogger("desmpi")


def _trainer_from_checkpoint(ckpt: str, data: str | None, comm: Comm, overrides: list[str]):
    """A Trainer with the checkpoint's config (data.eval := data) and its state restored."""
    from desmpi.checkpoint import CheckpointError, newest_valid, restore, verify
    from desmpi.config import from_dict, merge, parse_set
    from desmpi.train import Trainer

    root = Path(ckpt)
    if comm.rank == 0:
        if (root / "manifest.json").exists():
            found = (str(root), verify(root))
        else:
            nv = newest_valid(root)
            if nv is None:
                raise CheckpointError(f"{root}: no complete checkpoint")
            found = (str(nv[0]), nv[1])
    else:
        found = None
    d, manifest = comm.bcast_object(found)
    conf = manifest["config"]
    if data:
        conf = merge(conf, {"data": {"eval": data}})
    conf = merge(conf, {"data": {"train": conf["data"]["eval"] or conf["data"]["train"]}})
    cfg = from_dict(merge(conf, parse_set(overrides)), f"{d}/manifest.json").check()
    tr = Trainer(cfg, comm)
    restore(Path(d), manifest, comm, tr.table, tr.model, tr.dense_opt)
    return tr, cfg, manifest


def _eval(a, comm: Comm) -> int:
    tr, cfg, m = _trainer_from_checkpoint(a.checkpoint, a.data, comm, a.set)
    if tr.eval_ds is None:
        raise ValueError("no data to evaluate: pass --data FILE.h5")
    auc, ll, p = tr.evaluate()
    if comm.rank == 0:
        log.info("checkpoint step %d (P=%d) on %d ranks: AUC %.5f, logloss %.5f over %d rows",
                 m["step"], m["world_size"], comm.size, auc, ll, p.shape[0])
        if a.json:
            print(json.dumps({"auc": auc, "logloss": ll, "rows": int(p.shape[0]),
                              "step": m["step"]}))
    return 0


def _predict(a, comm: Comm) -> int:
    tr, cfg, m = _trainer_from_checkpoint(a.checkpoint, a.data, comm, a.set)
    _, _, p = tr.evaluate()
    if comm.rank == 0:
        np.save(a.out, p)
        log.info("wrote %d predictions to %s", p.shape[0], a.out)
    return 0


def _export(a, comm: Comm) -> int:
    from desmpi.serving import export

    if comm.size > 1:
        raise ValueError("run 'desmpi export' as one process")
    tr, cfg, m = _trainer_from_checkpoint(a.checkpoint, None, comm, a.set)
    export(a.out, tr, cfg)
    log.info("exported %d keys and %d dense parameters to %s", tr.table.n,
             tr.model.params.size, a.out)
    return 0


def add_commands(sub) -> None:
    for name, fn, hlp in (("eval", _eval, "AUC/logloss of a checkpoint on a data set"),
                          ("predict", _predict, "predictions of a checkpoint (.npy)"),
                          ("export", _export, "single-file model for serving, no MPI")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("--checkpoint", required=True,
                       help="a checkpoint.dir (newest complete one) or one step-* directory")
        if name != "export":
            s.add_argument("--data", default=None, help="HDF5 data set (default: data.eval)")
        s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
        if name in ("predict", "export"):
            s.add_argument("--out", required=True)
        s.add_argument("--json", action="store_true")
        s.set_defaults(fn=fn)
