#!/usr/bin/env python
"""desmpi against PyTorch DistributedDataParallel on the same work (needs ``torch``, which is
not a desmpi dependency: run it where torch is installed, with desmpi importable).

    python scripts/compare_torch.py --models dlrm,deepfm --ranks 2 --out docs/torch.md

For each model and P, in alternating rounds (``--repeats``):

* desmpi: ``desmpi bench train --model M`` under ``mpiexec -n P`` with its defaults
  (``dist.strategy = auto``), median samples/s of the timed steps;
* PyTorch: the same model as ``scripts/bench_vs_pytorch.py`` writes it, its fused form (one
  ``nn.Embedding(sparse=True)`` table for all fields, Kaggle cardinalities capped at ``--cap``,
  as TorchRec fuses tables; tested to compute what the per-field form does),
  ``nn.Linear`` layers, Adagrad, BCE-with-logits, wrapped in ``DistributedDataParallel`` over
  gloo (embedding gradients allreduced as sparse tensors), P processes with one thread each, on
  the rows ``bench train``'s generator makes (the same ``SynthSpec``: seed, cap), each rank its
  share of every global batch read before the step; median samples/s of the timed steps
  (global batch / rank 0's step time, each step started at a barrier, after the same
  warm-up).

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

from bench_vs_pytorch import torch_model

from desmpi.data.h5 import CtrDataset
from desmpi.data.slicing import split_counts
from desmpi.data.synth import KAGGLE_CARDINALITIES, SynthSpec, generate
from desmpi.launch import run_json


def desmpi_run(model: str, P: int, batch: int, steps: int, warmup: int, cap: int) -> dict:
    return run_json(P, ["bench", "train", "--model", model, "--batch", str(batch), "--steps",
                        str(steps), "--warmup", str(warmup), "--cap", str(cap)], timeout=1800)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torch_worker(rank: int, P: int, port: int, args: dict, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=P)
    ds = CtrDataset(args["h5"], in_memory=True)
    B = args["batch"]
    torch.manual_seed(0)
    model = DDP(torch_model(torch, args["model"], args["cards"], ds.n_dense, fused=True))
    tables = ("module.lin.", "module.emb.")  # the sparse=True embeddings
    sparse = [p for n, p in model.named_parameters() if n.startswith(tables)]
    dense_p = [p for n, p in model.named_parameters() if not n.startswith(tables)]
    opts = [torch.optim.Adagrad(sparse, lr=0.01), torch.optim.Adagrad(dense_p, lr=0.01)]
    loss_fn = torch.nn.BCEWithLogitsLoss()
    times = []
    for t in range(args["steps"] + args["warmup"]):
        sizes = split_counts(B, P)
        lo = t * B + int(sizes[:rank].sum())
        b = ds.read(lo, lo + int(sizes[rank]))
        b_ids = torch.from_numpy((b.keys & ((1 << 47) - 1)).reshape(b.n, -1))
        b_x = torch.from_numpy(b.dense)
        b_y = torch.from_numpy(b.labels)
        dist.barrier()
        t0 = time.perf_counter()
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss = loss_fn(model(b_x, b_ids), b_y)
        loss.backward()
        for o in opts:
            o.step()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        step = statistics.median(times[args["warmup"]:])
        Path(out).write_text(json.dumps({"samples_per_s": B / step, "step_time_s": step,
                                         "torch": torch.__version__}))
    dist.destroy_process_group()


def torch_run(model: str, P: int, batch: int, steps: int, warmup: int, h5: str,
              cards: list[int]) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        args = {"model": model, "batch": batch, "steps": steps, "warmup": warmup, "h5": h5,
                "cards": cards}
        mp.spawn(_torch_worker, args=(P, _free_port(), args, out), nprocs=P, join=True)
        return json.loads(Path(out).read_text())


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
    cards = [min(c, a.cap) for c in KAGGLE_CARDINALITIES]
    with tempfile.TemporaryDirectory() as tmp:
        h5 = os.path.join(tmp, "bench.h5")
        generate(SynthSpec(rows=a.batch * (a.steps + a.warmup), seed=1, cap=a.cap), h5)
        for model in a.models.split(","):
            for P in [int(x) for x in a.ranks.split(",")]:
                ours, theirs, variant = [], [], None
                for _ in range(a.repeats):
                    r = desmpi_run(model, P, a.batch, a.steps, a.warmup, a.cap)
                    ours.append(r["samples_per_s"])
                    variant = r.get("variant")
                    theirs.append(torch_run(model, P, a.batch, a.steps, a.warmup, h5,
                                            cards)["samples_per_s"])
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
