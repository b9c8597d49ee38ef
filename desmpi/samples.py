"""Paths of the real Criteo rows shipped inside the repository (``tests/data/criteo/``).

The rows are not part of the Python package (Criteo's research-use terms; see SOURCES.md beside
them), so these paths exist in a source checkout only. :func:`criteo_sample` says so clearly
when they are missing instead of handing a non-existent path to a reader.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "criteo"
CRITEO_HEAD15K = SAMPLE_DIR / "head15k.tsv"   # 15,000 Kaggle rows, raw TSV, chronological
CRITEO_SAMPLE200 = SAMPLE_DIR / "sample200.csv"  # 200 rows, CSV with a header


def criteo_sample(path: Path = CRITEO_HEAD15K) -> Path:
    """The in-repository sample at ``path``; FileNotFoundError naming it when absent."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the Criteo sample ships with the source repository only "
            "(tests/data/criteo/); run from a checkout or pass a Criteo TSV explicitly")
    return path
