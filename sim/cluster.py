"""Cluster descriptions: nodes, ranks per node, two network levels, per-rank compute rates.

A level is (latency α in seconds, bandwidth in bytes/s); β = 1/bandwidth seconds per byte. A
level may also carry a measured point-to-point curve (``curve_bytes``, ``curve_s``: one-way
time of an m-byte message, osu_latency's numbers), which then replaces α + m·β: the time is
interpolated linearly between measured sizes (each segment its own α-β pair, so protocol
regimes — eager, rendezvous — and their jumps are kept) and extended past the largest size at
``bandwidth_Bps``. ``curve_sd_s``, the spread of the measured repeats, lets a step of many
concurrent ranks wait for the slowest (:mod:`sim.algorithms`). ``desmpi simulate cluster``
writes such files from OSU output.

Presets carry the source of their numbers; a TOML file can describe any cluster:

    name = "my-cluster"
    nodes = 16
    ranks_per_node = 32
    cores_per_node = 32            # ranks beyond this share cores (oversubscription)
    [intra]                        # within a node (shared memory)
    latency_s = 4e-7
    bandwidth_Bps = 1.0e10
    [inter]                        # between nodes (the network)
    latency_s = 1.0e-6
    bandwidth_Bps = 1.2e10
    # curve_bytes = [0, 1024, ...]  # optional measured curve (see above)
    # curve_s = [1.1e-6, 1.4e-6, ...]
    [compute]                      # per rank, as measured by `desmpi bench compute`
    gemm_flops = 5.0e10
    sparse_keys_per_s = 5.0e7
    keys_per_s = 2.0e7             # optional: table look-ups / row updates per second
    route_keys_per_s = 3.0e8       # optional: keys hashed to their owner per second
    bucket_keys_per_s = 1.0e8      # optional: keys grouped by owner and bag (a2a) per second
    sort_keys_per_s = 6.0e7        # optional: keys deduplicated and grouped (ps) per second
    codec_elems_per_s = 2.5e9      # optional: dist.compress's element passes per second,
    select_elems_per_s = 5.0e8     # elements top-k / threshold select from per second,
    codec_call_s = 3e-5            # and the software cost of a collective of packed words
    overhead_s = 1e-4

Top-level optional keys: ``mpi`` (the library whose algorithm selection applies: ``mpich``,
``openmpi``, ``openmpi-4.0``; see :mod:`sim.selection`), ``reduce_Bps`` (γ: bytes a rank reduces
per second in a collective's reduction, ``desmpi bench compute`` measures it; 0 leaves the
reduction arithmetic out), ``waits`` (how slow ranks are charged: ``chain``, the default, each
rank runs its chain of steps and the collective waits for the slowest chain; ``step``, every
step waits for its slowest rank — the pessimistic bound; :meth:`sim.algorithms.Net.slowest`).
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Level:
    """One network level: α (s), peak bandwidth (B/s), optionally a measured curve."""

    latency_s: float
    bandwidth_Bps: float
    curve_bytes: tuple[float, ...] = ()
    curve_s: tuple[float, ...] = ()
    curve_sd_s: tuple[float, ...] = ()  # spread of the measured repeats (standard deviation)

    def __post_init__(self) -> None:
        if len(self.curve_bytes) != len(self.curve_s):
            raise ValueError("curve_bytes and curve_s must have the same length")
        if self.curve_sd_s and len(self.curve_sd_s) != len(self.curve_s):
            raise ValueError("curve_sd_s must have one value per curve size")
        if any(b <= a for a, b in zip(self.curve_bytes, self.curve_bytes[1:])):
            raise ValueError("curve_bytes must increase strictly")

    @property
    def beta_s_per_byte(self) -> float:
        return 1.0 / self.bandwidth_Bps

    def time(self, m):
        """One-way seconds of an m-byte message (m: a number or an array of them)."""
        if not self.curve_bytes:
            return self.latency_s + np.asarray(m, dtype=np.float64) / self.bandwidth_Bps
        m = np.asarray(m, dtype=np.float64)
        xb, xs = self.curve_bytes, self.curve_s
        t = np.interp(m, xb, xs)
        return np.where(m > xb[-1], xs[-1] + (m - xb[-1]) / self.bandwidth_Bps, t)

    def spread(self, m):
        """Standard deviation of one m-byte message's time (the measured repeats; 0 without)."""
        if not self.curve_sd_s:
            return np.zeros_like(np.asarray(m, dtype=np.float64))
        return np.interp(np.asarray(m, dtype=np.float64), self.curve_bytes, self.curve_sd_s)


def expected_max_normal(q):
    """E[max of q independent standard normal draws] (Blom's approximation,
    Φ⁻¹((q − 0.375)/(q + 0.25)); 0 for q <= 1): q = 2 → 0.59, 8 → 1.43, 64 → 2.34 (exact:
    0.56, 1.42, 2.41)."""
    if isinstance(q, (int, float, np.integer, np.floating)):
        return np.float64(_emax(float(q)))  # a scalar (rank counts): cached
    q = np.asarray(q, dtype=np.float64)
    return np.vectorize(_emax, otypes=[np.float64])(q)


@functools.lru_cache(maxsize=4096)
def _emax(q: float) -> float:
    if q <= 1:
        return 0.0
    return _NORMAL.inv_cdf(min(max((q - 0.375) / (q + 0.25), 0.5), 1 - 1e-12))


_NORMAL = statistics.NormalDist()


@dataclass(frozen=True)
class ComputeRates:
    """Per-rank compute speed: dense GEMM flop/s, sparse key-columns/s, key operations/s, fixed
    per-step cost.

    ``contention``: how much a rank slows when its node's other cores are busy too (shared
    caches, memory bandwidth, clock limits): compute time × (1 + contention · log2(busy ranks
    on the node)). The rates above are those of one rank alone; 0 means independent cores.
    """

    gemm_flops: float = 3.0e10
    sparse_keys_per_s: float = 3.0e7
    overhead_s: float = 2.0e-4
    per_call_s: float = 5.0e-5  # software cost around each collective call
    contention: float = 0.0
    mem_Bps: float = 1.0e10  # streaming memory traffic (zero, add, copy) of one rank
    # table look-ups and row updates per second, and keys hashed to their owner per second;
    # the defaults charge each as one key-column at the default sparse rate (inf: free)
    keys_per_s: float = 3.0e7
    route_keys_per_s: float = 3.0e7
    bucket_keys_per_s: float = 3.0e7  # keys grouped by owner and bag or sample (a2a, des-a2a)
    sort_keys_per_s: float = 3.0e7  # keys deduplicated by a sort, grouped by owner (ps)
    jitter: float = 0.0  # spread of a rank's compute (its standard deviation / its mean):
    # a bulk-synchronous step waits for the slowest of P ranks, jitter · compute · E[max of P]
    # compressed communication's own work (desmpi's dist.compress): element passes of its
    # pack / decode kernels per second, elements a sparse codec (top-k, threshold) selects
    # from per second, and the software cost of each collective of packed words; defaults:
    # near what `desmpi bench compute` measured on a 2-vCPU EPYC VM (bf16 2-4e9 passes/s,
    # threshold 0.8-1.9e9 and topk 5.5e8 selected elements/s, 20-45 µs a call)
    codec_elems_per_s: float = 2.5e9
    select_elems_per_s: float = 5.0e8
    codec_call_s: float = 3.0e-5


@dataclass(frozen=True)
class Cluster:
    name: str
    nodes: int
    ranks_per_node: int
    intra: Level
    inter: Level
    cores_per_node: int = 0  # 0: one core per rank
    compute: ComputeRates = field(default_factory=ComputeRates)
    source: str = ""
    mpi: str = "mpich"  # whose algorithm selection applies (sim.selection.LIBRARIES)
    reduce_Bps: float = 0.0  # γ: reduction bytes per second per rank (0: not modelled)
    waits: str = "chain"  # the slowest rank: per chain or per step (sim.algorithms.Net.slowest)

    @property
    def ranks(self) -> int:
        return self.nodes * self.ranks_per_node

    def with_ranks(self, P: int) -> Cluster:
        """The same hardware sized for P ranks (ranks_per_node kept, nodes = ceil(P / rpn))."""
        rpn = min(self.ranks_per_node, P)
        return replace(self, nodes=-(-P // rpn), ranks_per_node=rpn)

    @property
    def compute_share(self) -> float:
        """Fraction of a core each rank gets (1 unless oversubscribed)."""
        if not self.cores_per_node:
            return 1.0
        return min(1.0, self.cores_per_node / self.ranks_per_node)

    @property
    def busy_cores(self) -> int:
        """Cores of a node that compute at once (its ranks, at most its cores)."""
        if not self.cores_per_node:
            return self.ranks_per_node
        return min(self.ranks_per_node, self.cores_per_node)


# Sources: Ethernet line rates (IEEE 802.3ae 10GBASE, 802.3by 25GBASE); InfiniBand EDR 4x
# 100 Gb/s and HDR 4x 200 Gb/s (InfiniBand Trade Association roadmap); achievable MPI
# bandwidth ~90-95% of line rate and latencies from the OSU micro-benchmarks published by the
# MVAPICH project (osu_latency: ~1 µs EDR/HDR, 10-20 µs TCP over 10/25 GbE). Intra-node: shared-
# memory MPI latency ~0.3-0.5 µs and ~10 GB/s single-pair copy bandwidth on current x86 servers.
SHARED_MEMORY = Level(latency_s=4e-7, bandwidth_Bps=1.0e10)
_SHM = SHARED_MEMORY
PRESETS = {
    "10gbe": Cluster("10GbE (TCP)", 8, 16, _SHM, Level(1.5e-5, 1.15e9),
                     source="10 Gb/s line rate, ~92% achievable; ~15 µs TCP MPI latency"),
    "25gbe": Cluster("25GbE (TCP)", 8, 16, _SHM, Level(1.0e-5, 2.9e9),
                     source="25 Gb/s line rate, ~93% achievable; ~10 µs TCP MPI latency"),
    "edr": Cluster("100 Gb/s EDR InfiniBand", 8, 16, _SHM, Level(1.0e-6, 1.2e10),
                   source="EDR 4x 100 Gb/s, ~12 GB/s osu_bw; ~1 µs osu_latency"),
    "hdr": Cluster("200 Gb/s HDR InfiniBand", 8, 16, _SHM, Level(1.0e-6, 2.4e10),
                   source="HDR 4x 200 Gb/s, ~24 GB/s osu_bw; ~1 µs osu_latency"),
}


def load_cluster(spec: str) -> Cluster:
    """A preset name (10gbe, 25gbe, edr, hdr) or a TOML file (module docstring)."""
    if spec.lower() in PRESETS:
        return PRESETS[spec.lower()]
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"cluster {spec!r}: neither a preset ({', '.join(PRESETS)}) "
                                "nor a file")
    with open(path, "rb") as f:
        try:
            d = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: {e}") from None
    allowed = {"name", "nodes", "ranks_per_node", "cores_per_node", "intra", "inter",
               "compute", "source", "mpi", "reduce_Bps", "waits"}
    unknown = set(d) - allowed
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")

    def level(key: str) -> Level:
        if key not in d:
            raise ValueError(f"{path}: missing [{key}] (latency_s, bandwidth_Bps)")
        x = d[key]
        extra = set(x) - {"latency_s", "bandwidth_Bps", "curve_bytes", "curve_s", "curve_sd_s"}
        if extra:
            raise ValueError(f"{path}: unknown keys in [{key}]: {sorted(extra)}")
        for k in ("latency_s", "bandwidth_Bps"):
            if k not in x:
                raise ValueError(f"{path}: [{key}] needs {k}")
        try:
            lv = Level(float(x["latency_s"]), float(x["bandwidth_Bps"]),
                       tuple(float(v) for v in x.get("curve_bytes", ())),
                       tuple(float(v) for v in x.get("curve_s", ())),
                       tuple(float(v) for v in x.get("curve_sd_s", ())))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: [{key}]: {e}") from None
        if not (lv.latency_s >= 0 and lv.bandwidth_Bps > 0) or \
                any(not (t >= 0) for t in lv.curve_s + lv.curve_sd_s):
            raise ValueError(f"{path}: [{key}] needs latency_s >= 0, bandwidth_Bps > 0 and "
                             "curve_s >= 0")
        return lv

    comp = d.get("compute", {})
    extra = set(comp) - {"gemm_flops", "sparse_keys_per_s", "overhead_s", "per_call_s",
                         "contention", "mem_Bps", "keys_per_s", "route_keys_per_s",
                         "bucket_keys_per_s", "sort_keys_per_s", "jitter",
                         "codec_elems_per_s", "select_elems_per_s", "codec_call_s"}
    if extra:
        raise ValueError(f"{path}: unknown keys in [compute]: {sorted(extra)}")
    for k in ("nodes", "ranks_per_node"):
        if int(d.get(k, 0)) < 1:
            raise ValueError(f"{path}: {k} must be >= 1")
    from sim.selection import LIBRARIES

    mpi = str(d.get("mpi", "mpich"))
    if mpi not in LIBRARIES:
        raise ValueError(f"{path}: mpi = {mpi!r}; known: {', '.join(LIBRARIES)}")
    gamma = float(d.get("reduce_Bps", 0.0))
    if not gamma >= 0:
        raise ValueError(f"{path}: reduce_Bps must be >= 0")
    waits = str(d.get("waits", "chain"))
    if waits not in ("step", "chain"):
        raise ValueError(f"{path}: waits = {waits!r}; known: step, chain")
    return Cluster(d.get("name", path.stem), int(d["nodes"]), int(d["ranks_per_node"]),
                   level("intra"), level("inter"), int(d.get("cores_per_node", 0)),
                   ComputeRates(**{k: float(v) for k, v in comp.items()}), d.get("source", ""),
                   mpi, gamma, waits)


def dump_cluster(cl: Cluster) -> str:
    """The TOML text of ``cl`` (what :func:`load_cluster` reads back)."""
    def num(x: float) -> str:
        return repr(float(x))

    def level(name: str, lv: Level) -> list[str]:
        out = [f"[{name}]", f"latency_s = {num(lv.latency_s)}",
               f"bandwidth_Bps = {num(lv.bandwidth_Bps)}"]
        if lv.curve_bytes:
            out.append("curve_bytes = [" + ", ".join(num(b) for b in lv.curve_bytes) + "]")
            out.append("curve_s = [" + ", ".join(num(t) for t in lv.curve_s) + "]")
            if lv.curve_sd_s:
                out.append("curve_sd_s = [" + ", ".join(num(t) for t in lv.curve_sd_s) + "]")
        return out

    c = cl.compute
    L = [f"name = {json.dumps(cl.name)}", f"nodes = {cl.nodes}",
         f"ranks_per_node = {cl.ranks_per_node}", f"cores_per_node = {cl.cores_per_node}",
         f"mpi = {json.dumps(cl.mpi)}", f"reduce_Bps = {num(cl.reduce_Bps)}",
         f"waits = {json.dumps(cl.waits)}",
         f"source = {json.dumps(cl.source)}", "", *level("intra", cl.intra), "",
         *level("inter", cl.inter), "", "[compute]",
         f"gemm_flops = {num(c.gemm_flops)}", f"sparse_keys_per_s = {num(c.sparse_keys_per_s)}",
         f"overhead_s = {num(c.overhead_s)}", f"per_call_s = {num(c.per_call_s)}",
         f"contention = {num(c.contention)}", f"mem_Bps = {num(c.mem_Bps)}",
         *[f"{k} = {num(getattr(c, k))}" for k in ("keys_per_s", "route_keys_per_s",
                                                    "bucket_keys_per_s", "sort_keys_per_s",
                                                    "codec_elems_per_s", "select_elems_per_s")
           if np.isfinite(getattr(c, k))], f"codec_call_s = {num(c.codec_call_s)}",
         f"jitter = {num(c.jitter)}"]
    return "\n".join(L) + "\n"
