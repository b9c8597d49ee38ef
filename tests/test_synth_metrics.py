"""Generator determinism and oracle AUC; metrics against scikit-learn; rank slicing."""

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from desmpi.data.h5 import CtrDataset
from desmpi.data.slicing import rank_slice, split_counts
from desmpi.data.synth import BLOCK, KAGGLE_CARDINALITIES, SynthSpec, generate, generate_block
from desmpi.metrics import auc, logloss


def test_generator_is_deterministic_and_prefix_stable():
    a, pa = generate_block(SynthSpec(rows=5000, seed=3, cap=1000), 0)
    b, pb = generate_block(SynthSpec(rows=5000, seed=3, cap=1000), 0)
    c, _ = generate_block(SynthSpec(rows=3000, seed=3, cap=1000), 0)
    d, _ = generate_block(SynthSpec(rows=5000, seed=4, cap=1000), 0)
    assert np.array_equal(a.keys, b.keys) and np.array_equal(pa, pb)
    assert np.array_equal(a.keys[: 3000 * 26], c.keys)  # the first N rows do not depend on N
    assert not np.array_equal(a.keys, d.keys)


def test_cardinalities_cap_and_power_law():
    spec = SynthSpec(rows=BLOCK, seed=1, cap=500)
    b, _ = generate_block(spec, 0)
    k = b.keys.reshape(-1, 26)
    ids = k & ((1 << 47) - 1)
    caps = np.minimum(np.array(KAGGLE_CARDINALITIES), 500)
    assert (ids.max(axis=0) < caps).all()
    # power law: id 0 of field C3 (10M values, capped at 500) is the most frequent
    counts = np.bincount(ids[:, 2], minlength=500)
    assert counts.argmax() == 0 and counts[0] > 20 * counts[100:].mean()


def test_oracle_auc_and_file(tmp_path):
    rep = generate(SynthSpec(rows=30000, seed=2, cap=10000), tmp_path / "s.h5")
    ds = CtrDataset(tmp_path / "s.h5")
    y = ds.read(0, ds.n).labels
    p = ds.oracle_prob()
    assert rep["oracle_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert 0.75 < rep["oracle_auc"] < 0.95  # learnable, not trivial
    assert 0.1 < rep["positive_rate"] < 0.4
    assert ds.attrs()["oracle_auc"] == rep["oracle_auc"]


def test_multi_hot_weighted(tmp_path):
    spec = SynthSpec(rows=2000, seed=5, multi_hot={2: 4, 9: 2}, weighted=True)
    generate(spec, tmp_path / "m.h5")
    ds = CtrDataset(tmp_path / "m.h5")
    b = ds.read(100, 300)
    lens = np.diff(b.offsets).reshape(200, 26)
    assert lens[:, 2].max() == 4 and lens[:, 2].min() == 1 and (lens[:, 0] == 1).all()
    assert b.values is not None and b.keys.shape == b.values.shape
    s, f = b.sample_field()
    assert ((b.keys >> 48) - 1 == f).all() and s.max() == 199


def test_auc_logloss_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random(5000) < 0.3
    s = np.round(rng.normal(size=5000) + y, 1)  # many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    p = 1 / (1 + np.exp(-s))
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-12)


@pytest.mark.parametrize("P", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1000, 1003])
def test_rank_slices_partition_each_global_batch(P, n):
    B = 100
    for t in range(-(-n // B)):
        parts = [rank_slice(t, B, n, P, r) for r in range(P)]
        assert parts[0][0] == t * B and parts[-1][1] == min((t + 1) * B, n)
        assert all(parts[i][1] == parts[i + 1][0] for i in range(P - 1))
    assert split_counts(10, 4).tolist() == [3, 3, 2, 2]
