"""Sub-commands beyond ``data``: smoke, bench."""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from desmpi.comm import Comm

log = logging.getLogger("desmpi")


def _smoke(a, comm: Comm) -> int:
    """Each rank reads its slices of a generated data set; the Allgatherv of the slices must be
    the global batch read by one process. ``--fail-rank`` makes one rank raise mid-run."""
    from desmpi.accounting import Accounting
    from desmpi.data.h5 import CtrDataset
    from desmpi.data.slicing import n_batches, rank_slice, split_counts
    from desmpi.data.synth import SynthSpec, generate

    path = os.path.join(a.out, "smoke.h5")
    if comm.rank == 0:
        os.makedirs(a.out, exist_ok=True)
        generate(SynthSpec(rows=a.rows, seed=a.seed, cap=1000), path)
    comm.barrier()
    ds = CtrDataset(path)
    for t in range(n_batches(ds.n, a.batch)):
        lo, hi = rank_slice(t, a.batch, ds.n, comm.size, comm.rank)
        b = ds.read(lo, hi)
        if t == 1 and comm.rank == a.fail_rank:
            raise RuntimeError(f"injected failure at batch {t} (--fail-rank {a.fail_rank})")
        counts = split_counts(min(a.batch, ds.n - t * a.batch), comm.size) * ds.n_fields
        keys = comm.allgatherv(b.keys, counts)
        ref = ds.read(t * a.batch, (t + 1) * a.batch)
        if not np.array_equal(keys, ref.keys):
            raise AssertionError(f"batch {t}: gathered keys differ from the global batch")
        s = comm.allreduce(np.array([b.labels.sum()], dtype=np.float64))
        if s[0] != ref.labels.sum():
            raise AssertionError(f"batch {t}: positives {s[0]} != {ref.labels.sum()}")
    c = comm.acct.counters("train")
    if comm.rank == 0:
        log.info("smoke: %d ranks read %d rows in global batches of %d; every gathered batch "
                 "equals the single-process batch", comm.size, ds.n, a.batch)
        for k, v in sorted(c.items()):
            log.info("  %-14s calls %4d  payload %10d B  wire %10d B  %.4f s", k, v.calls,
                     v.payload_bytes, v.wire_bytes, v.time_s)
        if a.json:
            print(json.dumps({"ranks": comm.size, "rows": ds.n,
                              "comm": Accounting.as_dict(c)}))
    return 0


def _relaunch(ranks: int, argv: list[str]) -> int:
    """Run ``desmpi ARGV`` under ``mpiexec -n RANKS``, one thread per rank."""
    import subprocess

    from desmpi import launch

    cmd = launch.command(ranks, argv)
    log.info("running: %s", " ".join(cmd))
    return subprocess.run(cmd, env=launch.env()).returncode


def _without_ranks(argv: list[str]) -> list[str]:
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
        elif x == "--ranks":
            skip = True
        elif not x.startswith("--ranks="):
            out.append(x)
    return out


def _bench(a, comm: Comm) -> int:
    if a.ranks is not None and a.ranks != comm.size:
        if comm.size > 1:
            raise ValueError(f"--ranks {a.ranks}, but mpiexec started {comm.size} ranks")
        if a.ranks < 1:
            raise ValueError(f"--ranks must be >= 1, got {a.ranks}")
        return _relaunch(a.ranks, _without_ranks(a.argv))
    if a.what not in _BENCHES:
        raise ValueError(f"unknown benchmark {a.what!r}")
    rep, describe = _BENCHES[a.what](a, comm)
    if comm.rank == 0:
        describe(rep)
        if a.json:
            print(json.dumps(rep))
    return 0


def _bench_comm(a, comm: Comm):
    from desmpi.bench.comm import bench_comm

    samples = bench_comm(comm, [int(x) for x in a.sizes.split(",")], a.repeats_comm)

    def describe(rep):
        for s in rep["samples"]:
            log.info("%-14s P=%d %10.0f B  %.2e s", s["kind"], s["P"], s["n"], s["time_s"])

    return {"samples": samples}, describe


def _bench_compute(a, comm: Comm):
    from desmpi.bench.comm import bench_compute

    batch = None
    if a.data:  # the sparse rates on the keys of the data at hand
        from desmpi.data.h5 import CtrDataset

        batch = CtrDataset(a.data, in_memory=False).read(0, a.batch)
    return bench_compute(batch=batch, codec=a.codec, select=a.select), lambda rep: log.info(
        "GEMM %.3g flop/s, sparse %.3g key-columns/s, %.3g key look-ups/s, keys routed %.3g/s "
        "(DES), bucketed %.3g/s (a2a), deduplicated %.3g/s (ps), reduction %.3g B/s; %s codec "
        "%.3g element passes/s and %.0f us a call (fit RMS %.0f%%), %s %.3g elements/s",
        rep["gemm_flops"], rep["sparse_keys_per_s"], rep["keys_per_s"], rep["route_keys_per_s"],
        rep["bucket_keys_per_s"], rep["sort_keys_per_s"], rep["reduce_Bps"], rep["codec"],
        rep["codec_elems_per_s"], rep["codec_call_s"] * 1e6, 100 * rep["codec_fit_rel_rms"],
        rep["select"], rep["select_elems_per_s"])


def _bench_train(a, comm: Comm):
    from desmpi.bench.train import bench_train
    from desmpi.config import parse_set

    rep = bench_train(comm, a.model, a.batch, a.steps, a.warmup, a.cap, a.dim, a.strategy,
                      a.aggregate, a.optimizer, sets=parse_set(a.set))
    return rep, _log_bench_train


def _log_bench_train(rep: dict) -> None:
    lim = rep["gemm_limit_samples_per_s"]
    log.info("%s P=%d batch %d: %.0f samples/s (median step %.4f s); %s",
             rep["model"], rep["ranks"], rep["batch"], rep["samples_per_s"],
             rep["step_time_s"],
             "no dense GEMM" if lim is None else
             f"GEMM limit {lim:.0f} samples/s; ratio {rep['ratio_to_gemm_limit']:.2f}; "
             f"{100 * rep['outside_gemm_share']:.0f}% of the step outside its GEMMs "
             f"({rep['gemm_in_step_s']:.4f} s in them)")
    if rep["interaction_s"]:
        log.info("  dot interaction %.4f s/step (alone %.4f); %.0f%% of the step outside the "
                 "GEMMs and the interaction", rep["interaction_in_step_s"],
                 rep["interaction_s"], 100 * rep["outside_gemm_and_interaction_share"])
    for k, v in sorted(rep["phases_s"].items(), key=lambda kv: -kv[1]):
        log.info("  %-14s %.4f s/step", k, v)
    if rep["codec_s"]:
        log.info("  dist.compress's own work %.4f s/step, %.1f%% of the step (packing, "
                 "selecting, decoding, summing)", rep["codec_s"], 100 * rep["codec_share"])
    log.info("  memory: %.0f bytes/key (weights + slots: %d); step workspace %.0f MB",
             rep["bytes_per_key"], rep["bytes_per_key_payload"], rep["workspace_bytes"] / 1e6)


def _bench_variants(a, comm: Comm):
    from desmpi.bench.paired import bench_variants
    from desmpi.config import parse_set
    from desmpi.variants import parse_list

    rep = bench_variants(comm, a.model, a.batch, parse_list(a.variants), a.steps, a.rounds,
                         a.warmup, a.cap, a.dim, a.optimizer, sets=parse_set(a.set))

    def describe(rep):
        log.info("%s P=%d batch %d: %d rounds of %d steps a variant, in turns (median "
                 "samples/s; predictions agree to %.1e)", rep["model"], rep["ranks"],
                 rep["batch"], rep["rounds"], rep["steps"], rep["max_prediction_gap"])
        for n, m in sorted(rep["samples_per_s"].items(), key=lambda kv: -kv[1]):
            log.info("  %-30s %12.0f samples/s  %.3f of the fastest", n, m, rep["relative"][n])

    return rep, describe


def _bench_data(a, comm: Comm):
    from desmpi.bench.data import bench_data
    from desmpi.samples import criteo_sample

    src = a.source if a.source is not None else str(criteo_sample())
    return bench_data(src, a.rows, a.batch, a.repeats, comm), lambda rep: log.info(
        "convert: %.0f rows/s per rank (%d rows, %d ranks, median of %d); training read: "
        "%.0f rows/s per rank", rep["convert_rows_per_s_per_rank"], rep["rows"], rep["ranks"],
        rep["repeats"], rep["read_rows_per_s_per_rank"])


_BENCHES = {"comm": _bench_comm, "compute": _bench_compute, "train": _bench_train,
            "variants": _bench_variants, "data": _bench_data}


def _train(a, comm: Comm) -> int:
    from desmpi.config import load
    from desmpi.train import run

    cfg = load(a.config, a.set)
    if a.trace:
        comm.acct.keep_log = True
    summary = run(cfg, comm, a.out, trace=a.trace, resume=a.resume, force=a.force,
                  allow_fresh=a.allow_fresh)
    if comm.rank == 0 and a.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    return 0


def _demo(a, comm: Comm) -> int:
    """Generate data once, then launch ``mpiexec -n RANKS desmpi train`` on it."""
    from desmpi.data.synth import SynthSpec, generate

    if comm.size > 1:
        raise ValueError("run 'desmpi demo' without mpiexec: it launches mpiexec itself")
    data = os.path.join(a.out, "data")
    os.makedirs(data, exist_ok=True)
    tr, ev = os.path.join(data, "train.h5"), os.path.join(data, "eval.h5")
    for path, rows, seed in ((tr, a.rows, 1), (ev, a.rows // 5, 2)):
        if not os.path.exists(path):
            rep = generate(SynthSpec(rows=rows, seed=seed, cap=a.cap), path)
            log.info("generated %s: %d rows, oracle AUC %.4f", path, rows, rep["oracle_auc"])
    return _relaunch(a.ranks, [
        "train", "--set", "model.name=deepfm", "--set", "model.hidden=[400,400,400]",
        "--set", f"data.train={tr}", "--set", f"data.eval={ev}",
        "--set", f"train.batch_size={a.batch}", "--set", "train.optimizer=adam",
        "--set", "train.lr=0.003", "--set", "train.log_every=10",
        "--set", f"train.eval_every={a.eval_every}", "--out", os.path.join(a.out, "train")])


def add_commands(sub) -> None:
    d = sub.add_parser("demo", help="2-rank DeepFM on generated Criteo-schema data (dist auto)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--ranks", type=int, default=2)
    d.add_argument("--rows", type=int, default=200_000)
    d.add_argument("--cap", type=int, default=10_000)
    d.add_argument("--batch", type=int, default=2048)
    d.add_argument("--eval-every", type=int, default=40)
    d.set_defaults(fn=_demo)

    t = sub.add_parser("train", help="synchronous training (mpiexec -n P desmpi train ...)")
    t.add_argument("config", nargs="?", default=None, help="TOML config (configs/*.toml)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key (repeatable)")
    t.add_argument("--out", default=None, help="directory for metrics, summary, predictions")
    t.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    t.add_argument("--force", action="store_true",
                   help="delete checkpoints of an earlier run found in checkpoint.dir")
    t.add_argument("--allow-fresh", action="store_true",
                   help="with --resume: start from step 0 when no usable checkpoint exists")
    t.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in checkpoint.dir")
    t.add_argument("--trace", default=None, metavar="FILE",
                   help="write every step's compute spans and collectives (JSON)")
    t.set_defaults(fn=_train)

    s = sub.add_parser("smoke", help="multi-rank data + comm check (and failure drill)")
    s.add_argument("--rows", type=int, default=5000)
    s.add_argument("--batch", type=int, default=512)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="runs/smoke")
    s.add_argument("--fail-rank", type=int, default=-1)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_smoke)

    b = sub.add_parser("bench", help="benchmarks")
    b.add_argument("what", choices=["data", "comm", "compute", "train", "variants"])
    b.add_argument("--ranks", type=int, default=None,
                   help="launch mpiexec -n RANKS itself (or run under mpiexec)")
    b.add_argument("--model", default="deepfm", help="bench train/variants: model")
    b.add_argument("--steps", type=int, default=20, help="bench train: timed steps")
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--cap", type=int, default=1_000_000, help="bench train: cardinality cap")
    b.add_argument("--dim", type=int, default=None, help="bench train: embedding dim")
    b.add_argument("--strategy", default="auto",
                   help="bench train: des, des-a2a, a2a, ps or auto (the simulator chooses)")
    b.add_argument("--aggregate", default="auto", help="bench train: allreduce, "
                   "reduce_scatter or auto")
    b.add_argument("--variants", default="des/allreduce,des/reduce_scatter,des-a2a,a2a,ps",
                   help="bench variants: the variants to run side by side")
    b.add_argument("--rounds", type=int, default=5,
                   help="bench variants: blocks of --steps steps per variant, in turns")
    b.add_argument("--optimizer", default="adagrad")
    b.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="bench train: config override (e.g. model.deep_input=fused)")
    b.add_argument("--sizes", default="64,1024,16384,131072,1048576,4194304",
                   help="bench comm: message sizes in bytes")
    b.add_argument("--repeats-comm", type=int, default=10)
    b.add_argument("--source", default=None,
                   help="Criteo TSV to repeat (default: tests/data/criteo/head15k.tsv)")
    b.add_argument("--rows", type=int, default=1_000_000)
    b.add_argument("--batch", type=int, default=4096, help="data: read batch; train: B")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--data", default=None, metavar="H5",
                   help="compute: measure the sparse rates on the first --batch rows of this "
                        "file (default: distinct random keys)")
    b.add_argument("--codec", default="bf16", choices=["bf16", "fp16", "int8"],
                   help="compute: the dist.compress codec whose kernels' rates are measured")
    b.add_argument("--select", default="threshold", choices=["threshold", "topk"],
                   help="compute: the sparse codec whose selection rate is measured")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=_bench)
