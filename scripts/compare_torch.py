#!/usr/bin/env python
"""desmpi against PyTorch DistributedDataParallel and TorchRec DistributedModelParallel on the
same work (needs ``torch``, and ``torchrec`` with ``fbgemm-gpu-cpu`` for the DMP column, none
of them desmpi dependencies: run it where they are installed, with desmpi importable).

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
  warm-up);
* TorchRec (where installed): the same model with its tables in ``EmbeddingBagCollection``s
  (one table a field, sum pooling; DeepFM's width-1 linear tables on TorchRec's plain
  EmbeddingBag kernel, as FBGEMM's kernels need widths divisible by 4) and the same dense part,
  under ``DistributedModelParallel``: its default planner shards the tables (it chose
  table-wise for these), the tables' Adagrad fused into the backward pass, the dense part
  under DDP, gloo; timed as the DDP runs.

The ratios desmpi / PyTorch are the figures; every side's runs are listed.
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


def _setup(rank: int, P: int, port: int, args: dict):
    """A worker's torch (one thread), its gloo process group, and the rows."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=P)
    torch.manual_seed(0)
    return torch, dist, CtrDataset(args["h5"], in_memory=True)


def _time_steps(torch, dist, ds, rank: int, P: int, args: dict, out: str, prepare, step,
                extra=dict) -> None:
    """Every step: this rank's share of the global batch read and ``prepare``d (untimed), a
    barrier, then ``step(*prepared)`` timed; rank 0 writes the median after the warm-up (and
    ``extra()``) to ``out``."""
    B = args["batch"]
    sizes = split_counts(B, P)
    times = []
    for t in range(args["steps"] + args["warmup"]):
        lo = t * B + int(sizes[:rank].sum())
        b = ds.read(lo, lo + int(sizes[rank]))
        ids = torch.from_numpy((b.keys & ((1 << 47) - 1)).reshape(b.n, -1))
        inputs = prepare(ids, torch.from_numpy(b.dense), torch.from_numpy(b.labels))
        dist.barrier()
        t0 = time.perf_counter()
        step(*inputs)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        med = statistics.median(times[args["warmup"]:])
        Path(out).write_text(json.dumps({"samples_per_s": B / med, "step_time_s": med,
                                         "torch": torch.__version__, **extra()}))
    dist.destroy_process_group()


def _torch_worker(rank: int, P: int, port: int, args: dict, out: str) -> None:
    torch, dist, ds = _setup(rank, P, port, args)
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(torch_model(torch, args["model"], args["cards"], ds.n_dense, fused=True))
    tables = ("module.lin.", "module.emb.")  # the sparse=True embeddings
    sparse = [p for n, p in model.named_parameters() if n.startswith(tables)]
    dense_p = [p for n, p in model.named_parameters() if not n.startswith(tables)]
    opts = [torch.optim.Adagrad(sparse, lr=0.01), torch.optim.Adagrad(dense_p, lr=0.01)]
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(x, ids, y):
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss_fn(model(x, ids), y).backward()
        for o in opts:
            o.step()

    _time_steps(torch, dist, ds, rank, P, args, out, lambda ids, x, y: (x, ids, y), step)


def _torchrec_model(torch, name: str, cards: list[int], n_dense: int, device: str = "meta"):
    """The same model with its tables in TorchRec ``EmbeddingBagCollection``s (one table a
    field, sum pooling; the linear weights a second collection of width 1) and its dense part
    :func:`torch_model`'s ``head``: forward(x (n, Dn), kjt (F keys, one id a bag))."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

    nn = torch.nn
    head = torch_model(torch, name, cards, n_dense, tables=False)
    F = len(cards)

    def ebc(dim, tag):
        return EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=f"{tag}{f}", embedding_dim=dim, num_embeddings=c,
                               feature_names=[f"f{f}"]) for f, c in enumerate(cards)],
            device=torch.device(device))  # meta: DMP materialises each shard where it lives

    class TR(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head
            self.emb = ebc(head.dim, "e") if head.has_emb else None
            self.lin = ebc(1, "l") if head.has_lin else None

        def forward(self, x, kjt):
            n = x.shape[0]
            E = self.emb(kjt).values().reshape(n, F, head.dim) if self.emb is not None else None
            L = self.lin(kjt).values().sum(1) if self.lin is not None else None
            return self.head.head(x, E, L)

    return TR()


def _torchrec_worker(rank: int, P: int, port: int, args: dict, out: str) -> None:
    """TorchRec DistributedModelParallel as its users run it: the default planner shards the
    tables over the P processes (its own cost estimates), the tables' Adagrad fused into the
    backward pass (FBGEMM's kernels), the dense part under DDP, gloo."""
    torch, dist, ds = _setup(rank, P, port, args)
    from torchrec import KeyedJaggedTensor
    from torchrec.distributed import DistributedModelParallel
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    m = _torchrec_model(torch, args["model"], args["cards"], ds.n_dense)
    for t in (m.emb, m.lin):
        if t is not None:
            apply_optimizer_in_backward(torch.optim.Adagrad, t.parameters(), {"lr": 0.01})
    plan = None
    if m.lin is not None:  # FBGEMM's kernels need widths divisible by 4: the width-1 linear
        # tables take TorchRec's plain (torch EmbeddingBag) kernel, placed by the planner
        from torchrec.distributed.embedding_types import EmbeddingComputeKernel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
        from torchrec.distributed.planner.types import ParameterConstraints
        from torchrec.distributed.sharding_plan import get_default_sharders

        cons = {f"l{f}": ParameterConstraints(compute_kernels=[
            EmbeddingComputeKernel.DENSE.value]) for f in range(len(args["cards"]))}
        plan = EmbeddingShardingPlanner(
            topology=Topology(world_size=P, compute_device="cpu"), constraints=cons
        ).collective_plan(m, get_default_sharders(), dist.GroupMember.WORLD)
    model = DistributedModelParallel(m, device=torch.device("cpu"), plan=plan)
    dense_opt = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(
        model.named_parameters())), lambda ps: torch.optim.Adagrad(ps, lr=0.01))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    F = len(args["cards"])
    keys = [f"f{f}" for f in range(F)]

    def prepare(ids, x, y):  # key-major ids: field 0's, field 1's, …, one id a bag
        return x, KeyedJaggedTensor.from_lengths_sync(
            keys=keys, values=ids.t().reshape(-1),
            lengths=torch.ones(ids.numel(), dtype=torch.int32)), y

    def step(x, kjt, y):
        dense_opt.zero_grad()
        loss_fn(model(x, kjt), y).backward()  # the tables' Adagrad runs here
        dense_opt.step()

    _time_steps(torch, dist, ds, rank, P, args, out, prepare, step,
                lambda: {"plan": str(model.plan)})


def torch_run(model: str, P: int, batch: int, steps: int, warmup: int, h5: str,
              cards: list[int], worker=_torch_worker) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        args = {"model": model, "batch": batch, "steps": steps, "warmup": warmup, "h5": h5,
                "cards": cards}
        mp.spawn(worker, args=(P, _free_port(), args, out), nprocs=P, join=True)
        return json.loads(Path(out).read_text())


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


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
    try:
        import torchrec  # noqa: F401
        have_rec = True
    except ImportError:
        have_rec = False

    rows = []
    cards = [min(c, a.cap) for c in KAGGLE_CARDINALITIES]
    with tempfile.TemporaryDirectory() as tmp:
        h5 = os.path.join(tmp, "bench.h5")
        generate(SynthSpec(rows=a.batch * (a.steps + a.warmup), seed=1, cap=a.cap), h5)
        for model in a.models.split(","):
            for P in [int(x) for x in a.ranks.split(",")]:
                ours, theirs, rec, variant = [], [], [], None
                for _ in range(a.repeats):
                    r = desmpi_run(model, P, a.batch, a.steps, a.warmup, a.cap)
                    ours.append(r["samples_per_s"])
                    variant = r.get("variant")
                    theirs.append(torch_run(model, P, a.batch, a.steps, a.warmup, h5,
                                            cards)["samples_per_s"])
                    if have_rec:
                        rec.append(torch_run(model, P, a.batch, a.steps, a.warmup, h5, cards,
                                             _torchrec_worker)["samples_per_s"])
                row = {"model": model, "P": P, "desmpi": statistics.median(ours),
                       "torch_ddp": statistics.median(theirs), "desmpi_runs": ours,
                       "torch_runs": theirs, "desmpi_variant": variant,
                       "torchrec_dmp": statistics.median(rec) if rec else None,
                       "torchrec_runs": rec}
                row["ratio"] = row["desmpi"] / row["torch_ddp"]
                row["ratio_dmp"] = row["desmpi"] / row["torchrec_dmp"] if rec else None
                rows.append(row)
                print(f"{model} P={P}: desmpi {row['desmpi']:.0f}/s ({variant}), torch DDP "
                      f"{row['torch_ddp']:.0f}/s: {row['ratio']:.2f}x"
                      + (f", TorchRec DMP {row['torchrec_dmp']:.0f}/s: "
                         f"{row['ratio_dmp']:.2f}x" if rec else ""), file=sys.stderr)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    versions = f"torch {torch.__version__}" + (
        f", torchrec {_version('torchrec')}, fbgemm-gpu-cpu {_version('fbgemm-gpu-cpu')}"
        if have_rec else ", torchrec not installed")
    L = ["# desmpi against PyTorch DDP and TorchRec DMP on the same work", "",
         f"Generated by `python scripts/compare_torch.py --models {a.models} --ranks {a.ranks} "
         f"--batch {a.batch} --steps {a.steps} --warmup {a.warmup} --repeats {a.repeats} "
         f"--out {a.out}` ({versions}; gloo, one thread per process; desmpi "
         "`bench train` with its defaults: dist.strategy = auto). Batch "
         f"{a.batch}, Criteo-schema synthetic rows (cardinality cap {a.cap}), {a.steps} timed "
         f"steps after {a.warmup}; samples/s are medians over steps, then over {a.repeats} "
         "alternating runs. The PyTorch and TorchRec models: `scripts/compare_torch.py` "
         "(module docstring).",
         "", "| model | P | desmpi samples/s (variant auto ran) | PyTorch DDP samples/s | "
         "desmpi / DDP | TorchRec DMP samples/s | desmpi / DMP | desmpi runs | DDP runs | "
         "DMP runs |", "|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        dmp = r.get("torchrec_dmp")
        L.append(f"| {r['model']} | {r['P']} | {r['desmpi']:.0f} ({r['desmpi_variant']}) | "
                 f"{r['torch_ddp']:.0f} | {r['ratio']:.2f} | "
                 + (f"{dmp:.0f} | {r['ratio_dmp']:.2f}" if dmp else "n/a | n/a") + " | "
                 + ", ".join(f"{x:.0f}" for x in r["desmpi_runs"]) + " | "
                 + ", ".join(f"{x:.0f}" for x in r["torch_runs"]) + " | "
                 + ", ".join(f"{x:.0f}" for x in r.get("torchrec_runs", [])) + " |")
    out.write_text("\n".join(L) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
