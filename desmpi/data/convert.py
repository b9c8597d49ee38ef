"""Text -> HDF5 conversion; a parallel job under mpiexec (each rank parses a byte range)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np

from desmpi.comm import Comm
from desmpi.data.batch import Batch
from desmpi.data.h5 import H5Writer
from desmpi.data.reader import BadLines, DataError, byte_range, read_header, read_text
from desmpi.data.schema import Schema

log = logging.getLogger(__name__)


def convert(inputs: list[str], out: str | Path, schema: Schema, comm: Comm | None = None,
            max_bad_fraction: float = 0.001, block_bytes: int | None = None) -> dict:
    """Convert text files to one data set; returns a report (rows, bad lines, rows/s).

    Rows keep the order of the files and of the lines in them at any number of ranks: rank r
    parses the lines that start in the r-th byte range of every file and writes them to a part
    file; rank 0 copies the parts into the output in (file, rank) order. Bad lines are counted
    over all ranks with their true line numbers; past ``max_bad_fraction`` nothing is written.
    """
    comm = comm or Comm.local()
    P, r = comm.size, comm.rank
    t0 = time.perf_counter()
    if not 0.0 <= max_bad_fraction <= 1.0:  # NaN too
        raise DataError(f"--max-bad-fraction {max_bad_fraction!r}: must be in [0, 1]")
    out = Path(out)
    for p in inputs:
        if not os.path.exists(p):
            raise FileNotFoundError(f"input {p} not found")
        if out.exists() and os.path.samefile(p, out) or \
                Path(p).resolve() == out.resolve():
            raise DataError(f"--out {out} is the input {p}: it would be replaced by HDF5")
        schema.roles(read_header(p, schema)[0])  # a bad header fails before any work
    if r == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in out.parent.glob(f"{out.name}.part*"):  # parts of a killed earlier run
            log.warning("removing %s, left by an earlier conversion that did not finish", stale)
            stale.unlink(missing_ok=True)
    comm.barrier()
    part = out.with_name(f"{out.name}.part{r}")
    attrs = dict(source=[str(p) for p in inputs], schema=schema.name,
                 fields=list(schema.categorical), dense_names=list(schema.dense),
                 dense_transform=schema.dense_transform)
    w = H5Writer(part, len(schema.categorical), len(schema.dense), attrs=attrs)
    file_rows, file_bad = [], []
    kw = {} if block_bytes is None else {"block_bytes": block_bytes}
    try:
        for p in inputs:
            s, e = byte_range(p, r, P)
            fb = BadLines()
            rows0 = w.n
            for b in read_text(p, schema, fb, s, e, **kw):
                w.append(b)
            file_rows.append(w.n - rows0)
            file_bad.append(fb)
        w.close()
    except BaseException:
        w.abandon()
        raise
    everyone = comm.allgather_object((file_rows, file_bad))
    bad = BadLines()
    for i, p in enumerate(inputs):
        preceding = 1 if schema.header else 0
        for rr, (_, fbs) in enumerate(everyone):
            if rr > 0:  # ranges after the first counted their lines from 1
                fbs[i].shift(p, preceding)
            bad.merge(fbs[i])
            preceding += fbs[i].lines
    rows = [e[0] for e in everyone]
    try:
        if r == 0:
            bad.check(max_bad_fraction)
            if not sum(sum(x) for x in rows):
                raise DataError(f"no data rows in {', '.join(map(str, inputs))} ({bad.lines} "
                                f"lines, {bad.bad} malformed, {bad.blank} blank): nothing "
                                "written")
            _merge_parts(out, len(inputs), rows, bad.bad)
    finally:
        comm.barrier()
        part.unlink(missing_ok=True)
    bad.check(max_bad_fraction)  # every rank raises the same error
    total = int(sum(sum(x) for x in rows))
    if not total:
        raise DataError(f"no data rows in {', '.join(map(str, inputs))}")
    dt = time.perf_counter() - t0
    if bad.bad and r == 0:
        log.warning("skipped %s", bad.describe())
    return {"rows": total, "lines": bad.lines, "bad_lines": bad.bad, "blank_lines": bad.blank,
            "bad": bad.by_reason,
            "examples": [f"{p}:{ln}: {rs} (column {c})" for p, ln, rs, c in bad.examples[:20]],
            "seconds": dt, "ranks": P, "rows_per_s": total / dt if dt > 0 else 0.0}


def _merge_parts(out: Path, n_files: int, rows: list[list[int]], n_bad: int) -> None:
    """Rank 0: copy the part files into ``out`` in (file, rank) order."""
    names = [out.with_name(f"{out.name}.part{r}") for r in range(len(rows))]
    if len(names) == 1:
        with h5py.File(names[0], "r+") as f:
            f.attrs["bad_lines"] = n_bad
        os.replace(names[0], out)
        return
    parts = [h5py.File(n, "r") for n in names]
    try:
        a = dict(parts[0].attrs)
        w = H5Writer(out, int(a["n_fields"]), int(a["n_dense"]))
        w.set_attrs({k: v for k, v in a.items() if k not in ("rows", "bad_lines")})
        try:
            offs = [0] * len(parts)
            for i in range(n_files):
                for r, pf in enumerate(parts):
                    a1 = offs[r] + rows[r][i]
                    for s in range(offs[r], a1, 1 << 20):
                        e = min(a1, s + (1 << 20))
                        w.append(Batch(pf["labels"][s:e], pf["dense"][s:e],
                                       np.ascontiguousarray(pf["keys"][s:e]).reshape(-1), w.F))
                    offs[r] = a1
            w.close({"bad_lines": n_bad})
        except BaseException:
            w.abandon()
            raise
    finally:
        for pf in parts:
            pf.close()
