#!/usr/bin/env python
"""desmpi against the same models written plainly in PyTorch, same data, same process.

One rank, one thread, generated Criteo-schema data (Kaggle cardinalities capped at --cap),
global batch --batch, Adagrad; PyTorch models use nn.EmbeddingBag(sparse=True) per field,
nn.Linear and torch.optim.Adagrad, as a user would write them. PyTorch is a benchmark-only
dependency: ``pip install torch==2.13.0`` (the CPU build on this machine).

    python scripts/bench_vs_pytorch.py [--models lr,fm,wdl,deepfm,dlrm] [--repeats 3] [--json]

With --repeats R each model runs R times, desmpi and PyTorch alternating; the report gives the
median of the R run medians of each and their ratio (single runs on a shared or virtual machine
vary by tens of percent).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"  # before numpy/torch load their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from desmpi.bench.train import bench_train  # noqa: E402
from desmpi.bench.workloads import WORKLOADS  # noqa: E402
from desmpi.comm import Comm  # noqa: E402
from desmpi.data.h5 import CtrDataset  # noqa: E402
from desmpi.data.synth import SynthSpec, generate  # noqa: E402


def torch_model(torch, name: str, cards: list[int], n_dense: int, fused: bool = False,
                tables: bool = True):
    """The PyTorch module of ``name``: forward(x (n, Dn) float32, idx (n, F) int64 ids within
    each field). ``fused``: one ``nn.Embedding(sparse=True)`` table for all fields (ids offset
    by field, as TorchRec fuses tables) instead of one ``nn.EmbeddingBag`` a field — fewer,
    larger kernels and gradients (faster under DistributedDataParallel). ``tables=False``: no
    embedding tables, the dense part only, called as ``head(x, E, L)`` with the pooled
    embeddings E (n, F, d) and the linear weights' sum L (n,) from elsewhere (TorchRec)."""
    nn = torch.nn
    w = WORKLOADS[name]
    d = w.get("embed_dim", 16)
    hidden = list(w.get("hidden", []))
    F = len(cards)

    def mlp(dims, last_act):
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2 or last_act:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            lin = name in ("lr", "fm", "wdl", "deepfm")
            emb = name != "lr"
            self.has_lin, self.has_emb, self.dim = lin, emb, d
            self.lin = self.emb = None
            if fused and tables:
                n_ids = int(sum(cards))
                self.register_buffer("off", torch.tensor([0, *cards[:-1]]).cumsum(0))
                self.lin = nn.Embedding(n_ids, 1, sparse=True) if lin else None
                self.emb = nn.Embedding(n_ids, d, sparse=True) if emb else None
            elif tables:
                self.lin = nn.ModuleList(nn.EmbeddingBag(c, 1, mode="sum", sparse=True)
                                         for c in cards) if lin else None
                self.emb = nn.ModuleList(nn.EmbeddingBag(c, d, mode="sum", sparse=True)
                                         for c in cards) if emb else None
            self.dense_lin = nn.Linear(n_dense, 1) if lin else None
            if name in ("wdl", "deepfm"):
                self.deep = mlp([n_dense + F * d, *hidden, 1], False)
            if name == "dlrm":
                self.bottom = mlp([n_dense, *w["bottom"], d], True)
                self.top = mlp([d + (F + 1) * F // 2, *hidden, 1], False)
                self.li, self.lj = torch.tril_indices(F + 1, F + 1, -1)

        def forward(self, x, idx):  # idx: (n, F) int64, one-hot bags
            if fused:
                idx = idx + self.off
            L = E = None
            if self.lin is not None:
                L = self.lin(idx).sum((1, 2)) if fused else \
                    sum(self.lin[f](idx[:, f:f + 1])[:, 0] for f in range(F))
            if self.emb is not None:
                E = self.emb(idx) if fused else \
                    torch.stack([self.emb[f](idx[:, f:f + 1]) for f in range(F)], 1)
            return self.head(x, E, L)

        def head(self, x, E, L):  # E: (n, F, d) pooled embeddings, L: (n,) linear weights' sum
            n = x.shape[0]
            out = torch.zeros(n)
            if self.has_lin:
                out = out + self.dense_lin(x)[:, 0]
                out = out + L
            if name in ("fm", "deepfm"):
                S = E.sum(1)
                out = out + 0.5 * ((S * S).sum(1) - (E * E).sum((1, 2)))
            if name in ("wdl", "deepfm"):
                out = out + self.deep(torch.cat([x, E.reshape(n, -1)], 1))[:, 0]
            if name == "dlrm":
                z = self.bottom(x)
                T = torch.cat([z[:, None], E], 1)
                dots = torch.bmm(T, T.transpose(1, 2))[:, self.li, self.lj]
                out = self.top(torch.cat([z, dots], 1))[:, 0]
            return out

    return M()


def bench_torch(torch, name: str, ds: CtrDataset, cards, batch: int, steps: int,
                warmup: int) -> float:
    torch.manual_seed(0)
    m = torch_model(torch, name, cards, ds.n_dense)
    opt = torch.optim.Adagrad(m.parameters(), lr=0.01)
    lossf = torch.nn.BCEWithLogitsLoss()
    times = []
    for t in range(steps + warmup):
        t0 = time.perf_counter()
        b = ds.read(t * batch, (t + 1) * batch)
        idx = torch.from_numpy((b.keys & ((1 << 47) - 1)).reshape(b.n, -1))
        x = torch.from_numpy(b.dense)
        y = torch.from_numpy(b.labels)
        opt.zero_grad()
        loss = lossf(m(x, idx), y)
        loss.backward()
        opt.step()
        if t >= warmup:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lr,fm,wdl,deepfm,dlrm")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cap", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: pip install torch==2.13.0", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    from desmpi.data.synth import KAGGLE_CARDINALITIES

    cards = [min(c, a.cap) for c in KAGGLE_CARDINALITIES]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "d.h5")
        generate(SynthSpec(rows=a.batch * (a.steps + a.warmup), seed=1, cap=a.cap), path)
        ds = CtrDataset(path, in_memory=True)
        for name in a.models.split(","):
            ours, theirs, reps = [], [], []
            for _ in range(a.repeats):
                rep = bench_train(Comm.local(), name, a.batch, a.steps, a.warmup, a.cap, None,
                                  "des", "allreduce", "adagrad")
                reps.append(rep)
                ours.append(rep["samples_per_s"])
                theirs.append(bench_torch(torch, name, ds, cards, a.batch, a.steps, a.warmup))
            mine, ts = statistics.median(ours), statistics.median(theirs)
            lim = [r["gemm_limit_samples_per_s"] for r in reps]
            row = {"model": name, "desmpi_samples_per_s": mine,
                   "torch_samples_per_s": ts, "ratio": mine / ts,
                   "gemm_limit_samples_per_s": None if None in lim else statistics.median(lim),
                   "desmpi_outside_gemm_share": statistics.median(
                       r["outside_gemm_share"] for r in reps),
                   "desmpi_outside_gemm_limit_share": statistics.median(
                       r["outside_gemm_limit_share"] for r in reps),
                   "desmpi_outside_gemm_and_interaction_share": statistics.median(
                       r["outside_gemm_and_interaction_share"] for r in reps),
                   "desmpi_runs": ours, "torch_runs": theirs}
            out.append(row)
            print(f"{name}: desmpi {mine:.0f} samples/s, PyTorch {ts:.0f} samples/s, ratio "
                  f"{row['ratio']:.2f} (medians of {a.repeats})", file=sys.stderr)
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
