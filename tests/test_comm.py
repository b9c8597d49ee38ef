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
        assert r["counted_wire"] == r["wire"]
        assert r["counted_payload"] == r["payload"]
        assert r["time_s"] > 0
    # ring allreduce of 2 arrays of P*37 float64: the total over ranks is 2(P-1)n per call
    if P == 1:
        assert all(r["wire"] == 0 for r in res)


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
