"""Nothing lost, nothing silent: fault-injection tests (issue 17), one per probe fixed."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from desmpi.checkpoint import complete_steps
from desmpi.data.synth import SynthSpec, generate
from tests.conftest import ROOT, run_mpi


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """2,001 rows, batch 500: the last global batch has one sample, so at P = 2 one rank has
    none."""
    d = tmp_path_factory.mktemp("odd")
    generate(SynthSpec(rows=2001, seed=1, cap=500), d / "t.h5")
    return d


@pytest.mark.parametrize("strategy, aggregate", [("ps", "allreduce"), ("a2a", "allreduce"),
                                                 ("des-a2a", "allreduce"),
                                                 ("des", "reduce_scatter")])
def test_a_rank_with_no_rows_trains_and_evaluates(odd, tmp_path, strategy, aggregate):
    """deepfm (a deep tower on pooled embeddings) used to crash reshaping 0 rows; P = 2 must
    give the P = 1 model, eval predictions included (float64: summation order only)."""
    def run(P):
        out = tmp_path / f"P{P}"
        run_mpi(P, ["-m", "desmpi", "train", str(ROOT / "configs" / "deepfm.toml"), "--set",
                    f"data.train={odd}/t.h5", "--set", f"data.eval={odd}/t.h5", "--set",
                    "train.batch_size=500", "--set", "train.dtype=float64", "--set",
                    f"dist.strategy={strategy}", "--set", f"dist.aggregate={aggregate}",
                    "--out", str(out)], timeout=300)
        return np.load(out / "eval_predictions.npy"), json.loads(
            (out / "summary.json").read_text())
    p1, s1 = run(1)
    p2, s2 = run(2)
    assert s2["steps"] == 5 and p1.shape == (2001,)
    np.testing.assert_allclose(p2, p1, rtol=1e-9)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "ftrl", "adam"])
def test_diverged_update_stops_before_any_checkpoint(odd, tmp_path, optimizer):
    """lr = 1e39 overflows float32 in the first update: the loss and gradients it came from
    were finite, the weights after it are not. The run stops naming the step and operators,
    under every optimizer, and nothing of it is saved; nan_policy=skip cannot skip it."""
    for policy in ("stop", "skip"):
        ck = tmp_path / f"ck_{policy}"
        p = run_mpi(2, ["-m", "desmpi", "train", str(ROOT / "configs" / "fm.toml"), "--set",
                        f"data.train={odd}/t.h5", "--set", "data.eval=", "--set",
                        "train.batch_size=200", "--set", "train.lr=1e39", "--set",
                        f"train.optimizer={optimizer}", "--set", f"train.nan_policy={policy}",
                        "--set", f"checkpoint.dir={ck}", "--set", "checkpoint.every=1",
                        "--set", "dist.strategy=ps"], timeout=300, check=False)
        assert p.returncode != 0
        # whichever rank finds it first names what it updated: its sparse rows (and their
        # operators) and/or the dense parameters
        assert "DivergedError: step 1: the update made" in p.stderr
        assert "non-finite in model fm" in p.stderr
        assert "operators linear, fm" in p.stderr or "dense parameters" in p.stderr
        assert complete_steps(ck) == [] if ck.exists() else True


def test_single_process_divergence_names_dense_parameters(odd, tmp_path):
    p = subprocess.run([sys.executable, "-m", "desmpi", "train",
                        str(ROOT / "configs" / "deepfm.toml"), "--set", f"data.train={odd}/t.h5",
                        "--set", "data.eval=", "--set", "train.batch_size=200", "--set",
                        "train.lr=1e39", "--set", "train.optimizer=adam"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode != 0 and "step 1: the update made" in p.stderr
    assert "dense parameters" in p.stderr


def _train1(odd, *extra, timeout=300):
    return subprocess.run([sys.executable, "-m", "desmpi", "train",
                           str(ROOT / "configs" / "fm.toml"), "--set", f"data.train={odd}/t.h5",
                           "--set", "data.eval=", "--set", "train.batch_size=500", *extra],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_checkpoint_dir_belongs_to_one_run(odd, tmp_path):
    ck = tmp_path / "ck"
    old = _train1(odd, "--set", f"checkpoint.dir={ck}", "--set", "checkpoint.every=1",
                  "--set", "train.epochs=3", "--set", "checkpoint.keep=5")
    assert old.returncode == 0, old.stderr
    assert complete_steps(ck) == [11, 12, 13, 14, 15]  # 5 batches an epoch
    # a new (shorter) run must not prune the old run's higher steps, nor silently mix
    p = _train1(odd, "--set", f"checkpoint.dir={ck}", "--set", "checkpoint.every=1")
    assert p.returncode != 0 and "holds checkpoints of another run (steps 11-15)" in p.stderr
    assert complete_steps(ck) == [11, 12, 13, 14, 15]  # 5 batches an epoch
    p = _train1(odd, "--set", f"checkpoint.dir={ck}", "--set", "checkpoint.every=1",
                "--set", "checkpoint.keep=2", "--force")
    assert p.returncode == 0, p.stderr
    assert complete_steps(ck) == [4, 5]  # only the new run's, pruned to keep = 2
    ids = {json.loads((ck / f"step-{s:08d}" / "manifest.json").read_text())["run_id"]
           for s in (4, 5)}
    assert len(ids) == 1


def test_resume_with_nothing_usable_fails_unless_asked(odd, tmp_path):
    ck = tmp_path / "empty"
    p = _train1(odd, "--set", f"checkpoint.dir={ck}", "--resume")
    assert p.returncode != 0 and "no usable checkpoint" in p.stderr
    p = _train1(odd, "--set", f"checkpoint.dir={ck}", "--resume", "--allow-fresh")
    assert p.returncode == 0, p.stderr


def _desmpi(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "desmpi", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_user_errors_are_one_line_exit_2(tmp_path):
    for sets, key in ((["train.lr=nan"], "train.lr = nan"), (["model.init_std=inf"],
                                                            "model.init_std = inf")):
        p = _desmpi("train", str(ROOT / "configs" / "fm.toml"), *[x for s in sets
                                                                  for x in ("--set", s)])
        assert p.returncode == 2 and key in p.stderr and "must be a finite number" in p.stderr
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = _desmpi("--debug", "train", str(ROOT / "configs" / "fm.toml"), "--set", "train.lr=nan")
    assert p.returncode == 2 and "Traceback" in p.stderr  # --debug shows where


def test_conversion_refuses_empty_input_and_its_own_source(tmp_path):
    from desmpi.data.convert import convert
    from desmpi.data.reader import DataError
    from desmpi.data.schema import CRITEO_TSV

    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(DataError, match="no data rows in .*empty.tsv"):
        convert([str(tmp_path / "empty.tsv")], tmp_path / "e.h5", CRITEO_TSV)
    assert not (tmp_path / "e.h5").exists()
    src = tmp_path / "same.tsv"
    src.write_bytes((ROOT / "tests" / "data" / "criteo" / "head15k.tsv").read_bytes()[:5000])
    before = src.read_bytes()
    with pytest.raises(DataError, match="is the input"):
        convert([str(src)], src, CRITEO_TSV)
    assert src.read_bytes() == before
    with pytest.raises(DataError, match="must be in"):
        convert([str(src)], tmp_path / "x.h5", CRITEO_TSV, max_bad_fraction=float("nan"))


def test_blank_lines_bom_overflow_and_stale_parts(tmp_path):
    from desmpi.data.convert import convert
    from desmpi.data.h5 import CtrDataset
    from desmpi.data.schema import CRITEO_CSV, CRITEO_TSV

    lines = (ROOT / "tests" / "data" / "criteo" / "head15k.tsv").read_text().splitlines()[:50]
    f = lines[3].split("\t")
    f[1] = "1e400"  # overflows float32 (and float64): a bad line, not a row of inf
    lines[3] = "\t".join(f)
    src = tmp_path / "t.tsv"
    src.write_text("\n".join(lines) + "\n\n\r\n")  # two trailing blank lines
    out = tmp_path / "sub" / "dir" / "t.h5"  # --out makes its folders
    (tmp_path / "sub" / "dir").mkdir(parents=True)
    (tmp_path / "sub" / "dir" / "t.h5.part1.tmp999").write_bytes(b"x" * 100)  # killed run
    rep = convert([str(src)], out, CRITEO_TSV, max_bad_fraction=0.05)
    assert rep["rows"] == 49 and rep["blank_lines"] == 2 and rep["lines"] == 50
    assert rep["bad"] == {"dense value overflows or is not finite": 1}
    assert rep["examples"] == [f"{src}:4: dense value overflows or is not finite (column I1)"]
    assert list((tmp_path / "sub" / "dir").iterdir()) == [out]
    import numpy as np
    assert np.isfinite(CtrDataset(out).read(0, 49).dense).all()
    csv = tmp_path / "bom.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + (ROOT / "tests" / "data" / "criteo" /
                                       "sample200.csv").read_bytes())
    assert convert([str(csv)], tmp_path / "bom.h5", CRITEO_CSV)["rows"] == 200


def test_empty_train_set_is_a_clear_error(tmp_path):
    from desmpi.data.h5 import H5Writer

    w = H5Writer(tmp_path / "empty.h5", 26, 13)
    w.close()
    p = _desmpi("train", str(ROOT / "configs" / "fm.toml"), "--set",
                f"data.train={tmp_path}/empty.h5", "--set", "data.eval=")
    assert p.returncode == 2 and "the data set has no rows" in p.stderr


def test_a_second_run_on_the_same_directories_fails_fast(odd, tmp_path):
    import time

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time\nfrom desmpi.locks import DirLock\n"
                               f"lock = DirLock({str(out)!r}, '--out').acquire()\n"
                               "print('held', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        p = _train1(odd, "--out", str(out))
        assert p.returncode == 2 and f"pid {holder.pid}" in p.stderr
        assert "is in use by another desmpi run" in p.stderr
        assert time.monotonic() - t0 < 60
        assert not (out / "metrics.jsonl").exists()  # the holder's files are untouched
    finally:
        holder.kill()
        holder.wait()
    p = _train1(odd, "--out", str(out))  # the lock died with its holder
    assert p.returncode == 0, p.stderr


def test_hostile_checkpoints_and_exports(odd, tmp_path):
    import h5py

    from desmpi.checkpoint import CheckpointError, newest_valid, step_dir, verify

    ck = tmp_path / "ck"
    p = _train1(odd, "--set", f"checkpoint.dir={ck}", "--set", "checkpoint.every=5")
    assert p.returncode == 0, p.stderr
    d = step_dir(ck, 5)
    good = json.loads((d / "manifest.json").read_text())
    for change, msg in (
            (lambda m: m["files"].update({"/dev/zero": m["files"].pop("dense.h5")}),
             "do not match world_size"),
            (lambda m: m["files"].update({"../../etc/passwd": "0" * 64}),
             "do not match world_size"),
            (lambda m: m.update(world_size=4), "do not match world_size = 4"),
            (lambda m: m.update(world_size="2"), "world_size '2'")):
        m = json.loads(json.dumps(good))
        change(m)
        (d / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(CheckpointError, match=msg):
            verify(d)
    (d / "manifest.json").write_text(json.dumps(good))
    assert newest_valid(ck)[0] == d
    # an export whose weights live in an external file, or hold NaN, is refused
    out = tmp_path / "model.h5"
    p = _desmpi("export", "--checkpoint", str(ck), "--out", str(out))
    assert p.returncode == 0, p.stderr
    from desmpi.serving import ServingModel

    assert ServingModel(out).model is not None
    with h5py.File(out, "r+") as f:
        w = f["weights"][...]
        del f["weights"]
        (tmp_path / "raw.bin").write_bytes(w.tobytes())
        f.create_dataset("weights", shape=w.shape, dtype=w.dtype,
                         external=[(str(tmp_path / "raw.bin"), 0, w.nbytes)])
    with pytest.raises(CheckpointError, match="external or virtual storage"):
        ServingModel(out)
    with h5py.File(out, "r+") as f:
        del f["weights"]
        w[0, 0] = np.nan
        f.create_dataset("weights", data=w)
    with pytest.raises(CheckpointError, match="NaN or inf"):
        ServingModel(out)


def test_a_stopped_rank_ends_the_job_at_the_collective_timeout(tmp_path):
    """SIGSTOP one rank mid-run: the other waits in a collective; past dist.timeout_s its
    watchdog aborts the whole job, naming the step, instead of hanging forever."""
    import signal
    import time

    from tests.conftest import mpi_env, mpiexec_path
    from tests.test_checkpoint import descendants

    generate(SynthSpec(rows=512 * 400, seed=1, cap=2000), tmp_path / "t.h5")
    cmd = [mpiexec_path(), "-n", "2", sys.executable, "-m", "desmpi", "train",
           str(ROOT / "configs" / "fm.toml"), "--set", f"data.train={tmp_path}/t.h5", "--set",
           "data.eval=", "--set", "train.batch_size=512", "--set", "train.epochs=50", "--set",
           "train.log_every=20", "--set", "dist.strategy=des", "--set",
           "dist.aggregate=allreduce", "--set", "dist.timeout_s=4"]
    p = subprocess.Popen(cmd, env=mpi_env(), cwd=ROOT, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = []
    try:
        err = ""
        while "step 20/" not in err:  # the run is warm (watchdog armed after step 1)
            line = p.stderr.readline()
            assert line, f"the run ended early: {err}"
            err += line
        ranks = [q for q in descendants(p.pid)
                 if "desmpi" in open(f"/proc/{q}/cmdline").read()]
        victim = max(ranks)
        os.kill(victim, signal.SIGSTOP)
        stopped.append(victim)
        t0 = time.monotonic()
        rest = p.communicate(timeout=60)[1]
        assert time.monotonic() - t0 < 30
        assert p.returncode != 0
        assert "a collective has not completed in 4 s (at or after step" in rest
    finally:
        for q in stopped + descendants(p.pid):
            try:
                os.kill(q, signal.SIGCONT)
                os.kill(q, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if p.poll() is None:
            p.kill()


def test_streaming_is_the_default_for_large_data_sets(odd, tmp_path):
    """data.in_memory = auto: a data set above in_memory_max_bytes is streamed (peak memory
    bounded by the batch), a small one loaded; true / false force it."""
    from desmpi.comm import Comm
    from desmpi.config import DataConfig, from_dict
    from desmpi.train import Trainer

    path = str(odd / "t.h5")
    assert DataConfig(train=path).loads(path)  # 2,001 rows: under 256 MiB
    assert not DataConfig(train=path, in_memory_max_bytes=1000).loads(path)
    assert DataConfig(train=path, in_memory="true", in_memory_max_bytes=0).loads(path)
    cfg = from_dict({"model": {"name": "lr"}, "data": {"train": path, "in_memory_max_bytes": 1},
                     "train": {"batch_size": 100}}).check()
    tr = Trainer(cfg, Comm.local())
    assert tr.train_ds._mem is None  # rows are read from disk slice by slice
    b, _ = tr.local_batch(tr.train_ds, 3)
    assert b.n == 100


def test_a_file_that_is_not_a_data_set_is_a_one_line_error(tmp_path):
    (tmp_path / "x.h5").write_text("not hdf5")
    p = _desmpi("train", str(ROOT / "configs" / "fm.toml"), "--set",
                f"data.train={tmp_path}/x.h5", "--set", "data.eval=")
    assert p.returncode == 2 and "not a readable HDF5 file" in p.stderr
    assert "Traceback" not in p.stderr
