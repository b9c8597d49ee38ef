"""Scratch arrays of a training step, kept across steps.

A step of a deep model makes the same large arrays every time: the partials Z and their
gradient, each dense layer's activations and input gradients, the per-row sparse gradients.
Fresh NumPy arrays of that size go back to the OS when freed and come back as fresh pages
(thousands of page faults and as many zero-filled pages per step). A :class:`Workspace` hands
out the same buffer for the same name every step instead.

Contract: the array returned for a name is valid until that name is asked for again, and its
contents are undefined (:meth:`zeros` clears it). Names belong to one place in the code (a
layer's output, a model's gradient), so within a step two live arrays never share a name; an
array that must outlive the next step is copied by whoever keeps it. ``reuse=False`` (the
default of a model built outside the trainer) makes every request a fresh array.
"""

from __future__ import annotations

import math

import numpy as np


class Workspace:
    def __init__(self, reuse: bool = True) -> None:
        self.reuse = reuse
        self._bufs: dict[str, np.ndarray] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A C-contiguous array of ``shape`` and ``dtype``, contents undefined."""
        dtype = np.dtype(dtype)
        if not self.reuse:
            return np.empty(shape, dtype=dtype)
        n = math.prod(shape)
        b = self._bufs.get(name)
        if b is None or b.dtype != dtype or b.shape[0] < n:
            # room for a somewhat larger request (an eval batch, a rank's share) next time
            grow = int(1.25 * b.shape[0]) if b is not None and b.dtype == dtype else 0
            b = np.empty(max(n, grow), dtype=dtype)
            self._bufs[name] = b
        return b[:n].reshape(shape)

    def zeros(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """:meth:`take`, filled with zeros."""
        a = self.take(name, shape, dtype)
        a.fill(0)
        return a

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._bufs.values())
