"""``desmpi simulate cluster`` and ``desmpi simulate collective``: describe a cluster from its
OSU micro-benchmark output, and cost single collectives on a cluster.

Sizes on the command line follow the OSU benchmarks' convention for each collective: allreduce
and bcast the vector's bytes; allgather one rank's block; reduce_scatter all blocks together;
alltoall the bytes for one peer.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from sim.cluster import Cluster, dump_cluster, load_cluster
from sim.collectives import Sizes, chosen, sized_time
from sim.osu import OsuError, cluster_from_osu, read
from sim.selection import LIBRARIES

log = logging.getLogger("desmpi")
KINDS = ("allreduce", "allgather", "reduce_scatter", "alltoall", "bcast")


def osu_sizes(kind: str, nbytes: float, P: int) -> Sizes:
    """The sizes of a collective given the OSU benchmark's message size (module docstring)."""
    if kind in ("allreduce", "bcast"):
        return Sizes(kind, nbytes)
    if kind == "allgather":
        return Sizes(kind, nbytes * P, nbytes)
    if kind == "reduce_scatter":
        return Sizes(kind, nbytes, nbytes / P)
    if kind == "alltoall":
        return Sizes(kind, nbytes * (P - 1), None, nbytes * (P - 1))
    raise ValueError(f"--kind {kind!r}: one of {', '.join(KINDS)}")


def sized_cluster(cl: Cluster, P: int, ranks_per_node: int | None, mpi: str | None) -> Cluster:
    """``cl`` with P ranks (ranks per node kept unless given; nodes = ⌈P / rpn⌉)."""
    if ranks_per_node:
        cl = replace(cl, ranks_per_node=ranks_per_node)
    cl = cl.with_ranks(P)
    return replace(cl, mpi=mpi) if mpi else cl


def collective_rows(cl: Cluster, kind: str, sizes: list[float], ranks: list[int],
                    ranks_per_node: int | None = None, mpi: str | None = None,
                    algorithm: str | None = None) -> list[dict]:
    """One row per (ranks, bytes): kind, bytes, ranks, ranks_per_node, algorithm, time_s."""
    rows = []
    for P in ranks:
        if P < 1:
            raise ValueError(f"--ranks: {P} must be >= 1")
        c = sized_cluster(cl, P, ranks_per_node, mpi)
        for nb in sizes:
            z = osu_sizes(kind, nb, P)
            alg = algorithm or chosen(z, c, P) if P > 1 else "none"
            rows.append({"kind": kind, "bytes": nb, "ranks": P,
                         "ranks_per_node": c.ranks_per_node, "mpi": c.mpi, "algorithm": alg,
                         "time_s": sized_time(z, c, P, algorithm or "auto")})
    return rows


def check_against(cl: Cluster, paths: list[str], kind: str = "allreduce",
                  ranks_per_node: int | None = None) -> dict:
    """Predicted against measured for every (nodes, size) of OSU collective result files
    (medians of their repeats): rows and the median |error|, and how many lie under."""
    rows = []
    for path in paths:
        t = read(path)
        if t.unit != "us":
            raise OsuError(f"{path}: a collective latency file (µs) is needed")
        for g in t.groups():
            if g < 1:
                raise OsuError(f"{path}: no node count column (pods / nodes / ranks); the "
                               "run's size is needed")
            P = g * (ranks_per_node or 1)
            sizes, us = t.curve(g)
            for nb, u in zip(sizes, us):
                r = collective_rows(cl, kind, [float(nb)], [P], ranks_per_node or 1)[0]
                r.update(file=Path(path).name, nodes=g, measured_s=u * 1e-6,
                         error=(r["time_s"] - u * 1e-6) / (u * 1e-6))
                rows.append(r)
    if not rows:
        raise OsuError(f"no measurements in {paths}")
    errs = [r["error"] for r in rows]
    return {"rows": rows, "points": len(rows),
            "median_abs_error": statistics.median(abs(e) for e in errs),
            "under": sum(e < 0 for e in errs), "over": sum(e > 0 for e in errs)}


def _table(rows: list[dict]) -> str:
    L = [f"{'ranks':>6} {'rpn':>4} {'bytes':>10} {'algorithm':>24} {'time us':>12}"]
    for r in rows:
        L.append(f"{r['ranks']:>6} {r['ranks_per_node']:>4} {int(r['bytes']):>10} "
                 f"{r['algorithm']:>24} {r['time_s'] * 1e6:>12.2f}")
    return "\n".join(L)


def _floats(s: str, what: str) -> list[float]:
    try:
        out = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what}: comma-separated numbers expected, got {s!r}") from None
    if not out or any(x < 0 for x in out):
        raise ValueError(f"{what}: at least one value, all >= 0")
    return out


def cmd_cluster(a) -> int:
    cl = cluster_from_osu(a.osu_latency, a.nodes, a.ranks_per_node, bw=a.osu_bw,
                          mbw_mr=a.osu_mbw_mr, intra_latency=a.intra_osu_latency,
                          cores_per_node=a.cores_per_node, mpi=a.mpi, reduce_Bps=a.reduce_Bps,
                          name=a.name or "")
    cl = replace(cl, waits=a.waits)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump_cluster(cl))
    load_cluster(str(out))  # what was written reads back
    rep = {"cluster": str(out), "latency_s": cl.inter.latency_s,
           "bandwidth_Bps": cl.inter.bandwidth_Bps, "curve_points": len(cl.inter.curve_bytes),
           "mpi": cl.mpi}
    log.info("wrote %s: inter-node α %.2f µs, bandwidth %.3g B/s, %d curve points; %s", out,
             cl.inter.latency_s * 1e6, cl.inter.bandwidth_Bps, len(cl.inter.curve_bytes),
             cl.source)
    if a.osu_allreduce:
        chk = check_against(cl, a.osu_allreduce, "allreduce", a.ranks_per_node)
        rep["allreduce_check"] = {k: v for k, v in chk.items() if k != "rows"}
        log.info("its own osu_allreduce: median |error| %.1f%% over %d points (%d under, %d "
                 "over)", 100 * chk["median_abs_error"], chk["points"], chk["under"],
                 chk["over"])
    if a.json:
        print(json.dumps(rep))
    return 0


def cmd_collective(a) -> int:
    cl = load_cluster(a.cluster)
    if a.kind not in KINDS:
        raise ValueError(f"--kind {a.kind!r}: one of {', '.join(KINDS)}")
    ranks = [int(x) for x in _floats(a.ranks, "--ranks")]
    rows = collective_rows(cl, a.kind, _floats(a.bytes, "--bytes"), ranks, a.ranks_per_node,
                           a.mpi, a.algorithm)
    print(json.dumps(rows) if a.json else _table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="desmpi simulate", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="tool", required=True)
    c = sub.add_parser("cluster", help="a cluster TOML from OSU micro-benchmark output")
    c.add_argument("--osu-latency", required=True, help="inter-node osu_latency (text or CSV)")
    c.add_argument("--osu-bw", default=None, help="osu_bw: the peak bandwidth")
    c.add_argument("--osu-mbw-mr", default=None,
                   help="osu_mbw_mr with the node's pairs at once: the NIC's peak bandwidth")
    c.add_argument("--osu-allreduce", action="append", default=[],
                   help="osu_allreduce results to check the cluster against (repeatable)")
    c.add_argument("--intra-osu-latency", default=None, help="osu_latency inside one node")
    c.add_argument("--nodes", type=int, required=True)
    c.add_argument("--ranks-per-node", type=int, required=True)
    c.add_argument("--cores-per-node", type=int, default=0)
    c.add_argument("--mpi", default="mpich", choices=LIBRARIES,
                   help="the MPI library whose algorithm selection applies")
    c.add_argument("--reduce-Bps", type=float, default=0.0,
                   help="γ: reduction bytes/s per rank (desmpi bench compute); 0: left out")
    c.add_argument("--waits", default="chain", choices=("chain", "step"),
                   help="slow ranks: the collective waits for the slowest chain of steps "
                   "(default) or every step for its slowest rank (the pessimistic bound)")
    c.add_argument("--name", default=None)
    c.add_argument("--out", required=True)
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_cluster)
    k = sub.add_parser("collective", help="time of single collectives on a cluster")
    k.add_argument("--cluster", required=True, help="preset (10gbe, 25gbe, edr, hdr) or TOML")
    k.add_argument("--kind", required=True, choices=KINDS)
    k.add_argument("--bytes", required=True, help="OSU message sizes, comma separated")
    k.add_argument("--ranks", required=True, help="rank counts, comma separated")
    k.add_argument("--ranks-per-node", type=int, default=None)
    k.add_argument("--mpi", default=None, choices=LIBRARIES,
                   help="selection rules (default: the cluster's)")
    k.add_argument("--algorithm", default=None, help="force one algorithm (ring, ...)")
    k.add_argument("--json", action="store_true")
    k.set_defaults(fn=cmd_collective)
    return p


def main(argv: list[str]) -> int:
    """``desmpi simulate cluster|collective ARGS`` (``argv`` without 'simulate')."""
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except (OsuError, ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"desmpi simulate {a.tool}: {e}\n")
        return 2
