"""One step, P = 2 against P = 1, per (model, variant): which stage broke, in seconds.

At P = 1 each variant is also checked against the single-process reference path
(:func:`desmpi.reference.train_step`), so a bug shared by P = 1 and P = 2 of one strategy shows
too. The long equivalence runs (tests/test_equivalence.py) say *that* 20 steps differ; these say
*where*: the aggregated partials Z, their gradient gZ, the row gradients (SGD: the row change
is -lr times the gradient, so the table after one step holds them), the dense parameters, the
loss. float64; summation order is the only difference, so 1e-12 relative (with an absolute
floor for entries that are zero up to rounding).
"""

import numpy as np
import pytest

from desmpi.data.synth import SynthSpec, generate
from desmpi.variants import ALL
from tests.conftest import run_mpi

MODELS = ("lr", "fm", "wdl", "deepfm", "dcn", "dlrm")
RTOL, ATOL = 1e-12, 1e-14


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    d = tmp_path_factory.mktemp("one_step")
    generate(SynthSpec(rows=96, seed=3, cap=50, multi_hot={2: 3}, weighted=True), d / "t.h5")
    out = {}
    for P in (1, 2):
        run_mpi(P, ["tests/mpi/one_step.py", str(d / f"P{P}"), str(d / "t.h5"),
                    ",".join(MODELS)], timeout=600)
        out[P] = d / f"P{P}"
    return out


def _compare(a, b) -> None:
    """Every recorded stage of case a against case b, named on failure."""
    assert np.isfinite(b["Z"]).all() and np.abs(b["gZ"]).max() > 0, "reference is empty"
    _close("Z (aggregated partials)", a["Z"], b["Z"])
    _close("gZ (gradient of the partials)", a["gZ"], b["gZ"])
    assert np.array_equal(a["keys"], b["keys"]), "table keys (every key on exactly one rank)"
    _close("table rows after the step (row gradients)", a["rows"], b["rows"])
    _close("dense parameters after the step", a["dense"], b["dense"])
    _close("loss", a["loss"], b["loss"])


def _close(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    bad = ~np.isclose(got, want, rtol=RTOL, atol=ATOL)
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise AssertionError(f"{name}: {int(bad.sum())} of {bad.size} entries differ; first at "
                             f"{tuple(int(i) for i in idx)}: P=2 {got[tuple(idx)]!r} vs P=1 "
                             f"{want[tuple(idx)]!r}")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("variant", [v.name for v in ALL])
def test_one_step_p2_equals_p1(steps, model, variant):
    f = f"{model}__{variant.replace('/', '_')}.npz"
    _compare(np.load(steps[2] / f), np.load(steps[1] / f))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("variant", [v.name for v in ALL])
def test_one_step_p1_equals_the_reference_path(steps, model, variant):
    """The strategy at P = 1 against desmpi.reference.train_step (no strategy code)."""
    f = f"{model}__{variant.replace('/', '_')}"
    _compare(np.load(steps[1] / f"{f}.npz"), np.load(steps[1] / f"{f}.ref.npz"))
