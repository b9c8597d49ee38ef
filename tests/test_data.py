"""Readers on the real Criteo rows, malformed input, schema files, HDF5 round trip."""

import json
import subprocess
import sys

import numpy as np
import pytest

from desmpi.data.convert import convert
from desmpi.data.h5 import CtrDataset
from desmpi.data.reader import BadLines, DataError, read_text
from desmpi.data.schema import CRITEO_CSV, CRITEO_TSV, load_schema
from desmpi.kernels.hashing import MISSING_BIT, field_key
from tests.conftest import ROOT, run_mpi


def read_all(path, schema, **kw):
    bad = BadLines()
    parts = list(read_text(str(path), schema, bad, **kw))
    labels = np.concatenate([p.labels for p in parts])
    dense = np.concatenate([p.dense for p in parts])
    keys = np.concatenate([p.keys for p in parts]).reshape(-1, 26)
    return labels, dense, keys, bad


def test_criteo_tsv_counts_and_rows(criteo_tsv):
    labels, dense, keys, bad = read_all(criteo_tsv, CRITEO_TSV, block_bytes=1 << 16)
    assert labels.shape == (15000,) and bad.bad == 0 and bad.lines == 15000
    assert int(labels.sum()) == 3315
    # line 1: 0 1 1 5 0 1382 4 15 2 181 1 2 <empty> 2 | 68fd1e64 80e26c9b fb936136 ...
    raw = [1, 1, 5, 0, 1382, 4, 15, 2, 181, 1, 2, None, 2]
    expect = [np.log1p(v) if v else 0.0 for v in raw]
    np.testing.assert_allclose(dense[0], expect, rtol=1e-6)
    assert keys[0, 0] == field_key(0, 0x68FD1E64)
    assert keys[0, 1] == field_key(1, 0x80E26C9B)
    assert keys[0, 25] == field_key(25, 0x9727DD16)
    # line 1, C22 is empty: the field's own missing key
    assert keys[0, 21] == field_key(21, MISSING_BIT)
    # keys are field-aware: the same hex in two fields gives two keys
    assert len(np.unique(keys[:, 0] >> 48)) == 1 and (keys[:, 5] >> 48).max() == 6


def test_criteo_csv_with_header_and_float_integers(criteo_csv):
    labels, dense, keys, bad = read_all(criteo_csv, CRITEO_CSV)
    assert labels.shape == (200,) and int(labels.sum()) == 49 and bad.bad == 0
    # row 1: label 0, I1 missing, I2=3, I3=260.0, I5=17668.0, I12=0.0
    assert labels[0] == 0
    np.testing.assert_allclose(dense[0, [0, 1, 2, 4, 11]],
                               [0, np.log1p(3), np.log1p(260), np.log1p(17668), 0], rtol=1e-6)
    assert keys[0, 0] == field_key(0, 0x05DB9164)
    assert keys[0, 18] == field_key(18, MISSING_BIT)  # C19 empty
    assert keys[0, 20] == field_key(20, 0x0429F84B)  # C21
    # row 2: I2 = -1 -> negative counts map to 0
    assert dense[1, 1] == 0.0


def _corrupt(lines, rng):
    """Break some lines in known ways; return (text, {line_no: reason})."""
    out, broken = [], {}
    for i, ln in enumerate(lines):
        f = ln.rstrip(b"\n").split(b"\t")
        kind = rng.integers(0, 8) if rng.random() < 0.3 else -1
        if kind == 0:
            f = f[:-1]
            broken[i + 1] = "wrong number of fields"
        elif kind == 1:
            f.append(b"x")
            broken[i + 1] = "wrong number of fields"
        elif kind == 2:
            f[0] = b"2"
            broken[i + 1] = "label is not 0 or 1"
        elif kind == 3:
            f[3] = b"12a"
            broken[i + 1] = "dense value is not a number"
        elif kind == 4:
            f[20] = b"zz12"
            broken[i + 1] = "categorical value is not hexadecimal"
        elif kind == 5:
            f[0] = b""
            broken[i + 1] = "label is not 0 or 1"
        elif kind == 6:
            f[30] = b"\xff\xfe"
            broken[i + 1] = "categorical value is not hexadecimal"
        out.append(b"\t".join(f) + b"\n")
    return b"".join(out), broken


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fuzzed_malformed_lines_reported_with_line_numbers(criteo_tsv, tmp_path, seed):
    lines = open(criteo_tsv, "rb").read().splitlines(keepends=True)[:400]
    text, broken = _corrupt(lines, np.random.default_rng(seed))
    p = tmp_path / "bad.tsv"
    p.write_bytes(text)
    labels, _, _, bad = read_all(p, CRITEO_TSV, block_bytes=4096)
    assert bad.lines == 400 and bad.bad == len(broken)
    assert labels.shape[0] == 400 - len(broken)
    got = {ln: reason for _, ln, reason, _ in bad.examples}
    assert got == broken
    with pytest.raises(DataError, match=r"too many malformed lines.*bad.tsv:\d+"):
        read_all(p, CRITEO_TSV, max_bad_fraction=0.01)


def test_undecodable_bytes_in_hashed_schema(tmp_path):
    schema_file = tmp_path / "s.toml"
    schema_file.write_text('label = "y"\ncategorical = ["a", "b"]\ndense = ["x"]\n')
    data = tmp_path / "d.csv"
    data.write_bytes(b"y,x,a,b\n1,2,foo,bar\n0,,\xc3\x28,bar\n1,3.5e1,caf\xc3\xa9,\n")
    s = load_schema(str(schema_file))
    labels, dense, keys, bad = (lambda r: r)(read_all_generic(data, s))
    assert bad.bad == 1 and bad.examples[0][1:3] == (3, "undecodable bytes (not UTF-8)")
    assert labels.tolist() == [1, 1]
    np.testing.assert_allclose(dense[:, 0], [np.log1p(2), np.log1p(35)], rtol=1e-6)
    assert keys[1, 1] == field_key(1, MISSING_BIT)
    assert keys[0, 1] == keys[0, 1] and keys[0, 0] != keys[1, 0]


def read_all_generic(path, schema):
    bad = BadLines()
    parts = list(read_text(str(path), schema, bad))
    F = len(schema.categorical)
    return (np.concatenate([p.labels for p in parts]), np.concatenate([p.dense for p in parts]),
            np.concatenate([p.keys for p in parts]).reshape(-1, F), bad)


def test_avazu_like_schema_needs_only_config(tmp_path):
    (tmp_path / "avazu.toml").write_text(
        'name = "avazu"\ndelimiter = ","\nheader = true\nlabel = "click"\n'
        'categorical = ["hour", "C1", "banner_pos", "site_id"]\ndense_transform = "none"\n')
    (tmp_path / "train.csv").write_text(
        "id,click,hour,C1,banner_pos,site_id\n"
        "1000009418151094273,0,14102100,1005,0,1fbe01fe\n"
        "10000169349117863715,1,14102100,1005,0,1fbe01fe\n")
    s = load_schema(str(tmp_path / "avazu.toml"))
    rep = convert([str(tmp_path / "train.csv")], tmp_path / "a.h5", s)
    assert rep["rows"] == 2 and rep["bad_lines"] == 0
    ds = CtrDataset(tmp_path / "a.h5")
    b = ds.read(0, 2)
    assert b.labels.tolist() == [0, 1] and b.dense.shape == (2, 0)
    assert np.array_equal(b.keys[:4], b.keys[4:])  # same categorical values, same keys


def test_schema_errors_name_the_file_and_key(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('label = "y"\ncategorical = ["a"]\ncolour = 1\n')
    with pytest.raises(ValueError, match=r"s.toml: unknown keys \['colour'\]"):
        load_schema(str(f))
    f.write_text('label = "y"\ncategorical = ["a"]\nheader = false\n')
    with pytest.raises(ValueError, match="columns"):
        load_schema(str(f))
    f.write_text('label = "y"\ncategorical = ["a", "q"]\n')
    (tmp_path / "d.csv").write_text("y,a\n1,x\n")
    with pytest.raises(ValueError, match=r"not found in the file: \['q'\]"):
        convert([str(tmp_path / "d.csv")], tmp_path / "o.h5", load_schema(str(f)))


def test_convert_roundtrip_equals_reader(criteo_tsv, tmp_path):
    out = tmp_path / "c.h5"
    rep = convert([str(criteo_tsv)], out, CRITEO_TSV, block_bytes=1 << 18)
    assert rep["rows"] == 15000
    labels, dense, keys, _ = read_all(criteo_tsv, CRITEO_TSV)
    ds = CtrDataset(out)
    b = ds.read(0, ds.n)
    assert np.array_equal(b.labels, labels) and np.array_equal(b.dense, dense)
    assert np.array_equal(b.keys.reshape(-1, 26), keys)
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob("*.part*"))


def test_too_many_bad_lines_writes_nothing(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_text("1\t2\n" * 10)
    with pytest.raises(DataError, match=r"x.tsv:1: wrong number of fields"):
        convert([str(p)], tmp_path / "x.h5", CRITEO_TSV)
    assert not list(tmp_path.glob("*.h5*"))


@pytest.mark.parametrize("P", [2, 4])
def test_parallel_convert_equals_serial(criteo_tsv, tmp_path, P):
    lines = open(criteo_tsv, "rb").read().splitlines(keepends=True)[:3000]
    text, broken = _corrupt(lines, np.random.default_rng(7))
    src = tmp_path / "in.tsv"
    src.write_bytes(text)
    src2 = tmp_path / "in2.tsv"
    src2.write_bytes(b"".join(lines[:777]))
    serial = tmp_path / "serial.h5"
    convert([str(src), str(src2)], serial, CRITEO_TSV, max_bad_fraction=0.5)
    par = tmp_path / "par.h5"
    p = run_mpi(P, ["-m", "desmpi", "data", "convert", str(src), str(src2), "--out", str(par),
                    "--max-bad-fraction", "0.5", "--json"], timeout=120)
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["bad_lines"] == len(broken) and rep["ranks"] == P
    assert rep["rows"] == 3000 - len(broken) + 777
    reported = sorted(int(e.split(":")[1]) for e in rep["examples"])
    assert reported == sorted(broken)[:20]
    a, b = CtrDataset(serial).read(0, 10**9), CtrDataset(par).read(0, 10**9)
    assert np.array_equal(a.keys, b.keys) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.dense, b.dense)


def test_data_info_json(criteo_tsv, tmp_path):
    out = tmp_path / "c.h5"
    convert([str(criteo_tsv)], out, CRITEO_TSV)
    p = subprocess.run([sys.executable, "-m", "desmpi", "data", "info", str(out), "--json"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)
    rep = json.loads(p.stdout)
    assert rep["rows"] == 15000 and rep["positives"] == 3315
    assert rep["distinct_per_field"]["C9"] == 3  # C9 has 3 values in the Kaggle set too
    assert abs(rep["positive_rate"] - 0.221) < 1e-3
