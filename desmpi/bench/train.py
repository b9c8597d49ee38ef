"""``desmpi bench train``: training throughput against the GEMM-bound limit of the same model.

Runs the real training step on generated Criteo-schema data (run it under ``mpiexec -n P``
for P ranks), reports the median samples/s over the steps after warm-up, the time of each
phase, and the GEMM limit: the model's dense matrix products (forward and backward, the same
shapes) timed alone in the same process right after the steps (as many passes, median).
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import tempfile
import time
from dataclasses import replace

import numpy as np

from desmpi.bench.workloads import bench_config
from desmpi.comm import Comm
from desmpi.data.slicing import split_counts
from desmpi.data.synth import SynthSpec, generate
from desmpi.train import Trainer

LONG_RUN = 1_000_000  # the steps of the run a benchmark stands for (the trial's step cap)
TRIAL_ROWS = 1 << 18  # rows generated for dist 'auto''s trial steps, at least


def gemm_shapes(model, rows_dense: int, rows_fused: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every product of a step: forward x@W, backward g@Wᵀ (not for the weights
    on raw dense features, ``model.no_input_grad``) and xᵀ@g.

    The 2-D weight matrices only: DLRM's pairwise dot interaction (batched 27×64 products,
    run by a kernel of ours) counts as time outside the GEMMs."""
    out = []
    fused = model.partial_grad_size > 0
    for name, (_, _, shape) in model.params.offsets.items():
        if len(shape) != 2:
            continue
        m = rows_fused if (fused and name == "w1_sparse") else rows_dense
        k, n = shape
        out += [(m, k, n), (k, m, n)]
        if name not in model.no_input_grad:
            out.append((m, n, k))
    return out


def gemm_timer(shapes, dtype):
    """A function timing one pass over the products ``shapes`` (operands made once, outputs
    written into arrays of their own, as the step does); None without products."""
    if not shapes:
        return None
    rng = np.random.default_rng(0)
    mats = [(rng.random((m, k)).astype(dtype), rng.random((k, n)).astype(dtype),
             np.empty((m, n), dtype)) for m, k, n in shapes]

    def once() -> float:
        t0 = time.perf_counter()
        for a, b, c in mats:
            np.matmul(a, b, out=c)
        return time.perf_counter() - t0
    return once


def bench_train(comm: Comm, model: str, batch: int, steps: int, warmup: int, cap: int,
                dim: int | None, strategy: str, aggregate: str, optimizer: str,
                workdir: str | None = None, sets: dict | None = None) -> dict:
    if steps < 1 or warmup < 0:
        raise ValueError(f"bench train: steps ({steps}) must be >= 1 and warmup ({warmup}) >= 0")
    tmp = comm.bcast_object(tempfile.mkdtemp(dir=workdir) if comm.rank == 0 else None)
    try:
        path = os.path.join(tmp, "bench.h5")
        cfg = bench_config(model, path, batch, steps + warmup, dim, strategy, aggregate,
                           optimizer, sets)
        dc = cfg.dist
        # dist 'auto': batches of its own for the trial steps before the warm-up (untimed),
        # fresh keys as in a run's first steps: TRIAL_ROWS rows at least (a longer trial
        # repeats them)
        extra = 0
        if dc.is_auto and comm.size > 1:
            extra = max(dc.auto_trial_max * (1 + dc.auto_trial_steps), -(-TRIAL_ROWS // batch))
        # the trial as in a long run (the trainer spends at most half of a run's steps on
        # it): its time budget, dist.auto_trial_s, bounds it
        cfg = replace(cfg, train=replace(cfg.train, steps=LONG_RUN))
        rows = batch * (steps + warmup + extra)
        if comm.rank == 0:
            generate(SynthSpec(rows=rows, seed=1, cap=cap), path)
        comm.barrier()
        tr = Trainer(cfg, comm)
        first = 1
        # the trial: its candidates take turns (on its own batches, repeated when it runs
        # longer than planned), then it decides
        while tr.trial is not None and tr.trial.active:
            b, sizes = tr.local_batch(tr.train_ds, (first - 1) % max(extra, 1))
            s = tr.step_strategy()
            tr.before_step()
            t0 = time.perf_counter()
            s.train_step(b, sizes, first)
            tr.after_step(time.perf_counter() - t0)
            first += 1
        P = comm.size
        b_local = int(split_counts(batch, P)[comm.rank])
        v = tr.variant
        rows_dense = batch if v.replicated_dense else b_local
        rows_fused = batch if v.strategy == "des" else b_local  # every sample's partial row
        # the GEMM limit and the interaction: timed right after the steps (as many passes,
        # median; between the steps they would evict the tables from cache and slow them)
        gemms = gemm_timer(gemm_shapes(tr.model, rows_dense, rows_fused), tr.dtype)
        inter = tr.model.interaction_timer(rows_dense)
        times, data_s, t_gemms, t_inters = [], [], [], []
        in_gemm, in_inter = [], []  # seconds of each step inside its GEMMs / the interaction
        codec: list[float] = []  # seconds of each step in dist.compress's own work
        bufs = getattr(tr.strategy, "bufs", None)
        clock = tr.model.params
        clock.timing = True
        coll0: dict[str, float] = {}
        faults = 0
        for step in range(first, first + steps + warmup):
            if step == first + warmup:
                tr.timer.phases.clear()
                coll0 = {k: v.time_s for k, v in comm.acct.counters("train").items()}
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            clock.times.clear()
            c0 = bufs.codec_s if bufs is not None else 0.0
            t0 = time.perf_counter()
            b, sizes = tr.local_batch(tr.train_ds, extra + step - first)
            t1 = time.perf_counter()
            tr.strategy.train_step(b, sizes, step)
            t2 = time.perf_counter()
            if step >= first + warmup:
                # fresh memory pages the step touched (allocations not reused, table growth)
                faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
                times.append(t2 - t0)
                data_s.append(t1 - t0)
                in_gemm.append(clock.times["gemm"])
                in_inter.append(clock.times["interaction"])
                codec.append(bufs.codec_s - c0 if bufs is not None else 0.0)
        clock.timing = False
        faults /= steps
        # the share of each step outside its own GEMMs (and DLRM's interaction), median
        out_g = statistics.median(1 - g / t for g, t in zip(in_gemm, times, strict=True))
        out_gi = statistics.median(1 - (g + i) / t
                                   for g, i, t in zip(in_gemm, in_inter, times, strict=True))
        for _ in range(steps + 1):  # the first pass pages the operands in: left out
            if gemms is not None:
                t_gemms.append(gemms())
            if inter is not None:
                t_inters.append(inter())
        phases = {k: v / steps for k, v in tr.timer.phases.items()}
        # seconds per step inside each collective kind (waiting for other ranks included)
        coll = {k: (v.time_s - coll0.get(k, 0.0)) / steps
                for k, v in comm.acct.counters("train").items()}
        phases["data"] = statistics.mean(data_s)
        med = statistics.median(times)
        t_gemm = statistics.median(t_gemms[1:]) if t_gemms else 0.0
        t_inter = statistics.median(t_inters[1:]) if t_inters else 0.0
        everyone = comm.allgather_object((med, t_gemm, phases, tr.table.n,
                                          tr.table.bytes_per_key(), t_inter, coll, faults,
                                          (statistics.median(in_gemm), statistics.median(in_inter),
                                           out_g, out_gi), tr.model.params.ws.nbytes,
                                          statistics.median(codec)))
        comm.barrier()
    finally:
        if comm.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    med = max(e[0] for e in everyone)  # the slowest rank sets the pace
    t_gemm = max(e[1] for e in everyone)
    t_inter = max(e[5] for e in everyone)
    inside = [e[8] for e in everyone]
    m = tr.model
    weight_bytes = m.row_width * tr.dtype.itemsize
    slot_bytes = tr.table.S * tr.dtype.itemsize
    return {"model": model, "ranks": P, "batch": batch, "cap": cap, "dim": m.d,
            "rows": rows, "variant": tr.variant.name, "strategy": tr.variant.strategy,
            "choice": tr.choice.as_dict() if tr.choice is not None else None,
            "aggregate": tr.variant.aggregate, "optimizer": optimizer,
            "substitutions": m.substitutions, "partial_width": m.W,
            "samples_per_s": batch / med, "step_time_s": med,
            # no dense GEMM (LR, FM): no GEMM limit (None), the whole step is outside GEMMs
            "gemm_limit_samples_per_s": batch / t_gemm if t_gemm else None, "gemm_s": t_gemm,
            "ratio_to_gemm_limit": t_gemm / med if t_gemm else None,
            # the step's own GEMMs, timed inside it (median seconds per step, slowest rank)
            # and the share of the step outside them (median over steps, largest of the ranks)
            "gemm_in_step_s": max(x[0] for x in inside),
            "outside_gemm_share": max(x[2] for x in inside),
            # the same against the GEMMs timed alone (the limit)
            "outside_gemm_limit_share": max(0.0, 1 - t_gemm / med),
            # DLRM: its batched dot interaction (a kernel of ours) timed alone and inside the
            # step, and the share of the step outside both the GEMMs and the interaction
            "interaction_s": t_inter,
            "interaction_in_step_s": max(x[1] for x in inside),
            "outside_gemm_and_interaction_share": max(x[3] for x in inside),
            "phases_s": everyone[0][2],
            "phases_s_by_rank": [e[2] for e in everyone],
            "step_time_s_by_rank": [e[0] for e in everyone],
            "collectives_s_by_rank": [e[6] for e in everyone],
            "page_faults_per_step": everyone[0][7],
            "table_keys": sum(e[3] for e in everyone),
            "bytes_per_key": everyone[0][4],
            # the step's scratch arrays kept across steps (rank 0)
            "workspace_bytes": everyone[0][9],
            # dist.compress's own work (packing, selecting, decoding, summing: its calls' time
            # less their collectives'), median seconds per step, the most of any rank, and
            # its share of the step
            "codec_s": max(e[10] for e in everyone),
            "codec_share": max(e[10] for e in everyone) / med,
            "bytes_per_key_payload": weight_bytes + slot_bytes}
