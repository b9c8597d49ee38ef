"""Data: text readers, the synthetic generator, the HDF5 data set and rank slicing."""

from desmpi.data.batch import Batch
from desmpi.data.schema import CRITEO_CSV, CRITEO_TSV, Schema, load_schema

__all__ = ["Batch", "Schema", "CRITEO_CSV", "CRITEO_TSV", "load_schema"]
