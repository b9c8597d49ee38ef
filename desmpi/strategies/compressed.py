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

import numpy as np

from desmpi.comm import Comm
from desmpi.data.slicing import split_counts
from desmpi.kernels.compress import finish_sum, pack_chunks, unpack_chunks
from desmpi.kernels.slots import add_topk, pack_threshold, pack_topk
from desmpi.strategies.codecstate import Buffers, Threshold
from desmpi.strategies.scatter import scatter_dense, scatter_sparse, step1
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
        lay = step1(bufs, ch, r, codec, ratio)
        lo, hi = lay.lo, lay.hi
        recv = scatter_dense(comm, flat, ch, codec, None, bufs, res, own_clean)
        qm = finish_sum(codec, recv, P - 1, flat[lo:hi], bufs.get("qm", hi - lo, np.uint16))
        allq = comm.allgatherv(qm, wch, out=bufs.get("allq", int(wch.sum()), np.uint16))
        # the own chunk holds its decoded words already; bf16 has a word a float
        unpack_chunks(wire, allq[:lo], [lo], out=flat[:lo])
        unpack_chunks(wire, allq[hi:], [flat.size - hi], out=flat[hi:])
        return x
    mine = bufs.get("mine", int(ch[r]), np.float32)
    if codec not in SPARSE:
        scatter_dense(comm, flat, ch, codec, mine, bufs, res, own_clean)
    else:
        scatter_sparse(comm, flat, ch, codec, ratio, mine, bufs, res, thr)
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
        scatter_dense(comm, x.reshape(-1), blocks, codec, o, bufs)
    else:
        scatter_sparse(comm, x.reshape(-1), blocks, codec, ratio, o, bufs)
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
