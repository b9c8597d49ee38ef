"""Tables, optimizers, configs, the train command's outputs, and learning on real Criteo rows."""

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from desmpi.config import ConfigError, load
from desmpi.data.convert import convert
from desmpi.data.schema import CRITEO_TSV
from desmpi.data.synth import SynthSpec, generate
from desmpi.optim import DenseOptimizer, SparseOptimizer
from desmpi.table.shard import ShardTable
from tests.conftest import ROOT


def _mix64(x):
    """NumPy SplitMix64 finaliser (reference for the Numba kernels; uint64 wraps)."""
    x = np.uint64(x)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _init_ref(seed, key, j):
    """Irwin-Hall value j of (seed, key): four 16-bit uniforms of one hash, centred, scaled."""
    with np.errstate(over="ignore"):
        st = _mix64(np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) ^ _mix64(key))
        x = int(_mix64(st + np.uint64(j + 1) * np.uint64(0xD1B54A32D192ED03)))
    a = sum((x >> s) & 0xFFFF for s in (0, 16, 32, 48))
    return ((a + 2) / 65536 - 2) * np.sqrt(3)


def test_table_init_has_the_stated_moments():
    t = ShardTable(9, 1, 0, np.float64, seed=3, init_std=0.2)
    t.lookup_or_insert(np.arange(1, 40001, dtype=np.int64))
    v = t.weights[: t.n, 1:]
    assert (t.weights[: t.n, 0] == 0).all()
    assert abs(v.mean()) < 3 * 0.2 / np.sqrt(v.size)
    assert abs(v.std() / 0.2 - 1) < 0.01
    assert np.abs(v).max() <= 0.2 * np.sqrt(3) * 2
    # columns are not correlated (one hash per value)
    assert abs(np.corrcoef(v[:, 0], v[:, 1])[0, 1]) < 0.03


def test_table_insert_lookup_grow_and_init_by_key():
    t = ShardTable(5, 1, 5, np.float64, seed=7, init_std=0.5, capacity=4)
    rng = np.random.default_rng(0)
    keys = rng.integers(1, 1 << 50, size=5000)
    rows = t.lookup_or_insert(keys)
    uniq = np.unique(keys)
    assert t.n == len(uniq)
    assert np.array_equal(t.lookup(keys), rows) and np.array_equal(t.lookup_or_insert(keys), rows)
    assert np.array_equal(t.keys()[rows], keys)
    assert (t.lookup(np.array([3, 5])) == -1).all()
    k = int(keys[123])
    expect = [0.0] + [0.5 * _init_ref(7, k, c) for c in range(4)]
    np.testing.assert_allclose(t.weights[rows[123]], expect)
    # the same key inserted into another table in another order gets the same row values
    t2 = ShardTable(5, 1, 5, np.float64, seed=7, init_std=0.5)
    r2 = t2.lookup_or_insert(keys[::-1])
    np.testing.assert_array_equal(t2.weights[r2[::-1]], t.weights[rows])
    assert t.n <= 0.8 * t.tkeys.shape[0]  # load factor <= 0.8
    assert (5 + 5) * 8 <= t.bytes_per_key() <= 1.6 * (5 + 5) * 8 + 16 / 0.5 + 4 * 1.25


def _ref_row(name, w, g, s, t):
    """NumPy reference of one optimizer step on one row (w, slots s) -> (w, s)."""
    w, s = w.copy(), s.copy()
    if name == "sgd":
        return w - 0.1 * g, s
    if name == "adagrad":
        s = s + g * g
        return w - 0.1 * g / (np.sqrt(s) + 1e-10), s
    if name == "adam":
        R = len(w)
        m = 0.9 * s[:R] + 0.1 * g
        v = 0.999 * s[R:] + 0.001 * g * g
        return w - 0.1 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8), \
            np.concatenate([m, v])
    if name == "ftrl":
        R = len(w)
        z, n = s[:R], s[R:]
        sigma = (np.sqrt(n + g * g) - np.sqrt(n)) / 0.1
        z = z + g - sigma * w
        n = n + g * g
        w = np.where(np.abs(z) <= 0.01, 0.0,
                     -(z - np.sign(z) * 0.01) / ((1.0 + np.sqrt(n)) / 0.1 + 0.02))
        return w, np.concatenate([z, n])
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["sgd", "adagrad", "ftrl", "adam"])
def test_sparse_optimizers_match_numpy_and_touch_only_given_rows(name):
    R = 3
    slots = {"sgd": 0, "adagrad": R, "ftrl": 2 * R, "adam": 2 * R}[name]
    t = ShardTable(R, 1, slots, np.float64, seed=1, init_std=0.3)
    t.lookup_or_insert(np.arange(1, 11))
    before_w, before_s = t.weights[:10].copy(), t.slots[:10].copy()
    opt = SparseOptimizer(name, 0.1, ftrl_l1=0.01, ftrl_l2=0.02)
    rng = np.random.default_rng(3)
    urows = np.array([2, 5, 7])
    ref_w, ref_s = before_w.copy(), before_s.copy()
    for step in (1, 2, 3):
        g = rng.normal(size=(3, R))
        opt.apply(t, urows, g, step)
        for i, r in enumerate(urows):
            ref_w[r], ref_s[r] = _ref_row(name, ref_w[r], g[i], ref_s[r], step)
    np.testing.assert_allclose(t.weights[:10], ref_w, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(t.slots[:10], ref_s, rtol=1e-12, atol=1e-15)
    untouched = np.setdiff1d(np.arange(10), urows)
    assert np.array_equal(t.weights[untouched], before_w[untouched])


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_optimizers_match_reference(name, dtype):
    rng = np.random.default_rng(5)
    p = rng.normal(size=7).astype(dtype)
    opt = DenseOptimizer(name, 0.1, 7, dtype)
    ref_w = p.astype(np.float64)
    ref_s = np.zeros({"sgd": 0, "adagrad": 7, "adam": 14}[name])
    for step in (1, 2, 3):
        g = rng.normal(size=7).astype(dtype)
        ref_w, ref_s = _ref_row(name, ref_w, g.astype(np.float64), ref_s, step)
        opt.apply(p, g, step)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(p, ref_w, rtol=tol, atol=tol)
    if name != "sgd":
        np.testing.assert_allclose(opt.state.reshape(-1), ref_s, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="contiguous"):
        opt.apply(np.zeros(14, dtype)[::2], g, 4)


def test_unique_rows_first_appearance_order_and_skips_negatives():
    t = ShardTable(2, 0, 0, np.float64, seed=0, init_std=0.1)
    t.lookup_or_insert(np.arange(1, 101, dtype=np.int64))
    rows = np.array([5, 3, 5, -1, 9, 3, 0, -1, 9], dtype=np.int64)
    urows, inv = t.unique_rows(rows)
    assert urows.tolist() == [5, 3, 9, 0]
    assert inv.tolist() == [0, 1, 0, -1, 2, 1, 3, -1, 2]
    assert (t._mark == 0).all()  # scratch restored for the next call
    big = np.random.default_rng(1).integers(-1, 100, size=10000)
    u, iv = t.unique_rows(big)
    assert sorted(u.tolist()) == np.unique(big[big >= 0]).tolist()
    np.testing.assert_array_equal(u[iv[big >= 0]], big[big >= 0])


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key train.learning_rate"):
        load(None, ["data.train=x.h5", "train.learning_rate=0.1"])
    with pytest.raises(ConfigError, match="model.name = 'xgb'"):
        load(None, ["data.train=x.h5", "model.name=xgb"])
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer"):
        load(None, ["data.train=x.h5", "train.batch_size=1.5"])
    with pytest.raises(ConfigError, match=r"unknown section \[trian\]"):
        load(None, ["data.train=x.h5", "trian.lr=1"])
    with pytest.raises(ConfigError, match="data.train"):
        load(None, [])
    with pytest.raises(ConfigError, match="dist.compress_partials = 'topk'"):
        load(None, ["data.train=x.h5", "dist.compress_partials=topk"])
    w = load(None, ["data.train=x.h5", "dist.compress=topk",
                    "dist.compress_partials=int8"]).dist.wire
    assert (w.partials, w.dense) == ("int8", "topk")
    w = load(None, ["data.train=x.h5", "dist.compress=threshold"]).dist.wire
    assert (w.partials, w.partial_grads, w.dense) == ("bf16", "bf16", "threshold")
    # the backward direction follows the partials unless told otherwise
    w = load(None, ["data.train=x.h5", "dist.compress_partials=fp16",
                    "dist.compress_partial_grads=int8"]).dist.wire
    assert (w.partials, w.partial_grads, w.dense, w.packed) == ("fp16", "int8", "none", True)
    w = load(None, ["data.train=x.h5", "dist.compress=bf16",
                    "dist.compress_partial_grads=none"]).dist.wire
    assert (w.partials, w.partial_grads, w.dense) == ("bf16", "none", "bf16")
    w = load(None, ["data.train=x.h5", "dist.compress_partial_grads=bf16"]).dist.wire
    assert (w.partials, w.partial_grads, w.dense, w.packed) == ("none", "bf16", "none", True)
    with pytest.raises(ConfigError, match="dist.compress_partial_grads = 'topk'"):
        load(None, ["data.train=x.h5", "dist.compress_partial_grads=topk"])
    f = tmp_path / "c.toml"
    f.write_text("[model]\nname = 'dcn'\nhidden = [8, 4]\n[data]\ntrain = 'a.h5'\n")
    cfg = load(f, ["model.embed_dim=4", "train.lr=0.5"])
    assert cfg.model.hidden == (8, 4) and cfg.model.embed_dim == 4 and cfg.train.lr == 0.5
    for m in ("lr", "fm", "wdl", "deepfm", "dcn", "dlrm"):
        assert load(ROOT / "configs" / f"{m}.toml").model.name == m


def _train_cli(args, cwd=ROOT):
    p = subprocess.run([sys.executable, "-m", "desmpi", "train", *args, "--json"],
                       capture_output=True, text=True, timeout=600, cwd=cwd)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_train_outputs(tmp_path):
    generate(SynthSpec(rows=3000, seed=1, cap=500), tmp_path / "tr.h5")
    generate(SynthSpec(rows=1000, seed=2, cap=500), tmp_path / "ev.h5")
    out = tmp_path / "run"
    s = _train_cli([str(ROOT / "configs" / "fm.toml"), "--set", f"data.train={tmp_path}/tr.h5",
                    "--set", f"data.eval={tmp_path}/ev.h5", "--set", "train.batch_size=256",
                    "--set", "train.eval_every=5", "--set", "train.log_every=4",
                    "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    for k in ("model", "strategy", "aggregate", "world_size", "global_batch", "steps",
              "samples", "train_logloss", "eval_auc", "eval_logloss", "samples_per_s",
              "step_time_s", "comm", "wire_bytes_per_step", "table_keys", "bytes_per_key",
              "peak_rss_bytes", "config"):
        assert k in summary, k
    assert summary["steps"] == 12 and summary["samples"] == 3000
    preds = np.load(out / "eval_predictions.npy")
    from desmpi.data.h5 import CtrDataset

    y = CtrDataset(tmp_path / "ev.h5").labels()
    assert preds.shape == (1000,)
    assert summary["eval_auc"] == pytest.approx(roc_auc_score(y, preds), abs=1e-12)
    assert summary["eval_logloss"] == pytest.approx(log_loss(y, preds), rel=1e-9)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [4, 5, 8, 10, 12]
    assert "eval_auc" in lines[1] and "eval_auc" not in lines[0]
    assert s["model"] == "fm"


@pytest.fixture(scope="module")
def criteo_split(tmp_path_factory, criteo_tsv):
    d = tmp_path_factory.mktemp("criteo")
    lines = open(criteo_tsv, "rb").read().splitlines(keepends=True)
    (d / "train.tsv").write_bytes(b"".join(lines[:12000]))
    (d / "eval.tsv").write_bytes(b"".join(lines[12000:]))
    convert([str(d / "train.tsv")], d / "train.h5", CRITEO_TSV)
    convert([str(d / "eval.tsv")], d / "eval.h5", CRITEO_TSV)
    return d


@pytest.mark.parametrize("model,min_auc", [("lr", 0.70), ("deepfm", 0.70), ("fm", 0.68),
                                           ("wdl", 0.68), ("dcn", 0.68), ("dlrm", 0.65)])
def test_learns_on_real_criteo_rows(criteo_split, model, min_auc):
    """Chronological split of head15k.tsv: train rows 1-12,000, eval 12,001-15,000."""
    d = criteo_split
    s = _train_cli([str(ROOT / "configs" / f"{model}.toml"), "--set", f"data.train={d}/train.h5",
                    "--set", f"data.eval={d}/eval.h5", "--set", "train.batch_size=256"])
    assert s["eval_auc"] > min_auc, s["eval_auc"]


def test_nan_stops_naming_step_and_operator_or_skips(tmp_path):
    generate(SynthSpec(rows=2048, seed=1, cap=500), tmp_path / "tr.h5")
    base = [sys.executable, "-m", "desmpi", "train", str(ROOT / "configs" / "fm.toml"),
            "--set", f"data.train={tmp_path}/tr.h5", "--set", "data.eval=", "--set",
            "train.batch_size=256", "--set", "train.optimizer=sgd", "--set", "train.lr=1e30",
            "--set", f"checkpoint.dir={tmp_path}/ck", "--set", "checkpoint.every=1"]
    p = subprocess.run(base, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode != 0
    assert "non-finite" in p.stderr and "step " in p.stderr and "operator fm" in p.stderr
    bad_step = int(p.stderr.split("step ")[-1].split(":")[0])
    # no checkpoint of the poisoned step (or later) exists
    from desmpi.checkpoint import complete_steps

    assert all(s < bad_step for s in complete_steps(tmp_path / "ck"))
    p = subprocess.run([*base, "--set", "train.nan_policy=skip", "--set",
                        f"checkpoint.dir={tmp_path}/ck2", "--json"], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads(p.stdout.strip().splitlines()[-1])
    assert s["skipped_steps"] > 0
    # skipped steps still save when a checkpoint is due: the last step's is there
    assert max(complete_steps(tmp_path / "ck2")) == s["total_steps"]


def test_lifecycle_admission_ttl_and_max_keys():
    from desmpi.table.lifecycle import Lifecycle

    t = ShardTable(3, 1, 3, np.float64, seed=1, init_std=0.1)
    lc = t.lifecycle = Lifecycle(min_count=2, ttl_steps=4, max_keys=3)
    lc.step = 1
    assert (t.lookup_or_insert(np.array([10, 11, 10])) == -1).all()  # seen once: not yet
    lc.step = 2
    rows = t.lookup_or_insert(np.array([10, 12]))
    assert rows[0] >= 0 and rows[1] == -1 and t.n == 1  # 10 admitted on its 2nd step
    w10 = t.weights[rows[0]].copy()
    for step, keys in ((3, [11, 12, 13]), (4, [13, 14]), (5, [14, 15]), (6, [15, 14])):
        lc.step = step
        t.lookup_or_insert(np.array(keys))
    # admitted: 10 (step 2), 11 and 12 (3), 13 (4), 14 (5), 15 (6); last seen 2,3,3,4,6,6
    assert t.n == 6
    gone = lc.evict(t, 6)  # TTL 4 drops 10 (seen at 2); max_keys 3 then drops 11, 12 (at 3)
    assert gone == 3 and sorted(t.keys().tolist()) == [13, 14, 15] and lc.evicted == 3
    assert (t.lookup(np.array([10, 11, 12])) == -1).all()
    # an evicted key is forgotten: it needs min_count steps again, and restarts from init
    lc.step = 7
    assert t.lookup_or_insert(np.array([10]))[0] == -1
    lc.step = 8
    r = t.lookup_or_insert(np.array([10]))[0]
    assert r >= 0 and np.array_equal(t.weights[r], w10)
