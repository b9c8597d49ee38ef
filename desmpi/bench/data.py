"""``desmpi bench data``: text -> HDF5 conversion and training-read rates on real Criteo rows.

The input is the repository's tests/data/criteo/head15k.tsv (or any Criteo TSV) repeated to
``rows`` lines, so the parser sees real Kaggle bytes.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

from desmpi.comm import Comm
from desmpi.data.convert import convert
from desmpi.data.h5 import CtrDataset
from desmpi.data.schema import CRITEO_TSV
from desmpi.data.slicing import n_batches, rank_slice


def make_text(src: str, rows: int, out: str) -> int:
    with open(src, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    with open(out, "wb") as f:
        left = rows
        while left > 0:
            chunk = lines[:left]
            f.write(b"".join(chunk))
            left -= len(chunk)
    return os.path.getsize(out)


def bench_data(src: str, rows: int, batch: int, repeats: int, comm: Comm,
               workdir: str | None = None) -> dict:
    """Median conversion rows/s (per rank) and training-read rows/s of rank slices (the
    working directory must be shared by the ranks)."""
    tmp = comm.bcast_object(tempfile.mkdtemp(dir=workdir) if comm.rank == 0 else None)
    try:
        txt = os.path.join(tmp, "criteo.tsv")
        h5 = os.path.join(tmp, "criteo.h5")
        if comm.rank == 0:
            size = make_text(src, rows, txt)
        else:
            size = 0
        comm.barrier()
        conv = []
        for _ in range(repeats):
            rep = convert([txt], h5, CRITEO_TSV, comm)
            conv.append(rep["seconds"])
        reads = []
        for _ in range(repeats):
            ds = CtrDataset(h5)
            t0 = time.perf_counter()
            n = 0
            for t in range(n_batches(ds.n, batch)):
                a, b = rank_slice(t, batch, ds.n, comm.size, comm.rank)
                n += ds.read(a, b).n
            reads.append(time.perf_counter() - t0)
            ds.close()
        comm.barrier()
    finally:
        if comm.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    conv_s = statistics.median(conv)
    read_s = statistics.median(reads)
    return {"rows": rows, "text_bytes": size, "ranks": comm.size,
            "convert_s": conv_s, "convert_rows_per_s": rows / conv_s,
            "convert_rows_per_s_per_rank": rows / conv_s / comm.size,
            "read_s": read_s, "read_rows_per_s_per_rank": n / read_s, "batch": batch,
            "repeats": repeats}
