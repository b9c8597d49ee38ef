"""Replay of a trace (per step, per rank: compute spans and collectives) on a cluster.

Bulk-synchronous semantics: a collective starts when its last rank arrives and ends for all
ranks after its modelled time; compute spans are scaled by ``compute_scale`` (the ratio of the
target cluster's per-rank compute time to the traced machine's). Per step it reports the time,
the communication and compute parts, and the critical path: the rank whose late arrival each
collective waited for.

Trace (JSON): {"world_size": P, "steps": [{"step": t, "ranks": [[event, ...], ...]}]} with
events {"compute_s": x} or {"kind": k, "counts": [...], "itemsize": s}.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from sim.accounting import Collective
from sim.cluster import Cluster
from sim.collectives import collective_time


@dataclass
class StepReplay:
    step: int
    time_s: float
    comm_s: float
    compute_s: float
    critical_rank: int  # the rank most often last to arrive at a collective


def _collective(events: list[dict], P: int) -> Collective:
    kind = events[0]["kind"]
    if any(e.get("kind") != kind for e in events):
        raise ValueError(f"ranks disagree on the collective: {[e.get('kind') for e in events]}")
    if kind in ("alltoall", "alltoallv"):
        counts = np.array([e["counts"] for e in events], dtype=np.int64)
    else:
        counts = np.asarray(events[0]["counts"], dtype=np.int64)
    return Collective(kind, int(events[0]["itemsize"]), counts, int(events[0].get("root", 0)))


def replay_step(ranks: list[list[dict]], cluster: Cluster, compute_scale: float = 1.0,
                algorithm: str = "auto", step: int = 0) -> StepReplay:
    P = len(ranks)
    t = np.zeros(P)
    pos = [0] * P
    comm = 0.0
    late = Counter()
    while True:
        for r in range(P):  # run each rank's compute up to its next collective
            ev = ranks[r]
            while pos[r] < len(ev) and "compute_s" in ev[pos[r]]:
                t[r] += ev[pos[r]]["compute_s"] * compute_scale
                pos[r] += 1
        done = [pos[r] >= len(ranks[r]) for r in range(P)]
        if all(done):
            break
        if any(done):
            raise ValueError(f"step {step}: ranks {[r for r in range(P) if done[r]]} ended "
                             "while others wait in a collective")
        c = _collective([ranks[r][pos[r]] for r in range(P)], P)
        start = t.max()
        late[int(t.argmax())] += 1
        dt = collective_time(c, cluster, P, algorithm)
        t[:] = start + dt
        comm += dt
        for r in range(P):
            pos[r] += 1
    total = float(t.max())
    crit = late.most_common(1)[0][0] if late else int(t.argmax())
    return StepReplay(step, total, comm, total - comm, crit)


def replay(trace: dict, cluster: Cluster, compute_scale: float = 1.0,
           algorithm: str = "auto") -> list[StepReplay]:
    P = int(trace["world_size"])
    if cluster.ranks != P:
        cluster = cluster.with_ranks(P)
    return [replay_step(s["ranks"], cluster, compute_scale, algorithm, s.get("step", i))
            for i, s in enumerate(trace["steps"])]
