"""Launching ``desmpi`` (or any Python script) under ``mpiexec -n P``, one thread per rank.

The one place that knows how: the CLI's ``--ranks``, ``simulate --validate``, the scripts and
the tests all go through :func:`command` / :func:`run` / :func:`run_json`. One thread per rank
(OMP/NUMBA/OPENBLAS/MKL) because P ranks on a node already use P cores; BLAS threads on top
would oversubscribe them and make timings meaningless.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the source checkout (configs/, tests/)
THREAD_VARS = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class LaunchError(RuntimeError):
    """An ``mpiexec`` run that failed or timed out; the message holds its command and stderr."""


def find_mpiexec() -> str:
    """The mpiexec beside this Python (the mpich wheel's), else the one on PATH."""
    exe = Path(sys.executable).parent / "mpiexec"
    if exe.exists():
        return str(exe)
    found = shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError("mpiexec not found: pip install mpich, or load the site MPI")
    return found


def env(threads: int = 1, extra_path: str | Path | None = None) -> dict[str, str]:
    """This process's environment with ``threads`` threads per rank (and ``extra_path`` first
    on PYTHONPATH, for scripts that import the checkout without installing it)."""
    e = dict(os.environ)
    e.update({v: str(threads) for v in THREAD_VARS})
    if extra_path is not None:
        e["PYTHONPATH"] = str(extra_path) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def command(P: int, args: list[str], module: bool = True) -> list[str]:
    """``mpiexec -n P python -m desmpi ARGS`` (``module=False``: ``python ARGS``)."""
    return [find_mpiexec(), "-n", str(P), sys.executable, *(["-m", "desmpi"] if module else []),
            *args]


def run(P: int, args: list[str], module: bool = True, timeout: float | None = None,
        capture: bool = True, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run :func:`command`; raises :class:`LaunchError` on a non-zero exit or a timeout."""
    cmd = command(P, args, module)
    try:
        p = subprocess.run(cmd, capture_output=capture, text=True, env=env(extra_path=ROOT),
                           timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise LaunchError(f"timeout after {timeout} s: {' '.join(cmd)}\n{e.stdout or ''}\n"
                          f"{e.stderr or ''}") from None
    if p.returncode != 0:
        raise LaunchError(f"exit {p.returncode}: {' '.join(cmd)}\nstdout:\n"
                          f"{(p.stdout or '')[-3000:]}\nstderr:\n{(p.stderr or '')[-5000:]}")
    return p


def run_json(P: int, args: list[str], timeout: float | None = 1800) -> dict:
    """Run ``desmpi ARGS --json`` on P ranks and return rank 0's JSON report (its last line)."""
    p = run(P, [*args, "--json"], timeout=timeout)
    lines = p.stdout.strip().splitlines()
    if not lines:
        raise LaunchError(f"{' '.join(command(P, args))} printed no JSON report")
    return json.loads(lines[-1])
