"""Sums and exchanges of compressed payloads built on MPI (``dist.compress``).

MPI has no bf16 sum, so a compressed Allreduce of n floats is composed of two collectives on
16-bit words, with float32 accumulation in between:

1. reduce-scatter by ``Alltoallv``: the vector is split in P chunks as ``numpy.array_split``
   does, each packed on its own; chunk j goes to rank j, which sums in float32 its own chunk
   (never packed, under every codec: it does not leave the rank, so it is neither encoded,
   selected from nor rounded) and then the P − 1 chunks it receives, decoded, in rank order;
2. ``Allgatherv`` of the packed sums; every rank (the owner too) decodes the same words, so
   replicas stay bitwise equal.

Wire bytes: 2·(P − 1)/P·n·2 per rank on average against 2·(P − 1)/P·n·4 for a float32 ring or
Rabenseifner Allreduce: half. A compressed Reduce_scatter is step 1 alone (the owner keeps its
float32 sum); a compressed Allgatherv sends the packed words; a compressed Alltoallv
(:func:`alltoallv`: the all-to-all strategies' rows and partials) packs each other
destination's block on its own (the rank's own block is copied at full width).
:func:`calls` is the plan of each form (the accounting records exactly those calls;
:mod:`desmpi.strategies.plans` uses it).

``topk`` (``dist.compress_ratio`` = r) compresses the dense gradients (:attr:`Wire.dense`,
with error feedback; the partials and their gradients go as bf16, :attr:`Wire.partials`): in
step 1 each other rank's chunk of m floats travels as its ⌈r·m⌉ largest-magnitude entries, 3
words each (16-bit index halves and a bf16 value); the receiver adds them into its float32
block, which starts as its own chunk (all of it, exact); step 2
(the Allgatherv of the sums) is dense bf16. (:func:`allgatherv` can send each rank's block as
top-k triples too.) The counts follow from the sizes alone, so plans stay exact.

``fp16`` sends each chunk as its halves scaled by a power of two of the chunk's own (one more
word: :mod:`desmpi.kernels.f16`), so that gradients carrying the loss's 1/B keep 11 significant
bits at any batch size. ``int8`` sends each chunk as blocks of 64 floats, a bf16 scale and
8-bit values each (:func:`desmpi.kernels.compress.pack_chunks`): about half bf16's words, and
the chunk of the sums travels the same way. ``dist.compress_partials`` (:attr:`Wire.partial`)
gives the partials and their gradients a codec of their own, so that e.g. topk's dense
gradients go with int8 partials; ``dist.compress_partial_grads`` (:attr:`Wire.partial_grads`)
sets the gradients' (the backward direction) apart.

``threshold`` (DCT: Gupta et al. 2020, arXiv 2010.08899) sends the same ⌈r·m⌉ slots a chunk
in the same words, filled by a hard threshold instead of a selection: the entries whose
magnitude reaches τ, in index order (those past the budget stay in the residual), the budget
filled from the rest when fewer pass. τ is re-estimated every ``dist.compress_every`` calls
from a uniform sample of the vector (:class:`Threshold`), so a step costs one pass over the
vector instead of a partial sort; the bytes are top-k's, known before the values.

Error feedback (gradient paths whose shape repeats every step: the dense gradients, a fused
first layer's W1 gradient): what packing lost is added to the next step's vector before it is
packed (Seide et al. 2014; Karimireddy et al. 2019), so the quantisation error does not
accumulate in the weights.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from desmpi.comm import Comm
from desmpi.data.slicing import split_counts
from desmpi.kernels.compress import (
    finish_sum,
    pack_chunks,
    pack_feedback,
    sum_packed,
    take_residual,
    unpack_chunks,
)
from desmpi.kernels.slots import (
    add_topk,
    estimate_threshold,
    pack_threshold,
    pack_topk,
)
from desmpi.strategies.wire import (
    CODECS,
    FULL,
    KEY_ENCODINGS,
    PARTIAL_CODECS,
    SPARSE,
    WORD,
    Wire,
    calls,
    gathered,
    rated_codecs,
    words,
)

# the plan side lives in desmpi.strategies.wire; its names stay reachable from here
__all__ = ["CODECS", "FULL", "KEY_ENCODINGS", "PARTIAL_CODECS", "SPARSE", "WORD", "Buffers",
           "Threshold", "Wire", "allgatherv", "allreduce", "alltoallv", "calls", "gathered",
           "rated_codecs", "reduce_scatter", "words"]


class Buffers:
    """Scratch arrays reused from call to call (a strategy keeps one): fresh multi-megabyte
    arrays every step would cost their page faults again each time. ``codec_s``: the seconds
    the calls given these buffers spent on their own work — packing, selecting, decoding,
    summing — that is their time less that of the collectives inside them (as the
    accounting records those), so that a run measures its codec cost where it is paid."""

    def __init__(self) -> None:
        self._a: dict[str, np.ndarray] = {}
        self._memo: dict[tuple, object] = {}
        self.codec_s = 0.0

    @contextmanager
    def timing(self, comm: Comm):
        """Add the enclosed work's time, less its collectives', to :attr:`codec_s`."""
        acct = comm.acct
        scope = acct.scope
        t0, c0 = time.perf_counter(), acct.time_s(scope)
        try:
            yield
        finally:
            self.codec_s += time.perf_counter() - t0 - (acct.time_s(scope) - c0)

    def memo(self, key: tuple, make):
        """``make()``, computed once per key: a call's layout (chunks, words, counts) is the
        same every step, and rebuilding it cost more than a tenth of the codec's time."""
        v = self._memo.get(key)
        if v is None:
            v = self._memo[key] = make()
        return v

    def get(self, name: str, n: int, dtype) -> np.ndarray:
        a = self._a.get(name)
        if a is None or a.dtype != np.dtype(dtype) or a.size < n:
            a = self._a[name] = np.empty(max(n, 1), dtype=dtype)
        return a[:n]


@dataclass
class Threshold:
    """τ of one vector under ``threshold``: re-estimated on every ``every``-th call (the first
    included) from a uniform sample of max(``sample``, 1%) of its entries."""

    every: int = 16
    sample: int = 4096
    tau: float = 0.0
    calls: int = 0

    def value(self, x: np.ndarray, ratio: float) -> float:
        if self.calls % self.every == 0:
            self.tau = estimate_threshold(x, ratio, max(self.sample, x.size // 100), self.calls)
        self.calls += 1
        return self.tau


def _encode(x: np.ndarray, blocks: np.ndarray, codec: str, ratio: float, bufs: Buffers,
            thr: Threshold | None = None, feedback: bool = False
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """(words, decoded or None) of a sparse codec (topk, threshold): x's blocks as it sends
    them (decoded: without ``feedback``; with it, x (flat float32) becomes what the slots
    left out)."""
    bounds = np.concatenate([[0], np.cumsum(blocks)])
    dec = None if feedback else bufs.get("dec", x.size, np.float32)
    q = bufs.get("sq", int(words(blocks, codec, ratio).sum()), np.uint16)
    if codec == "topk":
        return pack_topk(x, bounds, ratio, dec, q, feedback)
    thr = thr if thr is not None else Threshold(every=1)  # threshold
    q, dec, _ = pack_threshold(x, bounds, ratio, thr.value(x, ratio), dec, q, feedback)
    return q, dec


@dataclass(frozen=True)
class _Step1:
    """Step 1's layout at rank r of a vector in chunks of ``blocks`` under a codec: the own
    chunk [lo, hi); ``parts``, the vector before and after it as (its slice, its blocks, the
    slice of the packed words), the parts without a chunk left out; ``nq`` words packed (the
    own chunk's left out), ``own_words`` the own chunk's; the Alltoallv's counts."""

    lo: int
    hi: int
    parts: tuple
    nq: int
    own_words: int
    send: np.ndarray
    recv: np.ndarray


def _step1(bufs: Buffers, blocks: np.ndarray, r: int, codec: str, ratio: float) -> _Step1:
    """The :class:`_Step1` of ``blocks`` at rank r (made once: :meth:`Buffers.memo`)."""
    def make() -> _Step1:
        b = np.concatenate([[0], np.cumsum(blocks)]).astype(np.int64)
        wb = words(blocks, codec, ratio)
        wlo, nq = int(wb[:r].sum()), int(wb.sum() - wb[r])
        parts = [(slice(0, int(b[r])), blocks[:r].copy(), slice(0, wlo)),
                 (slice(int(b[r + 1]), int(b[-1])), blocks[r + 1:].copy(), slice(wlo, nq))]
        send = wb.copy()
        recv = np.full(blocks.size, wb[r], dtype=np.int64)
        send[r] = recv[r] = 0
        return _Step1(int(b[r]), int(b[r + 1]), tuple(p for p in parts if p[1].size), nq,
                      int(wb[r]), send, recv)
    ratio = ratio if codec in SPARSE else 0.0  # (the dense codecs' words do not use it)
    return bufs.memo(("step1", tuple(blocks.tolist()), r, codec, ratio), make)


def _to_owners(comm: Comm, q: np.ndarray, lay: _Step1, bufs: Buffers) -> np.ndarray:
    """Step 1's Alltoallv: q (every chunk's words but this rank's own) to the chunks'
    owners; returns the P − 1 chunks of this rank's block the others sent, in rank order."""
    return comm.alltoallv(q, lay.send, lay.recv,
                          out=bufs.get("recv", (comm.size - 1) * lay.own_words, np.uint16))[0]


def _pack_others(x: np.ndarray, q: np.ndarray, lay: _Step1, codec: str, bufs: Buffers,
                 residual: np.ndarray | None) -> None:
    """A dense codec's words (into q) of the other ranks' chunks of x (flat).
    ``residual`` (x's shape): error feedback — each packed chunk is that of x + residual, and
    the residual becomes what packing lost (x's chunks are left as they were, or hold x +
    residual where no kernel fuses the feedback); the own chunk's residual is the caller's
    (:func:`take_residual`)."""
    if residual is None:
        for sl, bl, qs in lay.parts:
            pack_chunks(codec, x[sl], bl, q[qs])
        return
    if x.dtype == residual.dtype == np.float32 and all(
            [pack_feedback(codec, x[sl], residual[sl], bl, q[qs]) for sl, bl, qs in lay.parts]):
        return
    for sl, bl, qs in lay.parts:  # add, pack, decode, subtract
        x[sl] += residual[sl]
        pack_chunks(codec, x[sl], bl, q[qs])
        seen = unpack_chunks(codec, q[qs], bl,
                             out=bufs.get("seen", sl.stop - sl.start, np.float32))
        np.subtract(x[sl], seen, out=residual[sl])


def _scatter_dense(comm: Comm, x: np.ndarray, blocks: np.ndarray, codec: str, out: np.ndarray,
                   bufs: Buffers, residual: np.ndarray | None = None,
                   own_clean: bool = False) -> np.ndarray | None:
    """Step 1 under a dense codec: the other ranks' chunks packed (:func:`_pack_others`) go
    to their owners; out (float32) = this rank's own chunk of x (with its residual taken:
    :func:`take_residual`, unless ``own_clean`` says it holds nothing) + the chunks received
    decoded, in rank order. The own chunk never leaves the rank, so it is neither packed nor
    rounded. ``out`` None: returns the received chunks and leaves the sum to the caller."""
    lay = _step1(bufs, blocks, comm.rank, codec, 0.0)
    own = slice(lay.lo, lay.hi)
    if residual is not None and not own_clean:
        take_residual(x[own], residual[own])
    q = bufs.get("q", lay.nq, np.uint16)
    _pack_others(x, q, lay, codec, bufs, residual)
    recv = _to_owners(comm, q, lay, bufs)
    if out is None:
        return recv
    return sum_packed(codec, recv, comm.size - 1, out, init=x[own])


def _slots(v: np.ndarray, bounds: np.ndarray, codec: str, ratio: float, tau: float,
           dec: np.ndarray | None, q: np.ndarray, feedback: bool) -> np.ndarray | None:
    """Pack v's chunks (``bounds`` from 0) as topk's or threshold's slots into q; returns
    the decoded floats (None with ``feedback``: v becomes what the slots left out)."""
    if codec == "topk":
        return pack_topk(v, bounds, ratio, dec, q, feedback)[1]
    return pack_threshold(v, bounds, ratio, tau, dec, q, feedback)[1]


def _scatter_sparse(comm: Comm, x: np.ndarray, blocks: np.ndarray, codec: str, ratio: float,
                    out: np.ndarray, bufs: Buffers, residual: np.ndarray | None = None,
                    thr: Threshold | None = None) -> np.ndarray:
    """Step 1 under topk / threshold: each other rank's chunk of v = x (+ residual) as its
    slots (threshold: τ from the whole of v), one Alltoallv, and out (float32) = this rank's
    own chunk of v, exact (it never leaves the rank), + the slots received, added in rank
    order. With ``residual``: it becomes what the slots left out, 0 on the own chunk."""
    lay = _step1(bufs, blocks, comm.rank, codec, ratio)
    lo, hi = lay.lo, lay.hi
    fused = residual is not None and x.dtype == residual.dtype == np.float32
    if fused:  # v = x + r kept in r; the slots' values leave it there
        v = np.add(x, residual, out=residual)
    else:
        if residual is not None:
            x += residual
        v = x
    tau = (thr if thr is not None else Threshold(every=1)).value(v, ratio) \
        if codec == "threshold" else 0.0
    q = bufs.get("sq", lay.nq, np.uint16)
    for sl, bl, qs in lay.parts:
        dec = None if fused else bufs.get("dec", sl.stop - sl.start, np.float32)
        dec = _slots(v[sl], np.concatenate([[0], np.cumsum(bl)]), codec, ratio, tau, dec,
                     q[qs], fused)
        if residual is not None and not fused:
            np.subtract(v[sl], dec, out=residual[sl])
    flat = out.reshape(-1)
    acc = flat if flat.dtype == np.float32 else bufs.get("acc", flat.size, np.float32)
    acc[:] = v[lo:hi]
    if residual is not None:
        residual[lo:hi] = 0.0
    recv = _to_owners(comm, q, lay, bufs)
    w = lay.own_words
    for j in range(comm.size - 1):  # the other ranks in rank order (every owner sums alike)
        add_topk(recv[j * w:(j + 1) * w], acc)
    if acc is not flat:
        flat[:] = acc
    return out


def _allreduce(comm: Comm, x: np.ndarray, codec: str, residual: np.ndarray | None,
               ratio: float, bufs: Buffers, thr: Threshold | None,
               own_clean: bool = False) -> np.ndarray:
    flat = x.reshape(-1)
    n, P, r = flat.size, comm.size, comm.rank
    ch = bufs.memo(("chunks", n, P), lambda: split_counts(n, P))
    res = None if residual is None else residual.reshape(-1)
    wire = gathered(codec)  # the sums travel dense
    wch = bufs.memo(("words", n, P, wire), lambda: words(ch, wire))
    if codec == "bf16" and flat.dtype == np.float32:  # the owner's step in place, in one pass
        lay = _step1(bufs, ch, r, codec, ratio)
        lo, hi = lay.lo, lay.hi
        recv = _scatter_dense(comm, flat, ch, codec, None, bufs, res, own_clean)
        qm = finish_sum(codec, recv, P - 1, flat[lo:hi], bufs.get("qm", hi - lo, np.uint16))
        allq = comm.allgatherv(qm, wch, out=bufs.get("allq", int(wch.sum()), np.uint16))
        # the own chunk holds its decoded words already; bf16 has a word a float
        unpack_chunks(wire, allq[:lo], [lo], out=flat[:lo])
        unpack_chunks(wire, allq[hi:], [flat.size - hi], out=flat[hi:])
        return x
    mine = bufs.get("mine", int(ch[r]), np.float32)
    if codec not in SPARSE:
        _scatter_dense(comm, flat, ch, codec, mine, bufs, res, own_clean)
    else:
        _scatter_sparse(comm, flat, ch, codec, ratio, mine, bufs, res, thr)
    allq = comm.allgatherv(pack_chunks(wire, mine, [mine.size],
                                       bufs.get("qm", int(wch[r]), np.uint16)), wch,
                           out=bufs.get("allq", int(wch.sum()), np.uint16))
    unpack_chunks(wire, allq, ch, flat.dtype, out=flat)
    return x


def _reduce_scatter(comm: Comm, x: np.ndarray, recvcounts, codec: str, out: np.ndarray,
                    ratio: float, bufs: Buffers) -> np.ndarray:
    blocks = np.asarray(recvcounts, dtype=np.int64)
    if blocks.sum() != x.size:
        raise ValueError(f"recvcounts {blocks.tolist()} do not split {x.size} elements")
    o = out if out.dtype == np.float32 else bufs.get("sum", out.size, np.float32)
    if codec not in SPARSE:
        _scatter_dense(comm, x.reshape(-1), blocks, codec, o, bufs)
    else:
        _scatter_sparse(comm, x.reshape(-1), blocks, codec, ratio, o, bufs)
    if o is not out:
        out.reshape(-1)[:] = o
    return out


def _allgatherv(comm: Comm, x: np.ndarray, counts, codec: str, out: np.ndarray,
                ratio: float, bufs: Buffers) -> np.ndarray:
    c = np.asarray(counts, dtype=np.int64)
    if codec not in SPARSE:
        wc = bufs.memo(("words", tuple(c.tolist()), codec), lambda: words(c, codec))
        allq = comm.allgatherv(pack_chunks(codec, x, [x.size],
                                           bufs.get("q", int(wc[comm.rank]), np.uint16)),
                               wc, out=bufs.get("allq", int(wc.sum()), np.uint16))
        unpack_chunks(codec, allq, c, out.dtype, out=out.reshape(-1))
        return out
    q, _ = _encode(x, np.array([x.size]), codec, ratio, bufs)
    wb = words(c, codec, ratio)
    allq = comm.allgatherv(q, wb, out=bufs.get("allq", int(wb.sum()), np.uint16))
    flat = out.reshape(-1)
    acc = flat if flat.dtype == np.float32 else bufs.get("acc", flat.size, np.float32)
    acc.fill(0.0)
    lo, wlo = 0, 0
    for j in range(comm.size):
        add_topk(allq[wlo:wlo + wb[j]], acc[lo:lo + c[j]])
        lo, wlo = lo + int(c[j]), wlo + int(wb[j])
    if acc is not flat:
        flat[:] = acc
    return out


def _alltoallv(comm: Comm, x: np.ndarray, sendcounts, recvcounts, codec: str, dtype,
               bufs: Buffers, out: str | None) -> np.ndarray:
    sc = np.asarray(sendcounts, dtype=np.int64)
    rc = np.asarray(recvcounts, dtype=np.int64)
    if codec in SPARSE or codec == "none":
        raise ValueError(f"no {codec} form of alltoallv (bf16, fp16, int8)")
    if sc.sum() != x.size:
        raise ValueError(f"sendcounts {sc.tolist()} do not split {x.size} elements")
    r = comm.rank
    if sc[r] != rc[r]:
        raise ValueError(f"rank {r} sends itself {sc[r]} elements but receives {rc[r]}")
    xf, ws, wr = x.reshape(-1), words(sc, codec), words(rc, codec)
    lo, hi = int(sc[:r].sum()), int(sc[:r + 1].sum())
    ws[r] = wr[r] = 0  # the block a rank keeps is copied at full width, not packed
    q = bufs.get("q", int(ws.sum()), np.uint16)
    if r:
        pack_chunks(codec, xf[:lo], sc[:r], q[:int(ws[:r].sum())])
    if r + 1 < sc.size:
        pack_chunks(codec, xf[hi:], sc[r + 1:], q[int(ws[:r].sum()):])
    recv, _ = comm.alltoallv(q, ws, wr, out=bufs.get("recv", int(wr.sum()), np.uint16))
    n = int(rc.sum())
    res = np.empty(n, dtype) if out is None else bufs.get(out, n, dtype)
    a, b, w = int(rc[:r].sum()), int(rc[:r + 1].sum()), int(wr[:r].sum())
    if r:
        unpack_chunks(codec, recv[:w], rc[:r], dtype, out=res[:a])
    res[a:b] = xf[lo:hi]
    if r + 1 < rc.size:
        unpack_chunks(codec, recv[w:], rc[r + 1:], dtype, out=res[b:])
    return res


def alltoallv(comm: Comm, x: np.ndarray, sendcounts, recvcounts, codec: str, dtype=None,
              bufs: Buffers | None = None, out: str | None = None) -> np.ndarray:
    """Compressed Alltoallv of floats (the all-to-all strategies' rows, pooled parts and
    partials, and their gradients): ``sendcounts[j]`` elements of x (flat, in rank order) go
    to rank j, each block packed on its own (fp16's scale and int8's blocks restart at each),
    one Alltoallv of the words; returns the (Σ recvcounts,) decoded floats of ``dtype``
    (x's by default): a new array, or ``bufs``' scratch array named ``out`` (valid until the
    next call that names it). Dense codecs only (bf16, fp16, int8)."""
    bufs = bufs or Buffers()
    with bufs.timing(comm):
        return _alltoallv(comm, x, sendcounts, recvcounts, codec,
                          x.dtype if dtype is None else dtype, bufs, out)


def allreduce(comm: Comm, x: np.ndarray, codec: str, residual: np.ndarray | None = None,
              ratio: float = 0.1, bufs: Buffers | None = None, thr: Threshold | None = None,
              own_clean: bool = False) -> np.ndarray:
    """Sum x (C-contiguous floats, any shape) over ranks in place through ``codec``; with
    ``residual`` (x's shape, float32 or x's dtype), error feedback: x + residual is packed and
    residual becomes what packing lost. ``thr``: the vector's τ state under ``threshold``
    (None: estimated at this call). ``bufs``: scratch, and where the codec time adds up.
    ``own_clean``: the residual's own chunk (this rank's of P, :func:`split_counts`) is known
    to hold 0 — a dense codec never writes it, so it does after one call with the same P —
    and is not read (the one pass a step would spend on it)."""
    bufs = bufs or Buffers()
    with bufs.timing(comm):
        return _allreduce(comm, x, codec, residual, ratio, bufs, thr, own_clean)


def reduce_scatter(comm: Comm, x: np.ndarray, recvcounts, codec: str, out: np.ndarray,
                   ratio: float = 0.1, bufs: Buffers | None = None) -> np.ndarray:
    """Compressed Reduce_scatter of x (flat floats) into ``out`` (recvcounts[rank] float32
    or the model's floats)."""
    bufs = bufs or Buffers()
    with bufs.timing(comm):
        return _reduce_scatter(comm, x, recvcounts, codec, out, ratio, bufs)


def allgatherv(comm: Comm, x: np.ndarray, counts, codec: str, out: np.ndarray,
               ratio: float = 0.1, bufs: Buffers | None = None) -> np.ndarray:
    """Compressed Allgatherv of x (counts[rank] floats) into ``out`` (sum(counts) floats)."""
    bufs = bufs or Buffers()
    with bufs.timing(comm):
        return _allgatherv(comm, x, counts, codec, out, ratio, bufs)
