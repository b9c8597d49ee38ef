"""Checkpoints: one HDF5 file per rank + a dense file + a manifest written last, atomically.

Layout of ``checkpoint.dir``::

    step-00000050/rank-00000.h5 ... rank-{P-1}.h5   keys, rows, optimizer slots, table metadata
    step-00000050/dense.h5                          dense parameters and optimizer state
    step-00000050/manifest.json                     written last: temp name + fsync + rename

A step directory without a valid manifest is incomplete and ignored. The manifest records
format version, step, world size, data position, config, the sparse optimizer's step and a
SHA-256 of every file, so a truncated or altered file is detected on restore, which then falls
back to the previous complete checkpoint. Restoring onto a different number of ranks re-shards
the rows by owner under the new P. A new checkpoint never touches the previous ones; only after
it is complete are checkpoints beyond ``checkpoint.keep`` removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from desmpi.comm import Comm
from desmpi.errors import UserError
from desmpi.kernels.hashing import owners

log = logging.getLogger("desmpi.checkpoint")
FORMAT, VERSION = "desmpi-checkpoint", 1
FEEDBACK = "feedback"  # the rank files' group of error-feedback state


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_h5(path: Path, arrays: dict, attrs: dict) -> str:
    """Write arrays to ``path`` via a temporary name; returns the file's SHA-256."""
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
        for k, v in attrs.items():
            f.attrs[k] = v
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return _sha256(path)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def save(root: str | Path, step: int, comm: Comm, table, model, dense_opt, extra: dict,
         keep: int, feedback: dict[str, np.ndarray] | None = None) -> Path:
    """Write the checkpoint of ``step`` collectively; returns its directory. ``feedback``:
    this rank's error-feedback state (:meth:`Strategy.feedback_state`), kept in its rank file
    under ``feedback/``."""
    root = Path(root)
    d = step_dir(root, step)
    with comm.acct.scoped("checkpoint"):
        if comm.rank == 0:
            if d.exists():  # an incomplete earlier attempt at this step
                shutil.rmtree(d)
            d.mkdir(parents=True)
        comm.barrier()
        n = table.n
        name = f"rank-{comm.rank:05d}.h5"
        arrays = {"keys": table.keys(), "weights": table.weights[:n], "slots": table.slots[:n]}
        if table.lifecycle is not None:
            arrays.update(table.lifecycle.state(table))
        arrays.update({f"{FEEDBACK}/{k}": v for k, v in (feedback or {}).items()})
        digest = _write_h5(d / name, arrays,
                           {"R": table.R, "emb_col": table.emb_col, "S": table.S,
                            "seed": table.seed, "init_std": table.init_std,
                            "slot_init": table.slot_init, "dtype": table.dtype.name,
                            "rank": comm.rank, "world_size": comm.size, "step": step})
        files = dict(comm.allgather_object((name, digest)))
        if comm.rank == 0:
            files["dense.h5"] = _write_h5(d / "dense.h5", {"params": model.params.data,
                                                         "opt_state": dense_opt.state}, {})
            manifest = {"format": FORMAT, "version": VERSION, "step": step,
                        "world_size": comm.size, "files": files, **extra}
            tmp = d / "manifest.json.tmp"
            with open(tmp, "w") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, d / "manifest.json")
            _fsync_dir(d)
            _prune(root, keep, extra.get("run_id"))
        comm.barrier()
    return d


def _run_of(root: Path, step: int) -> str | None:
    try:
        return json.loads((step_dir(root, step) / "manifest.json").read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def _prune(root: Path, keep: int, run_id: str | None = None) -> None:
    """Keep the ``keep`` newest complete checkpoints of run ``run_id``; another run's are
    never touched (a run refuses a directory holding them, see desmpi.rundirs)."""
    done = [s for s in complete_steps(root) if _run_of(root, s) == run_id]
    for s in done[:-keep] if keep > 0 else []:
        shutil.rmtree(step_dir(root, s), ignore_errors=True)
    for p in root.glob("step-*"):  # incomplete attempts older than the newest complete one
        if done and not (p / "manifest.json").exists() and p.name < step_dir(root, done[-1]).name:
            shutil.rmtree(p, ignore_errors=True)


def complete_steps(root: Path) -> list[int]:
    """Steps whose directory has a manifest, oldest first."""
    out = []
    for p in Path(root).glob("step-*"):
        if (p / "manifest.json").exists():
            try:
                out.append(int(p.name.split("-")[1]))
            except ValueError:
                continue
    return sorted(out)


def read_dataset(f: h5py.File, name: str, finite: bool = False) -> np.ndarray:
    """Dataset ``name`` of an open file, refusing what a hostile file could redirect: links
    (soft or external) and external or virtual storage; ``finite``: NaN or inf is an error."""
    link = f.get(name, getlink=True)
    if not isinstance(link, h5py.HardLink):
        raise CheckpointError(f"{f.filename}: '{name}' is a {type(link).__name__}, not a "
                              "dataset stored in the file")
    ds = f[name]
    if not isinstance(ds, h5py.Dataset) or ds.external or ds.is_virtual:
        raise CheckpointError(f"{f.filename}: '{name}' is not a dataset stored in the file "
                              "(external or virtual storage is not followed)")
    a = ds[...]
    if finite and a.dtype.kind == "f" and not np.isfinite(a).all():
        raise CheckpointError(f"{f.filename}: '{name}' holds NaN or inf values")
    return a


def verify(d: Path) -> dict:
    """The manifest of checkpoint ``d`` after checking version, files and checksums."""
    mpath = d / "manifest.json"
    try:
        m = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{mpath}: unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
        raise CheckpointError(f"{mpath}: format {m.get('format')!r} version "
                              f"{m.get('version')!r}; this desmpi reads {FORMAT} {VERSION}")
    P = m.get("world_size")
    files = m.get("files")
    if not isinstance(P, int) or isinstance(P, bool) or not 1 <= P <= 1 << 20 or \
            not isinstance(files, dict):
        raise CheckpointError(f"{mpath}: world_size {P!r} / files are not a checkpoint's")
    # names, never paths: exactly the files a checkpoint of world_size ranks has
    want = {f"rank-{r:05d}.h5" for r in range(P)} | {"dense.h5"}
    if set(files) != want:
        odd = sorted(set(files) ^ want)[:3]
        raise CheckpointError(f"{mpath}: files {odd}... do not match world_size = {P} (a "
                              "checkpoint lists rank-NNNNN.h5 for each rank and dense.h5)")
    for name, digest in files.items():
        f = d / name
        if not f.is_file() or f.is_symlink():
            raise CheckpointError(f"{f}: missing or not a regular file")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f}: checksum mismatch (truncated or modified)")
    return m


def newest_valid(root: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies, warning about every newer one that does not."""
    root = Path(root)
    for s in reversed(complete_steps(root)):
        d = step_dir(root, s)
        try:
            return d, verify(d)
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s; falling back to the previous one", d, e)
    return None


def _feedback(f: h5py.File) -> dict[str, np.ndarray]:
    """A rank file's error-feedback state (:meth:`Strategy.feedback_state`'s names)."""
    out: dict[str, np.ndarray] = {}

    def group(g: str, link) -> None:
        if not isinstance(link, h5py.HardLink) or not isinstance(f[g], h5py.Group):
            raise CheckpointError(f"{f.filename}: '{g}' is not a group stored in the file")

    top = f.get(FEEDBACK, getlink=True)
    if top is None:  # an uncompressed run's file
        return out
    group(FEEDBACK, top)
    for kind in ("residual", "threshold"):
        g, link = f"{FEEDBACK}/{kind}", f[FEEDBACK].get(kind, getlink=True)
        if link is None:
            continue
        group(g, link)
        for name in f[g]:
            out[f"{kind}/{name}"] = read_dataset(f, f"{g}/{name}", finite=True)
    return out


def _merge_feedback(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The error-feedback state of P_old ranks as one rank's, for a restore onto another P:
    each residual summed over the old ranks in rank order (the compressed Allreduce sends
    Σ_ranks (gradient + residual), so the sum is what the feedback must still deliver; rank 0
    of the new P carries it, the others start at zero); τ is dropped (re-estimated at the
    first step: it belongs to one rank's vector)."""
    out: dict[str, np.ndarray] = {}
    for part in parts:
        for k, v in part.items():
            if not k.startswith("residual/"):
                continue
            if k in out and out[k].shape != v.shape:
                raise CheckpointError(f"error-feedback residual {k!r} has shapes "
                                      f"{out[k].shape} and {v.shape} in different rank files")
            out[k] = out[k] + v if k in out else np.array(v)
    return out


def _mine(keys: np.ndarray, comm: Comm) -> np.ndarray:
    if comm.size == 1:
        return np.ones(keys.shape[0], dtype=bool)
    return owners(keys, comm.size) == comm.rank


def restore(d: Path, manifest: dict, comm: Comm, table, model, dense_opt,
            strategy=None) -> None:
    """Load checkpoint ``d`` into this rank's table and the dense state, at any P, and, given
    ``strategy``, its error-feedback state (:meth:`Strategy.load_feedback_state`).

    Same P: each rank reads its own file (its own residuals and τ: the run continues bit for
    bit). Other P: each rank reads every rank file and keeps the keys it owns under the new P;
    the residuals are summed onto rank 0 (:func:`_merge_feedback`).
    """
    P_old = int(manifest["world_size"])
    names = [f"rank-{r:05d}.h5" for r in range(P_old)]
    mine = [names[comm.rank]] if P_old == comm.size else names
    feedback: list[dict[str, np.ndarray]] = []
    takes_feedback = strategy is not None and (P_old == comm.size or comm.rank == 0)
    for name in mine:
        with h5py.File(d / name, "r") as f:
            if takes_feedback:  # onto another P only rank 0 takes (the sum of) them
                feedback.append(_feedback(f))
            if (int(f.attrs["R"]), int(f.attrs["S"]), int(f.attrs["emb_col"])) != \
                    (table.R, table.S, table.emb_col):
                raise CheckpointError(f"{d / name}: rows of width {f.attrs['R']} with "
                                      f"{f.attrs['S']} slots do not fit this model's "
                                      f"{table.R} / {table.S} (another model or optimizer?)")
            keys = read_dataset(f, "keys")
            w = read_dataset(f, "weights", finite=True)
            s = read_dataset(f, "slots", finite=True)
            life = {k: read_dataset(f, k) for k in ("last_seen", "count_keys", "count_values")
                    if k in f}
        if P_old != comm.size:
            keep = _mine(keys, comm)
            keys, w, s = keys[keep], w[keep], s[keep]
            if "last_seen" in life:
                life["last_seen"] = life["last_seen"][keep]
            if "count_keys" in life:
                ck = _mine(life["count_keys"], comm)
                life["count_keys"] = life["count_keys"][ck]
                life["count_values"] = life["count_values"][ck]
        table.load_rows(keys, w, s)
        if table.lifecycle is not None and "last_seen" in life:
            table.lifecycle.load(table, keys, life["last_seen"], life.get("count_keys"),
                                 life.get("count_values"))
    with h5py.File(d / "dense.h5", "r") as f:
        p = read_dataset(f, "params", finite=True)
        st = read_dataset(f, "opt_state", finite=True)
    if p.shape != model.params.data.shape or st.shape != dense_opt.state.shape:
        raise CheckpointError(f"{d / 'dense.h5'}: dense parameters {p.shape} / optimizer state "
                              f"{st.shape} do not fit this model ({model.params.data.shape} / "
                              f"{dense_opt.state.shape})")
    model.params.data[:] = p
    dense_opt.state[...] = st
    if strategy is not None:
        if P_old == comm.size:
            strategy.load_feedback_state(feedback[0])
        else:
            strategy.load_feedback_state(_merge_feedback(feedback) if comm.rank == 0 else {})
