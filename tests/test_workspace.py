"""Memory kept across steps: row arrays grown in place (desmpi.table.mapped) against plain NumPy
copies, and the step's scratch arrays (desmpi.workspace) against fresh ones."""

import numpy as np
import pytest

from desmpi.comm import Comm
from desmpi.config import from_dict
from desmpi.data.synth import SynthSpec, generate
from desmpi.table.mapped import GrowableRows
from desmpi.table.shard import ShardTable
from desmpi.train import Trainer
from desmpi.workspace import Workspace


@pytest.mark.parametrize("width", [0, 1, 17])
def test_growth_keeps_rows_and_zero_fills(width):
    rng = np.random.default_rng(0)
    g = GrowableRows(5, width, np.float32)
    assert g.array.shape == (5, width) and g.array.flags.c_contiguous and g.array.flags.writeable
    ref = rng.standard_normal((5, width)).astype(np.float32)
    g.array[:] = ref
    for cap in (6, 40, 1000, 70000):
        a = g.grow(cap)
        assert a.shape == (cap, width) and a is g.array
        np.testing.assert_array_equal(a[: ref.shape[0]], ref)
        assert not a[ref.shape[0]:].any()  # new rows are zero
        new = rng.standard_normal((cap - ref.shape[0], width)).astype(np.float32)
        a[ref.shape[0]:] = new
        ref = np.concatenate([ref, new])


def test_growth_with_a_held_view_copies_and_leaves_the_view_valid():
    g = GrowableRows(4, 3, np.int64)
    g.array[:] = np.arange(12).reshape(4, 3)
    held = g.array  # the map cannot move under this view: growth falls back to a copy
    a = g.grow(100000)
    np.testing.assert_array_equal(a[:4], np.arange(12).reshape(4, 3))
    np.testing.assert_array_equal(held, np.arange(12).reshape(4, 3))
    a[0, 0] = -5
    assert held[0, 0] == 0  # separate memory now
    with pytest.raises(ValueError, match="current"):
        g.grow(3)


def test_table_rows_survive_many_growths():
    """Keys inserted over many growths keep their rows' values (against a copy made before)."""
    t = ShardTable(5, 1, 2, np.float32, seed=3, init_std=0.1, capacity=16)
    keys = np.arange(1, 20001, dtype=np.int64)
    rows = t.lookup_or_insert(keys[:100])
    t.weights[rows] += 1.0
    t.slots[rows] = 7.0
    before_w, before_s = t.weights[rows].copy(), t.slots[rows].copy()
    for lo in range(100, 20000, 997):
        t.lookup_or_insert(keys[lo:lo + 997])
    assert t.weights.shape[0] >= 20000
    np.testing.assert_array_equal(t.weights[t.lookup(keys[:100])], before_w)
    np.testing.assert_array_equal(t.slots[t.lookup(keys[:100])], before_s)
    # a fresh table given the same keys in one go initialises the rest identically
    u = ShardTable(5, 1, 2, np.float32, seed=3, init_std=0.1)
    u.lookup_or_insert(keys)
    np.testing.assert_array_equal(t.weights[t.lookup(keys[100:])], u.weights[u.lookup(keys[100:])])


def test_workspace_reuses_by_name_and_grows():
    ws = Workspace()
    a = ws.take("a", (4, 3), np.float32)
    a[...] = 1
    b = ws.take("a", (2, 5), np.float32)  # same name, fits: the same memory
    assert np.shares_memory(a, b) and b.shape == (2, 5) and b.flags.c_contiguous
    c = ws.take("b", (4, 3), np.float32)
    assert not np.shares_memory(a, c)
    z = ws.zeros("a", (3, 4), np.float32)
    assert np.shares_memory(a, z) and not z.any()
    big = ws.take("a", (10, 10), np.float32)  # larger: new memory
    assert big.shape == (10, 10) and not np.shares_memory(a, big)
    assert ws.take("a", (10, 10), np.float64).dtype == np.float64
    fresh = Workspace(reuse=False)
    assert not np.shares_memory(fresh.take("a", (3,), np.int64), fresh.take("a", (3,), np.int64))
    assert ws.nbytes >= 100 * 8


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ws")
    generate(SynthSpec(rows=700, seed=4, cap=200), d / "train.h5")
    generate(SynthSpec(rows=150, seed=5, cap=200), d / "eval.h5")
    return d


def _train(d, model, aggregate, reuse):
    cfg = from_dict({
        "model": {"name": model, "embed_dim": 4, "hidden": [16, 8], "bottom": [8],
                  "cross_layers": 2},
        "data": {"train": str(d / "train.h5"), "eval": str(d / "eval.h5")},
        "train": {"batch_size": 64, "steps": 6, "optimizer": "adagrad", "lr": 0.05},
        "dist": {"aggregate": aggregate}}).check()
    tr = Trainer(cfg, Comm.local())
    if not reuse:
        tr.model.params.ws = Workspace(reuse=False)
    preds = []
    for t in range(6):
        b, sizes = tr.local_batch(tr.train_ds, t)
        tr.strategy.train_step(b, sizes, t + 1)
        if t in (2, 5):  # eval batches of another size (150 = 64 + 64 + 22) in between
            preds.append(tr.evaluate()[2])
    return tr, preds


@pytest.mark.parametrize("model", ["lr", "fm", "wdl", "deepfm", "dcn", "dlrm"])
@pytest.mark.parametrize("aggregate", ["allreduce", "reduce_scatter"])
def test_training_with_reused_scratch_equals_fresh_arrays(small_data, model, aggregate):
    """Reusing the step's arrays changes no bit of the weights or the eval predictions."""
    a, pa = _train(small_data, model, aggregate, reuse=True)
    b, pb = _train(small_data, model, aggregate, reuse=False)
    assert a.model.params.ws.nbytes > 0 and b.model.params.ws.nbytes == 0
    np.testing.assert_array_equal(a.model.params.data, b.model.params.data)
    n = a.table.n
    assert n == b.table.n > 0
    np.testing.assert_array_equal(a.table.weights[:n], b.table.weights[:n])
    np.testing.assert_array_equal(a.table.slots[:n], b.table.slots[:n])
    for x, y in zip(pa, pb, strict=True):
        np.testing.assert_array_equal(x, y)
