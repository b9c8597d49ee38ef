"""``desmpi bench variants``: several variants' training throughput measured side by side.

Separate runs of ``desmpi bench train`` differ by 10-30 % on a shared machine even when they run
the same code (measured: des/allreduce LR at P = 2, batch 4096, four runs of 200 steps each:
752-992 k samples/s), more than the differences auto must tell apart. Here every variant runs in
the *same* job: each has its own model, shard and optimiser state (a Trainer of its own), all
train on the same sequence of batches, and they take turns in blocks of ``steps`` steps — round
r runs block r of every variant, the order rotating from round to round — so the job's state (the
ranks' placement, the machine's speed, the tables' growth with every new batch) falls on all
alike, and the median block of each variant compares like with like.

A block starts from a barrier and its time is its slowest rank's (the ranks then run ``steps``
steps free, as training does). After the rounds, the variants' predictions on one batch are
compared: they trained the same model on the same batches, so they agree to float32 summation
order (``max_prediction_gap``), the check that the benchmark fed them alike.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from desmpi.bench.workloads import bench_config
from desmpi.comm import Comm
from desmpi.data.synth import SynthSpec, generate
from desmpi.train import Trainer
from desmpi.variants import Variant


def bench_variants(comm: Comm, model: str, batch: int, variants: list[Variant], steps: int,
                   rounds: int, warmup: int, cap: int, dim: int | None, optimizer: str,
                   workdir: str | None = None, sets: dict | None = None) -> dict:
    """Samples/s of each variant, block by block (module docstring); collective."""
    if not variants or len(set(variants)) != len(variants):
        raise ValueError(f"bench variants: give distinct variants, got {variants}")
    if steps < 1 or rounds < 1 or warmup < 0:
        raise ValueError(f"bench variants: steps ({steps}) and rounds ({rounds}) must be >= 1, "
                         f"warmup ({warmup}) >= 0")
    total = warmup + rounds * steps
    tmp = comm.bcast_object(tempfile.mkdtemp(dir=workdir) if comm.rank == 0 else None)
    try:
        path = os.path.join(tmp, "bench.h5")
        if comm.rank == 0:
            generate(SynthSpec(rows=batch * total, seed=1, cap=cap), path)
        comm.barrier()
        trainers = []
        for v in variants:
            over = {**(sets or {}), "dist": {**(sets or {}).get("dist", {}), "input": v.input}}
            if trainers:  # one copy of the rows in memory: the first trainer's, shared
                over["data"] = {**over.get("data", {}), "in_memory": "false"}
            tr = Trainer(bench_config(model, path, batch, total, dim, v.strategy,
                                      v.aggregate or "allreduce", optimizer, over), comm)
            if trainers:
                tr.train_ds = trainers[0].train_ds
            trainers.append(tr)
        for tr in trainers:  # JIT compilation, first touches
            for t in range(warmup):
                tr.strategy.train_step(*tr.local_batch(tr.train_ds, t), t + 1)
        k = len(variants)
        local = np.zeros((rounds, k))  # this rank's time of each block
        for r in range(rounds):
            for j in range(k):
                i = (r + j) % k
                tr = trainers[i]
                first = warmup + r * steps
                comm.barrier()
                t0 = time.perf_counter()
                for t in range(first, first + steps):
                    tr.strategy.train_step(*tr.local_batch(tr.train_ds, t), t + 1)
                local[r, i] = time.perf_counter() - t0
        slowest = comm.allreduce(local.ravel(), op="max").reshape(rounds, k)
        preds = [tr.strategy.predict(*tr.local_batch(tr.train_ds, 0)) for tr in trainers]
        gap = max((float(np.max(np.abs(p - preds[0]))) for p in preds[1:]), default=0.0)
        gap = float(comm.allreduce(np.array([gap]), op="max")[0])
        comm.barrier()
    finally:
        if comm.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    rates = {v.name: [batch * steps / float(t) for t in slowest[:, i]]
             for i, v in enumerate(variants)}
    med = {name: statistics.median(x) for name, x in rates.items()}
    best = max(med, key=med.get)
    return {"model": model, "ranks": comm.size, "batch": batch, "steps": steps,
            "rounds": rounds, "warmup": warmup, "cap": cap,
            "variants": [v.name for v in variants], "samples_per_s": med,
            "samples_per_s_by_round": rates, "fastest": best,
            "relative": {n: m / med[best] for n, m in med.items()},
            "max_prediction_gap": gap}
