"""What a run's payloads travel as (``dist.compress``, ``dist.keys``): :class:`Wire`, and the
plan side of the compressed forms — their words per block (:func:`words`) and their
collectives (:func:`calls`). :mod:`desmpi.strategies.compressed` runs the forms."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from desmpi.data.slicing import split_counts
from desmpi.kernels.compress import CHUNKED, chunk_words
from desmpi.kernels.slots import topk_count

CODECS = ("none", "bf16", "fp16", "int8", "topk", "threshold")
PARTIAL_CODECS = ("auto", "none", "bf16", "fp16", "int8")  # dist.compress_partials
SPARSE = ("topk", "threshold")  # (index, value) triples in a fixed budget of slots
KEY_ENCODINGS = ("int64", "narrow")
WORD = 2  # bytes per packed element


@dataclass(frozen=True)
class Wire:
    """How a run's payloads travel (``dist.compress``, ``dist.compress_ratio``, ``dist.keys``,
    ``dist.compress_every``, ``dist.compress_partials``, ``dist.compress_partial_grads``): the
    float payloads' codec, the kept fraction of topk and threshold, the DES input keys'
    encoding, how often threshold re-estimates τ, the partials' own codec ("auto":
    :attr:`partials`' rule) and their gradients' ("auto": the partials')."""

    compress: str = "none"
    ratio: float = 0.1
    keys: str = "int64"
    every: int = 16
    partial: str = "auto"
    partial_grad: str = "auto"

    def __post_init__(self) -> None:
        if self.compress not in CODECS:
            raise ValueError(f"compress {self.compress!r}; known: {', '.join(CODECS)}")
        if self.keys not in KEY_ENCODINGS:
            raise ValueError(f"key encoding {self.keys!r}; known: {', '.join(KEY_ENCODINGS)}")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"compress ratio {self.ratio} is not in (0, 1]")
        if self.every < 1:
            raise ValueError(f"compress_every {self.every} is not >= 1")
        for what, c in (("partials", self.partial), ("partial gradients", self.partial_grad)):
            if c not in PARTIAL_CODECS:
                raise ValueError(f"{what} codec {c!r}; known: {', '.join(PARTIAL_CODECS)}")

    @property
    def packed(self) -> bool:
        """Anything compressed (the partials, their gradients or the dense gradients)."""
        return {self.partials, self.partial_grads, self.dense} != {"none"}

    @property
    def partials(self) -> str:
        """Codec of the partials Z and their per-sample gradients gZ (and of the all-to-all
        strategies' float payloads: ps's rows, a2a's pooled parts, des-a2a's pair partials, and
        their gradients): ``dist.compress_partials`` when set, else ``compress``'s. Top-k has
        no error feedback there (the rows are other samples every step): it would zero most of
        a sample's logit terms forward and drop most samples' gradients backward (measured on
        the Criteo sample: −0.02 to −0.15 AUC), so topk and threshold send them as bf16 unless
        told otherwise (int8: half bf16's bytes)."""
        if self.partial != "auto":
            return self.partial
        return "bf16" if self.compress in SPARSE else self.compress

    @property
    def partial_grads(self) -> str:
        """Codec of the backward direction of :attr:`partials`' payloads (the partials' per-
        sample gradients gZ, ps's row gradients, a2a's pooled parts' and des-a2a's pair
        partials' gradients): ``dist.compress_partial_grads`` when set, else the partials'.
        Forward and backward are separate classes because their errors act differently: the
        forward's enter the loss of this step, the backward's only its update."""
        return self.partial_grad if self.partial_grad != "auto" else self.partials

    @property
    def dense(self) -> str:
        """Codec of the dense gradients and a fused first layer's W1 gradient (the same
        vector every step: error feedback carries what top-k left out)."""
        return self.compress

    def lossless(self) -> Wire:
        """This wire with every float at full width, the keys' (lossless) encoding kept: how
        evaluation's forward travels (:meth:`desmpi.strategies.template.Strategy.evaluating`)."""
        return Wire(keys=self.keys)


FULL = Wire()  # everything at full width (the default)


def rated_codecs(wire: Wire) -> tuple[str, str]:
    """(dense codec, sparse codec) whose rates the cost model charges a run's codec work at
    (``desmpi bench compute --codec --select``): the partials' codec (else their gradients',
    else the dense gradients' sums'; bf16 uncompressed), and the dense gradients' selection
    when topk or threshold (else threshold). A wire of mixed dense codecs is charged at the
    first one's rate."""
    dense = next((c for c in (wire.partials, wire.partial_grads, gathered(wire.dense))
                  if c != "none"), "bf16")
    return dense, wire.dense if wire.dense in SPARSE else "threshold"


def words(blocks: np.ndarray, codec: str, ratio: float = 0.1) -> np.ndarray:
    """16-bit words that carry blocks of these sizes: one per float (bf16), one per float and
    the block's exponent (fp16), half a word per float and a scale per 64 (int8), or 3 per
    top-k or threshold slot."""
    b = np.asarray(blocks, dtype=np.int64)
    if codec in SPARSE:
        return np.array([3 * topk_count(int(m), ratio) for m in b], dtype=np.int64)
    if codec in CHUNKED:
        return chunk_words(codec, b)
    return b.copy()  # a new array, as the other codecs give: callers may write to it


def gathered(codec: str) -> str:
    """The codec of an allreduce's second step (the Allgatherv of the sums): dense, bf16 for
    the sparse codecs."""
    return "bf16" if codec in SPARSE else codec


def calls(kind: str, counts, P: int, codec: str = "bf16", ratio: float = 0.1
          ) -> list[tuple[str, np.ndarray, int]]:
    """The collectives (kind, counts as in :class:`sim.accounting.Collective`, itemsize) of a
    compressed ``kind`` (allreduce: ``[n]``; reduce_scatter / allgatherv: the P blocks)."""
    c = np.asarray(counts, dtype=np.int64)

    def scattered(w: np.ndarray) -> np.ndarray:  # step 1's (P, P) words: row i from rank i
        m = np.tile(w, (P, 1))
        np.fill_diagonal(m, 0)  # the own chunk stays home, unpacked
        return m

    if kind == "allreduce":
        ch = split_counts(int(c[0]), P)
        return [("alltoallv", scattered(words(ch, codec, ratio)), WORD),
                ("allgatherv", words(ch, gathered(codec)), WORD)]
    if kind == "reduce_scatter":
        return [("alltoallv", scattered(words(c, codec, ratio)), WORD)]
    if kind == "allgatherv":
        return [("allgatherv", words(c, codec, ratio), WORD)]
    if kind == "alltoallv":  # counts (P, P): row i what rank i sends to each rank
        if codec in SPARSE:
            raise ValueError(f"no {codec} form of alltoallv (the rows go dense)")
        m = words(c.reshape(-1), codec).reshape(c.shape)
        np.fill_diagonal(m, 0)  # the block a rank keeps is copied, not packed
        return [("alltoallv", m, WORD)]
    raise ValueError(f"no compressed form of {kind}")
