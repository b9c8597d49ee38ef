"""Compressed sums (dist.compress) against NumPy references, bit for bit, at P = 1-4."""

import numpy as np
import pytest

from desmpi.kernels.compress import pack, sum_packed, unpack
from desmpi.kernels.slots import pack_topk, topk_count
from tests.conftest import run_mpi


@pytest.mark.parametrize("P", [1, 2, 3, 4])
def test_compressed_collectives_match_numpy(P):
    run_mpi(P, ["tests/mpi/compress_check.py"], timeout=180)


def test_bf16_rounds_to_nearest_even():
    # 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties go to the even mantissa (1.0);
    # 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6
    x = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -2.5, 0.0],
                 dtype=np.float32)
    assert unpack("bf16", pack("bf16", x)).tolist() == [1.0, 1 + 2 ** -6, 1 + 2 ** -7, -2.5,
                                                       0.0]
    rng = np.random.default_rng(0)
    y = rng.normal(size=10000).astype(np.float32)
    err = np.abs(unpack("bf16", pack("bf16", y)) - y) / np.abs(y)
    assert err.max() <= 2 ** -8  # half a unit in the last of 8 significant bits
    assert np.array_equal(unpack("fp16", pack("fp16", y)), y.astype(np.float16).astype(np.float32))


def test_topk_keeps_the_largest():
    x = np.array([0.1, -5.0, 0.3, 2.0, -0.2, 0.0, 7.0, 1.0], dtype=np.float32)
    words, dec = pack_topk(x, np.array([0, 4, 8]), 0.5)
    assert words.size == 3 * (2 + 2)
    assert np.flatnonzero(dec).tolist() == [1, 3, 6, 7]
    assert topk_count(10, 0.1) == 1 and topk_count(0, 0.5) == 0 and topk_count(3, 1.0) == 3


def test_topk_selection_matches_a_sort_with_ties_by_index():
    """The radix selection keeps, per chunk, what a full sort by (-|x|, index) keeps: chunks
    of any size (past 2**16 entries too, and past the 8192 from which a sample bounds the
    candidates), many tied magnitudes (±0 and rounded values), ratios up to 1, and inputs
    whose strided sample misleads the bound both ways (the large entries exactly at, or
    never at, the sampled positions)."""
    rng = np.random.default_rng(3)
    for trial in range(150):
        n = int(rng.integers(1, 400)) if trial < 120 else int(rng.integers(8192, 140_000))
        x = rng.normal(size=n).astype(np.float32) * np.float32(10.0 ** rng.integers(-6, 6))
        if trial % 2:
            x = np.round(x).astype(np.float32)  # many ties, zeros of both signs
            x[: n // 3] *= -1
        if trial >= 140:  # one chunk, k > 2048: the sample reads every (n // 2048)-th entry
            on = np.zeros(n, bool)
            on[::n // 2048] = True
            x = np.where(on if trial % 2 else ~on, np.float32(1e3), x).astype(np.float32)
        cuts = rng.integers(0, n, int(rng.integers(0, 4))) if trial < 140 else []
        bounds = np.unique(np.concatenate([[0, n], cuts])).astype(np.int64)
        ratio = float(rng.choice([0.01, 0.1, 0.37, 1.0])) if trial < 140 else 0.37
        words, _ = pack_topk(x, bounds, ratio)
        got, want, off = [], [], 0
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            k = topk_count(int(hi - lo), ratio)
            w = words[off:off + 3 * k]
            off += 3 * k
            got += (lo + (w[:k].astype(np.int64) | (w[k:2 * k].astype(np.int64) << 16))).tolist()
            want += sorted((lo + np.lexsort((np.arange(hi - lo), -np.abs(x[lo:hi])))[:k]).tolist())
        assert off == words.size and got == want, trial


@pytest.mark.parametrize("hardware", [False, True])
def test_fp16_kernels_match_numpy_bit_for_bit(hardware):
    """Both fp16 kernels (the CPU's conversions, and the portable branch-free ones): every half
    decodes to NumPy's float32 bits (a NaN made quiet, its payload kept); float32 bit
    patterns (normals, subnormals, ties, overflow, inf, NaN) encode to NumPy's half (NaN:
    quiet, as NumPy leaves the quiet ones)."""
    from desmpi.kernels import f16 as K

    if hardware and not K.hardware_f16():
        pytest.skip("no half conversion instructions here: the portable kernels run")
    enc = K._f16_pack_hw if hardware else (lambda x, o: K._f16_bits(x, x.view(np.uint32), o))
    dec = K._f16_unpack_hw if hardware else K._f16_to_f32
    rng = np.random.default_rng(1)
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    ref = h.view(np.float16).astype(np.float32).view(np.uint32)
    ref = np.where(np.isnan(h.view(np.float16)), ref | np.uint32(0x400000), ref)
    got = np.empty(h.size, np.float32)
    dec(h, got)
    assert np.array_equal(got.view(np.uint32), ref)
    x = np.concatenate([
        rng.integers(0, 1 << 32, 500_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        (rng.normal(size=50_000) * 1e-6).astype(np.float32),  # half subnormals
        np.array([65504, 65519.99, 65520, -65520, 2.98e-8, 2.99e-8, -0.0], np.float32)])
    with np.errstate(all="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    q = np.empty(x.size, np.uint16)
    enc(x, q)
    nan = np.isnan(x)
    assert np.array_equal(q[~nan], want[~nan])
    quiet = (x.view(np.uint32) & 0x400000) != 0
    assert np.array_equal(q[nan & quiet], want[nan & quiet])
    assert ((q[nan] & 0x7E00) == 0x7E00).all()
    if hardware:  # the two kernels give the same bits: ranks on other CPUs agree
        q2 = np.empty_like(q)
        K._f16_bits(x, x.view(np.uint32), q2)
        assert np.array_equal(q, q2)


def test_threshold_fills_a_fixed_budget_in_index_order():
    from desmpi.kernels.slots import add_topk, estimate_threshold, pack_threshold

    x = np.array([0.1, -5.0, 0.2, 3.0, 4.0, -0.3, 0.05, 6.0], np.float32)
    bounds = np.array([0, 4, 8])
    # tau 2.5: chunk 0 has -5, 3 (k = 2: both); chunk 1 has 4, 6 (both)
    words, dec, passed = pack_threshold(x, bounds, 0.5, 2.5)
    assert passed == 4 and words.size == 3 * 4
    assert np.array_equal(dec, np.where(np.abs(x) >= 2.5, x, 0))
    # tau 3.5: chunk 0 has only -5 (the slot left goes to the first entry below: 0.1);
    # chunk 1 has 4, 6
    words, dec, passed = pack_threshold(x, bounds, 0.5, 3.5)
    assert passed == 3
    want = np.array([0.1, -5.0, 0, 0, 4.0, 0, 0, 6.0], np.float32)
    assert np.array_equal(dec, unpack("bf16", pack("bf16", want)))
    # tau 0: everything passes, the budget keeps the first k of each chunk (the rest stays
    # in the residual under error feedback)
    words, dec, passed = pack_threshold(x, bounds, 0.5, 0.0)
    assert passed == 8 and np.count_nonzero(dec) == 4 and dec[0] != 0 and dec[2] == 0
    # the receiver reads the words as top-k's: per chunk, 3·k words
    k = 2
    acc = np.zeros(4, np.float32)
    add_topk(words[:3 * k], acc)
    assert np.array_equal(acc, dec[:4])
    # the sampled estimate: about ratio of the entries reach it
    big = np.random.default_rng(0).normal(size=200_000).astype(np.float32)
    tau = estimate_threshold(big, 0.1, 20_000, seed=1)
    assert abs(np.mean(np.abs(big) >= tau) - 0.1) < 0.01
    assert estimate_threshold(x, 0.25, 100, 0) == 5.0  # all of x: 5 and 6 reach it


def test_int8_blocks_against_numpy():
    """int8: per chunk, blocks of 64 from the chunk's start, a bf16 scale rounded up from
    max|x|/127, values rint(x/s) (float32); error at most s/2; a NaN or inf spoils its block
    only (decoded NaN, caught by the step's checks); all-zero blocks stay zero; the words are
    counted exactly."""
    from desmpi.kernels.compress import pack_chunks, unpack_chunks
    from desmpi.kernels.int8 import int8_words

    rng = np.random.default_rng(3)
    x = (rng.normal(size=2001) * np.exp(3 * rng.normal(size=2001))).astype(np.float32)
    x[65:129] = 0.0  # the second block of chunk 1 (which starts at 1)
    blocks = [1, 130, 0, 1870]
    bounds = np.concatenate([[0], np.cumsum(blocks)])
    q = pack_chunks("int8", x, blocks)
    assert q.size == sum(int8_words(m) for m in blocks) == 1 + 1 + 65 + 3 + 0 + 935 + 30
    y = unpack_chunks("int8", q, blocks)
    # an independent reference (NumPy, block by block)
    want = np.empty_like(x)
    for j in range(len(blocks)):
        for a in range(bounds[j], bounds[j + 1], 64):
            blk = x[a:min(a + 64, bounds[j + 1])]
            s = np.float32(np.abs(blk).max() / np.float32(127))
            u = int(np.array([s]).view(np.uint32)[0])
            s_b = np.array([((u >> 16) + (u & 0xFFFF > 0)) << 16], np.uint32).view(np.float32)[0]
            assert s_b >= s
            want[a:a + blk.size] = (np.clip(np.rint(blk * (np.float32(1) / s_b)), -127, 127)
                                    * s_b if s_b > 0 else 0)
            assert np.abs(y[a:a + blk.size] - blk).max() <= s_b / 2 * (1 + 1e-6)
    assert np.array_equal(y, want)
    assert not y[65:129].any()
    bad = x.copy()
    bad[200], bad[1500] = np.nan, -np.inf
    z = unpack_chunks("int8", pack_chunks("int8", bad, blocks), blocks)
    spoilt = np.isnan(z)
    # the blocks holding them: chunk 3 starts at 131; 200 is in [195, 259), 1500 in [1475, 1539)
    assert np.flatnonzero(spoilt).tolist() == [*range(195, 259), *range(1475, 1539)]
    assert np.array_equal(z[~spoilt], y[~spoilt])
    # the sum of P chunks decodes each and adds in rank order (float32)
    m = 300
    parts = [rng.normal(size=m).astype(np.float32) for _ in range(3)]
    words = np.concatenate([pack_chunks("int8", p, [m]) for p in parts])
    got = sum_packed("int8", words, 3, np.empty(m, np.float32))
    acc = np.zeros(m, np.float32)
    for p in parts:
        acc += unpack_chunks("int8", pack_chunks("int8", p, [m]), [m])
    assert np.array_equal(got, acc)


def test_sum_packed_decodes_each_chunk_and_adds_in_rank_order(monkeypatch):
    """bf16 and fp16 sums of P chunks (values over twelve decades) are the float32 sums, in rank
    order, of each chunk decoded; fp16's portable kernels give the same bits."""
    from desmpi.kernels import f16
    from desmpi.kernels.compress import pack_chunks, unpack_chunks

    rng = np.random.default_rng(3)
    m, P = 5000, 3
    for codec in ("bf16", "fp16"):
        parts = [(rng.normal(size=m) * 10.0 ** rng.integers(-8, 4, m)).astype(np.float32)
                 for _ in range(P)]
        words = np.concatenate([pack_chunks(codec, p, [m]) for p in parts])
        want = np.zeros(m, np.float32)
        for p in parts:
            want += unpack_chunks(codec, pack_chunks(codec, p, [m]), [m])
        got = sum_packed(codec, words, P, np.empty(m, np.float32))
        assert np.array_equal(got, want), codec  # (a sum may be ±0 by where it starts)
        # a rank's own chunk (never packed) starts the sum, at full width
        own = (rng.normal(size=m) * 10.0 ** rng.integers(-8, 4, m)).astype(np.float32)
        start = own.copy()
        for p in parts:
            start += unpack_chunks(codec, pack_chunks(codec, p, [m]), [m])
        assert np.array_equal(sum_packed(codec, words, P, np.empty(m, np.float32), own),
                              start), codec
    monkeypatch.setattr(f16, "hardware_f16", lambda: False)
    portable = np.empty(m, np.float32)
    f16.sum_chunks(words, P, m, portable)  # the fp16 words of the last loop
    assert np.array_equal(portable.view(np.uint32), got.view(np.uint32))


def _scaled_f16_reference(x: np.ndarray, bounds) -> np.ndarray:
    """NumPy: per chunk k = 15 − e with max|x| = f·2^e (f in [0.5, 1)), |k| <= 112, 0 for an
    all-zero chunk; the value sent is float16(x·2^k)·2^-k."""
    out = np.empty(x.size, np.float32)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        c = x[lo:hi]
        amax = float(np.abs(c).max()) if c.size else 0.0
        k = 0 if amax == 0.0 else int(np.clip(15 - np.frexp(amax)[1], -112, 112))
        with np.errstate(over="ignore"):
            h = (c * np.float32(2.0 ** k)).astype(np.float16)
        out[lo:hi] = h.astype(np.float32) * np.float32(2.0 ** -k)
    return out


@pytest.mark.parametrize("hardware", [False, True])
def test_fp16_chunks_scale_each_chunk_by_a_power_of_two(hardware, monkeypatch):
    """fp16 on the wire: each chunk's halves carry x·2^k (its largest magnitude in [2^14,
    2^15)), one exponent word more a chunk; equal to the NumPy reference bit for bit, with both
    kernels, and 11 significant bits at scales where plain halves are subnormal or overflow
    (the per-sample gradients at batch 4096 are ~1e-6); error feedback leaves the residual
    x + r − sent."""
    from desmpi.kernels import f16
    from desmpi.kernels.compress import chunk_words, pack_chunks, pack_feedback, unpack_chunks

    if hardware and not f16.hardware_f16():
        pytest.skip("no half conversion instructions here: the portable kernels run")
    if not hardware:
        monkeypatch.setattr(f16, "hardware_f16", lambda: False)
    rng = np.random.default_rng(5)
    sizes = [700, 0, 300, 5, 1000, 64]
    scales = [1e-6, 1.0, 3e-9, 1e5, 2e-40, 1.0]
    x = np.concatenate([rng.normal(size=n) * s for n, s in zip(sizes, scales)]).astype(np.float32)
    x[700 + 300:700 + 300 + 5] = 0.0  # an all-zero chunk: k = 0
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    q = pack_chunks("fp16", x, sizes)
    assert q.size == sum(chunk_words("fp16", n) for n in sizes) == sum(sizes) + 5
    got = unpack_chunks("fp16", q, sizes)
    want = _scaled_f16_reference(x, bounds)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    big = np.abs(x) >= np.float32(2.0 ** -100)  # all but the 2e-40 chunk (k clamped there)
    rel = np.abs(got - x)[big] / np.abs(x)[big]
    top = np.repeat([np.abs(x[a:b]).max() if b > a else 0 for a, b in
                     zip(bounds[:-1], bounds[1:])], sizes)[big]
    # 2^-11 relative, or half a unit of the chunk's smallest normal half below 2^-14 of it
    assert (np.abs(got - x)[big] <= np.maximum(np.abs(x)[big] * 2.0 ** -11,
                                                top * 2.0 ** -39)).all()
    assert np.median(rel) < 2.0 ** -12
    plain = np.abs(x[:700].astype(np.float16).astype(np.float32) - x[:700]) / np.abs(x[:700])
    assert np.median(plain) > 50 * np.median(rel)  # 1e-6: subnormal halves as plain fp16
    # error feedback, one pass or (portable) the caller's add, pack, decode, subtract
    r = (rng.normal(size=x.size) * 1e-7).astype(np.float32)
    r2, q2 = r.copy(), np.empty(q.size, np.uint16)
    if pack_feedback("fp16", x, r2, sizes, q2):
        v = x + r
        assert np.array_equal(q2, pack_chunks("fp16", v, sizes))
        assert np.array_equal(r2, v - unpack_chunks("fp16", q2, sizes))
    else:
        assert not hardware


def test_codec_time_leaves_out_the_collectives_inside():
    """Buffers.timing adds the enclosed time less what the accounting recorded for the
    collectives in it (here one that "took" as long as the whole block: no codec time)."""
    import time

    from desmpi.comm import Comm
    from desmpi.strategies.compressed import Buffers
    from sim.accounting import Call

    comm, bufs = Comm.local(), Buffers()
    with bufs.timing(comm):
        time.sleep(0.05)
    assert bufs.codec_s >= 0.05
    before = bufs.codec_s
    with bufs.timing(comm):
        t0 = time.perf_counter()
        time.sleep(0.05)
        comm.acct.record(Call("allgatherv", (1,), 2, 0, 1),
                         time.perf_counter() - t0)
    assert 0.0 <= bufs.codec_s - before < 0.01


def test_alltoallv_has_dense_codecs_only():
    """The all-to-all strategies' rows go dense (bf16, fp16, int8): a sparse codec or none is
    refused by the collective and by its plan alike, naming the codec."""
    from desmpi.comm import Comm
    from desmpi.strategies import compressed as C

    comm = Comm.local()
    x = np.ones(6, np.float32)
    for codec in ("topk", "threshold", "none"):
        with pytest.raises(ValueError, match=f"no {codec} form of alltoallv"):
            C.alltoallv(comm, x, [6], [6], codec)
    with pytest.raises(ValueError, match="no topk form of alltoallv"):
        C.calls("alltoallv", np.array([[6]]), 1, "topk")
    with pytest.raises(ValueError, match="do not split 6 elements"):
        C.alltoallv(comm, x, [5], [5], "bf16")
    # one rank: its own block, copied at full width (not packed)
    got = C.alltoallv(comm, x / 3, [6], [6], "bf16")
    assert got.dtype == np.float32 and np.array_equal(got, x / 3)
    with pytest.raises(ValueError, match="sends itself 6 elements but receives 5"):
        C.alltoallv(comm, x, [6], [5], "bf16")
