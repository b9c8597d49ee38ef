"""Checkpoints: bitwise resume after SIGKILL, restore onto other P, fallback on corruption,
export for serving, and a killed rank ending the job."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from desmpi.data.h5 import CtrDataset
from desmpi.data.synth import SynthSpec, generate
from tests.conftest import ROOT, mpi_env, mpiexec_path, run_mpi

BASE = ["--set", "model.name=deepfm", "--set", "model.embed_dim=8", "--set",
        "model.hidden=[256,256]", "--set", "train.dtype=float64", "--set",
        "train.batch_size=256", "--set", "train.optimizer=adam", "--set", "train.lr=0.01",
        "--set", "train.log_every=25", "--set", "dist.strategy=des", "--set",
        "dist.aggregate=allreduce"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    generate(SynthSpec(rows=256 * 50, seed=1, cap=2000), d / "tr.h5")
    generate(SynthSpec(rows=1000, seed=2, cap=2000), d / "ev.h5")
    return d


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (mpiexec -> hydra proxy -> ranks; ranks start sessions of
    their own, so process groups do not reach them)."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    kids: dict[int, list[int]] = {}
    for line in out.splitlines():
        a, b = (int(x) for x in line.split())
        kids.setdefault(b, []).append(a)
    found, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def _args(data, ck, steps, every, extra=()):
    return ["-m", "desmpi", "train", *BASE, "--set", f"data.train={data}/tr.h5", "--set",
            f"data.eval={data}/ev.h5", "--set", f"train.steps={steps}", "--set",
            f"checkpoint.dir={ck}", "--set", f"checkpoint.every={every}", *extra]


def test_resume_after_sigkill_is_bitwise(data, tmp_path):
    run_mpi(2, [*_args(data, tmp_path / "ck_a", 100, 50), "--out", str(tmp_path / "a")])
    ck = tmp_path / "ck_b"
    cmd = [mpiexec_path(), "-n", "2", sys.executable,
           *_args(data, ck, 100, 50), "--out", str(tmp_path / "b")]
    p = subprocess.Popen(cmd, env=mpi_env(), cwd=ROOT, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = ck / "step-00000050" / "manifest.json"
    t0 = time.monotonic()
    while not manifest.exists():
        assert p.poll() is None, "the run ended before its step-50 checkpoint"
        assert time.monotonic() - t0 < 300
        time.sleep(0.01)
    for pid in [p.pid, *descendants(p.pid)]:  # the whole job dies at once, as on a node crash
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait(timeout=30)
    assert not (ck / "step-00000100" / "manifest.json").exists(), "killed too late"
    run_mpi(2, [*_args(data, ck, 100, 50), "--out", str(tmp_path / "b"), "--resume"])
    a = np.load(tmp_path / "a" / "eval_predictions.npy")
    b = np.load(tmp_path / "b" / "eval_predictions.npy")
    assert np.array_equal(a, b)
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert s["resumed_from_step"] == 50 and s["steps"] == 50
    # same weights too: the final checkpoints' dense parameters are identical
    import h5py

    with h5py.File(tmp_path / "ck_a" / "step-00000100" / "dense.h5") as fa, \
            h5py.File(ck / "step-00000100" / "dense.h5") as fb:
        assert np.array_equal(fa["params"][...], fb["params"][...])


def test_restore_onto_other_world_sizes(data, tmp_path):
    ck = tmp_path / "ck"
    run_mpi(4, [*_args(data, ck, 20, 0), "--out", str(tmp_path / "p4")])
    ref = np.load(tmp_path / "p4" / "eval_predictions.npy")
    for P in (1, 2, 3):
        out = tmp_path / f"pred{P}.npy"
        run_mpi(P, ["-m", "desmpi", "predict", "--checkpoint", str(ck), "--out", str(out)])
        np.testing.assert_allclose(np.load(out), ref, rtol=1e-12, atol=0)
    # training continues equivalently at P = 1 and P = 3 from the P = 4 checkpoint
    outs = {}
    for P in (1, 3):
        ckp = tmp_path / f"ck_from4_{P}"
        import shutil

        shutil.copytree(ck, ckp)
        run_mpi(P, [*_args(data, ckp, 30, 0), "--out", str(tmp_path / f"c{P}"), "--resume"])
        outs[P] = np.load(tmp_path / f"c{P}" / "eval_predictions.npy")
    np.testing.assert_allclose(outs[3], outs[1], rtol=1e-9, atol=0)


def test_corrupt_newest_checkpoint_falls_back(data, tmp_path):
    ck = tmp_path / "ck"
    run_mpi(2, [*_args(data, ck, 10, 5, ("--set", "checkpoint.keep=3"))])
    newest = ck / "step-00000010" / "rank-00001.h5"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    p = run_mpi(1, ["-m", "desmpi", "eval", "--checkpoint", str(ck), "--json"])
    assert "rank-00001.h5: checksum mismatch" in p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["step"] == 5
    m = ck / "step-00000005" / "manifest.json"
    j = json.loads(m.read_text())
    j["version"] = 99
    m.write_text(json.dumps(j))
    p = run_mpi(1, ["-m", "desmpi", "eval", "--checkpoint", str(ck / "step-00000005")],
                check=False)
    assert p.returncode != 0 and "step-00000005/manifest.json" in p.stderr
    assert "version 99" in p.stderr
    # an incomplete step directory (no manifest) is ignored
    (ck / "step-00000099").mkdir()
    p = run_mpi(1, ["-m", "desmpi", "eval", "--checkpoint", str(ck), "--json"], check=False)
    assert p.returncode != 0 and "no complete checkpoint" in p.stderr


@pytest.mark.parametrize("extra", [(), ("--set", "dist.aggregate=reduce_scatter", "--set",
                                          "dist.compress=bf16")], ids=["full", "bf16"])
def test_export_serves_without_mpi(data, tmp_path, extra):
    """The exported model serves, in one process, the predictions the run's evaluation gave —
    also for a run whose training step was compressed (evaluation runs at full width)."""
    ck = tmp_path / "ck"
    run_mpi(2, [*_args(data, ck, 10, 0, extra), "--out", str(tmp_path / "r")])
    model = tmp_path / "model.h5"
    subprocess.run([sys.executable, "-m", "desmpi", "export", "--checkpoint", str(ck), "--out",
                    str(model)], check=True, cwd=ROOT, capture_output=True, timeout=300)
    from desmpi.serving import ServingModel

    sm = ServingModel(model)
    ev = CtrDataset(data / "ev.h5")
    p = sm.predict(ev.read(0, ev.n, np.float64))
    ref = np.load(tmp_path / "r" / "eval_predictions.npy")
    np.testing.assert_allclose(p, ref, rtol=1e-12)


def test_killed_rank_ends_the_job(data, tmp_path):
    cmd = [mpiexec_path(), "-n", "2", sys.executable, *_args(data, tmp_path / "ck", 100000, 0)]
    p = subprocess.Popen(cmd, env=mpi_env(), cwd=ROOT, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(8)  # both ranks training
        ranks = [d for d in descendants(p.pid)
                 if "desmpi" in open(f"/proc/{d}/cmdline").read() and
                 "hydra" not in open(f"/proc/{d}/cmdline").read()]
        assert len(ranks) == 2, ranks
        t0 = time.monotonic()
        os.kill(max(ranks), signal.SIGKILL)
        rc = p.wait(timeout=30)
        assert rc != 0 and time.monotonic() - t0 < 15
    finally:
        if p.poll() is None:
            for pid in [p.pid, *descendants(p.pid)]:
                os.kill(pid, signal.SIGKILL)


def test_lifecycle_state_resumes_and_reshards(data, tmp_path):
    life = ["--set", "features.min_count=2", "--set", "features.ttl_steps=5", "--set",
            "features.evict_every=2"]
    run_mpi(2, [*_args(data, tmp_path / "ck_full", 30, 0, life), "--out", str(tmp_path / "a")])
    run_mpi(2, [*_args(data, tmp_path / "ck", 15, 0, life)])
    run_mpi(2, [*_args(data, tmp_path / "ck", 30, 0, life), "--out", str(tmp_path / "b"),
                "--resume"])
    a = np.load(tmp_path / "a" / "eval_predictions.npy")
    assert np.array_equal(a, np.load(tmp_path / "b" / "eval_predictions.npy"))
    sa = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert sa["evicted_keys"] > 0
    import shutil

    shutil.rmtree(tmp_path / "ck" / "step-00000030")
    run_mpi(1, [*_args(data, tmp_path / "ck", 30, 0, life), "--out", str(tmp_path / "c"),
                "--resume"])
    np.testing.assert_allclose(np.load(tmp_path / "c" / "eval_predictions.npy"), a, rtol=1e-9)


def test_failed_write_leaves_previous_checkpoint_usable(tmp_path, monkeypatch):
    """A full disk (ENOSPC) while writing: the new step has no manifest, the old one wins."""
    import errno

    from desmpi import checkpoint as ck
    from desmpi.comm import Comm
    from desmpi.config import ModelConfig
    from desmpi.models import build_model
    from desmpi.optim import DenseOptimizer
    from desmpi.table.shard import ShardTable

    m = build_model(ModelConfig(name="fm", embed_dim=4), 26, 13, np.float64, 0)
    t = ShardTable(m.row_width, m.emb_col, 0, np.float64, 0, 0.1)
    t.lookup_or_insert(np.arange(1, 100))
    opt = DenseOptimizer("sgd", 0.1, m.params.size, np.float64)
    ck.save(tmp_path, 5, Comm.local(), t, m, opt, {"config": {}}, keep=2)
    real = ck._write_h5

    def full_disk(path, arrays, attrs):
        if path.name == "dense.h5":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, arrays, attrs)

    monkeypatch.setattr(ck, "_write_h5", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ck.save(tmp_path, 10, Comm.local(), t, m, opt, {"config": {}}, keep=2)
    d, manifest = ck.newest_valid(tmp_path)
    assert manifest["step"] == 5 and d.name == "step-00000005"
    assert not (tmp_path / "step-00000010" / "manifest.json").exists()


def _resume_half(data, tmp_path, P, extra, name):
    """Run 40 steps checkpointing every 20 (run a), then continue a copy of its step-20
    checkpoint to step 40 (run b); returns both runs' eval predictions and b's summary."""
    import shutil

    ck = tmp_path / f"ck_{name}"
    run_mpi(P, [*_args(data, ck, 40, 20, extra), "--out", str(tmp_path / f"{name}_a")])
    ckb = tmp_path / f"ck_{name}_b"
    shutil.copytree(ck, ckb)
    shutil.rmtree(ckb / "step-00000040")
    run_mpi(P, [*_args(data, ckb, 40, 20, extra), "--out", str(tmp_path / f"{name}_b"),
                "--resume"])
    a = np.load(tmp_path / f"{name}_a" / "eval_predictions.npy")
    b = np.load(tmp_path / f"{name}_b" / "eval_predictions.npy")
    return a, b, json.loads((tmp_path / f"{name}_b" / "summary.json").read_text())


@pytest.mark.parametrize("method", ["bf16", "threshold"])
def test_compressed_resume_is_bitwise(data, tmp_path, method):
    """Error feedback's residuals (and threshold's τ state) are part of the checkpoint: a
    compressed run resumed at the same P continues bit for bit, as an uncompressed one does."""
    extra = ["--set", "train.dtype=float32", "--set", "dist.aggregate=reduce_scatter",
             "--set", f"dist.compress={method}",
             "--set", "dist.compress_every=3"]
    a, b, s = _resume_half(data, tmp_path, 2, extra, method)
    assert s["resumed_from_step"] == 20
    assert np.array_equal(a, b)


def test_compressed_restore_onto_one_rank_sums_the_residuals(data, tmp_path, caplog):
    """Onto another P the residuals of the saved ranks arrive summed (what the compressed
    Allreduce still owes is Σ_ranks residual); τ is re-estimated. Checked in-process at P = 1
    against the rank files themselves; then training continues from there at P = 1."""
    import h5py

    from desmpi.comm import Comm
    from desmpi.config import load
    from desmpi.rundirs import resume_point
    from desmpi.train import Trainer

    extra = ["--set", "train.dtype=float32", "--set", "dist.aggregate=reduce_scatter",
             "--set", "dist.compress=threshold"]
    ck = tmp_path / "ck"
    run_mpi(2, [*_args(data, ck, 10, 10, extra), "--out", str(tmp_path / "p2")])
    files = [ck / "step-00000010" / f"rank-{r:05d}.h5" for r in range(2)]
    saved = []
    for f in files:
        with h5py.File(f) as h:
            saved.append(h["feedback/residual/dense"][...])
            assert h["feedback/threshold/dense"][1] == 10  # τ's calls so far
    assert all(np.abs(r).sum() > 0 for r in saved)
    sets = [a for a in _args(data, ck, 20, 10, extra)[3:] if a != "--set"]
    cfg = load(None, sets)
    tr = Trainer(cfg, Comm.local())
    assert resume_point(tr, tr.cfg, Comm.local())[0] == 10
    r = tr.strategy._residuals["dense"]
    assert r.dtype == np.float32 and np.array_equal(r, saved[0] + saved[1])
    assert tr.strategy._thresholds == {}  # re-estimated at the next step
    # and under dist.compress = none the residuals are dropped, with a warning
    tr0 = Trainer(load(None, [*sets, "dist.compress=none"]), Comm.local())
    with caplog.at_level("WARNING", logger="desmpi.strategies"):
        resume_point(tr0, tr0.cfg, Comm.local())
    assert tr0.strategy._residuals == {}
    assert "residuals (dense) that dist.compress = 'none' does not send" in caplog.text
    # des/allreduce replicates the dense part: no dense gradient to feed back, and it says so
    tr1 = Trainer(load(None, [*sets, "dist.aggregate=allreduce"]), Comm.local())
    with caplog.at_level("WARNING", logger="desmpi.strategies"):
        resume_point(tr1, tr1.cfg, Comm.local())
    assert tr1.strategy._residuals == {}
    assert "(dense) of gradient vectors that des/allreduce does not compress" in caplog.text
    run_mpi(1, [*_args(data, ck, 20, 10, extra), "--out", str(tmp_path / "p1"), "--resume"])
    s = json.loads((tmp_path / "p1" / "summary.json").read_text())
    assert s["resumed_from_step"] == 10 and s["steps"] == 10


def test_a_restored_residual_is_delivered_by_the_next_call(data, tmp_path):
    """A dense codec never writes its residual's own chunk, so after a strategy's first call
    it skips reading it; a restore may fill it (onto other chunks), and the next call must
    add it (else that gradient is lost). At P = 1 the own chunk is the whole vector."""
    from desmpi.comm import Comm
    from desmpi.config import load
    from desmpi.train import Trainer

    extra = ["--set", "train.dtype=float32", "--set", "dist.aggregate=reduce_scatter",
             "--set", "dist.compress=bf16"]
    sets = [a for a in _args(data, tmp_path / "ck", 4, 0, extra)[3:] if a != "--set"]
    s = Trainer(load(None, sets), Comm.local()).strategy
    D = s.model.params.size
    x = np.ones(D, np.float32)
    s.feedback_allreduce("dense", x)  # the residual made, its own chunk clean
    assert np.array_equal(x, np.ones(D)) and not s._residuals["dense"].any()
    s.load_feedback_state({"residual/dense": np.full(D, 0.5, np.float32)})
    y = np.ones(D, np.float32)
    s.feedback_allreduce("dense", y)
    assert np.array_equal(y, np.full(D, 1.5)) and not s._residuals["dense"].any()
    z = np.ones(D, np.float32)
    s.feedback_allreduce("dense", z)
    assert np.array_equal(z, np.ones(D))


def test_feedback_state_in_a_rank_file_is_read_only_from_the_file(tmp_path):
    """A rank file's error-feedback group that links elsewhere, or holds NaN, is refused, naming
    the file; residuals of different shapes across rank files cannot be summed."""
    import h5py

    from desmpi.checkpoint import CheckpointError, _feedback, _merge_feedback

    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as f:
        f["feedback/residual/dense"] = np.arange(4, dtype=np.float32)
        f["feedback/threshold/dense"] = np.array([0.5, 7.0])
    with h5py.File(good) as f:
        st = _feedback(f)
    assert set(st) == {"residual/dense", "threshold/dense"}
    merged = _merge_feedback([st, {"residual/dense": np.ones(4, np.float32)}])
    assert set(merged) == {"residual/dense"}
    assert np.array_equal(merged["residual/dense"], np.arange(4, dtype=np.float32) + 1)
    with pytest.raises(CheckpointError, match="shapes"):
        _merge_feedback([st, {"residual/dense": np.ones(3, np.float32)}])
    linked = tmp_path / "linked.h5"
    with h5py.File(linked, "w") as f:
        f["elsewhere/residual/dense"] = np.zeros(4, np.float32)
        f["feedback"] = h5py.SoftLink("/elsewhere")
    with h5py.File(linked) as f, pytest.raises(CheckpointError, match="linked.h5.*'feedback' is"):
        _feedback(f)
    missing = tmp_path / "missing.h5"  # a link to another file that is not there
    with h5py.File(missing, "w") as f:
        f["feedback"] = h5py.ExternalLink("nowhere.h5", "/feedback")
    with h5py.File(missing) as f, pytest.raises(CheckpointError, match="not a group stored"):
        _feedback(f)
    odd = tmp_path / "odd.h5"  # a dataset where the group should be
    with h5py.File(odd, "w") as f:
        f["feedback/residual"] = np.zeros(3)
    with h5py.File(odd) as f, pytest.raises(CheckpointError, match="'feedback/residual' is"):
        _feedback(f)
    nan = tmp_path / "nan.h5"
    with h5py.File(nan, "w") as f:
        f["feedback/residual/dense"] = np.array([1.0, np.nan], np.float32)
    with h5py.File(nan) as f, pytest.raises(CheckpointError, match="nan.h5.*NaN"):
        _feedback(f)


def test_auto_resume_keeps_the_settled_variant(data, tmp_path):
    """dist 'auto' resumed at the same P keeps the variant the run settled on (after its
    trial): no new choice, and the run continues bit for bit."""
    extra = ["--set", "dist.strategy=auto", "--set", "dist.aggregate=auto",
             "--set", "dist.auto_band=1000", "--set", "dist.auto_trial_steps=1"]
    a, b, s = _resume_half(data, tmp_path, 2, extra, "auto")
    sa = json.loads((tmp_path / "auto_a" / "summary.json").read_text())
    assert sa["choice"]["trial"] is not None  # the first run chose, and measured candidates
    assert s["resumed_from_step"] == 20 and s["choice"] is None
    assert s["variant"] == sa["variant"]
    assert s["variant_from_checkpoint"].endswith("step-00000020")
    assert sa["variant_from_checkpoint"] is None
    assert np.array_equal(a, b)


def test_keep_choice_only_at_the_same_p_once_settled(tmp_path):
    from desmpi.comm import Comm
    from desmpi.config import from_dict
    from desmpi.rundirs import keep_choice

    cfg = from_dict({"model": {"name": "lr"}, "data": {"train": "x.h5"}}).check()
    saved = {"dist": {"strategy": "ps", "aggregate": "allreduce", "input": "gather"}}

    def found(P, settled=True):
        return str(tmp_path), {"world_size": P, "config": saved, "variant_settled": settled}

    one = Comm.local()
    assert keep_choice(cfg, found(1), one).dist.variant.name == "ps"
    assert keep_choice(cfg, found(2), one) is cfg  # another P: choose again
    assert keep_choice(cfg, found(1, settled=False), one) is cfg  # saved during the trial
    assert keep_choice(cfg, None, one) is cfg
    des_only = from_dict({"model": {"name": "lr"}, "data": {"train": "x.h5"},
                          "dist": {"strategy": "des"}}).check()
    assert keep_choice(des_only, found(1), one) is des_only  # ps is excluded now
    fixed = from_dict({"model": {"name": "lr"}, "data": {"train": "x.h5"},
                       "dist": {"strategy": "des", "aggregate": "allreduce"}}).check()
    assert keep_choice(fixed, found(1), one) is fixed  # nothing to choose


@pytest.mark.parametrize("variant,deep_input", [("des/allreduce", "pooling"),
                                                ("des/allreduce", "fused"),
                                                ("des/reduce_scatter", "auto"), ("ps", "auto"),
                                                ("a2a", "auto"), ("des-a2a", "auto")])
def test_feedback_vectors_name_the_residuals_a_step_makes(data, variant, deep_input):
    """What a checkpoint keeps of error feedback (and what a restore checks against) is what a
    training step actually carries over: one compressed step per variant, in-process."""
    from desmpi.comm import Comm
    from desmpi.config import load
    from desmpi.train import Trainer
    from desmpi.variants import parse

    v = parse(variant)
    sets = [a for a in BASE if a != "--set"] + [
        f"data.train={data}/tr.h5", "train.dtype=float32", "dist.compress=bf16",
        f"model.deep_input={deep_input}", f"dist.strategy={v.strategy}",
        f"dist.aggregate={v.aggregate or 'allreduce'}"]
    tr = Trainer(load(None, sets), Comm.local())
    b, sizes = tr.local_batch(tr.train_ds, 0)
    tr.strategy.train_step(b, sizes, 1)
    names = set(tr.strategy.feedback_vectors())
    assert set(tr.strategy._residuals) == names
    assert names == ({"W1"} if deep_input == "fused" else set() if variant == "des/allreduce"
                     else {"dense"})
    assert set(tr.strategy.feedback_state()) == {f"residual/{n}" for n in names}
