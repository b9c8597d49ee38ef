"""The binary data set: one HDF5 file that training reads by row ranges.

Layout (format ``desmpi-ctr`` version 1):

* ``labels`` (N,) float32, ``dense`` (N, Dn) float32;
* one-hot: ``keys`` (N, F) int64 field-aware keys;
* multi-hot: ``keys`` (nnz,) int64 and ``offsets`` (N·F + 1,) int64 bag boundaries;
* optional ``values`` (nnz,) float32 and ``oracle_prob`` (N,) float32 (synthetic data);
* attributes: format, version, n_fields, n_dense, onehot, fields, dense_names, source, and
  whatever the producer adds (bad-line counts, generator parameters, oracle AUC).

Files are written under a temporary name and renamed when complete, so a file with the final
name is never partial.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from desmpi.data.batch import Batch
from desmpi.data.reader import DataError

FORMAT, VERSION = "desmpi-ctr", 1
CHUNK_ROWS = 1 << 14


class H5Writer:
    """Appends batches to a new data set; :meth:`close` renames it into place."""

    def __init__(self, path: str | Path, n_fields: int, n_dense: int, onehot: bool = True,
                 with_values: bool = False, with_oracle: bool = False,
                 attrs: dict | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)  # every --out makes its folder
        self.tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        self.f = h5py.File(self.tmp, "w")
        self.F, self.Dn, self.onehot = n_fields, n_dense, onehot
        self.n = 0
        self.nnz = 0
        f = self.f
        f.create_dataset("labels", (0,), np.float32, maxshape=(None,), chunks=(CHUNK_ROWS,))
        f.create_dataset("dense", (0, n_dense), np.float32, maxshape=(None, n_dense),
                         chunks=(CHUNK_ROWS, n_dense) if n_dense else True)
        if onehot:
            f.create_dataset("keys", (0, n_fields), np.int64, maxshape=(None, n_fields),
                             chunks=(CHUNK_ROWS, n_fields))
        else:
            f.create_dataset("keys", (0,), np.int64, maxshape=(None,),
                             chunks=(CHUNK_ROWS * n_fields,))
            off = f.create_dataset("offsets", (1,), np.int64, maxshape=(None,),
                                   chunks=(CHUNK_ROWS * n_fields,))
            off[0] = 0
        if with_values:
            f.create_dataset("values", (0,), np.float32, maxshape=(None,),
                             chunks=(CHUNK_ROWS * n_fields,))
        if with_oracle:
            f.create_dataset("oracle_prob", (0,), np.float32, maxshape=(None,),
                             chunks=(CHUNK_ROWS,))
        a = dict(format=FORMAT, version=VERSION, n_fields=n_fields, n_dense=n_dense,
                 onehot=onehot)
        a.update(attrs or {})
        self.set_attrs(a)

    def set_attrs(self, attrs: dict) -> None:
        for k, v in attrs.items():
            self.f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v

    @staticmethod
    def _append(ds, arr) -> None:
        n0 = ds.shape[0]
        ds.resize(n0 + arr.shape[0], axis=0)
        ds[n0:] = arr

    def append(self, b: Batch, oracle_prob: np.ndarray | None = None) -> None:
        if b.n == 0:
            return
        f = self.f
        self._append(f["labels"], b.labels.astype(np.float32, copy=False))
        self._append(f["dense"], b.dense.astype(np.float32, copy=False))
        if self.onehot:
            if b.offsets is not None:
                raise ValueError("multi-hot batch appended to a one-hot data set")
            self._append(f["keys"], b.keys.reshape(b.n, self.F))
        else:
            self._append(f["keys"], b.keys)
            self._append(f["offsets"], b.bag_offsets()[1:] + self.nnz)
        if "values" in f:
            v = b.values if b.values is not None else np.ones(b.keys.shape[0], np.float32)
            self._append(f["values"], v.astype(np.float32, copy=False))
        if "oracle_prob" in f:
            self._append(f["oracle_prob"], oracle_prob.astype(np.float32, copy=False))
        self.n += b.n
        self.nnz += b.keys.shape[0]

    def close(self, attrs: dict | None = None) -> Path:
        self.set_attrs({"rows": self.n, **(attrs or {})})
        self.f.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abandon(self) -> None:
        try:
            self.f.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class CtrDataset:
    """Read access by row range to a ``desmpi-ctr`` HDF5 file.

    ``in_memory`` loads every array once (small data sets, tests); otherwise rows are read from
    the file on demand, which is what lets each rank read only its slice.
    """

    def __init__(self, path: str | Path, in_memory: bool = False) -> None:
        self.path = str(path)
        if not Path(path).exists():
            raise FileNotFoundError(f"data set {path} not found (make one with 'desmpi data')")
        try:
            self.f = h5py.File(path, "r")
        except OSError as e:
            raise DataError(f"{path}: not a readable HDF5 file ({e})") from None
        a = self.f.attrs
        if a.get("format") != FORMAT:
            raise DataError(f"{path}: not a desmpi data set (format attribute "
                             f"{a.get('format')!r}, expected {FORMAT!r})")
        if int(a["version"]) != VERSION:
            raise DataError(f"{path}: data set version {a['version']}, this desmpi reads "
                             f"{VERSION}")
        self.n_fields = int(a["n_fields"])
        self.n_dense = int(a["n_dense"])
        self.onehot = bool(a["onehot"])
        self.n = int(self.f["labels"].shape[0])
        self._mem = None
        if in_memory:
            self._mem = {k: self.f[k][...] for k in self.f.keys()}

    def attrs(self) -> dict:
        out = {}
        for k, v in self.f.attrs.items():
            if isinstance(v, str) and v[:1] in "[{":
                try:
                    v = json.loads(v)
                except ValueError:
                    pass
            out[k] = v.item() if hasattr(v, "item") else v
        return out

    def _get(self, name: str):
        return self._mem[name] if self._mem is not None else self.f[name]

    def has(self, name: str) -> bool:
        return name in self.f

    def read(self, a: int, b: int, dtype=np.float32) -> Batch:
        """Rows [a, b) as a Batch (features in ``dtype``)."""
        a, b = max(0, a), min(self.n, b)
        labels = np.asarray(self._get("labels")[a:b], dtype=dtype)
        dense = np.asarray(self._get("dense")[a:b], dtype=dtype)
        F = self.n_fields
        values = None
        if self.onehot:
            keys = np.ascontiguousarray(self._get("keys")[a:b]).reshape(-1)
            offsets = None
            k0, k1 = a * F, b * F
        else:
            o = np.asarray(self._get("offsets")[a * F:b * F + 1])
            k0, k1 = int(o[0]), int(o[-1])
            keys = np.asarray(self._get("keys")[k0:k1])
            offsets = o - o[0]
        if self.has("values"):
            values = np.asarray(self._get("values")[k0:k1], dtype=dtype)
        return Batch(labels, dense, keys, F, offsets, values)

    def labels(self) -> np.ndarray:
        """(N,) every label."""
        return np.asarray(self._get("labels")[:])

    def oracle_prob(self, a: int = 0, b: int | None = None) -> np.ndarray | None:
        if not self.has("oracle_prob"):
            return None
        return np.asarray(self._get("oracle_prob")[a:self.n if b is None else b])

    def close(self) -> None:
        self.f.close()
