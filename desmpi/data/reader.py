"""Streaming reader of delimited CTR text (Criteo TSV/CSV or any schema) over byte ranges.

Bytes are parsed by :func:`desmpi.kernels.parse.parse_block` in blocks of complete lines, so no
Python code runs per line. A malformed line is never dropped silently: it is counted per reason
in a :class:`BadLines` log with its file and line number, and past ``max_bad_fraction`` the read
stops with :class:`DataError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from desmpi.data.batch import Batch
from desmpi.data.schema import Schema
from desmpi.errors import DataError
from desmpi.kernels.parse import (
    BLANK,
    REASONS,
    count_lines,
    parse_block,
)

log = logging.getLogger(__name__)
BLOCK_BYTES = 16 << 20
EXAMPLES_KEPT = 1000
BOM = b"\xef\xbb\xbf"


@dataclass
class BadLines:
    """Malformed lines: count per reason and the first examples (file, line, reason, column)."""

    lines: int = 0  # non-blank lines read
    bad: int = 0
    blank: int = 0  # empty lines: skipped, counted apart (neither data nor malformed)
    by_reason: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[str, int, str, str]] = field(default_factory=list)

    def add(self, path: str, line_no: np.ndarray, codes: np.ndarray, cols: np.ndarray,
            colnames: tuple[str, ...]) -> None:
        for ln, c, col in zip(line_no.tolist(), codes.tolist(), cols.tolist()):
            reason = REASONS[c]
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
            if len(self.examples) < EXAMPLES_KEPT:
                name = colnames[col] if 0 <= col < len(colnames) else f"#{col + 1}"
                self.examples.append((path, ln, reason, name))
        self.bad += len(codes)

    def merge(self, other: BadLines) -> None:
        self.lines += other.lines
        self.bad += other.bad
        self.blank += other.blank
        for k, v in other.by_reason.items():
            self.by_reason[k] = self.by_reason.get(k, 0) + v
        room = EXAMPLES_KEPT - len(self.examples)
        self.examples.extend(other.examples[:max(room, 0)])

    def shift(self, path: str, delta: int) -> None:
        """Add ``delta`` to the line numbers of ``path`` (ranges read without their prefix)."""
        self.examples = [(p, ln + delta if p == path else ln, r, c)
                         for p, ln, r, c in self.examples]

    def describe(self, limit: int = 5) -> str:
        ex = "; ".join(f"{p}:{ln}: {r} (column {c})" for p, ln, r, c in self.examples[:limit])
        return (f"{self.bad} of {self.lines} lines malformed "
                f"({', '.join(f'{k}: {v}' for k, v in sorted(self.by_reason.items()))})"
                + (f"; first: {ex}" if ex else ""))

    def check(self, max_fraction: float) -> None:
        if not 0.0 <= max_fraction <= 1.0:  # NaN too
            raise DataError(f"max_bad_fraction = {max_fraction!r}: must be in [0, 1]")
        if self.lines and self.bad > max_fraction * self.lines:
            raise DataError(f"too many malformed lines (limit {max_fraction:.4%}): "
                            + self.describe())


def read_header(path: str, schema: Schema) -> tuple[tuple[str, ...], int]:
    """Column names of the file and the byte offset of its first data line."""
    if not schema.header:
        return schema.columns, 0
    with open(path, "rb") as f:
        first = f.readline()
    try:
        text = first.decode("utf-8-sig").rstrip("\r\n")  # a BOM is not part of the name
    except UnicodeDecodeError:
        raise DataError(f"{path}:1: header is not UTF-8") from None
    if not text:
        raise DataError(f"{path}:1: empty header line")
    return tuple(c.strip() for c in text.split(schema.delimiter)), len(first)


def line_boundary(f, pos: int, size: int) -> int:
    """First line start at or after ``pos`` (0 stays 0): the split rule of parallel reads."""
    if pos <= 0:
        return 0
    if pos >= size:
        return size
    f.seek(pos - 1)
    while True:
        chunk = f.read(1 << 16)
        if not chunk:
            return size
        i = chunk.find(b"\n")
        if i >= 0:
            return f.tell() - len(chunk) + i + 1
        pos += len(chunk)


def byte_range(path: str, part: int, parts: int) -> tuple[int, int]:
    """Byte range [start, end) of lines that part ``part`` of ``parts`` reads."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        s = line_boundary(f, size * part // parts, size)
        e = line_boundary(f, size * (part + 1) // parts, size)
    return s, e


def read_text(path: str, schema: Schema, bad: BadLines, start: int = 0, end: int | None = None,
              block_bytes: int = BLOCK_BYTES, first_line_no: int = 1,
              max_bad_fraction: float = 1.0) -> Iterator[Batch]:
    """Good rows of lines starting in bytes [start, end) of ``path``, as one-hot batches.

    Line numbers in ``bad`` count from ``first_line_no`` at ``start``'s line (the header, if
    any, is line 1 of the file and is skipped). Raises DataError past ``max_bad_fraction``
    (checked after every block, so a hopeless file stops early).
    """
    columns, data_start = read_header(path, schema)
    roles, slots = schema.roles(columns)
    roles_a = np.asarray(roles, dtype=np.int8)
    slots_a = np.asarray(slots, dtype=np.int32)
    n_dense, n_cat = len(schema.dense), len(schema.categorical)
    size = os.path.getsize(path)
    end = size if end is None else end
    line_no = first_line_no
    if start == 0 and data_start:
        start = data_start
        line_no = 2
    elif start == 0 and end > 0:
        with open(path, "rb") as f:
            if f.read(3) == BOM:  # a BOM before the first data line: not data
                start = 3
    delim = schema.delimiter.encode()[0]
    with open(path, "rb") as f:
        f.seek(start)
        pos, carry = start, b""
        while pos < end or carry:
            raw = f.read(min(block_bytes, end - pos)) if pos < end else b""
            pos += len(raw)
            data = carry + raw
            if pos < end:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # a line longer than the block: read more
                    carry = data
                    continue
                data, carry = data[:cut], data[cut:]
            else:
                carry = b""
            if not data:
                break
            buf = np.frombuffer(data, dtype=np.uint8)
            n = count_lines(buf)
            labels = np.empty(n, dtype=np.float32)
            dense = np.zeros((n, n_dense), dtype=np.float32)
            keys = np.zeros((n, n_cat), dtype=np.int64)
            status = np.zeros(n, dtype=np.int8)
            errcol = np.zeros(n, dtype=np.int32)
            got = parse_block(buf, delim, roles_a, slots_a, schema.categorical_encoding == "hex",
                              schema.dense_transform == "log1p", labels, dense, keys, status,
                              errcol)
            assert got == n, (got, n)
            blank = status == BLANK
            nb = int(blank.sum())
            bad.blank += nb
            bad.lines += n - nb
            status[blank] = 0
            badmask = status != 0
            if badmask.any():
                idx = np.flatnonzero(badmask)
                bad.add(path, idx + line_no, status[idx], errcol[idx], columns)
            good = ~(badmask | blank)
            if not good.all():
                labels, dense, keys = labels[good], dense[good], keys[good]
            line_no += n
            if bad.lines >= 1000:
                bad.check(max_bad_fraction)
            yield Batch(labels, dense, keys.reshape(-1), n_cat)
    bad.check(max_bad_fraction)
