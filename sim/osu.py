"""Readers of OSU micro-benchmark output (MVAPICH's osu_latency, osu_bw, osu_mbw_mr,
osu_allreduce, ...), the numbers cluster users have.

Two forms are read:

* the benchmarks' own text output::

      # OSU MPI Latency Test v5.8
      # Size          Latency (us)
      0                       1.62
      1                       1.60

  Comment lines start with ``#``; a data line is a size in bytes and one or more numbers (the
  first is taken: latency or average time in µs, or bandwidth in MB/s for the bandwidth
  tests, as the header says). Collective tests print ``# Size  Avg Latency(us)`` and may add
  min/max/iterations columns.

* CSV with a header naming a ``Size`` column and a value column (``Latency(us)``, ``Avg
  Latency(us)``, ``Bandwidth (MB/s)``, ``MB/s``), optionally ``pods`` / ``nodes`` / ``ranks``
  (the run's size) and ``iter`` (a repeat). Repeats are reduced to their median.

Every problem raises :class:`OsuError` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from sim.cluster import SHARED_MEMORY, Cluster, Level


class OsuError(ValueError):
    """Unusable OSU output; the message names the file and line."""


@dataclass(frozen=True)
class OsuTable:
    """One benchmark's results: ``unit`` is 'us' (time) or 'MB/s' (bandwidth).

    rows: {(size_bytes, group): [values of the repeats]}; ``group`` is the run's node (or rank)
    count where the file says it (CSV ``pods``/``nodes``/``ranks``), else 0.
    """

    path: str
    test: str
    unit: str
    rows: dict[tuple[int, int], list[float]]

    def groups(self) -> list[int]:
        return sorted({g for _, g in self.rows})

    def spread(self) -> list[float]:
        """Standard deviation of the repeats per size (all groups pooled; 0 with one value),
        in the file's unit, in the order of :meth:`curve`'s sizes."""
        by: dict[int, list[float]] = {}
        for (size, _), vals in self.rows.items():
            by.setdefault(size, []).extend(vals)
        return [statistics.pstdev(by[s]) if len(by[s]) > 1 else 0.0 for s in sorted(by)]

    def curve(self, group: int | None = None) -> tuple[list[int], list[float]]:
        """(sizes, median value per size) of one group (all groups pooled when None)."""
        by: dict[int, list[float]] = {}
        for (size, g), vals in self.rows.items():
            if group is None or g == group:
                by.setdefault(size, []).extend(vals)
        if not by:
            raise OsuError(f"{self.path}: no data for group {group}")
        sizes = sorted(by)
        return sizes, [statistics.median(by[s]) for s in sizes]


_TIME_COLS = ("avg latency(us)", "latency(us)", "latency (us)", "avg latency (us)", "t_avg(us)")
_BW_COLS = ("bandwidth (mb/s)", "bandwidth(mb/s)", "mb/s")
_GROUP_COLS = ("pods", "nodes", "ranks", "np", "processes")


def read(path: str | Path) -> OsuTable:
    """Read one OSU result file (text or CSV, by its content)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise OsuError(f"{p}: no such file") from None
    except UnicodeDecodeError as e:
        raise OsuError(f"{p}: not text ({e})") from None
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if not first:
        raise OsuError(f"{p}: empty")
    if "," in first and not first.lstrip().startswith("#"):
        return _read_csv(p, text)
    return _read_text(p, text)


def _number(s: str, p: Path, line: int, what: str) -> float:
    try:
        x = float(s)
    except ValueError:
        raise OsuError(f"{p}:{line}: {what} {s!r} is not a number") from None
    if not math.isfinite(x) or x < 0:
        raise OsuError(f"{p}:{line}: {what} {s!r} must be finite and >= 0")
    return x


def _read_text(p: Path, text: str) -> OsuTable:
    test, unit = "", ""
    rows: dict[tuple[int, int], list[float]] = {}
    for i, ln in enumerate(text.splitlines(), 1):
        s = ln.strip()
        if not s:
            continue
        if s.startswith("#"):
            low = s.lower()
            if "osu" in low and "test" in low:
                test = s.lstrip("# ").strip()
            elif low.lstrip("# ").startswith("size"):
                unit = "MB/s" if "mb/s" in low else "us"
            continue
        parts = s.split()
        if len(parts) < 2:
            raise OsuError(f"{p}:{i}: expected 'size value', got {s!r}")
        size = _number(parts[0], p, i, "size")
        if size != int(size):
            raise OsuError(f"{p}:{i}: size {parts[0]!r} is not a whole number of bytes")
        val = _number(parts[1], p, i, "value")
        rows.setdefault((int(size), 0), []).append(val)
    if not rows:
        raise OsuError(f"{p}: no data lines (expected '# Size  Latency (us)' then one size a "
                       "line)")
    if not unit:
        raise OsuError(f"{p}: no '# Size ...' header line saying the unit")
    return OsuTable(str(p), test, unit, rows)


def _read_csv(p: Path, text: str) -> OsuTable:
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader)]
    low = [h.lower() for h in header]

    def col(names) -> int | None:
        for n in names:
            if n in low:
                return low.index(n)
        return None

    size_c = col(("size", "size (bytes)", "bytes"))
    if size_c is None:
        raise OsuError(f"{p}:1: no 'Size' column in the header {header}")
    val_c, unit = col(_TIME_COLS), "us"
    if val_c is None:
        val_c, unit = col(_BW_COLS), "MB/s"
    if val_c is None:
        raise OsuError(f"{p}:1: no value column (one of {_TIME_COLS + _BW_COLS}) in {header}")
    group_c = col(_GROUP_COLS)
    rows: dict[tuple[int, int], list[float]] = {}
    for i, rec in enumerate(reader, 2):
        if not rec or all(not x.strip() for x in rec):
            continue
        if len(rec) != len(header):
            raise OsuError(f"{p}:{i}: {len(rec)} fields, the header has {len(header)}")
        size = _number(rec[size_c], p, i, "size")
        if size != int(size):
            raise OsuError(f"{p}:{i}: size {rec[size_c]!r} is not a whole number of bytes")
        val = _number(rec[val_c], p, i, header[val_c])
        g = 0
        if group_c is not None:
            gv = _number(rec[group_c], p, i, header[group_c])
            g = int(gv)
        rows.setdefault((int(size), g), []).append(val)
    if not rows:
        raise OsuError(f"{p}: no data rows")
    name = re.sub(r"[-_]\d.*$", "", p.stem)
    return OsuTable(str(p), name, unit, rows)


def level_from_latency(t: OsuTable, bandwidth_Bps: float | None = None) -> Level:
    """A network level from an osu_latency curve (one-way µs per size; repeats and groups
    pooled by their median): the curve itself, α = the time of the smallest message, and the
    bandwidth beyond the largest size from ``bandwidth_Bps`` (osu_bw / osu_mbw_mr) or else the
    slope of the curve's last segment."""
    if t.unit != "us":
        raise OsuError(f"{t.path}: a latency curve (µs) is needed, this file holds {t.unit}")
    sizes, us = t.curve()
    if len(sizes) < 2:
        raise OsuError(f"{t.path}: at least two message sizes are needed, found {len(sizes)}")
    secs = [u * 1e-6 for u in us]
    sd = t.spread()
    if bandwidth_Bps is None:
        slope = (secs[-1] - secs[-2]) / (sizes[-1] - sizes[-2])
        if slope <= 0:
            raise OsuError(f"{t.path}: the two largest sizes ({sizes[-2]}, {sizes[-1]} B) do not "
                           "give a positive bandwidth; pass --osu-bw")
        bandwidth_Bps = 1.0 / slope
    return Level(secs[0], float(bandwidth_Bps), tuple(float(s) for s in sizes), tuple(secs),
                 tuple(x * 1e-6 for x in sd) if any(sd) else ())


def peak_bandwidth_Bps(t: OsuTable) -> float:
    """The largest bandwidth of an osu_bw / osu_mbw_mr table (OSU's MB/s are 10^6 bytes/s)."""
    if t.unit != "MB/s":
        raise OsuError(f"{t.path}: a bandwidth test (MB/s) is needed, this file holds {t.unit}")
    _, mbs = t.curve()
    return max(mbs) * 1e6


def cluster_from_osu(latency: str | Path, nodes: int, ranks_per_node: int, *,
                     bw: str | Path | None = None, mbw_mr: str | Path | None = None,
                     intra_latency: str | Path | None = None, cores_per_node: int = 0,
                     mpi: str = "mpich", reduce_Bps: float = 0.0, name: str = "") -> Cluster:
    """A cluster described by its own OSU numbers: the inter-node level from osu_latency
    (bandwidth from osu_mbw_mr — all pairs of a node at once, what a shared NIC gives — else
    osu_bw, else the curve's tail); the intra-node level from an intra-node osu_latency, else
    the shared-memory preset (its source says so)."""
    if nodes < 1 or ranks_per_node < 1:
        raise OsuError("nodes and ranks_per_node must be >= 1")
    lat = read(latency)
    peak = None
    src = [f"inter: {Path(latency).name}"]
    if mbw_mr is not None:
        peak = peak_bandwidth_Bps(read(mbw_mr))
        src.append(f"bandwidth: {Path(mbw_mr).name} (peak)")
    elif bw is not None:
        peak = peak_bandwidth_Bps(read(bw))
        src.append(f"bandwidth: {Path(bw).name} (peak)")
    inter = level_from_latency(lat, peak)
    if intra_latency is not None:
        intra = level_from_latency(read(intra_latency))
        src.append(f"intra: {Path(intra_latency).name}")
    else:
        intra = SHARED_MEMORY
        src.append("intra: shared-memory preset (no intra-node osu_latency given)")
    return Cluster(name or Path(latency).stem, nodes, ranks_per_node, intra, inter,
                   cores_per_node, source="; ".join(src), mpi=mpi, reduce_Bps=reduce_Bps)
