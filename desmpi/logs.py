"""Logging set-up: rank 0 writes human output; other ranks only warnings and errors."""

from __future__ import annotations

import logging
import sys


def setup(rank: int = 0, verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if rank != 0:
        level = logging.WARNING
    fmt = "%(asctime)s %(levelname).1s " + (f"[{rank}] " if rank else "") + "%(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr,
                        force=True)
