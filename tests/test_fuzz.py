"""Property tests (hypothesis): arbitrary bytes through the text readers, arbitrary values
through the config loader. Either a result or a user error naming what is wrong — never a
crash with a traceback, never a partial file."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from desmpi.config import from_dict
from desmpi.data.convert import convert
from desmpi.data.schema import CRITEO_CSV, CRITEO_TSV
from desmpi.errors import UserError

# lines built from the characters that matter to the parser, plus arbitrary bytes
_FIELD = st.one_of(st.just(""), st.text("0123456789abcdefABCDEF.-+eEinfa", max_size=12),
                   st.sampled_from(["1e400", "-1e400", "nan", "inf", "0x1", "68fd1e64"]))
_LINE = st.lists(_FIELD, min_size=0, max_size=45).map(lambda fs: "\t".join(fs).encode())
_BLOB = st.one_of(st.lists(_LINE, max_size=30).map(lambda ls: b"\n".join(ls)),
                  st.binary(max_size=2000))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=_BLOB, csv=st.booleans(), bom=st.booleans())
def test_readers_never_crash_nor_leave_partial_files(tmp_path, blob, csv, bom):
    src = tmp_path / ("in.csv" if csv else "in.tsv")
    out = tmp_path / "out.h5"
    for f in tmp_path.iterdir():
        f.unlink()
    data = blob.replace(b"\t", b",") if csv else blob
    if csv:
        data = (b"label," + ",".join([f"I{i}" for i in range(1, 14)] +
                                     [f"C{i}" for i in range(1, 27)]).encode() + b"\n" + data)
    src.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    try:
        rep = convert([str(src)], out, CRITEO_CSV if csv else CRITEO_TSV, max_bad_fraction=1.0)
    except UserError:
        assert not out.exists()
    else:
        assert rep["rows"] > 0 and out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) in (["in.csv"], ["in.tsv"],
                                                          ["in.csv", "out.h5"],
                                                          ["in.tsv", "out.h5"])


_VALUE = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(string.ascii_letters + "_-/.", max_size=12), st.booleans(),
                   st.lists(st.integers(-5, 500), max_size=4))
_KEYS = {"model": ["name", "embed_dim", "hidden", "deep_input", "init_std", "cross_layers",
                   "bogus"],
         "data": ["train", "eval", "in_memory", "in_memory_max_bytes"],
         "train": ["batch_size", "steps", "epochs", "optimizer", "lr", "dense_lr", "dtype",
                   "nan_policy", "seed"],
         "dist": ["strategy", "aggregate", "input", "check_every", "timeout_s", "cluster"],
         "checkpoint": ["dir", "every", "keep"], "nosuch": ["x"]}


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(_KEYS)),
                       st.dictionaries(st.sampled_from(sum(_KEYS.values(), [])), _VALUE,
                                       max_size=4), max_size=4))
def test_config_loader_accepts_or_names_the_key(d):
    try:
        cfg = from_dict(d).check()
    except UserError as e:
        assert str(e)  # the message names the key or section
    else:
        assert cfg.train.lr > 0 and cfg.train.batch_size > 0

