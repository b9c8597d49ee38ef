"""The directories a run writes: locks on ``--out`` and ``checkpoint.dir``, one run per
checkpoint directory, and resuming from the newest usable checkpoint."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from desmpi.comm import Comm
from desmpi.config import Config, ConfigError
from desmpi.locks import DirLock, LockedError

if TYPE_CHECKING:  # annotations only: trainer imports nothing from here
    from desmpi.trainer import Trainer

log = logging.getLogger("desmpi.train")


_RESUME_KEYS = (("model", None), ("data", "train"), ("train", "batch_size"),
                ("train", "optimizer"), ("train", "dense_optimizer"), ("train", "dtype"),
                ("train", "seed"))


def _check_resumable(saved: dict, cfg: Config, where: Path) -> None:
    from desmpi.config import from_dict

    saved = from_dict(saved, f"{where}/manifest.json").to_dict()  # JSON lists -> tuples
    now = cfg.to_dict()
    for sec, key in _RESUME_KEYS:
        a = saved[sec] if key is None else saved[sec][key]
        b = now[sec] if key is None else now[sec][key]
        if a != b:
            name = sec if key is None else f"{sec}.{key}"
            raise ConfigError(f"--resume: {name} is {b!r} but checkpoint {where} was trained "
                              f"with {a!r}")


def find_checkpoint(cfg: Config, comm: Comm) -> tuple[str, dict] | None:
    """(directory, manifest) of the newest complete checkpoint of checkpoint.dir, the same on
    every rank (rank 0 looks); None when there is none."""
    from desmpi.checkpoint import newest_valid

    found = newest_valid(cfg.checkpoint.dir) if comm.rank == 0 else None
    return comm.bcast_object(None if found is None else (str(found[0]), found[1]))


def keep_choice(cfg: Config, found: tuple[str, dict] | None, comm: Comm) -> Config:
    """dist 'auto' on --resume: at the P the checkpoint was saved at, the variant the run had
    settled on (its trial over) is kept, written into cfg's 'auto' keys: the run continues
    bit for bit and spends no start-up on choosing again. Onto another P, from a checkpoint
    saved during the trial, or where cfg's explicit keys exclude that variant, cfg is
    returned as it is (the choice is made again)."""
    from desmpi.variants import Variant

    if found is None or not cfg.dist.is_auto:
        return cfg
    d, m = found
    saved = (m.get("config") or {}).get("dist") or {}
    try:
        v = Variant.of(saved["strategy"], saved["aggregate"], saved["input"])
    except (KeyError, TypeError, ValueError):
        v = None
    why = ""
    if m.get("world_size") != comm.size:
        why = f"the checkpoint was saved at P = {m.get('world_size')}"
    elif not m.get("variant_settled") or v is None:
        why = "the checkpoint was saved before the run settled on a variant"
    elif v not in cfg.dist.candidates():
        why = f"{v} is not among dist's candidates now"
    if why:
        if comm.rank == 0:
            log.info("dist auto: choosing again on --resume (%s)", why)
        return cfg
    if comm.rank == 0:
        log.info("dist auto: resuming with %s, the variant the run settled on (%s, P = %d)",
                 v, d, comm.size)
    return dataclasses.replace(cfg, dist=cfg.dist.resolved(v))


LOOK = object()  # resume_point's default: look for the checkpoint (find_checkpoint)


def resume_point(tr: Trainer, cfg: Config, comm: Comm, check_config: bool = True,
                 allow_fresh: bool = False, found=LOOK) -> tuple[int, str | None]:
    """Restore the newest complete checkpoint of checkpoint.dir (``found``: what
    :func:`find_checkpoint` gave, None included, when the caller looked already); returns (its
    step, the run id it belongs to). Nothing usable is an error unless ``allow_fresh`` (then
    (0, None))."""
    from desmpi.checkpoint import restore

    if found is LOOK:
        found = find_checkpoint(cfg, comm)
    if found is None:
        if not allow_fresh:
            raise ConfigError(f"--resume: no usable checkpoint in checkpoint.dir = "
                              f"{cfg.checkpoint.dir!r}; pass --allow-fresh to start from step 0")
        log.warning("--resume: no usable checkpoint in %r; starting from step 0 "
                    "(--allow-fresh)", cfg.checkpoint.dir)
        return 0, None
    d, manifest = Path(found[0]), found[1]
    if check_config:
        _check_resumable(manifest["config"], cfg, d)
    restore(d, manifest, comm, tr.table, tr.model, tr.dense_opt, tr.strategy)
    if comm.rank == 0:
        log.info("resumed from %s (step %d, saved at P=%d)", d, manifest["step"],
                 manifest["world_size"])
    return int(manifest["step"]), manifest.get("run_id")


def claim_checkpoint_dir(cfg: Config, comm: Comm, force: bool) -> None:
    """A new run refuses a checkpoint.dir that holds another run's checkpoints (pruning and
    --resume would mix the two runs); ``force`` removes them instead."""
    from desmpi.checkpoint import complete_steps, step_dir

    root = Path(cfg.checkpoint.dir)
    old = complete_steps(root) if comm.rank == 0 and root.exists() else []
    old = comm.bcast_object(old)
    if not old:
        return
    if not force:
        raise ConfigError(f"checkpoint.dir = {str(root)!r} holds checkpoints of another run "
                          f"(steps {old[0]}-{old[-1]}): pass --resume to continue it, --force "
                          "to delete them, or choose a new directory")
    if comm.rank == 0:
        import shutil

        for s in old:
            shutil.rmtree(step_dir(root, s), ignore_errors=True)
        log.warning("--force: deleted %d earlier checkpoint(s) in %s", len(old), root)
    comm.barrier()


def lock_dirs(cfg: Config, comm: Comm, out) -> list[DirLock]:
    """Rank 0 takes the locks of ``--out`` and ``checkpoint.dir``; every rank raises the same
    LockedError when another run holds one."""
    held, err = [], None
    if comm.rank == 0:
        seen = set()
        try:
            for d, what in ((out, "--out"), (cfg.checkpoint.dir, "checkpoint.dir")):
                if d and Path(d).resolve() not in seen:
                    seen.add(Path(d).resolve())
                    held.append(DirLock(d, what).acquire())
        except LockedError as e:
            err = str(e)
            for lk in held:
                lk.release()
            held = []
    err = comm.bcast_object(err)
    if err:
        raise LockedError(err)
    return held
