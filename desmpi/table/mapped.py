"""Row arrays that grow without copying: an anonymous private memory map enlarged in place.

A sparse table's rows grow as keys arrive. ``np.empty`` + copy makes every growth touch the
whole new array (fresh pages, then a copy of all rows so far): with 1.25x growth that is about
five times the bytes of the rows actually inserted, every step. Here the rows live in their
own ``mmap`` (``MAP_PRIVATE | MAP_ANONYMOUS``); on Linux, growing it is ``mremap``: the pages
already written move with their page-table entries, nothing is copied, and the new capacity
costs no memory until a row is written there. The map asks for transparent huge pages
(``MADV_HUGEPAGE``, where the kernel offers it), so first touches fault 2 MiB at a time.

Where ``mremap`` is not available, or a view of the old array is still held elsewhere (the map
cannot move under it), growth falls back to a new map and one copy — the same result.
"""

from __future__ import annotations

import mmap

import numpy as np

_FLAGS = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)


def _new_map(nbytes: int) -> mmap.mmap:
    m = mmap.mmap(-1, max(nbytes, 1), flags=_FLAGS) if _FLAGS else mmap.mmap(-1, max(nbytes, 1))
    _advise(m)
    return m


def _advise(m: mmap.mmap) -> None:
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # kernel without transparent huge pages: plain pages
            pass


class GrowableRows:
    """A C-contiguous (capacity, width) array of ``dtype``, zero-filled, in its own memory map.

    ``array`` is the current view; :meth:`grow` enlarges it (rows [0, capacity) keep their
    values, new rows are zero) and returns the new view. Callers must not keep views across
    a growth: a held view keeps the old map alive and makes the growth copy.
    """

    def __init__(self, capacity: int, width: int, dtype) -> None:
        if capacity < 0 or width < 0:
            raise ValueError(f"GrowableRows: capacity ({capacity}) and width ({width}) "
                             "must be >= 0")
        self.width, self.dtype = int(width), np.dtype(dtype)
        self._map = _new_map(self._bytes(capacity))
        self.array = self._view(capacity)

    def _bytes(self, capacity: int) -> int:
        return int(capacity) * self.width * self.dtype.itemsize

    def _view(self, capacity: int) -> np.ndarray:
        a = np.frombuffer(self._map, dtype=self.dtype, count=int(capacity) * self.width)
        return a.reshape(int(capacity), self.width)

    @property
    def capacity(self) -> int:
        return self.array.shape[0]

    def grow(self, capacity: int) -> np.ndarray:
        """Capacity -> ``capacity`` rows (>= the current one); returns the new view."""
        old = self.capacity
        if capacity < old:
            raise ValueError(f"GrowableRows.grow: {capacity} rows < current {old}")
        nbytes = self._bytes(capacity)
        self.array = None  # our own view must go for the map to move
        try:
            self._map.resize(max(nbytes, 1))  # mremap(MREMAP_MAYMOVE) on Linux
            _advise(self._map)
        except (BufferError, SystemError, OSError, ValueError):
            # a view is still held elsewhere, or no mremap here: new map, one copy
            prev = np.frombuffer(self._map, dtype=self.dtype, count=old * self.width)
            self._map = _new_map(nbytes)
            np.frombuffer(self._map, dtype=self.dtype,
                          count=old * self.width)[:] = prev
        self.array = self._view(capacity)
        return self.array
