"""Operators: partials summed over shards == an unsharded NumPy reference; gradients of every
model by central finite differences (float64)."""

import numpy as np
import pytest

from desmpi.config import ModelConfig
from desmpi.data.synth import SynthSpec, generate_block
from desmpi.kernels.hashing import owners
from desmpi.kernels.sparse import add_segments, pool, row_grads, unique_rows
from desmpi.models import REGISTRY, build_model
from desmpi.optim import sparse_slots
from desmpi.reference import bce_with_logits, occurrences, pool_owned, route
from desmpi.table.shard import ShardTable

D = 4


def small_batch(n=40, multi=True, seed=0):
    spec = SynthSpec(rows=n, seed=seed, cap=50,
                     multi_hot={2: 3, 7: 2} if multi else {}, weighted=multi)
    b, _ = generate_block(spec, 0)
    b.dense = b.dense.astype(np.float64)
    b.labels = b.labels.astype(np.float64)
    if b.values is not None:
        b.values = b.values.astype(np.float64)
    return b


def make(name, deep_input="auto", hidden=(6, 5)):
    cfg = ModelConfig(name=name, embed_dim=D, hidden=hidden, bottom=(5,), cross_layers=2,
                      deep_input=deep_input, init_std=0.3)
    m = build_model(cfg, 26, 13, np.float64, seed=5)
    t = ShardTable(m.row_width, m.emb_col, sparse_slots("adagrad", m.row_width), np.float64,
                   seed=11, init_std=0.3)
    # random (not zero) linear weights and dense parameters make every path non-trivial
    m.params.data[:] = np.random.default_rng(1).normal(0, 0.3, m.params.size)
    return m, t


MODEL_CASES = [("lr", "auto"), ("fm", "auto"), ("wdl", "fused"), ("wdl", "pooling"),
               ("deepfm", "fused"), ("deepfm", "pooling"), ("dcn", "auto"), ("dlrm", "auto")]


def reference_pools(b, table):
    """NumPy reference of L, E, Q over all keys of the batch (no kernels, no sharding)."""
    s, f = b.sample_field()
    rows = table.lookup_or_insert(b.keys)
    w = table.weights[rows]
    x = b.values if b.values is not None else np.ones(len(s))
    L = np.bincount(s, weights=w[:, 0] * x, minlength=b.n) if table.emb_col else None
    v = w[:, table.emb_col:] * x[:, None]
    E = np.zeros((b.n, 26, v.shape[1]))
    np.add.at(E, (s, f), v)
    Q = np.bincount(s, weights=(v * v).sum(1), minlength=b.n)
    return L, E, Q


@pytest.mark.parametrize("name,deep", MODEL_CASES)
@pytest.mark.parametrize("P", [1, 2, 3, 4])
def test_partials_summed_over_shards_equal_reference(name, deep, P):
    b = small_batch()
    m, ref_table = make(name, deep)
    L, E, Q = reference_pools(b, ref_table)
    ref = {"linear": None if L is None else L[:, None],
           "fm": np.concatenate([E.sum(1), Q[:, None]], 1), "field_pooling": E.reshape(b.n, -1)}
    if any(op.name == "fused_first_layer" for op in m.ops):
        ref["fused_first_layer"] = E.reshape(b.n, -1) @ m.params["w1_sparse"]
    Z = np.zeros((b.n, m.W))
    own = owners(b.keys, P)
    for r in range(P):
        _, t = make(name, deep)
        pos = route(b, r, P)
        assert np.array_equal(pos, np.flatnonzero(own == r))
        occ = occurrences(b, pos, t, insert=True)
        # initial rows depend on (seed, key) only, not on which shard inserted them
        np.testing.assert_array_equal(t.weights[occ.rows, t.emb_col:],
                                      ref_table.weights[ref_table.lookup(b.keys[pos]),
                                                        t.emb_col:])
        t.weights[occ.rows, : t.emb_col] = ref_table.weights[ref_table.lookup(b.keys[pos]),
                                                             : t.emb_col]
        Z += m.partial(pool_owned(m, occ, b.n, t))
    for op in m.ops:
        want = ref[op.name]
        if op.name == "fm" and op.s_from_pooling:
            want = Q[:, None]
        np.testing.assert_allclose(Z[:, op.cols], want, rtol=1e-12, atol=1e-14,
                                   err_msg=f"{name}/{op.name}")


def loss_and_grads(m, t, b):
    """Mean BCE and its gradients: per-row (rows, grad) and the dense gradient vector."""
    pos = route(b, 0, 1)
    occ = occurrences(b, pos, t, insert=True)
    pooled = pool_owned(m, occ, b.n, t)
    Z = m.partial(pooled)
    logits, cache = m.forward(Z, b.dense)
    loss, p = bce_with_logits(logits, b.labels)
    m.params.zero_grad()
    gZ = m.backward(cache, (p - b.labels) / b.n)
    kg = m.key_grads(gZ, pooled)
    urows, inv = np.unique(occ.rows, return_inverse=True)
    g = np.zeros((len(urows), t.R))
    row_grads(occ.s, occ.f, inv, urows, occ.vals, t.weights, m.emb_col, *kg.kernel_args, g)
    return loss / b.n, urows, g, m.params.grads.copy()


def _loss(m, t, b):
    pos = route(b, 0, 1)
    occ = occurrences(b, pos, t, insert=True)
    logits, _ = m.forward(m.partial(pool_owned(m, occ, b.n, t)), b.dense)
    return bce_with_logits(logits, b.labels)[0] / b.n


@pytest.mark.parametrize("name,deep", MODEL_CASES)
def test_gradients_by_finite_differences(name, deep):
    b = small_batch(n=30)
    m, t = make(name, deep)
    _, urows, g, gd = loss_and_grads(m, t, b)
    rng = np.random.default_rng(2)
    eps = 1e-6
    # sparse rows: a few (row, column) entries, the most frequent row included
    for i in [*rng.choice(len(urows), 6, replace=False), int(np.argmax(np.abs(g).sum(1)))]:
        for c in range(t.R):
            r = urows[i]
            old = t.weights[r, c]
            t.weights[r, c] = old + eps
            up = _loss(m, t, b)
            t.weights[r, c] = old - eps
            dn = _loss(m, t, b)
            t.weights[r, c] = old
            num = (up - dn) / (2 * eps)
            assert num == pytest.approx(g[i, c], rel=1e-5, abs=1e-9), (name, "row", r, c)
    # dense parameters: a sample of entries of every named parameter
    for pname, (o, size, _) in m.params.offsets.items():
        for j in rng.choice(size, min(size, 4), replace=False):
            old = m.params.data[o + j]
            m.params.data[o + j] = old + eps
            up = _loss(m, t, b)
            m.params.data[o + j] = old - eps
            dn = _loss(m, t, b)
            m.params.data[o + j] = old
            num = (up - dn) / (2 * eps)
            assert num == pytest.approx(gd[o + j], rel=1e-5, abs=1e-9), (name, pname, j)


def test_deep_input_choice_takes_the_narrower_partial():
    def width(name, H, d=16):
        cfg = ModelConfig(name=name, embed_dim=d, hidden=(H, 8))
        return build_model(cfg, 26, 13, np.float32, 0)

    # W&D: F·d = 416 vs H = 400 -> fused; H = 512 -> pooling
    assert width("wdl", 400).substitutions["deep"] == "fused_first_layer"
    assert width("wdl", 400).W == 1 + 400
    assert width("wdl", 512).W == 1 + 26 * 16
    # DeepFM: pooling [L|E|Q] = 418 vs fused [L|S|Q|h] = 18 + H: tie at 400 -> pooling
    assert width("deepfm", 400).W == 418 and width("deepfm", 400).fm.s_from_pooling
    assert width("deepfm", 200).W == 1 + 17 + 200
    assert set(REGISTRY) == {"lr", "fm", "wdl", "deepfm", "dcn", "dlrm"}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dot_interaction_kernels_match_numpy(dtype):
    from desmpi.kernels.dense import dot_interaction, dot_interaction_backward

    rng = np.random.default_rng(4)
    n, F, d = 9, 5, 6
    z = rng.normal(size=(n, d)).astype(dtype)
    E = rng.normal(size=(n, F * d)).astype(dtype)
    T = np.concatenate([z[:, None, :], E.reshape(n, F, d)], axis=1).astype(np.float64)
    li, lj = np.tril_indices(F + 1, -1)
    want = np.concatenate([z, np.einsum("nid,nid->ni", T[:, li], T[:, lj])], axis=1)
    out = np.empty((n, d + len(li)), dtype)
    dot_interaction(z, E, out)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    gout = rng.normal(size=out.shape).astype(dtype)
    gI = np.zeros((n, F + 1, F + 1))
    gI[:, li, lj] = gout[:, d:]
    gT = np.einsum("nij,njd->nid", gI + gI.transpose(0, 2, 1), T)
    gz, gE = np.empty((n, d), dtype), np.empty((n, F * d), dtype)
    dot_interaction_backward(gout, z, E, gz, gE)
    np.testing.assert_allclose(gz, gT[:, 0] + gout[:, :d], rtol=tol, atol=tol)
    np.testing.assert_allclose(gE, gT[:, 1:].reshape(n, -1), rtol=tol, atol=tol)


def test_bias_act_and_relu_grad_match_numpy():
    from desmpi.kernels.dense import bias_act, relu_grad

    rng = np.random.default_rng(6)
    y, b = rng.normal(size=(7, 5)), rng.normal(size=5)
    want = np.maximum(y + b, 0)
    y2 = y.copy()
    bias_act(y2, b, False)
    np.testing.assert_array_equal(y2, y + b)
    bias_act(y, b, True)
    np.testing.assert_array_equal(y, want)
    g = rng.normal(size=(7, 5))
    g_want = g * (want > 0)
    gb = np.ones(5)
    relu_grad(g, want, gb)
    np.testing.assert_array_equal(g, g_want)
    np.testing.assert_allclose(gb, 1 + g_want.sum(axis=0), rtol=1e-14)


def test_auto_deep_input_fuses_only_where_the_dense_part_is_replicated():
    from desmpi.variants import ALL, parse
    from desmpi.whatif.simulate import ModelInfo

    # the fused layer's products run over every partial row a rank computes: free only when
    # the dense part is replicated (des / allreduce); elsewhere auto -> pooling
    for v in ALL:
        assert v.deep_input("auto") == ("auto" if v.aggregate == "allreduce" else "pooling"), v
        assert v.deep_input("fused") == "fused" and v.deep_input("pooling") == "pooling"
    # where an explicit fused layer repeats its products on every rank (the trainer warns)
    assert [parse(n).fused_repeats_work for n in (
        "des/allreduce", "des/reduce_scatter", "des-a2a", "a2a", "ps")] == \
        [False, True, True, False, False]
    cfg = ModelConfig(name="wdl", embed_dim=16, hidden=(400, 8))
    subs = {n: build_model(cfg, 26, 13, np.float32, 0, parse(n).deep_input("auto"))
            .substitutions["deep"] for n in ("des/allreduce", "des/reduce_scatter", "ps")}
    assert subs == {"des/allreduce": "fused_first_layer",
                    "des/reduce_scatter": "field_pooling", "ps": "field_pooling"}
    # the simulator costs each variant with the model its runs build
    infos = ModelInfo.per_variant(cfg, 26, 13, np.float32, list(ALL))
    assert {v.name: i.dims.W for v, i in infos.items()} == {
        "des/allreduce": 401, "des/allreduce+replicate": 401, "des/reduce_scatter": 417,
        "des/reduce_scatter+replicate": 417, "des-a2a": 417, "a2a": 417, "ps": 417}
    assert infos[parse("des")].fused_macs == 416 * 400 and infos[parse("des-rs")].fused_macs == 0


@pytest.mark.parametrize("d", [4, 16, 64])  # the scalar (d < 8) and the vectorised row loops
def test_row_grads_match_a_numpy_reference(d):
    rng = np.random.default_rng(d)
    n, F, nrows, nnz = 50, 6, 40, 400
    occ_s = np.sort(rng.integers(0, n, nnz))
    occ_f = rng.integers(0, F, nnz)
    rows = rng.integers(-1, nrows, nnz)  # -1: a key with no row (skipped)
    vals = rng.uniform(0.5, 1.5, nnz)
    emb_col = 1
    weights = rng.normal(size=(nrows, emb_col + d))
    W = 1 + d + 1 + F * d  # [L | S (d) | Q | E (F·d)]
    gZ = rng.normal(size=(n, W))
    cL, cS, cQ, cE = 0, 1, 1 + d, 2 + d
    mark = np.zeros(nrows, np.int32)
    urows, inv = np.empty(nnz, np.int64), np.empty(nnz, np.int64)
    nu = unique_rows(rows, mark, urows, inv)
    grad = np.zeros((nu, emb_col + d))
    row_grads(occ_s, occ_f, inv, urows[:nu], vals, weights, emb_col, gZ, cL, cS, cQ, gZ, cE,
              grad)
    ref = np.zeros_like(grad)
    for i in range(nnz):
        if rows[i] < 0:
            continue
        u, s, x = inv[i], occ_s[i], vals[i]
        ref[u, 0] += gZ[s, cL] * x
        ref[u, 1:] += (gZ[s, cE + occ_f[i] * d: cE + (occ_f[i] + 1) * d] + gZ[s, cS:cS + d]) * x
        ref[u, 1:] += 2 * gZ[s, cQ] * x * x * weights[rows[i], 1:]
    assert np.array_equal(urows[:nu], np.unique(rows[rows >= 0])[np.argsort(
        [np.flatnonzero(rows == r)[0] for r in np.unique(rows[rows >= 0])])])
    np.testing.assert_allclose(grad, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [4, 16, 64])  # the scalar (d < 8) and the vectorised row loops
def test_pool_matches_a_numpy_reference(d):
    rng = np.random.default_rng(100 + d)
    n, F, nrows, nnz = 50, 6, 40, 400
    occ_s = np.sort(rng.integers(0, n, nnz))
    occ_f = rng.integers(0, F, nnz)
    rows = rng.integers(-1, nrows, nnz)  # -1: skipped
    vals = rng.uniform(0.5, 1.5, nnz)
    emb_col = 1
    weights = rng.normal(size=(nrows, emb_col + d))
    cL, cS, cQ, cE = 0, 1, 1 + d, 2 + d
    Z = np.zeros((n, 2 + d + F * d))
    pool(occ_s, occ_f, rows, vals, weights, emb_col, Z, cL, cS, cQ, Z, cE)
    ref = np.zeros_like(Z)
    for i in np.flatnonzero(rows >= 0):
        s, x, w = occ_s[i], vals[i], weights[rows[i]]
        ref[s, cL] += w[0] * x
        ref[s, cS:cS + d] += w[1:] * x
        ref[s, cQ] += (w[1:] @ w[1:]) * x * x
        ref[s, cE + occ_f[i] * d: cE + (occ_f[i] + 1) * d] += w[1:] * x
    np.testing.assert_allclose(Z, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [4, 16, 64])  # the scalar (d < 8) and the vectorised row loops
def test_fm_field_kernels_match_numpy_on_strided_columns(d):
    """field_sum (S = Σ_f E_f) and add_to_fields (its gradient back to every field) read and
    write E as a column slice of a wider matrix, as DeepFM passes Z's and gZ's columns."""
    from desmpi.kernels.dense import add_to_fields, field_sum

    rng = np.random.default_rng(300 + d)
    n, F, off = 37, 5, 3
    Z = rng.normal(size=(n, off + F * d + 2)).astype(np.float32)
    E = Z[:, off:off + F * d]  # rows strided by Z's width
    S = np.empty((n, d), np.float32)
    field_sum(E, d, S)
    ref = E[:, :d].copy()
    for f in range(1, F):  # the kernel's order: field 0, then 1, 2, ... added in turn
        ref += E[:, f * d:(f + 1) * d]
    assert np.array_equal(S, ref)
    g = rng.normal(size=(n, d)).astype(np.float32)
    want = Z.copy()
    want[:, off:off + F * d] += np.tile(g, F)
    add_to_fields(Z[:, off:off + F * d], g, d)
    assert np.array_equal(Z, want)  # the columns outside E untouched


@pytest.mark.parametrize("d", [4, 16, 64])  # the scalar (d < 8) and the vectorised row loops
def test_add_segments_matches_a_numpy_reference(d):
    rng = np.random.default_rng(200 + d)
    n, F, m = 30, 5, 120
    seg_s, seg_f = rng.integers(0, n, m), rng.integers(0, F, m)
    seg = rng.normal(size=(m, 2 + d))  # [L | v (d) | Q]
    cL, cS, cQ, cE = 0, 1, 1 + d, 2 + d
    Z = np.zeros((n, 2 + d + F * d))
    add_segments(seg_s, seg_f, seg, 0, 1, 1 + d, d, Z, cL, cS, cQ, Z, cE)
    ref = np.zeros_like(Z)
    for k in range(m):
        s, f = seg_s[k], seg_f[k]
        ref[s, cL] += seg[k, 0]
        ref[s, cS:cS + d] += seg[k, 1:1 + d]
        ref[s, cQ] += seg[k, 1 + d]
        ref[s, cE + f * d: cE + (f + 1) * d] += seg[k, 1:1 + d]
    np.testing.assert_allclose(Z, ref, rtol=1e-12, atol=1e-12)


def test_gather_segments_is_the_transpose_of_add_segments():
    """<add_segments(seg), G> == <seg, gather_segments(G)> for random pools: the a2a backward's
    per-segment gradients are exactly the adjoint of its forward sum (NumPy reference)."""
    import numpy as np

    from desmpi.kernels.sparse import add_segments, gather_segments

    rng = np.random.default_rng(5)
    n, F, d, m = 7, 3, 4, 20
    seg_s, seg_f = rng.integers(0, n, m), rng.integers(0, F, m)
    w = 1 + d + 1  # [L | v | Q]
    for cE, cS in ((1, -1), (-1, 1), (1, 1 + F * d), (-1, -1)):
        Wz = 1 + F * d + d + 1
        seg = rng.normal(size=(m, w))
        Z, EZ = np.zeros((n, Wz)), np.zeros((n, Wz))
        cQ = Wz - 1
        add_segments(seg_s, seg_f, seg, 0, 1, w - 1, d, Z, 0, cS, cQ, EZ, cE)
        G, GE = rng.normal(size=(n, Wz)), rng.normal(size=(n, Wz))
        out = np.full((m, w), np.nan)
        gather_segments(seg_s, seg_f, out, 0, 1, w - 1, d, G, 0, cS, cQ, GE, cE)
        # reference, row by row
        want = np.zeros((m, w))
        for k in range(m):
            s, f = seg_s[k], seg_f[k]
            want[k, 0], want[k, -1] = G[s, 0], G[s, cQ]
            if cE >= 0:
                want[k, 1:1 + d] += GE[s, cE + f * d:cE + (f + 1) * d]
            if cS >= 0:
                want[k, 1:1 + d] += G[s, cS:cS + d]
        assert np.allclose(out, want, rtol=1e-15, atol=0)
        lhs = np.sum(Z * G) + np.sum(EZ * GE)
        assert np.isclose(lhs, np.sum(seg * out), rtol=1e-12)
