#!/usr/bin/env python
"""Speed of a what-if sweep: >= 10,000 configurations (P × batch × strategy × cluster).

    python scripts/bench_whatif.py [--rows 140000] [--json]

Profiles each (P, batch) once from generated Criteo-schema data (every sampled batch read once),
plans every strategy, then costs every configuration on every cluster; prints the seconds
of each phase and configurations per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from desmpi.config import load
from desmpi.data.h5 import CtrDataset
from desmpi.data.synth import SynthSpec, generate
from desmpi.variants import COMPARED
from desmpi.whatif.simulate import ModelInfo, layout_of, predict, profile
from sim.cluster import PRESETS, Level

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="8,16,32,64,128,256,512,1024")
    ap.add_argument("--batch", default="1024,4096,8192,16384,32768")
    ap.add_argument("--clusters", type=int, default=42, help="cluster variants to cost")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    ranks = [int(x) for x in a.ranks.split(",")]
    batches = [int(x) for x in a.batch.split(",")]
    variants = list(COMPARED)
    base = list(PRESETS.values())
    clusters = [replace(base[i % len(base)], name=f"{base[i % len(base)].name} x{i}",
                        inter=Level(base[i % len(base)].inter.latency_s * (1 + i / 10),
                                    base[i % len(base)].inter.bandwidth_Bps / (1 + i / 10)))
                for i in range(a.clusters)]
    with tempfile.TemporaryDirectory() as tmp:
        data = f"{tmp}/d.h5"
        generate(SynthSpec(rows=2 * max(batches), seed=1, cap=1_000_000), data)
        ds = CtrDataset(data, in_memory=True)
        cfg = load(ROOT / "configs" / "deepfm.toml", [f"data.train={data}"])
        info = ModelInfo.per_variant(cfg.model, 26, 13, np.float32, variants)
        t0 = time.perf_counter()
        profs = [p for B in batches for P in ranks  # bytes under the presets' MPICH, 16/node
                 for p in profile(ds, info, P, B, 2, variants, layout=layout_of(base[0], P))]
        t1 = time.perf_counter()
        rows = [predict(p, cl) for p in profs for cl in clusters]
        t2 = time.perf_counter()
    rep = {"configurations": len(rows), "profiled_points": len(ranks) * len(batches),
           "profile_s": t1 - t0, "cost_s": t2 - t1, "total_s": t2 - t0,
           "configurations_per_s": len(rows) / (t2 - t0)}
    print(json.dumps(rep) if a.json else
          f"{rep['configurations']} configurations ({rep['profiled_points']} profiled (P, batch) "
          f"points x {len(variants)} strategies x {len(clusters)} clusters): profile "
          f"{rep['profile_s']:.2f} s + cost {rep['cost_s']:.2f} s = {rep['total_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
