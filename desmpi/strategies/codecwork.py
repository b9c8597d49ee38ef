"""The codec's own work of each compressed form, per rank: what the cost model charges for
``dist.compress`` beside the smaller messages (:mod:`desmpi.strategies.compressed` runs the
forms; :func:`desmpi.strategies.plans.codec_work` sums this over a step;
``tests/mpi/compress_check.py`` counts the kernels' elements against it)."""

from __future__ import annotations

import numpy as np

from desmpi.data.slicing import split_counts
from desmpi.kernels.slots import topk_count
from desmpi.strategies.wire import SPARSE

CODEC_TERMS = ("codec_elems", "select_elems", "codec_calls")  # the columns of codec_work
# element passes error feedback adds to a float32 vector's packing: per element packed, none
# where a kernel fuses it (bf16, fp16: :func:`desmpi.kernels.compress.pack_feedback`), the
# residual added, the words decoded and subtracted (int8); per element of the vector, the
# residual added (topk, threshold: they keep it). The own chunk, not packed: a dense codec
# leaves its residual at 0 and does not read it (a strategy's calls after the first with the
# same P, ``own_clean``); a sparse one zeroes it, 1 pass a float.
FEEDBACK_PASSES = {"bf16": 0, "fp16": 0, "int8": 3, "topk": 1, "threshold": 1}
OWN_FEEDBACK_PASSES = {"bf16": 0, "fp16": 0, "int8": 0, "topk": 1, "threshold": 1}
# passes of an Allreduce's own sum once summed: packed, and decoded by the owner from its
# words like every other chunk (2); bf16 packs and decodes it in the pass that adds the last
# chunk received (:func:`desmpi.kernels.compress.finish_sum`: 1)
OWN_SUM_PASSES = {"bf16": 1}


def codec_work(kind: str, counts, P: int, codec: str = "bf16", ratio: float = 0.1,
               feedback: bool = False) -> np.ndarray:
    """(P, 3) per rank: the work of one compressed ``kind`` (counts as in
    :func:`desmpi.strategies.compressed.calls`) that
    is the codec's own, in :data:`CODEC_TERMS`: element passes (each float a kernel packs,
    decodes, or decodes and adds into a float32 sum, counted once; the own chunk, the sum's
    start, and an Alltoallv's own block, copied; a sparse codec's received slots added, and
    its Allgatherv's float32 block zeroed; ``feedback``: error feedback's own passes,
    :data:`FEEDBACK_PASSES`), elements a sparse codec selects from (topk's selection,
    threshold's pass), and the collectives that carry packed words (each has its wrapping:
    buffers, counts, calls). What :mod:`desmpi.strategies.compressed`'s ``allreduce``,
    ``reduce_scatter``, ``allgatherv`` and ``alltoallv`` do, by rank: step one packs (or
    selects from) every chunk but the rank's own."""
    c = np.asarray(counts, dtype=np.int64)
    sparse = codec in SPARSE
    out = np.zeros((P, 3), dtype=np.float64)

    def received(blocks: np.ndarray) -> np.ndarray:
        """(P,): the own chunk copied and the P − 1 others' decoded and added (sparse: their
        slots added)."""
        if not sparse:
            return P * blocks.astype(np.float64)
        return blocks + (P - 1) * np.array([topk_count(int(m), ratio) for m in blocks],
                                           np.float64)

    def scattered(n: int, blocks: np.ndarray) -> None:  # step 1, every chunk but the own
        out[:, 0] += received(blocks)  # packed (sparse: selected from), their sum received
        out[:, 1 if sparse else 0] += n - blocks

    if kind == "allreduce":
        n = int(c[0])
        ch = split_counts(n, P).astype(np.float64)
        scattered(n, ch)
        # the own sum packed and decoded, the others' decoded (float32 vectors, as training's)
        out[:, 0] += OWN_SUM_PASSES.get(codec, 2) * ch + n - ch
        if feedback:
            out[:, 0] += FEEDBACK_PASSES[codec] * (n if sparse else n - ch) \
                + OWN_FEEDBACK_PASSES[codec] * ch
        out[:, 2] = 2
    elif kind == "reduce_scatter":
        scattered(int(c.sum()), c.astype(np.float64))
        out[:, 2] = 1
    elif kind == "allgatherv":
        n = int(c.sum())
        out[:, 1 if sparse else 0] += c
        out[:, 0] += n  # decoded (sparse: the block zeroed and the slots added)
        if sparse:  # every rank's slots
            out[:, 0] += sum(topk_count(int(m), ratio) for m in c)
        out[:, 2] = 1
    elif kind == "alltoallv":  # counts (P, P): row i what rank i sends to each rank
        if sparse:
            raise ValueError(f"no {codec} form of alltoallv (the rows go dense)")
        m = c.reshape(P, P)
        out[:, 0] = m.sum(axis=1) + m.sum(axis=0) - np.diag(m)  # packed, decoded, own copied
        out[:, 2] = 1
    else:
        raise ValueError(f"no compressed form of {kind}")
    return out
