"""Step one of a compressed sum (:mod:`desmpi.strategies.compressed`): a vector in P chunks,
each other rank's chunk packed (a dense codec) or selected from (topk, threshold) and sent to
its owner by one ``Alltoallv``; the owner sums in float32 its own chunk — never packed, it
does not leave the rank — and the P − 1 it receives, in rank order. A compressed
Reduce_scatter is this step alone; a compressed Allreduce follows it with an Allgatherv of
the packed sums."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from desmpi.comm import Comm
from desmpi.kernels.compress import (
    pack_chunks,
    pack_feedback,
    sum_packed,
    take_residual,
    unpack_chunks,
)
from desmpi.kernels.slots import add_topk, pack_threshold, pack_topk
from desmpi.strategies.codecstate import Buffers, Threshold
from desmpi.strategies.wire import SPARSE, words


@dataclass(frozen=True)
class Step1:
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


def step1(bufs: Buffers, blocks: np.ndarray, r: int, codec: str, ratio: float) -> Step1:
    """The :class:`Step1` of ``blocks`` at rank r (made once: :meth:`Buffers.memo`)."""
    def make() -> Step1:
        b = np.concatenate([[0], np.cumsum(blocks)]).astype(np.int64)
        wb = words(blocks, codec, ratio)
        wlo, nq = int(wb[:r].sum()), int(wb.sum() - wb[r])
        parts = [(slice(0, int(b[r])), blocks[:r].copy(), slice(0, wlo)),
                 (slice(int(b[r + 1]), int(b[-1])), blocks[r + 1:].copy(), slice(wlo, nq))]
        send = wb.copy()
        recv = np.full(blocks.size, wb[r], dtype=np.int64)
        send[r] = recv[r] = 0
        return Step1(int(b[r]), int(b[r + 1]), tuple(p for p in parts if p[1].size), nq,
                      int(wb[r]), send, recv)
    ratio = ratio if codec in SPARSE else 0.0  # (the dense codecs' words do not use it)
    return bufs.memo(("step1", tuple(blocks.tolist()), r, codec, ratio), make)


def _to_owners(comm: Comm, q: np.ndarray, lay: Step1, bufs: Buffers) -> np.ndarray:
    """Step 1's Alltoallv: q (every chunk's words but this rank's own) to the chunks'
    owners; returns the P − 1 chunks of this rank's block the others sent, in rank order."""
    return comm.alltoallv(q, lay.send, lay.recv,
                          out=bufs.get("recv", (comm.size - 1) * lay.own_words, np.uint16))[0]


def _pack_others(x: np.ndarray, q: np.ndarray, lay: Step1, codec: str, bufs: Buffers,
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


def scatter_dense(comm: Comm, x: np.ndarray, blocks: np.ndarray, codec: str, out: np.ndarray,
                   bufs: Buffers, residual: np.ndarray | None = None,
                   own_clean: bool = False) -> np.ndarray | None:
    """Step 1 under a dense codec: the other ranks' chunks packed (:func:`_pack_others`) go
    to their owners; out (float32) = this rank's own chunk of x (with its residual taken:
    :func:`take_residual`, unless ``own_clean`` says it holds nothing) + the chunks received
    decoded, in rank order. The own chunk never leaves the rank, so it is neither packed nor
    rounded. ``out`` None: returns the received chunks and leaves the sum to the caller."""
    lay = step1(bufs, blocks, comm.rank, codec, 0.0)
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


def scatter_sparse(comm: Comm, x: np.ndarray, blocks: np.ndarray, codec: str, ratio: float,
                    out: np.ndarray, bufs: Buffers, residual: np.ndarray | None = None,
                    thr: Threshold | None = None) -> np.ndarray:
    """Step 1 under topk / threshold: each other rank's chunk of v = x (+ residual) as its
    slots (threshold: τ from the whole of v), one Alltoallv, and out (float32) = this rank's
    own chunk of v, exact (it never leaves the rank), + the slots received, added in rank
    order. With ``residual``: it becomes what the slots left out, 0 on the own chunk."""
    lay = step1(bufs, blocks, comm.rank, codec, ratio)
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
