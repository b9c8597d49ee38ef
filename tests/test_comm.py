"""Comm at P = 1, 2, 4 under mpiexec, and a failing rank that must end the job."""

import json
import time

import numpy as np
import pytest

from desmpi.comm import Comm
from tests.conftest import run_mpi


@pytest.mark.parametrize("P", [1, 2, 4])
def test_collectives_and_accounting(P, tmp_path):
    out = tmp_path / "res.json"
    run_mpi(P, ["tests/mpi/comm_check.py", str(out)], timeout=120)
    res = json.loads(out.read_text())
    assert len(res) == P
    for r in res:
        assert r["time_s"] > 0
    # closed forms, written here independently of sim.accounting: totals over all ranks of the
    # bytes each rank sends, by kind (float64 = 8 bytes, int64 = 8 bytes)
    n, recv, counts = res[0]["n_allreduce"], res[0]["recv"], res[0]["counts"]
    sc = [x["send_counts"] for x in res]  # sc[r][j]: rank r sends to rank j
    to_others = sum(sc[r][j] for r in range(P) for j in range(P) if j != r)
    want_wire = {  # ring allreduce: every rank sends 2(P-1) chunks, n/P each -> 2(P-1)n total
        "allreduce": 3 * 2 * (P - 1) * n * 8,
        "reduce_scatter": 2 * (P - 1) * sum(recv) * 8,  # pairwise: all but one's own block
        "allgatherv": 2 * (P - 1) * sum(counts) * 8,  # ring: every block travels P - 1 hops
        "allgather": (P - 1) * P * 8, "alltoall": P * (P - 1) * 8,
        "alltoallv": 2 * to_others * 8,
        "bcast": (P - 1) * 11 * 8,  # a tree: every rank but the root receives once
        "barrier": 0}
    want_payload = {  # what ranks hand to MPI for others
        "allreduce": 3 * P * n * 8, "reduce_scatter": 2 * (P - 1) * sum(recv) * 8,
        "allgatherv": 2 * sum(counts) * 8, "allgather": P * 8, "alltoall": P * (P - 1) * 8,
        "alltoallv": 2 * to_others * 8, "bcast": 11 * 8, "barrier": 0}
    if P == 1:
        want_wire = dict.fromkeys(want_wire, 0)
        want_payload = dict.fromkeys(want_payload, 0)
    for kind in want_wire:
        wire = sum(x["by_kind"][kind]["wire"] for x in res)
        payload = sum(x["by_kind"][kind]["payload"] for x in res)
        assert wire == want_wire[kind], (kind, wire, want_wire[kind])
        assert payload == want_payload[kind], (kind, payload, want_payload[kind])
    if P > 1:  # the ring allreduce splits n into P near-equal chunks: per rank ~2(P-1)/P n
        per_rank = [x["by_kind"]["allreduce"]["wire"] / 3 for x in res]
        assert max(per_rank) - min(per_rank) <= 2 * 8 * 2


def test_size_one_without_mpi():
    c = Comm.local()
    x = np.arange(6.0)
    assert np.array_equal(c.allreduce(x), x)
    assert np.array_equal(c.reduce_scatter(x, [6]), x)
    assert np.array_equal(c.allgatherv(x, [6]), x)
    y, rc = c.alltoallv(x, [6])
    assert np.array_equal(y, x) and rc.tolist() == [6]
    tot = c.acct.counters()
    assert tot["allreduce"].calls == 1 and tot["allreduce"].wire_bytes == 0


def test_counts_must_match():
    c = Comm.local()
    with pytest.raises(ValueError, match="counts"):
        c.allgatherv(np.zeros(3), [4])
    with pytest.raises(TypeError, match="contiguous"):
        c.allreduce(np.zeros((4, 4))[:, 1])
    with pytest.raises(ValueError, match="out has 5 elements"):
        c.reduce_scatter(np.zeros(6), [6], out=np.zeros(5))
    with pytest.raises(ValueError, match="float32"):
        c.allgatherv(np.zeros(6), [6], out=np.zeros(6, np.float32))


@pytest.mark.parametrize("P", [2, 4])
def test_failing_rank_ends_job_promptly(P, tmp_path):
    t0 = time.monotonic()
    p = run_mpi(P, ["-m", "desmpi", "smoke", "--rows", "3000", "--batch", "256", "--out",
                    str(tmp_path), "--fail-rank", str(P - 1)], timeout=60, check=False)
    elapsed = time.monotonic() - t0
    assert p.returncode != 0
    assert f"rank {P - 1} of {P} failed: RuntimeError: injected failure" in p.stderr
    assert elapsed < 30, f"job took {elapsed:.1f}s to end"


@pytest.mark.parametrize("P", [1, 2, 4])
def test_rank_slices_gather_to_global_batch(P, tmp_path):
    p = run_mpi(P, ["-m", "desmpi", "smoke", "--rows", "3001", "--batch", "400", "--out",
                    str(tmp_path), "--json"], timeout=120)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["ranks"] == P and res["rows"] == 3001
    ag = res["comm"]["allgatherv"]
    assert ag["calls"] == 8  # ceil(3001 / 400) batches, the last one short
