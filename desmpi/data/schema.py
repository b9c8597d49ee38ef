"""Column schemas of delimited CTR text files: Criteo built in, others from TOML."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from desmpi.errors import DataError
from desmpi.tomlcompat import tomllib

CRITEO_DENSE = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CAT = tuple(f"C{i}" for i in range(1, 27))


@dataclass(frozen=True)
class Schema:
    """Which column is the label, which are dense, which categorical.

    Columns are named; with ``header = true`` names are matched against the file's header line,
    otherwise ``columns`` lists every column of a line in order.
    """

    name: str
    delimiter: str
    header: bool
    label: str
    dense: tuple[str, ...]
    categorical: tuple[str, ...]
    columns: tuple[str, ...] = ()
    categorical_encoding: str = "hash"  # "hash" (any string) or "hex" (Criteo ids)
    dense_transform: str = "log1p"  # "log1p" (counts: log(1+x), negatives -> 0) or "none"
    skip: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.delimiter.encode()) != 1:
            raise DataError(f"schema {self.name}: delimiter must be one byte, got "
                             f"{self.delimiter!r}")
        if self.categorical_encoding not in ("hash", "hex"):
            raise DataError(f"schema {self.name}: categorical_encoding must be 'hash' or 'hex'")
        if self.dense_transform not in ("log1p", "none"):
            raise DataError(f"schema {self.name}: dense_transform must be 'log1p' or 'none'")
        if not self.categorical:
            raise DataError(f"schema {self.name}: needs at least one categorical column")
        names = (self.label, *self.dense, *self.categorical)
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise DataError(f"schema {self.name}: columns used twice: {sorted(dup)}")
        if not self.header and not self.columns:
            raise DataError(f"schema {self.name}: without a header, 'columns' must list "
                             "every column in order")

    def roles(self, columns: tuple[str, ...]) -> tuple[list[int], list[int]]:
        """(role, slot) per column of a line whose column names are ``columns``."""
        pos = {c: i for i, c in enumerate(columns)}
        missing = [c for c in (self.label, *self.dense, *self.categorical) if c not in pos]
        if missing:
            raise DataError(f"schema {self.name}: columns not found in the file: {missing}")
        roles = [0] * len(columns)
        slots = [0] * len(columns)
        roles[pos[self.label]] = 1
        for j, c in enumerate(self.dense):
            roles[pos[c]], slots[pos[c]] = 2, j
        for j, c in enumerate(self.categorical):
            roles[pos[c]], slots[pos[c]] = 3, j
        return roles, slots


CRITEO_TSV = Schema(
    name="criteo-tsv", delimiter="\t", header=False, label="label", dense=CRITEO_DENSE,
    categorical=CRITEO_CAT, columns=("label", *CRITEO_DENSE, *CRITEO_CAT),
    categorical_encoding="hex")
CRITEO_CSV = Schema(
    name="criteo-csv", delimiter=",", header=True, label="label", dense=CRITEO_DENSE,
    categorical=CRITEO_CAT, categorical_encoding="hex")

_KEYS = {"name", "delimiter", "header", "label", "dense", "categorical", "columns",
         "categorical_encoding", "dense_transform"}


def load_schema(spec: str) -> Schema:
    """``criteo-tsv``, ``criteo-csv`` or the path of a schema TOML file."""
    if spec == "criteo-tsv":
        return CRITEO_TSV
    if spec == "criteo-csv":
        return CRITEO_CSV
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"format {spec!r} is neither criteo-tsv, criteo-csv nor a file")
    with open(path, "rb") as f:
        try:
            d = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise DataError(f"{path}: {e}") from None
    unknown = set(d) - _KEYS
    if unknown:
        raise DataError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    for k in ("label", "categorical"):
        if k not in d:
            raise DataError(f"{path}: missing key {k!r}")
    try:
        return Schema(
            name=d.get("name", path.stem), delimiter=d.get("delimiter", ","),
            header=bool(d.get("header", True)), label=d["label"],
            dense=tuple(d.get("dense", ())), categorical=tuple(d["categorical"]),
            columns=tuple(d.get("columns", ())),
            categorical_encoding=d.get("categorical_encoding", "hash"),
            dense_transform=d.get("dense_transform", "log1p"))
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
