"""Run under mpiexec -n P: train every (model, aggregate, optimizer) case for a few steps in
float64, writing each case's outputs under OUT/CASE, and check on every rank that each step's
collectives equal the strategy's plan (kind, counts, item size, payload and wire bytes)."""

import json
import logging
import sys
from pathlib import Path

from desmpi.comm import Comm, run_or_abort
from desmpi.config import from_dict
from desmpi.data.h5 import CtrDataset
from desmpi.data.slicing import n_batches
from desmpi.models import build_model
from desmpi.strategies.counts import ModelDims
from desmpi.strategies.plans import plan_batch
from desmpi.train import run
from desmpi.variants import ALL, parse

out_root, onehot_h5, multi_h5, eval_h5, eval_multi_h5 = sys.argv[1:6]
STEPS, B = 20, 64
MODELS = ["lr", "fm", "wdl", "deepfm", "dcn", "dlrm"]


def tag(v) -> str:
    """A case-name form of the variant: des/allreduce+replicate -> des-allreduce-replicate."""
    return v.name.replace("/", "-").replace("+", "-")


# (name, model, variant, optimizer, train, eval, deep_input)
cases = []
for m in MODELS:
    for v in ALL:
        opts = ("sgd", "adagrad", "ftrl", "adam") if v.strategy == "des" and \
            not v.replicate_input else ("adagrad",)
        for opt in opts:
            cases.append((f"{m}-{tag(v)}-{opt}", m, v, opt, onehot_h5, eval_h5, "auto"))
        cases.append((f"{m}-{tag(v)}-multi", m, v, "adam", multi_h5, eval_multi_h5, "auto"))
        if m in ("wdl", "deepfm"):  # the substitution auto does not take for this variant
            other = "pooling" if v.deep_input("auto") == "auto" else "fused"
            cases.append((f"{m}-{tag(v)}-{other}", m, v, "adagrad", onehot_h5, eval_h5, other))
# dynamic feature lifecycle: admission after 2 steps of presence, TTL eviction every 3 steps
for n in ("des/allreduce", "des/reduce_scatter", "ps", "a2a", "des-a2a"):
    v = parse(n)
    cases.append((f"deepfm-{tag(v)}-lifecycle", "deepfm", v, "adagrad", onehot_h5, eval_h5,
                   "auto"))
# dist.compress: 16-bit (or int8) partials or rows, their gradients and dense gradients
# (adagrad: the baseline case of the same model and variant is f"{m}-{tag(v)}-adagrad")
for m, n, codec in [("lr", "des/allreduce", "bf16"), ("deepfm", "des/allreduce", "bf16"),
                    ("deepfm", "des/reduce_scatter", "bf16"), ("dlrm", "des/reduce_scatter",
                                                               "bf16"),
                    ("wdl", "des/allreduce", "fp16"), ("deepfm", "ps", "bf16"),
                    ("deepfm", "des/allreduce", "int8"), ("fm", "a2a", "fp16"),
                    ("wdl", "des-a2a", "int8")]:
    v = parse(n)
    cases.append((f"{m}-{tag(v)}-adagrad-{codec}", m, v, "adagrad", onehot_h5, eval_h5, "auto"))
# the sparse codecs (dense gradients as 10% of each chunk, error feedback): W&D's dense
# gradients under threshold, DeepFM's under topk; W&D's under topk with int8 partials and
# partial gradients (topkq8)
for m, n, codec in [("wdl", "des/allreduce", "threshold"), ("deepfm", "des/reduce_scatter",
                                                           "topk"),
                    ("wdl", "des/reduce_scatter", "topkq8")]:
    v = parse(n)
    cases.append((f"{m}-{tag(v)}-adagrad-{codec}", m, v, "adagrad", onehot_h5, eval_h5, "auto"))
# one direction of the partials compressed (dist.compress_partial_grads): DES's partials
# forward alone (zfwd), ps's row gradients backward alone as int8 (gzq8)
for m, n, codec in [("deepfm", "des/reduce_scatter", "zfwd"), ("wdl", "ps", "gzq8")]:
    v = parse(n)
    cases.append((f"{m}-{tag(v)}-adagrad-{codec}", m, v, "adagrad", onehot_h5, eval_h5, "auto"))
# dist.keys = narrow (lossless: the same bits as the base case f"{name without -narrow}")
for m, n in [("deepfm", "des/allreduce"), ("dlrm", "des/reduce_scatter")]:
    v = parse(n)
    cases.append((f"{m}-{tag(v)}-adagrad-narrow", m, v, "adagrad", onehot_h5, eval_h5, "auto"))
    cases.append((f"{m}-{tag(v)}-multi-narrow", m, v, "adam", multi_h5, eval_multi_h5, "auto"))


def keys_of(name: str) -> str:
    return "narrow" if name.endswith("-narrow") else "int64"


# case suffix: (dist.compress, dist.compress_partials, dist.compress_partial_grads)
CODECS = {"bf16": ("bf16", "auto", "auto"), "fp16": ("fp16", "auto", "auto"),
          "int8": ("int8", "auto", "auto"), "threshold": ("threshold", "auto", "auto"),
          "topk": ("topk", "auto", "auto"), "topkq8": ("topk", "int8", "auto"),
          "zfwd": ("none", "bf16", "none"), "gzq8": ("none", "none", "int8")}


def compress_of(name: str) -> tuple[str, str, str]:
    return CODECS.get(name.rsplit("-", 1)[1], ("none", "auto", "auto"))


class Warnings(logging.Handler):
    """The trainer's warnings, per case."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record) -> None:
        self.seen.append(record.getMessage())


warned = Warnings()
logging.getLogger("desmpi.train").addHandler(warned)
comm = Comm.world(keep_log=True)


def main() -> None:
    problems = []
    fused_warnings = {}
    for name, m, v, opt, tr, ev, deep in cases:
        warned.seen.clear()
        cfg = from_dict({
            "model": {"name": m, "embed_dim": 4, "hidden": [16, 8], "bottom": [8],
                      "cross_layers": 2, "deep_input": deep, "init_std": 0.1},
            "data": {"train": tr, "eval": ev},
            "train": {"batch_size": B, "steps": STEPS, "optimizer": opt, "lr": 0.05,
                      "dtype": "float64", "seed": 3, "log_every": 10, "ftrl_l1": 0.001},
            "features": ({"min_count": 2, "ttl_steps": 4, "evict_every": 3}
                         if name.endswith("lifecycle") else {}),
            "dist": {"strategy": v.strategy, "aggregate": v.aggregate or "allreduce",
                     "input": v.input, "check_every": 5, "compress": compress_of(name)[0],
                     "compress_partials": compress_of(name)[1],
                     "compress_partial_grads": compress_of(name)[2], "keys": keys_of(name)},
        }).check()
        comm.acct.log.clear()
        comm.acct.totals.clear()  # each case's summary counts its own traffic
        run(cfg, comm, Path(out_root) / name)
        fused_warnings[name] = any("deep_input = 'fused'" in w for w in warned.seen)
        # planned == counted, step by step; the plan from the batch and a model description
        # alone (no Trainer, no tables, no communication)
        ds = CtrDataset(tr)
        dims = ModelDims.of(build_model(cfg.model, ds.n_fields, ds.n_dense, "float64", 3,
                                        v.deep_input(deep)))
        logged = [c for scope, c, _, _ in comm.acct.log if scope == "train"]
        pos = 0
        for step in range(STEPS):
            t = step % n_batches(ds.n, B)
            plan = [x.call(comm.rank, comm.size)
                    for x in plan_batch(v, ds.read(t * B, (t + 1) * B), comm.size, dims,
                                       comm.layout, cfg.dist.wire)]
            got = logged[pos:pos + len(plan)]
            pos += len(plan)
            if got != plan or [c.wire_bytes for c in got] != [c.wire_bytes for c in plan] or \
                    [c.payload_bytes for c in got] != [c.payload_bytes for c in plan]:
                problems.append(f"{name} step {step} rank {comm.rank}: planned {plan} != {got}")
                break
        if pos != len(logged):
            problems.append(f"{name} rank {comm.rank}: {len(logged) - pos} unplanned calls")
    allp = comm.allgather_object(problems)
    if comm.rank == 0:
        Path(out_root, "plan_check.json").write_text(json.dumps(sum(allp, [])))
        Path(out_root, "cases.json").write_text(json.dumps([c[0] for c in cases]))
        Path(out_root, "fused_warnings.json").write_text(json.dumps(fused_warnings))


sys.exit(run_or_abort(main, comm))
