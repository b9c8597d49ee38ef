"""``dist.strategy = "auto"``: the simulator chooses how a run communicates.

At start-up, before any table exists: rank 0 counts the first global batches' keys (the counts
the plans use, :func:`desmpi.whatif.simulate.profile`), plans every candidate variant the
config allows (:meth:`desmpi.config.DistConfig.candidates`, each with the model its runs build)
and costs it on the cluster at hand; every rank gets the fastest, and the run is an ordinary
run of that variant (equivalence and exact byte plans hold as for any other).

The cluster at hand (``dist.cluster = "auto"``): ranks per node from MPI (shared-memory
split), α and β fitted to a short ``bench comm`` over the run's own ranks, γ and compute rates
from ``bench compute`` on rank 0, its sparse rates on the run's first batch (the table's size
and the keys' repeats set their cache hits), its codec rates under the run's codecs; cached
per (host set, P, data file, batch, codecs) under
``$DESMPI_CACHE`` (default ``~/.cache/desmpi``) so later runs start at once. A preset or
cluster TOML skips the measurement (compute rates are then the file's).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from desmpi.comm import Comm
from desmpi.data.h5 import CtrDataset
from desmpi.strategies.wire import FULL, Wire, rated_codecs
from desmpi.variants import Variant, parse
from sim.cluster import Cluster, ComputeRates, Level, load_cluster

log = logging.getLogger("desmpi.choose")
PROBE_BYTES = (1024, 65536, 1 << 20)  # bench comm sizes of the start-up calibration
RATES = ("gemm_flops", "sparse_keys_per_s", "mem_Bps", "keys_per_s", "route_keys_per_s",
         "bucket_keys_per_s", "sort_keys_per_s", "codec_elems_per_s", "select_elems_per_s",
         "codec_call_s")  # of bench compute, kept in ComputeRates
CACHED = ("latency_s", "bandwidth_Bps", "reduce_Bps", *RATES)
# how the calibration is measured, part of the cache key: a change leaves earlier caches unused
# (2: rank 0's compute rates with the other ranks asleep, not spinning on its core)
CALIBRATION = 2


@dataclass(frozen=True)
class Choice:
    """The chosen variant, its prediction and the ranking it won."""

    variant: str
    predicted_step_time_s: float | None
    predicted_wire_bytes_per_step: float | None
    ranking: list[dict]
    cluster: str
    seconds: float
    trial: dict | None = None  # the measured second stage (desmpi.whatif.trial), if it ran

    @property
    def runner_up(self) -> dict | None:
        return self.ranking[1] if len(self.ranking) > 1 else None

    def describe(self) -> str:
        if self.predicted_step_time_s is None:
            return f"auto: {self.variant} (the only candidate, or one rank: nothing to choose)"
        s = (f"auto: chose {self.variant}, predicted {self.predicted_step_time_s * 1e3:.2f} "
             f"ms/step, {self.predicted_wire_bytes_per_step / 1e6:.3f} MB/step on the wire")
        r = self.runner_up
        if r is not None:
            margin = r["step_time_s"] / self.predicted_step_time_s - 1
            s += f"; runner-up {r['variant']} at {r['step_time_s'] * 1e3:.2f} ms (+{margin:.1%})"
        return s + f"; cluster {self.cluster}; {self.seconds:.1f} s to choose"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["runner_up"] = self.runner_up
        return d


def _cache_path(comm: Comm, data: str = "") -> Path:
    hosts = sorted(set(comm.allgather_object(socket.gethostname())))
    key = hashlib.sha256(json.dumps([hosts, comm.size, data, CALIBRATION]).encode()
                         ).hexdigest()[:16]
    root = Path(os.environ.get("DESMPI_CACHE", Path.home() / ".cache" / "desmpi"))
    return root / f"cluster-{key}.json"


def data_id(ds: CtrDataset, B: int) -> str:
    """What the sparse rates depend on: the data file (path, size, modification time) and the
    batch of the rows they are measured on."""
    st = os.stat(ds.path)
    return f"{os.path.realpath(ds.path)}:{st.st_size}:{st.st_mtime_ns}:{B}"


def cluster_at_hand(comm: Comm, spec: str = "auto", ds: CtrDataset | None = None,
                    B: int = 0, wire: Wire = FULL) -> Cluster:
    """The cluster the run is on (module docstring); collective over ``comm``. ``ds``, ``B``:
    bench compute measures the sparse rates on the first B rows of ``ds`` (read on rank 0 only
    when measuring; None: random keys), and :func:`data_id` is part of the cache key; the
    codec's rates under ``wire``'s codecs (:func:`rated_codecs`, part of the key too)."""
    nodes, ppn = comm.node_layout()
    if spec != "auto":
        cl = load_cluster(spec)
        return replace(cl, nodes=nodes, ranks_per_node=ppn)
    from desmpi.bench.comm import bench_comm, bench_compute, fit_network

    codecs = list(rated_codecs(wire)) if wire.packed else None  # uncompressed: not measured
    codec, select = codecs if codecs else (None, "threshold")
    data = data_id(ds, B) if ds is not None else ""
    path = _cache_path(comm, data if codecs is None else f"{data}|{','.join(codecs)}")
    cached = None
    if comm.rank == 0 and path.exists():
        try:
            cached = json.loads(path.read_text())
            if not isinstance(cached, dict) or any(
                    not isinstance(cached.get(k), (int, float)) for k in CACHED):
                cached = None
        except (OSError, ValueError):
            cached = None  # a damaged or older cache is measured again
    cached = comm.bcast_object(cached)
    if cached is None:
        samples = bench_comm(comm, list(PROBE_BYTES), repeats=3) if comm.size > 1 else []
        rates = bench_compute(repeats=3, batch=ds.read(0, B) if ds is not None else None,
                              codec=codec, select=select) if comm.rank == 0 else None
        cached = None
        if comm.rank == 0:
            lvl = fit_network(samples)[0] if samples else Level(0.0, float("inf"))
            cached = {"latency_s": lvl.latency_s, "bandwidth_Bps": lvl.bandwidth_Bps,
                      "reduce_Bps": rates["reduce_Bps"],
                      # uncompressed, the codec's rates are not measured (nothing charges them)
                      **{k: rates.get(k, getattr(ComputeRates(), k)) for k in RATES},
                      "data": data, "codecs": codecs}
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text(json.dumps(cached))
                tmp.replace(path)
            except OSError as e:
                log.warning("could not cache the cluster calibration in %s: %s", path, e)
        cached = comm.bcast_object(cached, idle=True)  # rank 0's rates, not the others' spin
    lvl = Level(cached["latency_s"], cached["bandwidth_Bps"])
    rates = ComputeRates(**{k: cached[k] for k in RATES})
    return Cluster(f"at hand ({nodes} node(s) x {ppn})", nodes, ppn, lvl, lvl,
                   os.cpu_count() or 0, rates, reduce_Bps=cached["reduce_Bps"])


def _batch(cfg, ds: CtrDataset) -> int:
    """The global batch the choice profiles and calibrates on (the data may be smaller)."""
    return min(cfg.train.batch_size, ds.n)


def rank_variants(ds: CtrDataset, cfg, P: int, cluster: Cluster,
                  candidates: list[Variant], n_batches: int = 2) -> list[dict]:
    """Predicted step of each candidate at P ranks on ``cluster``, fastest first."""
    from desmpi.whatif.simulate import ModelInfo, layout_of, predict, profile

    B = _batch(cfg, ds)
    nb = max(1, min(n_batches, ds.n // B))
    info = ModelInfo.per_variant(cfg.model, ds.n_fields, ds.n_dense, cfg.train.dtype,
                                 candidates)
    rows = [predict(p, cluster, cluster.compute)
            for p in profile(ds, info, P, B, nb, candidates, layout=layout_of(cluster, P),
                             wire=cfg.dist.wire)]
    return sorted(rows, key=lambda r: r["step_time_s"])


def choose(cfg, comm: Comm, ds: CtrDataset) -> Choice:
    """The variant this run takes (collective: every rank returns the same Choice)."""
    t0 = time.perf_counter()
    cands = cfg.dist.candidates()
    if comm.size == 1 or len(cands) == 1:
        # one rank: every variant is the single-process model with no traffic
        return Choice(cands[0].name, None, None, [], "one rank" if comm.size == 1 else "", 0.0)
    cluster = cluster_at_hand(comm, cfg.dist.cluster, ds, _batch(cfg, ds), cfg.dist.wire)
    ranking = rank_variants(ds, cfg, comm.size, cluster, cands) if comm.rank == 0 else None
    ranking = comm.bcast_object(ranking, idle=True)
    best = ranking[0]
    return Choice(best["variant"], best["step_time_s"], best["wire_bytes_per_step"],
                  [{k: r[k] for k in ("variant", "step_time_s", "comm_s", "compute_s",
                                      "wire_bytes_per_step")} for r in ranking],
                  cluster.name, time.perf_counter() - t0)


def resolve(cfg, comm: Comm, ds: CtrDataset):
    """(cfg with its 'auto' dist keys written in, the Choice); cfg unchanged when explicit."""
    if not cfg.dist.is_auto:
        return cfg, None
    c = choose(cfg, comm, ds)
    return replace(cfg, dist=cfg.dist.resolved(parse(c.variant))), c
