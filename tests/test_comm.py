"""Comm at P = 1, 2, 4 under mpiexec, and a failing rank that must end the job."""

import json
import os
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
    # closed forms, written here independently of sim.accounting and sim.wire: the bytes each
    # rank sends under the algorithm MPICH 4.x/5.x selects for these sizes on one node (the
    # library the tests install; float64 = int64 = 8 bytes)
    n, recv, counts = res[0]["n_allreduce"], res[0]["recv"], res[0]["counts"]
    sc = [x["send_counts"] for x in res]  # sc[r][j]: rank r sends to rank j
    if P == 1:
        for r in res:
            assert all(v["wire"] == v["payload"] == 0 for v in r["by_kind"].values()), r
        return
    assert all(r["mpi"] == "mpich" and r["ppn"] == P for r in res), res[0]["mpi"]
    # binomial tree children (rooted at 0): P = 2: 0 -> 1; P = 4: 0 -> 1, 2 and 2 -> 3
    kids = {2: [1, 0], 4: [2, 0, 1, 0]}[P]
    rel_bcast_root = P - 1  # the bcast's root; its tree is the same in relative ranks
    bc_kids = [kids[(r - rel_bcast_root) % P] for r in range(P)]
    pair = [counts[2 * (r // 2)] + counts[2 * (r // 2) + 1] for r in range(P)]
    want = {  # kind: (algorithm, wire bytes of each rank, payload bytes of each rank)
        # node-aware (one node): binomial reduce (n from every rank but 0) + binomial bcast
        "allreduce": ("node_aware", [3 * ((r > 0) + kids[r]) * n * 8 for r in range(P)],
                      [3 * n * 8] * P),
        # recursive halving: every block but the rank's own
        "reduce_scatter": ("recursive_halving", [2 * (sum(recv) - recv[r]) * 8
                                                 for r in range(P)],
                           [2 * (sum(recv) - recv[r]) * 8 for r in range(P)]),
        # recursive doubling: own block, then (P = 4) the pair's two blocks
        "allgatherv": ("recursive_doubling",
                       [2 * (counts[r] + (pair[r] if P == 4 else 0)) * 8 for r in range(P)],
                       [2 * counts[r] * 8 for r in range(P)]),
        "allgather": ("recursive_doubling", [(1 + (2 if P == 4 else 0)) * 8] * P, [8] * P),
        "alltoall": ("scattered", [(P - 1) * 8] * P, [(P - 1) * 8] * P),
        "alltoallv": ("scattered", [2 * (sum(sc[r]) - sc[r][r]) * 8 for r in range(P)],
                      [2 * (sum(sc[r]) - sc[r][r]) * 8 for r in range(P)]),
        "bcast": ("binomial", [bc_kids[r] * 11 * 8 for r in range(P)],
                  [11 * 8 if r == P - 1 else 0 for r in range(P)]),
        "barrier": ("", [0] * P, [0] * P)}
    for kind, (alg, wire, payload) in want.items():
        got = [x["by_kind"][kind] for x in res]
        if alg:
            assert all(set(g["algorithms"]) == {alg} for g in got), (kind, got[0])
        assert [g["wire"] for g in got] == wire, (kind, [g["wire"] for g in got], wire)
        assert [g["payload"] for g in got] == payload, (kind, got, payload)
    # totals: a tree allreduce sends 2(P-1)n like a ring, and every allgathered block travels
    # to P - 1 ranks whatever the algorithm
    assert sum(want["allreduce"][1]) == 3 * 2 * (P - 1) * n * 8
    assert sum(want["allgatherv"][1]) == 2 * (P - 1) * sum(counts) * 8


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


def test_mirror_comm_peers_send_what_the_rank_sends():
    """MirrorComm (bench compute's codec timing): rank 0 of P whose peers mirror it — an
    Allgatherv of P copies, an Alltoallv that receives from each peer what it sent it (cut
    or padded with zeros to the counts) — the calls recorded as P-rank collectives; other
    collectives refused. A compressed Reduce_scatter on it: the own chunk exact plus the
    mirrored chunk's bf16."""
    from desmpi.bench.mirror import MirrorComm
    from desmpi.kernels.compress import pack, unpack
    from desmpi.strategies import compressed

    c = MirrorComm(3)
    x = np.arange(4.0)
    assert np.array_equal(c.allgatherv(x, [4, 4, 4]), np.tile(x, 3))
    y, rc = c.alltoallv(np.arange(6.0), [1, 2, 3], [1, 2, 3])
    assert np.array_equal(y, np.arange(6.0)) and rc.tolist() == [1, 2, 3]
    calls = c.acct.counters()
    assert calls["allgatherv"].calls == 1 and calls["allgatherv"].wire_bytes > 0
    y, _ = c.alltoallv(np.arange(6.0) + 1, [1, 2, 3], [2, 1, 3])
    assert y.tolist() == [1, 0, 2, 4, 5, 6]
    assert c.allgatherv(x[:2] + 1, [2, 3, 1]).tolist() == [1, 2, 1, 2, 0, 1]
    with pytest.raises(ValueError, match="do not split"):
        c.alltoallv(np.arange(6.0), [1, 2, 2], [3, 2, 1])
    with pytest.raises(ValueError, match="disagree"):
        c.allgatherv(x, [3, 4, 4])
    with pytest.raises(NotImplementedError):
        c.allreduce(x)
    m = MirrorComm(2)
    z = (np.arange(8, dtype=np.float32) + 1) / 3
    out = np.empty(4, np.float32)
    compressed.reduce_scatter(m, z, [4, 4], "bf16", out)
    assert np.array_equal(out, z[:4] + unpack("bf16", pack("bf16", z[4:])))


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


def test_an_idle_broadcast_leaves_the_root_its_core(tmp_path):
    """4 ranks: rank 0 works 0.6 s, then broadcasts. With ``idle=True`` the others wait asleep
    (a few ms of CPU); with a plain bcast_object MPICH's wait polls busily (CPU time about
    the wall time they have a core for), which is what slowed the start-up calibration of
    ranks sharing cores."""
    got = {}
    for mode in ("idle", "spin"):
        out = tmp_path / f"{mode}.json"
        run_mpi(4, ["tests/mpi/idle_check.py", str(out), mode], timeout=120)
        got[mode] = json.loads(out.read_text())
        assert [r["got_from"] for r in got[mode]] == [0] * 4
        assert len({r["n"] for r in got[mode]}) == 1  # every rank has the root's object
    for r in got["idle"][1:]:
        assert r["wall_s"] >= 0.5 and r["cpu_s"] < 0.2 * r["wall_s"], r
    share = min(4, os.cpu_count() or 1) / 4  # of a core, each rank busy at once
    for r in got["spin"][1:]:
        assert r["cpu_s"] > 0.5 * share * r["wall_s"], r
