"""The communicator: the only module of desmpi that imports mpi4py.

:class:`Comm` wraps its own ``Dup`` of ``COMM_WORLD`` (or nothing, at size 1 without MPI) and
offers the collectives the strategies need on contiguous NumPy buffers — no pickling. Every call
is recorded in :attr:`Comm.acct` with the exact payload and wire bytes of
:mod:`sim.accounting` and the time spent in MPI; wire bytes follow the algorithm the MPI library
selects for the call (:attr:`Comm.layout`: the library found by :func:`detect_library`, ranks per
node from the shared-memory split).

:func:`run_or_abort` runs a rank's main function and turns any exception into
``MPI_Abort`` of the whole job, after logging which rank failed and why, so that no other rank
waits forever in a collective.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence

import numpy as np

from desmpi.accounting import Accounting
from desmpi.errors import EXIT_USER_ERROR, UserError
from sim.accounting import Call, Layout

log = logging.getLogger(__name__)

_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS",
                  "HYDRA_CONTROL_FD", "PMI_FD")


ABORT_GRACE_S = 1.0  # pause between the last message and MPI_Abort (see Comm.abort)
IDLE_POLL_S = 1e-3  # how often a rank waiting asleep (bcast_object idle=True) looks again


def launched_by_mpi() -> bool:
    """True when a launcher (mpiexec, mpirun, srun with PMI) started this process."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


class Comm:
    """Collectives on NumPy buffers with accounting; size 1 works without MPI.

    All buffers are C-contiguous; counts are element counts along the flattened buffer.
    """

    def __init__(self, mpi_comm=None, keep_log: bool = False, layout: Layout | None = None
                 ) -> None:
        self._c = mpi_comm
        self.rank = 0 if mpi_comm is None else mpi_comm.Get_rank()
        self.size = 1 if mpi_comm is None else mpi_comm.Get_size()
        self.acct = Accounting(keep_log=keep_log)
        #: the library and ranks per node whose algorithms the wire bytes follow
        self.layout = Layout() if layout is None else layout
        self._in_call: float | None = None  # start of the collective in progress (watchdog)
        self._last_kind = ""
        self._timeout, self._where, self._dog = 0.0, (lambda: ""), None
        if mpi_comm is not None:
            from mpi4py import MPI

            self._ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
            self._in_place = MPI.IN_PLACE

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def world(cls, keep_log: bool = False) -> Comm:
        """A Dup of COMM_WORLD when launched by MPI, else a size-1 Comm that needs no MPI."""
        if not launched_by_mpi():
            return cls(None, keep_log=keep_log)
        from mpi4py import MPI

        comm = cls(MPI.COMM_WORLD.Dup(), keep_log=keep_log)
        comm.layout = Layout(detect_library(MPI.Get_library_version()), comm.node_layout()[1])
        return comm

    @classmethod
    def local(cls, keep_log: bool = False) -> Comm:
        return cls(None, keep_log=keep_log)

    @property
    def is_mpi(self) -> bool:
        return self._c is not None

    def node_layout(self) -> tuple[int, int]:
        """(nodes, most ranks on one node): ranks that share memory (MPI_COMM_TYPE_SHARED) are
        one node. Not recorded in the accounting (start-up, not training traffic)."""
        if self._c is None:
            return 1, 1
        from mpi4py import MPI

        node = self._c.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            local, leader = node.Get_size(), node.Get_rank() == 0
        finally:
            node.Free()
        return (int(self._c.allreduce(int(leader), op=MPI.SUM)),
                int(self._c.allreduce(local, op=MPI.MAX)))

    # ---- liveness --------------------------------------------------------------------------
    def watchdog(self, timeout_s: float, where: Callable[[], str] = lambda: "") -> None:
        """Abort the whole job when a collective on this rank takes longer than ``timeout_s``:
        a rank that died, hung or was stopped would leave the others waiting in it forever.
        ``where()`` names the place (the step) in the message. 0 disables it."""
        self._timeout, self._where = timeout_s, where
        if self._c is None or timeout_s <= 0 or self._dog is not None:
            return
        import threading

        self._dog = threading.Thread(target=self._watch, name="desmpi-watchdog", daemon=True)
        self._dog.start()

    def _watch(self) -> None:
        while True:
            time.sleep(max(0.05, min(1.0, self._timeout / 10)))
            t = self._in_call
            if self._timeout > 0 and t is not None and time.perf_counter() - t > self._timeout:
                sys.stderr.write(
                    f"desmpi: rank {self.rank} of {self.size}: a collective has not completed "
                    f"in {self._timeout:g} s ({self._where()}; the last one completed was "
                    f"{self._last_kind or 'none'}): another rank is stuck or gone; aborting "
                    "the job (dist.timeout_s)\n")
                sys.stderr.flush()
                self.abort(3)

    def _start(self) -> float:
        t0 = time.perf_counter()
        self._in_call = t0
        return t0

    # ---- helpers ----------------------------------------------------------------------------
    def _record(self, kind: str, counts: Sequence[int], itemsize: int, t0: float,
                root: int = 0) -> None:
        self._in_call = None
        self._last_kind = kind
        cc = tuple(int(c) for c in counts)
        alg = self.layout.algorithm(kind, cc, int(itemsize), self.size)
        call = Call(kind, cc, int(itemsize), self.rank, self.size, root, alg,
                    self.layout.ppn if alg else 1)
        self.acct.record(call, time.perf_counter() - t0, t0)

    @staticmethod
    def _check(buf: np.ndarray, name: str) -> None:
        if not isinstance(buf, np.ndarray) or not buf.flags.c_contiguous:
            raise TypeError(f"{name} must be a C-contiguous numpy array")

    @staticmethod
    def _displs(counts: np.ndarray) -> np.ndarray:
        d = np.zeros(len(counts), dtype=np.int64)
        np.cumsum(counts[:-1], out=d[1:])
        return d

    # ---- collectives ------------------------------------------------------------------------
    def allreduce(self, send: np.ndarray, out: np.ndarray | None = None, op: str = "sum"
                  ) -> np.ndarray:
        """Elementwise reduction of ``send`` over ranks; every rank gets the result.

        ``out is send`` reduces in place (MPI_IN_PLACE: no copy, no second buffer).
        """
        self._check(send, "send")
        out = np.empty_like(send) if out is None else out
        t0 = self._start()
        if out is send:
            if self._c is not None:
                self._c.Allreduce(self._in_place, out, op=self._ops[op])
        elif self._c is None:
            np.copyto(out, send)
        else:
            self._c.Allreduce(send, out, op=self._ops[op])
        self._record("allreduce", (send.size,), send.itemsize, t0)
        return out

    @classmethod
    def _out(cls, out: np.ndarray | None, n: int, dtype) -> np.ndarray:
        """``out`` (checked: C-contiguous, n elements of dtype) or a new flat array."""
        if out is None:
            return np.empty(n, dtype=dtype)
        cls._check(out, "out")
        if out.size != n or out.dtype != dtype:
            raise ValueError(f"out has {out.size} elements of {out.dtype}, the result "
                             f"{n} of {np.dtype(dtype)}")
        return out.reshape(-1)

    def reduce_scatter(self, send: np.ndarray, recvcounts: Sequence[int],
                       out: np.ndarray | None = None) -> np.ndarray:
        """Sum ``send`` over ranks and give rank r the r-th block (``recvcounts[r]`` elements),
        into ``out`` when given (any shape of that many elements).

        Returns a flat array; the caller reshapes (e.g. to ``(b, W)``).
        """
        self._check(send, "send")
        rc = np.asarray(recvcounts, dtype=np.int64)
        if rc.sum() != send.size or len(rc) != self.size:
            raise ValueError(f"recvcounts {rc.tolist()} do not split {send.size} elements "
                             f"over {self.size} ranks")
        out = self._out(out, int(rc[self.rank]), send.dtype)
        t0 = self._start()
        if self._c is None:
            np.copyto(out, send.reshape(-1))
        else:
            self._c.Reduce_scatter(send, out, recvcounts=rc.tolist())
        self._record("reduce_scatter", rc, send.itemsize, t0)
        return out

    def allgatherv(self, send: np.ndarray, counts: Sequence[int],
                   out: np.ndarray | None = None) -> np.ndarray:
        """Concatenate every rank's ``send`` in rank order (``counts[r]`` elements each), into
        ``out`` when given.

        Counts must be known to every rank (the strategies derive them from the data layout);
        use :meth:`allgather_counts` first when they are not. Returns a flat array.
        """
        self._check(send, "send")
        c = np.asarray(counts, dtype=np.int64)
        if len(c) != self.size or c[self.rank] != send.size:
            raise ValueError(f"counts {c.tolist()} disagree with this rank's {send.size} elements")
        out = self._out(out, int(c.sum()), send.dtype)
        t0 = self._start()
        if self._c is None:
            np.copyto(out, send.reshape(-1))
        else:
            self._c.Allgatherv(send, [out, (c.tolist(), self._displs(c).tolist())])
        self._record("allgatherv", c, send.itemsize, t0)
        return out

    def allgather_counts(self, n: int) -> np.ndarray:
        """Every rank's integer ``n`` (an Allgather of one int64 each)."""
        send = np.array([n], dtype=np.int64)
        out = np.empty(self.size, dtype=np.int64)
        t0 = self._start()
        if self._c is None:
            out[0] = n
        else:
            self._c.Allgather(send, out)
        self._record("allgather", (1,) * self.size, 8, t0)
        return out

    def alltoall_counts(self, counts: np.ndarray) -> np.ndarray:
        """Exchange k integers per peer: row j of ``counts`` (P, k) goes to rank j; returns
        (P, k) whose row j came from rank j (one Alltoall of k int64 per peer)."""
        c = np.ascontiguousarray(counts, dtype=np.int64)
        if c.ndim != 2 or c.shape[0] != self.size:
            raise ValueError(f"counts must be (P, k), got {c.shape}")
        out = np.empty_like(c)
        t0 = self._start()
        if self._c is None:
            out[...] = c
        else:
            self._c.Alltoall(c, out)
        self._record("alltoall", (c.shape[1],) * self.size, 8, t0)
        return out

    def alltoallv(self, send: np.ndarray, sendcounts: Sequence[int],
                  recvcounts: Sequence[int] | None = None, out: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Personalised exchange: ``sendcounts[j]`` elements of ``send`` (in rank order) go to j.

        When ``recvcounts`` is not given they are exchanged first with an Alltoall of one int64
        per peer (recorded as its own call). Returns ``(recv, recvcounts)``; recv is ``out``
        when given (flat, sum(recvcounts) elements of send's dtype).
        """
        self._check(send, "send")
        sc = np.asarray(sendcounts, dtype=np.int64)
        if len(sc) != self.size or sc.sum() != send.size:
            raise ValueError(f"sendcounts {sc.tolist()} do not split {send.size} elements")
        if recvcounts is None:
            rc = np.empty(self.size, dtype=np.int64)
            t0 = self._start()
            if self._c is None:
                rc[:] = sc
            else:
                self._c.Alltoall(sc, rc)
            self._record("alltoall", (1,) * self.size, 8, t0)
        else:
            rc = np.asarray(recvcounts, dtype=np.int64)
        out = self._out(out, int(rc.sum()), send.dtype)
        t0 = self._start()
        if self._c is None:
            np.copyto(out, send.reshape(-1))
        else:
            self._c.Alltoallv([send, (sc.tolist(), self._displs(sc).tolist())],
                              [out, (rc.tolist(), self._displs(rc).tolist())])
        self._record("alltoallv", sc, send.itemsize, t0)
        return out, rc

    def bcast(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        """Broadcast ``buf`` in place from ``root``."""
        self._check(buf, "buf")
        t0 = self._start()
        if self._c is not None:
            self._c.Bcast(buf, root=root)
        self._record("bcast", (buf.size,), buf.itemsize, t0, root=root)
        return buf

    def barrier(self) -> None:
        t0 = self._start()
        if self._c is not None:
            self._c.Barrier()
        self._record("barrier", (), 1, t0)

    def bcast_object(self, obj, root: int = 0, idle: bool = False):
        """Broadcast a small Python object (configs, manifests; never on the hot path).

        ``idle``: the other ranks wait for the root asleep (an Ibarrier tested every
        :data:`IDLE_POLL_S`) instead of in MPI's busy poll, so that what the root does first
        (the start-up calibration's compute rates, the ranking) has its core to itself: ranks
        sharing a core with it (more ranks than cores, SMT siblings) would otherwise spin on
        it and slow it (the 4-rank calibration on 2 cores measured half the GEMM rate)."""
        if self._c is None:
            return obj
        with self.acct.scoped("meta"):
            if idle:
                t0 = self._start()
                req = self._c.Ibarrier()
                while self.rank != root and not req.Test():
                    time.sleep(IDLE_POLL_S)
                req.Wait()
                self._record("barrier", (), 1, t0)
            t0 = self._start()
            obj = self._c.bcast(obj, root=root)
            self._record("bcast", (0,), 1, t0, root=root)
        return obj

    def allgather_object(self, obj) -> list:
        """Every rank's small Python object, in rank order (reports, never the hot path)."""
        if self._c is None:
            return [obj]
        with self.acct.scoped("meta"):
            t0 = self._start()
            out = self._c.allgather(obj)
            self._record("allgather", (0,) * self.size, 1, t0)
        return out

    def abort(self, code: int = 1) -> None:
        """End the whole job now (all ranks). The launcher forwards each rank's stderr
        asynchronously and stops forwarding once it kills the job: a moment's pause first lets
        the message that explains the abort reach the user."""
        if self._c is None:
            raise SystemExit(code)
        from mpi4py import MPI

        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        MPI.COMM_WORLD.Abort(code)


def detect_library(version: str) -> str:
    """The :data:`sim.selection.LIBRARIES` name whose selection rules ``version`` (the text of
    ``MPI_Get_library_version``) follows, or "" when none is ported (MPICH before 4, Intel MPI,
    MVAPICH, Cray MPICH: their own tuning; the textbook forms are counted then). Overrides of
    the selection (MPIR_CVAR_*_ALGORITHM, Open MPI dynamic rules) are warned about: the bytes
    follow the default rules."""
    import re

    overridden = sorted(k for k in os.environ
                        if (k.startswith("MPIR_CVAR_") and "ALGORITHM" in k)
                        or k.startswith("OMPI_MCA_coll_tuned_"))
    if overridden:
        log.warning("collective algorithm selection overridden (%s): wire bytes follow the "
                    "library's default rules", ", ".join(overridden))
    head = version.strip().splitlines()[0] if version.strip() else ""
    m = re.match(r"MPICH Version:\s*(\d+)", head)
    if m and "MVAPICH" not in version and "Intel" not in version:
        return "mpich" if int(m.group(1)) >= 4 else ""
    m = re.match(r"Open MPI v(\d+)\.(\d+)", head)
    if m:
        return "openmpi" if (int(m.group(1)), int(m.group(2))) >= (4, 1) else "openmpi-4.0"
    return ""


def run_or_abort(main: Callable[[], int | None], comm: Comm | None = None) -> int:
    """Run ``main``; if it raises on any rank, name the rank and error and abort the job.

    At size 1 the exception is logged and the exit status is 1. Under MPI the failing rank calls
    ``MPI_Abort``, which ends every rank at once, so none waits in a collective.
    """
    try:
        rc = main()
        return 0 if rc is None else int(rc)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - every failure must end the job
        if isinstance(e, SystemExit) and (e.code in (None, 0)):
            return 0
        rank = comm.rank if comm is not None else 0
        size = comm.size if comm is not None else 1
        user = is_user_error(e)
        msg = f"desmpi: rank {rank} of {size} failed: {type(e).__name__}: {e}"
        if not isinstance(e, SystemExit) and (not user or _debug()):
            sys.stderr.write("".join(traceback.format_exception(e)))
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
        code = EXIT_USER_ERROR if user else 1
        if comm is not None and comm.size > 1:
            comm.abort(code)
        return e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else code


# errors whose message names what to fix: no traceback (desmpi.errors)
_USER_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                   FileExistsError)


def is_user_error(e: BaseException) -> bool:
    return isinstance(e, (UserError, *_USER_OS_ERRORS)) or type(e).__name__ == "OsuError"


def _debug() -> bool:
    return os.environ.get("DESMPI_DEBUG", "") not in ("", "0")
