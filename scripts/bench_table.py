#!/usr/bin/env python
"""Table lookup/insert rate on a large shard with Zipf traffic (one core).

    python scripts/bench_table.py [--keys 10000000] [--batch-keys 106496] [--json]

Fills a table with N keys (d = 16 rows, Adagrad slots, float32), then times lookup-or-insert
of batches drawn from a power law over 2N ids (so some keys are new), median over batches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from desmpi.table.shard import ShardTable


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=10_000_000)
    ap.add_argument("--batch-keys", type=int, default=4096 * 26)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    t = ShardTable(17, 1, 17, np.float32, 0, 0.01)
    ids = np.arange(1, a.keys + 1, dtype=np.int64)
    t0 = time.perf_counter()
    for i in range(0, a.keys, 1 << 20):
        t.lookup_or_insert(ids[i:i + (1 << 20)])
    fill = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    n2 = 2 * a.keys
    ts = []
    for _ in range(a.batches):
        u = rng.random(a.batch_keys)
        x = np.power(1.0 + u * (np.power(n2 + 1.0, 1 - a.zipf) - 1.0), 1 / (1 - a.zipf))
        q = np.minimum(x.astype(np.int64), n2)
        t0 = time.perf_counter()
        t.lookup_or_insert(q)
        ts.append(time.perf_counter() - t0)
    rate = a.batch_keys / statistics.median(ts)
    rep = {"table_keys": t.n, "fill_keys_per_s": a.keys / fill, "lookup_keys_per_s": rate,
           "bytes_per_key": t.bytes_per_key(), "batch_keys": a.batch_keys}
    print(json.dumps(rep) if a.json else
          f"{t.n} keys: lookup-or-insert {rate / 1e6:.1f} M keys/s (median of {a.batches} "
          f"Zipf batches of {a.batch_keys}); fill {rep['fill_keys_per_s'] / 1e6:.1f} M keys/s; "
          f"{rep['bytes_per_key']:.0f} bytes/key")
    return 0


if __name__ == "__main__":
    sys.exit(main())
