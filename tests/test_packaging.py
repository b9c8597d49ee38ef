"""environment.yml and pyproject.toml list the same packages; the tree is ruff-clean."""

import re
import subprocess
import sys

from desmpi.tomlcompat import tomllib
from tests.conftest import ROOT


def _name(req: str) -> str:
    return re.split(r"[<>=!;\[ ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_in_step_with_pyproject():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in py["dependencies"] if "python_version" not in r}
    for extra in ("mpich", "plot", "test"):
        wanted |= {_name(r) for r in py["optional-dependencies"][extra]}
    conda = set()
    text = (ROOT / "environment.yml").read_text().split("dependencies:", 1)[1]
    for line in text.splitlines():
        m = re.match(r"^\s+- ([A-Za-z0-9_.-]+)", line)
        if m and m.group(1) not in ("pip", "python", "-e"):
            conda.add(_name(m.group(1)))
    assert wanted == conda, f"only in pyproject: {wanted - conda}; only in conda: {conda - wanted}"


def test_ruff_clean():
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "desmpi", "sim", "tests",
                        "scripts"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr


def test_sim_never_imports_desmpi():
    for f in (ROOT / "sim").rglob("*.py"):
        assert "desmpi" not in re.findall(r"^\s*(?:from|import)\s+(\w+)", f.read_text(), re.M), f


def test_only_comm_imports_mpi4py():
    for f in (ROOT / "desmpi").rglob("*.py"):
        if f.name != "comm.py":
            assert "mpi4py" not in f.read_text(), f


def test_repository_stands_alone():
    """Nothing tracked may read or link a path outside the repository (a sibling data folder
    of the development machines, say): a user's clone has nothing beside it."""
    files = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT,
                           check=True).stdout.split()
    assert files, "git ls-files listed nothing"
    bad = []
    for name in files:
        p = ROOT / name
        if p.suffix not in (".py", ".md", ".toml", ".yml", ".sh", ".cfg", ".txt", "") or \
                name.startswith("tests/data/") or name == "tests/test_packaging.py":
            continue
        text = p.read_text(errors="replace")
        if re.search(r"\.\./shared|parent\s*/\s*[\"']shared[\"']", text):
            bad.append(name)
    assert not bad, f"files that reach outside the repository: {bad}"


def test_criteo_sample_matches_its_provenance_note():
    """The shipped rows are the ones SOURCES.md describes (sha256 and row counts)."""
    import hashlib

    note = (ROOT / "tests" / "data" / "criteo" / "SOURCES.md").read_text()
    for name, rows in (("head15k.tsv", 15000), ("sample200.csv", 201)):
        data = (ROOT / "tests" / "data" / "criteo" / name).read_bytes()
        assert f"{hashlib.sha256(data).hexdigest()}  {name}" in note, name
        assert data.count(b"\n") == rows, name
