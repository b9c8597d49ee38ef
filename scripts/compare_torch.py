#!/usr/bin/env python
"""desmpi against PyTorch DistributedDataParallel on the same work (needs ``torch``, which is
not a desmpi dependency: run it where torch is installed, with desmpi importable).

    python scripts/compare_torch.py --models dlrm,deepfm --ranks 2 --out docs/torch.md

For each model and P, in alternating rounds (``--repeats``):

* desmpi: ``desmpi bench train --model M`` under ``mpiexec -n P`` with its defaults
  (``dist.strategy = auto``), median samples/s of the timed steps;
* PyTorch: the same model (the workloads of ``desmpi.bench.train.WORKLOADS``: DeepFM d = 16,
  DNN 400-400-400 on [dense, embeddings], FM and linear terms; DLRM d = 64, bottom 512-256-64,
  dot interaction, top 512-256-1) in ``torch.nn`` with one shared ``nn.Embedding(sparse=True)``
  table of the data's distinct keys (remapped once, untimed: a hash table's work given to
  PyTorch for free), Adagrad (sparse rows for the embeddings), BCE-with-logits, wrapped in
  ``DistributedDataParallel`` over gloo (embedding gradients allreduced as sparse tensors), P
  processes with one thread each, on rows of the generator ``bench train`` uses (the same
  ``SynthSpec``: seed, cardinality cap), each rank its share of every global batch; median
  samples/s of the timed steps (global batch / rank 0's step time, each step started at a
  barrier, after the same warm-up).

The ratio desmpi / PyTorch is the figure; both sides' runs are listed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from desmpi.bench.train import WORKLOADS
from desmpi.data.h5 import CtrDataset
from desmpi.data.slicing import split_counts
from desmpi.data.synth import SynthSpec, generate
from desmpi.launch import run_json


def desmpi_run(model: str, P: int, batch: int, steps: int, warmup: int, cap: int) -> dict:
    return run_json(P, ["bench", "train", "--model", model, "--batch", str(batch), "--steps",
                        str(steps), "--warmup", str(warmup), "--cap", str(cap)], timeout=1800)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlp(torch, dims: list[int], final_relu: bool):
    nn = torch.nn
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2 or final_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def build(torch, model: str, n_ids: int, F: int, Dn: int):
    """The torch module of ``model`` (logits of a batch: ids (n, F) int64, dense (n, Dn))."""
    nn = torch.nn
    w = WORKLOADS[model]
    d = w["embed_dim"]

    class DLRM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(n_ids, d, sparse=True)
            self.bottom = _mlp(torch, [Dn, *w["bottom"], d], final_relu=True)
            self.top = _mlp(torch, [d + (F + 1) * F // 2, *w["hidden"], 1], final_relu=False)
            li, lj = torch.tril_indices(F + 1, F + 1, offset=-1)
            self.register_buffer("li", li)
            self.register_buffer("lj", lj)

        def forward(self, ids, x):
            z = self.bottom(x)
            t = torch.cat([z[:, None, :], self.emb(ids)], dim=1)  # (n, F + 1, d)
            dots = torch.bmm(t, t.transpose(1, 2))[:, self.li, self.lj]
            return self.top(torch.cat([z, dots], dim=1)).squeeze(1)

    class DeepFM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Embedding(n_ids, 1, sparse=True)
            self.emb = nn.Embedding(n_ids, d, sparse=True)
            self.dense_lin = nn.Linear(Dn, 1)
            self.deep = _mlp(torch, [Dn + F * d, *w["hidden"], 1], final_relu=False)

        def forward(self, ids, x):
            e = self.emb(ids)  # (n, F, d)
            s = e.sum(dim=1)
            fm = 0.5 * (s * s - (e * e).sum(dim=1)).sum(dim=1)
            deep = self.deep(torch.cat([x, e.flatten(1)], dim=1)).squeeze(1)
            return self.lin(ids).sum(dim=(1, 2)) + self.dense_lin(x).squeeze(1) + fm + deep

    return {"dlrm": DLRM, "deepfm": DeepFM}[model]()


def _torch_worker(rank: int, P: int, port: int, args: dict, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=P)
    data = np.load(args["npz"])
    ids, dense, labels = data["ids"], data["dense"], data["labels"]
    B, F = args["batch"], ids.shape[1]
    torch.manual_seed(0)
    model = DDP(build(torch, args["model"], int(data["n_ids"]), F, dense.shape[1]))
    tables = ("module.emb.weight", "module.lin.weight")  # the sparse=True embeddings
    sparse = [p for n, p in model.named_parameters() if n in tables]
    dense_p = [p for n, p in model.named_parameters() if n not in tables]
    opts = [torch.optim.Adagrad(sparse, lr=0.01), torch.optim.Adagrad(dense_p, lr=0.01)]
    loss_fn = torch.nn.BCEWithLogitsLoss()
    times = []
    for t in range(args["steps"] + args["warmup"]):
        sizes = split_counts(B, P)
        lo = t * B + int(sizes[:rank].sum())
        hi = lo + int(sizes[rank])
        b_ids = torch.from_numpy(ids[lo:hi])
        b_x = torch.from_numpy(dense[lo:hi])
        b_y = torch.from_numpy(labels[lo:hi])
        dist.barrier()
        t0 = time.perf_counter()
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss = loss_fn(model(b_ids, b_x), b_y)
        loss.backward()
        for o in opts:
            o.step()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        step = statistics.median(times[args["warmup"]:])
        Path(out).write_text(json.dumps({"samples_per_s": B / step, "step_time_s": step,
                                         "torch": torch.__version__}))
    dist.destroy_process_group()


def torch_run(model: str, P: int, batch: int, steps: int, warmup: int, npz: str) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        args = {"model": model, "batch": batch, "steps": steps, "warmup": warmup, "npz": npz}
        mp.spawn(_torch_worker, args=(P, _free_port(), args, out), nprocs=P, join=True)
        return json.loads(Path(out).read_text())


def prepare(tmp: str, batch: int, steps: int, warmup: int, cap: int) -> str:
    """The rows ``bench train`` trains on (its SynthSpec), as ids remapped to 0..n-1."""
    path = os.path.join(tmp, "bench.h5")
    generate(SynthSpec(rows=batch * (steps + warmup), seed=1, cap=cap), path)
    ds = CtrDataset(path, in_memory=True)
    b = ds.read(0, ds.n)
    if b.offsets is not None:
        raise ValueError("compare_torch: one key per field expected")
    uniq, inv = np.unique(b.keys, return_inverse=True)
    npz = os.path.join(tmp, "bench.npz")
    np.savez(npz, ids=inv.reshape(b.n, b.n_fields).astype(np.int64),
             dense=np.ascontiguousarray(b.dense, dtype=np.float32),
             labels=np.asarray(b.labels, dtype=np.float32), n_ids=uniq.size)
    return npz


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="dlrm,deepfm")
    ap.add_argument("--ranks", default="2")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cap", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="docs/torch.md")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        npz = prepare(tmp, a.batch, a.steps, a.warmup, a.cap)
        for model in a.models.split(","):
            for P in [int(x) for x in a.ranks.split(",")]:
                ours, theirs, variant = [], [], None
                for _ in range(a.repeats):
                    r = desmpi_run(model, P, a.batch, a.steps, a.warmup, a.cap)
                    ours.append(r["samples_per_s"])
                    variant = r.get("variant")
                    theirs.append(torch_run(model, P, a.batch, a.steps, a.warmup,
                                            npz)["samples_per_s"])
                row = {"model": model, "P": P, "desmpi": statistics.median(ours),
                       "torch_ddp": statistics.median(theirs), "desmpi_runs": ours,
                       "torch_runs": theirs, "desmpi_variant": variant}
                row["ratio"] = row["desmpi"] / row["torch_ddp"]
                rows.append(row)
                print(f"{model} P={P}: desmpi {row['desmpi']:.0f}/s ({variant}), torch DDP "
                      f"{row['torch_ddp']:.0f}/s: {row['ratio']:.2f}x", file=sys.stderr)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    L = ["# desmpi against PyTorch DDP on the same work", "",
         f"Generated by `python scripts/compare_torch.py --models {a.models} --ranks {a.ranks} "
         f"--batch {a.batch} --steps {a.steps} --warmup {a.warmup} --repeats {a.repeats} "
         f"--out {a.out}` (torch {torch.__version__}, gloo, one thread per process; desmpi "
         "`bench train` with its defaults: dist.strategy = auto). Batch "
         f"{a.batch}, Criteo-schema synthetic rows (cardinality cap {a.cap}), {a.steps} timed "
         f"steps after {a.warmup}; samples/s are medians over steps, then over {a.repeats} "
         "alternating runs. The PyTorch model: `scripts/compare_torch.py` (module docstring).",
         "", "| model | P | desmpi samples/s (variant auto ran) | PyTorch DDP samples/s | "
         "desmpi / DDP | desmpi runs | DDP runs |", "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        L.append(f"| {r['model']} | {r['P']} | {r['desmpi']:.0f} ({r['desmpi_variant']}) | "
                 f"{r['torch_ddp']:.0f} | {r['ratio']:.2f} | "
                 + ", ".join(f"{x:.0f}" for x in r["desmpi_runs"]) + " | "
                 + ", ".join(f"{x:.0f}" for x in r["torch_runs"]) + " |")
    out.write_text("\n".join(L) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
