import subprocess
import sys
from pathlib import Path

import pytest

from desmpi import launch
from desmpi.samples import CRITEO_HEAD15K, CRITEO_SAMPLE200, criteo_sample

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def mpiexec_path() -> str:
    """The launcher desmpi itself uses (desmpi.launch); a clear failure when there is none."""
    try:
        return launch.find_mpiexec()
    except FileNotFoundError as e:
        pytest.fail(f"{e} (install the 'mpich' extra: pip install -e '.[mpich]')")


CACHE = ROOT / ".pytest_cache" / "desmpi-cluster"  # dist 'auto' calibrations of the tests


def mpi_env() -> dict:
    """One thread per rank, the checkout first on PYTHONPATH (desmpi.launch.env); the
    calibration cache of dist 'auto' kept inside the checkout."""
    return {**launch.env(extra_path=ROOT), "DESMPI_CACHE": str(CACHE)}


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
    """15,000 real Kaggle rows shipped in tests/data/criteo (provenance in SOURCES.md there)."""
    return criteo_sample(CRITEO_HEAD15K)


@pytest.fixture(scope="session")
def criteo_csv() -> Path:
    return criteo_sample(CRITEO_SAMPLE200)
