"""A stand-in communicator for timing a rank's codec work on one process (bench only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from desmpi.comm import Comm


class MirrorComm(Comm):
    """Rank 0 of ``size`` ranks in one process, no MPI, whose peers mirror it: each sends this
    rank what this rank sends it (an Alltoallv), or what this rank contributes (an
    Allgatherv), cut or padded with zeros to the counts given. Only those two collectives: it
    exists so that ``desmpi bench compute --codec`` can time a rank's own codec work in a
    ``size``-rank compressed collective (:func:`desmpi.bench.comm.codec_rates`) on one
    process, the copies standing in for the network, recorded as collectives."""

    def __init__(self, size: int) -> None:
        super().__init__(None)
        if size < 1:
            raise ValueError(f"size {size} < 1")
        self.size = size

    @staticmethod
    def _mirror(src: np.ndarray, dst: np.ndarray) -> None:
        k = min(src.size, dst.size)
        dst[:k] = src[:k]
        dst[k:] = 0

    def allgatherv(self, send: np.ndarray, counts: Sequence[int],
                   out: np.ndarray | None = None) -> np.ndarray:
        self._check(send, "send")
        c = np.asarray(counts, dtype=np.int64)
        if len(c) != self.size or c[0] != send.size:
            raise ValueError(f"counts {c.tolist()} disagree with this rank's {send.size} "
                             "elements")
        out = self._out(out, int(c.sum()), send.dtype)
        t0 = self._start()
        d = self._displs(c)
        for j in range(self.size):
            self._mirror(send.reshape(-1), out[d[j]:d[j] + c[j]])
        self._record("allgatherv", c, send.itemsize, t0)
        return out

    def alltoallv(self, send: np.ndarray, sendcounts: Sequence[int],
                  recvcounts: Sequence[int] | None = None, out: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        self._check(send, "send")
        sc = np.asarray(sendcounts, dtype=np.int64)
        rc = sc if recvcounts is None else np.asarray(recvcounts, dtype=np.int64)
        if len(sc) != self.size or len(rc) != self.size or sc.sum() != send.size:
            raise ValueError(f"sendcounts {sc.tolist()} / recvcounts {rc.tolist()} do not "
                             f"split {send.size} elements over {self.size} ranks")
        out = self._out(out, int(rc.sum()), send.dtype)
        t0 = self._start()
        ds, dr, flat = self._displs(sc), self._displs(rc), send.reshape(-1)
        for j in range(self.size):
            self._mirror(flat[ds[j]:ds[j] + sc[j]], out[dr[j]:dr[j] + rc[j]])
        self._record("alltoallv", sc, send.itemsize, t0)
        return out, rc

    def _unsupported(self, *a, **k):
        raise NotImplementedError("a MirrorComm has Allgatherv and Alltoallv only")

    allreduce = reduce_scatter = allgather_counts = alltoall_counts = _unsupported
    bcast = barrier = bcast_object = allgather_object = node_layout = _unsupported
