"""Run under mpiexec: every Comm collective checked against NumPy, accounting recorded.

A failed check on any rank aborts the whole job (run_or_abort), naming the rank and the check,
so that no other rank waits in the next collective."""

import json
import sys

import numpy as np

from desmpi.comm import Comm, run_or_abort

comm = Comm.world(keep_log=True)


def main() -> None:
    P, r = comm.size, comm.rank
    rng = np.random.default_rng(42)
    data = [rng.normal(size=(P, 37)) for _ in range(P)]  # data[r] is rank r's contribution
    mine = np.ascontiguousarray(data[r])
    total = sum(data)

    out = comm.allreduce(mine)
    assert np.allclose(out, total), "allreduce"
    mx = comm.allreduce(mine, op="max")
    assert np.array_equal(mx, np.maximum.reduce(data)), "allreduce max"
    inplace = mine.copy()
    got_ip = comm.allreduce(inplace, out=inplace)  # MPI_IN_PLACE
    assert got_ip is inplace and np.array_equal(inplace, out), "allreduce in place"

    recv = [3 + k for k in range(P)]  # unequal blocks
    flat = [d.reshape(-1)[: sum(recv)] for d in data]
    rs = comm.reduce_scatter(np.ascontiguousarray(flat[r]), recv)
    lo = sum(recv[:r])
    assert np.allclose(rs, sum(flat)[lo: lo + recv[r]]), "reduce_scatter"
    rs_out = np.full((1, recv[r]), -1.0)  # into a given array (any shape of that size)
    got_rs = comm.reduce_scatter(np.ascontiguousarray(flat[r]), recv, out=rs_out)
    assert np.shares_memory(got_rs, rs_out) and np.array_equal(rs_out[0], rs), "reduce_scatter out"

    counts = [2 * k + 1 for k in range(P)]
    ag = comm.allgatherv(np.arange(counts[r], dtype=np.int64) + 100 * r, counts)
    assert np.array_equal(ag, np.concatenate([np.arange(c) + 100 * k
                                              for k, c in enumerate(counts)]))
    ag_out = np.zeros(sum(counts), dtype=np.int64)
    got_ag = comm.allgatherv(np.arange(counts[r], dtype=np.int64) + 100 * r, counts, out=ag_out)
    assert np.shares_memory(got_ag, ag_out) and np.array_equal(ag_out, ag), "allgatherv out"

    cnt = comm.allgather_counts(counts[r])
    assert cnt.tolist() == counts

    send_counts = [(r + j) % 3 + 1 for j in range(P)]
    send = np.concatenate([np.full(c, 1000 * r + j, dtype=np.int64)
                           for j, c in enumerate(send_counts)])
    got, rc = comm.alltoallv(send, send_counts)
    expect = np.concatenate([np.full((k + r) % 3 + 1, 1000 * k + r, dtype=np.int64)
                             for k in range(P)])
    assert np.array_equal(got, expect), "alltoallv"
    got2, _ = comm.alltoallv(send, send_counts, rc)
    assert np.array_equal(got2, expect)

    b = np.arange(11, dtype=np.float64) if r == P - 1 else np.zeros(11)
    comm.bcast(b, root=P - 1)
    assert np.array_equal(b, np.arange(11)), "bcast"
    comm.barrier()

    # accounting: every call recorded, in order, with its counts (the test checks the bytes
    # against closed forms of its own)
    expected = [("allreduce", (mine.size,))] * 3 + [("reduce_scatter", tuple(recv))] * 2 + \
        [("allgatherv", tuple(counts))] * 2 + [("allgather", (1,) * P), ("alltoall", (1,) * P)] \
        + [("alltoallv", tuple(send_counts))] * 2 + [("bcast", (11,)), ("barrier", ())]
    logged = [(c.kind, c.counts) for _, c, _, _ in comm.acct.log]
    assert logged == expected, (logged, expected)
    tot = comm.acct.counters()
    res = {"rank": r, "size": P, "send_counts": send_counts, "recv": recv, "counts": counts,
           "n_allreduce": int(mine.size),
           "mpi": comm.layout.mpi, "ppn": comm.layout.ppn,
           "by_kind": {k: {"calls": v.calls, "wire": int(v.wire_bytes),
                           "payload": int(v.payload_bytes), "algorithms": v.algorithms}
                       for k, v in tot.items()},
           "time_s": float(sum(v.time_s for v in tot.values()))}
    allres = comm.allgather_object(res)
    if r == 0:
        json.dump(allres, open(sys.argv[1], "w"))


sys.exit(run_or_abort(main, comm))
