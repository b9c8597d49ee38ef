import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "criteo"
BIN = Path(sys.executable).parent


def mpiexec_path() -> str:
    exe = BIN / "mpiexec"
    if exe.exists():
        return str(exe)
    found = shutil.which("mpiexec")
    if not found:
        pytest.fail("mpiexec not found: install the 'mpich' extra (pip install -e '.[mpich]')")
    return found


def mpi_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def run_mpi(n: int, args: list[str], timeout: float = 300, check: bool = True
            ) -> subprocess.CompletedProcess:
    """Run ``mpiexec -n n python args...`` with a timeout; fail with its output on error."""
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=mpi_env(),
                           cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"timeout after {timeout}s: {' '.join(cmd)}\n{e.stdout}\n{e.stderr}")
    if check and p.returncode != 0:
        pytest.fail(f"exit {p.returncode}: {' '.join(cmd)}\nstdout:\n{p.stdout}\n"
                    f"stderr:\n{p.stderr[-5000:]}")
    return p


@pytest.fixture(scope="session")
def criteo_tsv() -> Path:
    p = SHARED / "head15k.tsv"
    if not p.exists():
        pytest.fail(f"{p} missing: the shared Criteo sample must sit beside the repository")
    return p


@pytest.fixture(scope="session")
def criteo_csv() -> Path:
    return SHARED / "sample200.csv"
