"""Cluster descriptions: nodes, ranks per node, two network levels, per-rank compute rates.

A level is (latency α in seconds, bandwidth in bytes/s); β = 1/bandwidth seconds per byte.
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
    [compute]                      # per rank, as measured by `desmpi bench compute`
    gemm_flops = 5.0e10
    sparse_keys_per_s = 5.0e7
    overhead_s = 1e-4
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Level:
    latency_s: float
    bandwidth_Bps: float

    @property
    def beta_s_per_byte(self) -> float:
        return 1.0 / self.bandwidth_Bps


@dataclass(frozen=True)
class ComputeRates:
    """Per-rank compute speed: dense GEMM flop/s, sparse key-columns/s, fixed per-step cost.

    ``contention``: how much a rank slows when its node's other cores are busy too (shared
    caches, memory bandwidth, clock limits): compute time × (1 + contention · log2(busy ranks
    on the node)). The rates above are those of one rank alone; 0 means independent cores.
    """

    gemm_flops: float = 3.0e10
    sparse_keys_per_s: float = 3.0e7
    overhead_s: float = 2.0e-4
    per_call_s: float = 5.0e-5  # software cost around each collective call
    contention: float = 0.0


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
_SHM = Level(latency_s=4e-7, bandwidth_Bps=1.0e10)
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
               "compute", "source"}
    unknown = set(d) - allowed
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")

    def level(key: str) -> Level:
        if key not in d:
            raise ValueError(f"{path}: missing [{key}] (latency_s, bandwidth_Bps)")
        x = d[key]
        extra = set(x) - {"latency_s", "bandwidth_Bps"}
        if extra:
            raise ValueError(f"{path}: unknown keys in [{key}]: {sorted(extra)}")
        lv = Level(float(x["latency_s"]), float(x["bandwidth_Bps"]))
        if lv.latency_s < 0 or lv.bandwidth_Bps <= 0:
            raise ValueError(f"{path}: [{key}] needs latency_s >= 0 and bandwidth_Bps > 0")
        return lv

    comp = d.get("compute", {})
    extra = set(comp) - {"gemm_flops", "sparse_keys_per_s", "overhead_s", "per_call_s",
                         "contention"}
    if extra:
        raise ValueError(f"{path}: unknown keys in [compute]: {sorted(extra)}")
    for k in ("nodes", "ranks_per_node"):
        if int(d.get(k, 0)) < 1:
            raise ValueError(f"{path}: {k} must be >= 1")
    return Cluster(d.get("name", path.stem), int(d["nodes"]), int(d["ranks_per_node"]),
                   level("intra"), level("inter"), int(d.get("cores_per_node", 0)),
                   ComputeRates(**{k: float(v) for k, v in comp.items()}), d.get("source", ""))
