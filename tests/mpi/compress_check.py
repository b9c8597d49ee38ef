"""Run under mpiexec: the compressed sums of desmpi.strategies.compressed against NumPy
references that apply the same rounding (every rank knows every rank's data from one seed).
Bitwise equality is required; a failure aborts the job naming the check."""

import sys

import numpy as np

from desmpi.comm import Comm, run_or_abort
from desmpi.data.slicing import split_counts
from desmpi.kernels.compress import pack, unpack
from desmpi.kernels.slots import topk_count
from desmpi.strategies import compressed as C
from desmpi.strategies import scatter as SC
from desmpi.strategies.codecwork import codec_work

comm = Comm.world()


def q(codec, x):
    """What one value goes through on the wire (float32 in, float32 out)."""
    return unpack(codec, pack(codec, np.asarray(x, np.float32)))


def int8_q(x, bounds):
    """Reference int8: per chunk, blocks of 64 from the chunk's start; scale = max|x| / 127
    rounded up to bf16; values rint(x · (1/s)) in float32, clipped to ±127, read back as q·s."""
    x = np.asarray(x, np.float32)
    out = np.empty(x.size, np.float32)
    for j in range(len(bounds) - 1):
        for a in range(bounds[j], bounds[j + 1], 64):
            blk = x[a:min(a + 64, bounds[j + 1])]
            s32 = np.array([np.abs(blk).max() / np.float32(127)], np.float32).view(np.uint32)
            hb = (int(s32[0]) >> 16) + (1 if int(s32[0]) & 0xFFFF else 0)
            s = np.array([hb << 16], np.uint32).view(np.float32)[0]
            with np.errstate(divide="ignore"):
                inv = np.float32(1) / s if s > 0 else np.float32(0)
            qq = np.clip(np.rint(blk * inv), -127, 127).astype(np.float32)
            out[a:a + blk.size] = qq * s
    return out


def fp16_q(x, bounds):
    """Reference fp16 on the wire: per chunk k = 15 − e with max|x| = f·2^e (f in [0.5, 1)),
    0 for an all-zero chunk; float16(x·2^k)·2^-k."""
    x = np.asarray(x, np.float32)
    out = np.empty(x.size, np.float32)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        c = x[lo:hi]
        amax = float(np.abs(c).max()) if c.size else 0.0
        k = 0 if amax == 0.0 else int(np.clip(15 - np.frexp(amax)[1], -112, 112))
        out[lo:hi] = (c * np.float32(2.0 ** k)).astype(np.float16).astype(np.float32) \
            * np.float32(2.0 ** -k)
    return out


def dense_q(codec, x, bounds):
    """What a dense codec sends of x, chunked at ``bounds`` (int8's blocks and fp16's scales
    restart at each)."""
    if codec == "int8":
        return int8_q(x, bounds)
    return fp16_q(x, bounds) if codec == "fp16" else q(codec, x)


def topk_q(x, bounds, ratio):
    """Reference top-k: per chunk the k largest |x| (ties broken by index), bf16 values."""
    out = np.zeros(x.size, np.float32)
    for j in range(len(bounds) - 1):
        c = x[bounds[j]:bounds[j + 1]].astype(np.float32)
        k = topk_count(c.size, ratio)
        if k:
            keep = np.lexsort((np.arange(c.size), -np.abs(c)))[:k]
            out[bounds[j] + keep] = q("bf16", c[keep])
    return out


def threshold_q(x, bounds, ratio):
    """Reference threshold: tau the exact (1 - ratio) quantile of |x| (x is smaller than the
    sample); per chunk its k slots take the entries reaching tau in index order, then the
    first below it; bf16 values."""
    a = np.sort(np.abs(x.astype(np.float32)))
    tau = a[min(a.size - 1, int(np.floor((1 - ratio) * a.size)))]
    out = np.zeros(x.size, np.float32)
    for j in range(len(bounds) - 1):
        c = x[bounds[j]:bounds[j + 1]].astype(np.float32)
        k = topk_count(c.size, ratio)
        order = np.concatenate([np.flatnonzero(np.abs(c) >= tau), np.flatnonzero(np.abs(c) < tau)])
        keep = order[:k]
        out[bounds[j] + keep] = q("bf16", c[keep])
    return out


def sparse_q(codec, x, bounds, ratio):
    return (topk_q if codec == "topk" else threshold_q)(x, bounds, ratio)


def owner_sums(data, sent, bounds):
    """What the owners of the chunks sum (float32): each owner starts from its own chunk
    exactly (it never leaves the rank) and adds the others' as sent, in rank order."""
    acc = np.zeros(bounds[-1], np.float32)
    for c in range(len(bounds) - 1):
        sl = slice(bounds[c], bounds[c + 1])
        acc[sl] = data[c][sl]
        for j, s in enumerate(sent):
            if j != c:
                acc[sl] += s[sl]
    return acc


def main() -> None:
    P, r = comm.size, comm.rank
    rng = np.random.default_rng(7)
    n = 1001
    data = [rng.normal(size=n).astype(np.float32) * 3 for _ in range(P)]
    ch = split_counts(n, P)
    bounds = np.concatenate([[0], np.cumsum(ch)])
    for codec in ("bf16", "fp16", "int8", "topk", "threshold"):
        sparse = codec in C.SPARSE
        ratio = 0.1
        # allreduce: sum in float32 in rank order of what each rank sent, then the sums
        # travel dense (bf16 for topk)
        sent = [sparse_q(codec, d, bounds, ratio) if sparse else dense_q(codec, d, bounds)
                for d in data]
        want = dense_q("bf16" if sparse else codec, owner_sums(data, sent, bounds), bounds)
        got = C.allreduce(comm, data[r].copy(), codec, ratio=ratio)
        assert np.array_equal(got, want), f"allreduce {codec}"
        # error feedback: the residual is what this rank's packing lost (nothing on its own
        # chunk: not packed)
        res = np.full(n, 0.01, np.float32)
        x = data[r].copy()
        C.allreduce(comm, x, codec, res, ratio)
        mine = data[r] + np.float32(0.01)
        seen = sparse_q(codec, mine, bounds, ratio) if sparse else dense_q(codec, mine, bounds)
        seen[bounds[r]:bounds[r + 1]] = mine[bounds[r]:bounds[r + 1]]
        assert np.array_equal(res, mine - seen), f"residual {codec}"
        # ... and the sum is that of what every rank packed from its x + residual
        fed = [d + np.float32(0.01) for d in data]
        sent = [sparse_q(codec, d, bounds, ratio) if sparse else dense_q(codec, d, bounds)
                for d in fed]
        assert np.array_equal(x, dense_q("bf16" if sparse else codec,
                                         owner_sums(fed, sent, bounds), bounds)), \
            f"allreduce with error feedback {codec}"
        # own_clean: a residual whose own chunk holds 0 need not be read there (the same sums)
        held = np.full(n, 0.01, np.float32)
        held[bounds[r]:bounds[r + 1]] = 0.0
        a, b, ra, rb = data[r].copy(), data[r].copy(), held.copy(), held.copy()
        C.allreduce(comm, a, codec, ra, ratio)
        C.allreduce(comm, b, codec, rb, ratio, own_clean=True)
        assert np.array_equal(a, b) and np.array_equal(ra, rb), f"own_clean {codec}"
        # reduce_scatter into unequal blocks
        blocks = np.array([(j * 37) % 101 + 1 for j in range(P)])
        blocks[-1] = n - blocks[:-1].sum() if n > blocks[:-1].sum() else blocks[-1]
        if blocks.sum() == n and (blocks > 0).all():
            bb = np.concatenate([[0], np.cumsum(blocks)])
            sent = [sparse_q(codec, d, bb, ratio) if sparse else dense_q(codec, d, bb)
                    for d in data]
            acc = owner_sums(data, sent, bb)
            out = np.empty(blocks[r], np.float32)
            C.reduce_scatter(comm, data[r], blocks, codec, out, ratio)
            assert np.array_equal(out, acc[bb[r]:bb[r + 1]]), f"reduce_scatter {codec}"
        # allgatherv of unequal blocks
        counts = np.array([5 + 3 * j for j in range(P)])
        parts = [data[j][:counts[j]] for j in range(P)]
        want = np.concatenate([sparse_q(codec, p, np.array([0, p.size]), ratio) if sparse
                               else dense_q(codec, p, [0, p.size]) for p in parts])
        out = np.empty(counts.sum(), np.float32)
        C.allgatherv(comm, parts[r].copy(), counts, codec, out, ratio)
        assert np.array_equal(out, want), f"allgatherv {codec}"
        if sparse:
            continue
        # alltoallv (the all-to-all strategies' rows): rank i sends S[i, j] floats to rank j,
        # some blocks empty; each block decodes alone, the rank's own block is copied at full
        # width; float64 in, float64 out
        S = np.array([[(3 * i + 5 * j) % 7 * ((i + j) % 3 != 1) for j in range(P)]
                      for i in range(P)], dtype=np.int64)
        np.fill_diagonal(S, np.diag(S) + 4)  # every rank keeps a block of its own
        offs = [np.concatenate([[0], np.cumsum(S[i])]) for i in range(P)]
        want = np.concatenate([data[j][offs[j][r]:offs[j][r + 1]] if j == r else
                               dense_q(codec, data[j][offs[j][r]:offs[j][r + 1]],
                                       [0, int(S[j, r])]) for j in range(P)])
        got = C.alltoallv(comm, data[r][:S[r].sum()].astype(np.float64), S[r], S[:, r], codec)
        assert got.dtype == np.float64 and np.array_equal(got, want), f"alltoallv {codec}"
    # narrow keys: the gathered global batch equals the int64 gather bit for bit, escapes
    # (47-bit values, the reserved words, a wrong field) on some ranks only
    from desmpi.data.batch import Batch
    from desmpi.kernels.hashing import FIELD_SHIFT
    from desmpi.strategies import des_input

    F, nb = 3, 5 + r
    krng = np.random.default_rng(100 + r)
    f = np.arange(nb * F) % F
    keys = ((f + 1) << FIELD_SHIFT) | krng.integers(0, 1 << 20, nb * F)
    if r % 2 == 1:
        keys[:3] = ((f[:3] + 1) << FIELD_SHIFT) | np.array([1 << 40, 0xFFFFFFFE, 0xFFFFFFFF])
    b = Batch(np.zeros(nb), np.zeros((nb, 0)), keys.astype(np.int64), F)
    sizes = np.array([5 + j for j in range(P)])
    wide = des_input.gather(comm, b, sizes, False, np.float64)
    narrow = des_input.gather(comm, b, sizes, False, np.float64, "narrow")
    assert np.array_equal(wide.keys, narrow.keys), "narrow keys"
    # planned calls == the recorded ones (kinds, counts, item sizes)
    log = []
    comm2 = Comm.world(keep_log=True)
    for codec in ("bf16", "fp16", "int8", "topk", "threshold"):
        C.allreduce(comm2, data[r].copy(), codec, ratio=0.25)
        plan = C.calls("allreduce", [n], P, codec, 0.25)
        if codec not in C.SPARSE:
            S = np.arange(P * P).reshape(P, P) % 5 + 60
            C.alltoallv(comm2, data[r][:S[r].sum()], S[r], S[:, r], codec)
            plan += C.calls("alltoallv", S, P, codec)
        log = [(c.kind, c.counts, c.itemsize) for _, c, _, _ in comm2.acct.log]
        comm2.acct.log.clear()
        want = [(k, tuple(int(x) for x in (cc[r] if k == "alltoallv" else cc)), it)
                for k, cc, it in plan]
        assert log == want, (codec, log, want)
    codec_work_is_what_the_kernels_do(data[r], n)


def codec_work_is_what_the_kernels_do(x, n: int) -> None:
    """codec_work (the cost model's codec work) against this rank's kernel calls, counted
    by wrapping the kernels compressed calls: elements packed (fused error feedback too), decoded
    (summed: the chunks received and the sum's start, the own chunk), selected (topk,
    threshold) and slots added, the own chunk's residual read; numpy's own passes (a sparse
    block zeroed, the residual added, an Alltoallv's own block copied) are not kernel calls
    and are added to the count as codec_work documents them."""
    P, r = comm.size, comm.rank
    seen = np.zeros(3)
    unfused = [False]
    wrapped = {}

    def count(name, col, size):  # in each module that calls the kernel
        for mod in (C, SC):
            f = getattr(mod, name, None)
            if f is None:
                continue
            wrapped[(mod, name)] = f

            def g(*a, _f=f, **k):
                seen[col] += size(*a, **k)
                return _f(*a, **k)
            setattr(mod, name, g)

    count("pack_chunks", 0, lambda codec, v, *a, **k: v.size)
    count("unpack_chunks", 0, lambda codec, q, blocks, *a, **k: int(np.sum(blocks)))
    count("sum_packed", 0,
          lambda codec, q, P_, out, init=None: (P_ + (init is not None)) * out.size)
    count("take_residual", 0, lambda v, res: res.size)  # the own chunk's residual read
    # the sum's start (the own chunk), the chunks received, and the own sum packed and decoded
    count("finish_sum", 0, lambda codec, q, P_, v, qm: (P_ + 2) * v.size)
    fused = SC.pack_feedback
    wrapped[(SC, "pack_feedback")] = fused

    def feedback(codec, v, res, blocks, out):
        done = fused(codec, v, res, blocks, out)
        seen[0] += v.size if done else 0  # else numpy adds, packs, decodes, subtracts
        unfused[0] = not done
        return done
    SC.pack_feedback = feedback
    count("pack_topk", 1, lambda v, *a: v.size)
    count("pack_threshold", 1, lambda v, *a: v.size)
    count("add_topk", 0, lambda slots, acc: slots.size // 3)
    c2 = Comm.world(keep_log=True)
    try:
        ch = split_counts(n, P)
        S = np.arange(P * P).reshape(P, P) % 5 + 60
        sizes = np.array([7 + j for j in range(P)])
        for codec in ("bf16", "fp16", "int8", "topk", "threshold"):
            for kind in ("allreduce", "allreduce+feedback", "reduce_scatter", "allgatherv",
                         "alltoallv"):
                if codec in C.SPARSE and kind == "alltoallv":
                    continue
                seen[:] = 0.0
                unfused[0] = False
                c2.acct.log.clear()
                fb = kind.endswith("feedback")
                if kind.startswith("allreduce"):
                    res = np.zeros(n, np.float32) if fb else None  # its own chunk 0:
                    C.allreduce(c2, x.copy(), codec, res, ratio=0.25, own_clean=True)
                    counts = [n]
                elif kind == "reduce_scatter":
                    C.reduce_scatter(c2, x, ch, codec, np.empty(ch[r], np.float32), 0.25)
                    counts = ch
                elif kind == "allgatherv":
                    C.allgatherv(c2, x[:sizes[r]], sizes, codec,
                                 np.empty(sizes.sum(), np.float32), 0.25)
                    counts = sizes
                else:
                    C.alltoallv(c2, x[:S[r].sum()], S[r], S[:, r], codec)
                    counts = S
                want = codec_work(kind.split("+")[0], counts, P, codec, 0.25, fb)[r]
                got = seen.copy()
                got[2] = len(c2.acct.log)  # the collectives of packed words
                if codec in C.SPARSE:  # numpy's passes: the zeroed block (Allgatherv) or the
                    # own chunk copied, the residual added and the own chunk's zeroed
                    block = {"allgatherv": sizes.sum()}.get(kind.split("+")[0], ch[r])
                    got[0] += block + (n + ch[r] if fb else 0)
                if kind == "alltoallv":  # the own block copied
                    got[0] += S[r, r]
                if fb and codec not in C.SPARSE and unfused[0]:  # FEEDBACK_PASSES: 3
                    if codec == "fp16":
                        continue  # codec_work counts the fused kernel, which this CPU lacks
                    # numpy adds and subtracts around the kernels' decode of the others
                    got[0] += 2 * (n - ch[r])
                assert np.allclose(got, want), (codec, kind, got.tolist(), want.tolist())
    finally:
        for (mod, name), f in wrapped.items():
            setattr(mod, name, f)


sys.exit(run_or_abort(main, comm))
