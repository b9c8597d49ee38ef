"""Simulation mode: data profile + the strategies' planned collectives + a compute model +
a cluster -> predicted step time, throughput, wire bytes and comm share, for any P.

desmpi describes its traffic in sim's vocabulary (plans -> :class:`sim.accounting.Collective`)
and its compute as :class:`sim.compute.Work`; sim costs both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from desmpi.data.h5 import CtrDataset
from desmpi.models import Model
from desmpi.strategies import plans
from desmpi.strategies.codecwork import CODEC_TERMS
from desmpi.strategies.counts import ModelDims, StepCounts, count_step
from desmpi.strategies.plans import collectives
from desmpi.strategies.wire import FULL, Wire
from desmpi.variants import Variant
from sim.accounting import TEXTBOOK, Layout
from sim.cluster import Cluster, ComputeRates
from sim.collectives import Sizes, sized_time, sizes
from sim.compute import Work, compute_time, wait_time

log = logging.getLogger("desmpi.whatif.simulate")


@dataclass(frozen=True)
class ModelInfo:
    """What the compute model needs of a model: traffic dims and multiply-adds per row."""

    name: str
    dims: ModelDims
    dense_macs: float  # per sample of the dense part (fused first layer excluded)
    fused_macs: float  # per row of a fused first layer's partial (F·d·H), 0 if none

    @staticmethod
    def of(model: Model) -> ModelInfo:
        return ModelInfo(model.name, ModelDims.of(model), model.dense_macs, model.fused_macs)

    @staticmethod
    def per_variant(mcfg, n_fields: int, n_dense: int, dtype,
                    variants: list[Variant]) -> dict[Variant, ModelInfo]:
        """{variant: ModelInfo} of the model each variant's runs build (the substitution of
        the first dense layer depends on the variant: :meth:`Variant.deep_input`)."""
        from desmpi.models import build_model

        return {v: ModelInfo.of(build_model(mcfg, n_fields, n_dense, dtype, 0,
                                            v.deep_input(mcfg.deep_input))) for v in variants}


def codec_work(v: Variant, c: StepCounts, info: ModelInfo, wire: Wire = FULL) -> Work:
    """The mean rank's codec work of one step (dist.compress's packing, selecting and
    decoding, and its collectives' wrapping: :func:`desmpi.strategies.plans.codec_work`, the
    calls the strategies make); zero uncompressed."""
    w = plans.codec_work(v, c, info.dims, wire).mean(axis=0)
    return Work(0.0, 0.0, **dict(zip(CODEC_TERMS, map(float, w))))


def step_work(v: Variant, c: StepCounts, info: ModelInfo, wire: Wire = FULL) -> Work:
    """Mean per-rank work of one step (the cost model's compute side): GEMM flops, sparse
    key-columns, and the bytes streamed over the rank's partial matrix (Z_rows × W: zeroed,
    reduced or sent, read by the dense part, its gradient written and read by the key
    gradients — four passes), which DES pays over all B samples and ps / a2a over b.
    ``wire``: packing and decoding add :func:`codec_work`."""
    st, agg = v.strategy, v.aggregate
    P = c.P
    B = float(c.sizes.sum())
    b = B / P
    nnz = float(c.nnz.sum())
    R, W, seg = info.dims.R, info.dims.W, info.dims.seg
    own = nnz / P * R * 3  # pool, gradients, update of owned keys
    # key operations: the owner's table look-ups (a random row) and each distinct owned row's
    # update (an optimizer's update costs per row more than per column: the row and its
    # slots); distinct rows per owner are bounded by the local batches' distinct keys summed
    # over ranks
    upd = c.distinct.sum() / P  # also the distinct keys a ps rank pulls and pushes
    # where keys enter, DES hashes each to its owner (a mask); a2a and des-a2a group the local
    # batch's keys by owner and bag or sample for their Alltoallv, ps deduplicates them first
    route = nnz if st == "des" else 0.0
    bucket = nnz / P if st in ("a2a", "des-a2a") else 0.0
    srt = nnz / P if st == "ps" else 0.0
    if st == "des":
        rows, fused_rows = (B if agg == "allreduce" else b), B
        keys, key_ops = own, nnz / P + upd
    elif st == "ps":
        rows, fused_rows = b, b
        keys, key_ops = own + upd * R * 2, 2 * upd
    elif st == "a2a":
        rows, fused_rows = b, b
        keys, key_ops = own + c.bags.sum() / P * seg * 2, nnz / P + upd
    elif st == "des-a2a":
        rows, fused_rows = b, c.samples.sum() / P
        keys, key_ops = own + c.samples.sum() / P * W * 2, nnz / P + upd
    else:
        raise ValueError(st)
    z_rows = {"des": B, "ps": b, "a2a": b, "des-a2a": c.samples.sum() / P}[st]
    mem = 4.0 * z_rows * W * info.dims.itemsize
    return Work(6.0 * (rows * info.dense_macs + fused_rows * info.fused_macs), keys,
                mem_bytes=mem, key_ops=key_ops, route_keys=route, bucket_keys=bucket,
                sort_keys=srt) + codec_work(v, c, info, wire)


@dataclass
class Profiled:
    """One (variant, P, batch) from the data: collective sizes, work and wire bytes per step
    (averaged over the profiled batches)."""

    variant: Variant
    P: int
    batch: int
    colls: list[list[Sizes]]  # per profiled batch
    work: Work
    wire_bytes: float  # mean over ranks, per step
    payload_bytes: float
    wire_total: int = 0  # over all ranks and profiled batches (exact, for comparison)
    codec: Work = Work(0.0, 0.0)  # of work, dist.compress's own (:func:`codec_work`)


def profile(ds: CtrDataset, infos: dict[Variant, ModelInfo], P: int, B: int, n_batches: int,
            variants: list[Variant], first_batch: int = 0, layout: Layout = TEXTBOOK,
            wire: Wire = FULL) -> list[Profiled]:
    """Count ``n_batches`` global batches of size B at P ranks once; plan every variant
    (``infos``: its model, :meth:`ModelInfo.per_variant`); wire bytes follow the algorithms
    ``layout``'s MPI library selects."""
    need = (first_batch + n_batches) * B
    if ds.n < need:
        raise ValueError(f"{ds.path} has {ds.n} rows; profiling {n_batches} batches of {B} "
                         f"needs {need}")
    counts = [count_step(ds.read(t * B, (t + 1) * B), P, ds.onehot, ds.has("values"))
              for t in range(first_batch, first_batch + n_batches)]
    out = []
    for v in variants:
        info = infos[v]
        colls, sent, pay, total = [], 0.0, 0.0, 0
        work = Work(0.0, 0.0)
        for c in counts:
            cl = collectives(v, c, info.dims, layout, wire)
            colls.append([sizes(x, P) for x in cl])
            local = 0.0  # a rank's own block of an Alltoallv: MPI copies it in memory
            for x in cl:
                p, w = x.bytes_per_rank(P)
                sent += w.mean() / len(counts)
                total += int(w.sum())
                pay += p.mean() / len(counts)
                if x.kind in ("alltoall", "alltoallv"):
                    local += float(np.diagonal(np.asarray(x.counts)).mean()) * x.itemsize
            work = work + (step_work(v, c, info, wire) + Work(0.0, 0.0, mem_bytes=local)
                           ).scaled(1.0 / len(counts))
        work = replace(work, calls=float(len(cl)))  # collective calls of one step
        codec = Work(0.0, 0.0, **{t: getattr(work, t) for t in CODEC_TERMS})  # of the work
        out.append(Profiled(v, P, B, colls, work, sent, pay, total, codec))
    return out


def comm_time(p: Profiled, cluster: Cluster, algorithm: str = "auto") -> float:
    """Predicted seconds per step in collectives (mean over the profiled batches)."""
    cl = cluster.with_ranks(p.P)
    return float(np.mean([sum(sized_time(z, cl, p.P, algorithm) for z in cs)
                          for cs in p.colls]))


def predict(p: Profiled, cluster: Cluster, rates: ComputeRates | None = None,
            algorithm: str = "auto") -> dict:
    """Predicted step of a profiled configuration on a cluster sized for its P."""
    cl = cluster.with_ranks(p.P)
    comm_s = comm_time(p, cluster, algorithm)
    r = rates or cl.compute
    comp_s = compute_time(p.work, r, cl.compute_share, cl.busy_cores)
    wait_s = wait_time(comp_s, r, p.P)
    step = comm_s + comp_s + wait_s
    # of comp_s, dist.compress's packing, selecting and decoding
    codec_s = compute_time(p.codec, replace(r, overhead_s=0.0), cl.compute_share, cl.busy_cores)
    return {"variant": p.variant.name, "P": p.P, "batch": p.batch, "cluster": cluster.name,
            "step_time_s": step, "samples_per_s": p.batch / step, "comm_s": comm_s,
            "compute_s": comp_s, "wait_s": wait_s, "codec_s": codec_s,
            "comm_share": comm_s / step,
            "wire_bytes_per_step": p.wire_bytes,
            "wire_bytes_per_sample": p.wire_bytes * p.P / p.batch}


def crossovers(rows: list[dict], a: str, b: str) -> dict:
    """Per (cluster, batch): the smallest P where variant a is slower than b (None: never)."""
    out = {}
    keys = {(r["cluster"], r["batch"]) for r in rows}
    for cl, B in sorted(keys):
        ra = {r["P"]: r["step_time_s"] for r in rows
              if (r["cluster"], r["batch"], r["variant"]) == (cl, B, a)}
        rb = {r["P"]: r["step_time_s"] for r in rows
              if (r["cluster"], r["batch"], r["variant"]) == (cl, B, b)}
        out[(cl, B)] = next((P for P in sorted(ra) if P in rb and ra[P] > rb[P]), None)
    return out


def recommend(rows: list[dict], target: float | None) -> dict | None:
    """Fewest ranks meeting ``target`` samples/s (ties: highest throughput), else the fastest.

    As in sizing guides for data-parallel training: pick the smallest allocation that meets
    the throughput goal; only when none does, the configuration closest to it.
    """
    if not rows:
        return None
    if target:
        ok = [r for r in rows if r["samples_per_s"] >= target]
        if ok:
            return min(ok, key=lambda r: (r["P"], -r["samples_per_s"]))
    return max(rows, key=lambda r: r["samples_per_s"])


def layout_of(cluster: Cluster, P: int) -> Layout:
    """The library and ranks per node of ``cluster`` sized for P ranks."""
    return Layout(cluster.mpi, max(1, min(cluster.ranks_per_node, P)))
