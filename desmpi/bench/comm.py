"""``desmpi bench comm`` / ``bench compute``: microbenchmarks that feed calibration."""

from __future__ import annotations

import statistics
import time

import numpy as np

from desmpi.bench.mirror import MirrorComm
from desmpi.comm import Comm

KINDS = ("allreduce", "allgatherv", "reduce_scatter", "alltoallv")
FLUSH_BYTES = 64 << 20  # streamed before each large timed codec call: more than a last-level
# cache, as a training step's other work streams between two of its calls (codec_rates)


def bench_comm(comm: Comm, sizes_bytes: list[int], repeats: int = 20) -> list[dict]:
    """Median seconds per collective and size on this communicator (every rank times, the
    maximum over ranks counts). ``n`` follows :func:`sim.collectives.cost`."""
    P = comm.size
    out = []
    for kind in KINDS:
        for nbytes in sizes_bytes:
            per = max(1, nbytes // 8 // P)  # float64 elements per block
            ts = []
            for rep in range(repeats + 2):
                if kind == "allreduce":
                    x = np.ones(per * P)
                elif kind in ("allgatherv",):
                    x = np.ones(per)
                else:
                    x = np.ones(per * P)
                with comm.acct.scoped("bench"):
                    comm.barrier()
                    t0 = time.perf_counter()
                    if kind == "allreduce":
                        comm.allreduce(x)
                    elif kind == "allgatherv":
                        comm.allgatherv(x, [per] * P)
                    elif kind == "reduce_scatter":
                        comm.reduce_scatter(x, [per] * P)
                    else:
                        comm.alltoallv(x, [per] * P, [per] * P)
                    dt = time.perf_counter() - t0
                if rep >= 2:  # warm-up
                    ts.append(dt)
            t = float(comm.allreduce(np.array([statistics.median(ts)]), op="max")[0])
            n_total = per * P * 8
            rec = {"kind": kind, "P": P, "time_s": t, "n": float(n_total)}
            if kind in ("allgatherv", "reduce_scatter"):
                rec["max_block"] = float(per * 8)
            if kind == "alltoallv":
                rec["n"] = rec["max_rank"] = float((P - 1) * per * 8)
            out.append(rec)
    return out


def fit_network(rows: list[dict]):
    """(Level, Fit): α and bandwidth fitted to :func:`bench_comm`'s rows (sim.calibrate)."""
    from sim.calibrate import CommSample, fit_level

    return fit_level([CommSample(r["kind"], r["P"], r["n"], r["time_s"],
                                 max_block=r.get("max_block"), max_rank=r.get("max_rank"))
                      for r in rows])


def bench_compute(repeats: int = 5, batch=None, codec: str | None = "bf16",
                  select: str = "threshold") -> dict:
    """Per-kernel rates of this process: GEMM flop/s, sparse key-columns/s (pooling and row
    gradients), key look-ups/s, keys routed to their owner/s (DES), keys bucketed by owner
    and bag/s (a2a, des-a2a), keys deduplicated and grouped by owner/s (ps), the reduction
    rate γ (``reduce_Bps``, :func:`reduce_rate`) and compressed communication's own rates
    under ``codec`` and ``select`` (:func:`codec_rates`; ``codec`` None: not measured).

    ``batch`` (a :class:`desmpi.data.batch.Batch`, e.g. a data file's first rows): the sparse
    rates are measured on its keys, so that the table's size and the keys' repeats (cache hits)
    are those of the data at hand; by default 4096 samples of 26 one-hot fields of distinct
    random keys (every row a miss: a lower bound)."""
    from desmpi.data.batch import Batch
    from desmpi.kernels.hashing import owners
    from desmpi.kernels.sparse import pool, row_grads
    from desmpi.reference import route
    from desmpi.strategies.exchange import group_by_owner, segments_by_owner
    from desmpi.table.shard import ShardTable

    rng = np.random.default_rng(0)
    a = rng.random((4096, 429), dtype=np.float32)
    w = rng.random((429, 400), dtype=np.float32)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ w
        ts.append(time.perf_counter() - t0)
    gemm = 2 * 4096 * 429 * 400 / statistics.median(ts)
    if batch is None:
        batch = Batch(np.zeros(4096), np.zeros((4096, 0)),
                      rng.integers(1, 1 << 40, size=4096 * 26), 26)
    R, d, F, B = 17, 16, batch.n_fields, batch.n
    keys, n = batch.keys, batch.keys.shape[0]
    t = ShardTable(R, 1, 0, np.float32, 0, 0.01)
    rows = t.lookup_or_insert(keys)
    s, f = batch.sample_field()
    Z = np.zeros((B, 2 + F * d), np.float32)  # [L | E | Q]
    vals = np.empty(0, np.float32) if batch.values is None else \
        np.asarray(batch.values, np.float32)
    ts, tl = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        t.lookup_or_insert(keys)
        t1 = time.perf_counter()
        pool(s, f, rows, vals, t.weights, 1, Z, 0, -1, Z.shape[1] - 1, Z, 1)
        u, inv = t.unique_rows(rows)
        g = np.zeros((u.shape[0], R), np.float32)
        row_grads(s, f, inv, u, vals, t.weights, 1, Z, 0, -1, Z.shape[1] - 1, Z, 1, g)
        ts.append(time.perf_counter() - t1)
        tl.append(t1 - t0)
    # routing: every key hashed to its owner (of 4), the owned positions and every key's
    # (sample, field), as a DES rank does over the global batch
    tr = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        route(batch, 0, 4)
        batch.sample_field()
        tr.append(time.perf_counter() - t0)
    # the exchange strategies' routing, over the keys of a rank's batch: a2a and des-a2a
    # group them by owner and bag (a stable sort by owner, then runs), ps deduplicates them
    # (np.unique: a sort) and groups the distinct ones by owner
    tb, tu = [], []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        s_, f_ = batch.sample_field()
        segments_by_owner(owners(keys, 4), s_ * F + f_, 4)
        t1 = time.perf_counter()
        batch.sample_field()
        U = np.unique(keys, return_inverse=True)[0]
        group_by_owner(owners(U, 4), 4)
        tb.append(t1 - t0)
        tu.append(time.perf_counter() - t1)
    # the look-up is the per-key part (one hash probe a key), pooling and gradients the
    # per-column part: two passes of R floats a key, counted as the cost model counts them
    # (desmpi.whatif.simulate.step_work: pool, gradients and update, R key-columns each)
    return {"gemm_flops": gemm, "sparse_keys_per_s": 2 * n * R / statistics.median(ts),
            "keys_per_s": n / statistics.median(tl),
            "route_keys_per_s": n / statistics.median(tr[1:]),
            "bucket_keys_per_s": n / statistics.median(tb[1:]),
            "sort_keys_per_s": n / statistics.median(tu[1:]),
            "reduce_Bps": reduce_rate(repeats), "mem_Bps": memory_rate(repeats),
            **(codec_rates(codec, select, repeats) if codec is not None else {})}


CODEC_RANKS = 2  # codec_rates times a rank of this many (an own chunk of half of each vector)
CODEC_SIZES = (4096, 1 << 20)  # elements of the timed vectors: the calls' cost, the passes'
CALL_FLUSH_BYTES = 4 << 20  # streamed before each small timed codec call (codec_rates)


def codec_rates(codec: str = "bf16", select: str = "threshold", repeats: int = 5) -> dict:
    """Compressed communication's own rates on this process (the cost model's
    ``codec_elems_per_s``, ``codec_call_s``, ``select_elems_per_s``): the compressed forms of
    :mod:`desmpi.strategies.compressed` run as rank 0 of :data:`CODEC_RANKS` on one process
    (:class:`desmpi.bench.mirror.MirrorComm`: the peers send what the rank sends them, and the
    collectives inside are local copies, which their accounting leaves out as a run's does;
    at one rank the forms would be degenerate — a dense codec packs no chunk of its own, so a
    Reduce_scatter there is one copy), each call timed as
    :attr:`~desmpi.strategies.compressed.Buffers.codec_s` times it in training, after other
    memory traffic as a step's other work makes between two calls: :data:`FLUSH_BYTES` before
    the large vectors (their operands come from memory: the rest of the step streams over
    them), :data:`CALL_FLUSH_BYTES` before the small ones (the core's own caches evicted, the
    interpreter's code and objects of a loop that runs every step not). Under ``codec``, the
    Allreduce with error feedback, Reduce_scatter, Allgatherv and Alltoallv of
    :data:`CODEC_SIZES` floats: the element passes' rate and each call's cost are the
    non-negative least squares of the median times on
    :func:`~desmpi.strategies.codecwork.codec_work`'s counts (its relative RMS:
    ``codec_fit_rel_rms``); then ``select``'s (topk or threshold) Allreduce with error
    feedback of the larger vector: what its selection adds, per element."""
    from scipy.optimize import nnls

    from desmpi.strategies import compressed as cx
    from desmpi.strategies.codecwork import codec_work

    if codec not in cx.CODECS or codec == "none" or codec in cx.SPARSE:
        raise ValueError(f"codec {codec!r}: a dense codec (bf16, fp16, int8)")
    if select not in cx.SPARSE:
        raise ValueError(f"select {select!r}: one of {', '.join(cx.SPARSE)}")
    comm, P = MirrorComm(CODEC_RANKS), CODEC_RANKS
    big = np.ones(FLUSH_BYTES // 4, np.float32)
    rng = np.random.default_rng(0)

    def counts(kind: str, n: int) -> np.ndarray:  # codec_work's counts of a form of n floats
        if kind == "allreduce":
            return np.array([n])
        if kind == "alltoallv":  # (P, P): n / P to each rank
            return np.full((P, P), n // P)
        return np.full(P, n // P)  # reduce_scatter's blocks, allgatherv's counts

    def timed(c: str, kind: str, n: int) -> float:
        flush = big[:(FLUSH_BYTES if n == max(CODEC_SIZES) else CALL_FLUSH_BYTES) // 4]
        x = rng.standard_normal(n).astype(np.float32)
        r = np.full(n, 0.0, np.float32)  # written zeros, as a strategy's residuals
        out = np.empty(n, np.float32)
        bufs, thr = cx.Buffers(), cx.Threshold()
        ts = []
        for rep in range(repeats + 2):
            np.add(flush, 1.0, out=flush)
            c0 = bufs.codec_s
            if kind == "allreduce":
                cx.allreduce(comm, x.copy(), c, r, bufs=bufs, thr=thr, own_clean=rep > 0)
            elif kind == "reduce_scatter":
                cx.reduce_scatter(comm, x, counts(kind, n), c, out[:n // P], bufs=bufs)
            elif kind == "allgatherv":
                cx.allgatherv(comm, x[:n // P], counts(kind, n), c, out, bufs=bufs)
            else:
                cx.alltoallv(comm, x, counts(kind, n)[0], counts(kind, n)[:, 0], c, bufs=bufs,
                             out="received")  # a reused array, as the strategies receive
            if rep >= 2:  # warm-up: buffers, compilation, τ's first estimate
                ts.append(bufs.codec_s - c0)
        return statistics.median(ts)

    rows, y = [], []
    for kind in ("allreduce", "reduce_scatter", "allgatherv", "alltoallv"):
        for n in CODEC_SIZES:
            w = codec_work(kind, counts(kind, n), P, codec, feedback=kind == "allreduce")[0]
            rows.append((w[0], w[2]))
            y.append(timed(codec, kind, n))
    X, y = np.array(rows), np.array(y)
    # relative errors: small and large calls weigh alike
    inv_rate, call_s = nnls(X / y[:, None], np.ones(len(y)))[0]
    rel = (X @ np.array([inv_rate, call_s]) - y) / y
    n = CODEC_SIZES[-1]
    w = codec_work("allreduce", [n], P, select, feedback=True)[0]
    extra = timed(select, "allreduce", n) - w[0] * inv_rate - w[2] * call_s
    return {"codec": codec, "select": select,
            "codec_elems_per_s": float(1.0 / inv_rate) if inv_rate > 0 else float("inf"),
            "codec_call_s": float(call_s),
            "select_elems_per_s": float(w[1] / extra) if extra > 0 else float("inf"),
            "codec_fit_rel_rms": float(np.sqrt(np.mean(rel ** 2)))}


def memory_rate(repeats: int = 5, rows: int = 4096, width: int = 418) -> float:
    """Bytes per second of the streaming passes a step makes over a partial matrix (rows ×
    width float32, DeepFM's B × W): zero it, add another into it, copy it out; each pass
    counted once per byte of the matrix."""
    a = np.empty((rows, width), np.float32)
    b = np.ones((rows, width), np.float32)
    c = np.empty_like(a)
    ts = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        a.fill(0.0)
        np.add(a, b, out=a)
        np.copyto(c, a)
        ts.append(time.perf_counter() - t0)
    return 3 * a.nbytes / statistics.median(ts[1:])


def reduce_rate(repeats: int = 5, nbytes: int = 4 << 20) -> float:
    """γ: bytes of one operand a rank sums into another per second (float32 ``+=`` on
    ``nbytes`` arrays, out of cache), what an MPI reduction does at each step."""
    a = np.ones(nbytes // 4, np.float32)
    b = np.ones(nbytes // 4, np.float32)
    ts = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        np.add(a, b, out=a)
        ts.append(time.perf_counter() - t0)
    return nbytes / statistics.median(ts[1:])
