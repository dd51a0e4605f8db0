"""Input/output: data as row-chunked Zarr arrays, read as Dask arrays; outputs written whole.

The names in ``__all__`` are public (with those of :mod:`emdist`); the submodules are
internal and may change.

Public names
------------
as_dask_array, open_zarr_array
    Open (and verify) a Zarr array as the row-chunked array a fit runs over.
ingest, parse_source_format, SOURCE_FORMATS
    Copy a .npy, CSV, Parquet, HDF5 or Zarr source into a verified row-chunked Zarr array.
make_gaussian_mixture, sample_gaussian_mixture, open_synthetic, MAX_COMPONENTS
    Generate a Gaussian-mixture dataset with its true parameters (on disk, or a sample in
    memory), and open one again.
atomic_output, check_replaceable, OutputKind, OutputExistsError
    Write an output whole or not at all, and refuse to replace what emdist did not write.
NotAModelError
    Raised when a path to load a model from holds something else.
RECORD_KEY, MAX_CHUNKS, memory_limit_bytes
    The attribute holding an array's integrity record, the most chunks an array may
    declare, and the memory one read may use.
MAX_KEEP
    The most committed states a checkpoint keeps (``CheckpointStore(keep=...)``).
"""

from __future__ import annotations

from emdist.io.atomic import OutputExistsError, OutputKind, atomic_output, check_replaceable
from emdist.io.checkpoint import MAX_KEEP
from emdist.io.ingest import SOURCE_FORMATS, ingest, parse_source_format
from emdist.io.integrity import MAX_CHUNKS, RECORD_KEY, memory_limit_bytes
from emdist.io.persistence import NotAModelError
from emdist.io.sources import as_dask_array, open_zarr_array
from emdist.io.synthetic import (
    MAX_COMPONENTS,
    make_gaussian_mixture,
    open_synthetic,
    sample_gaussian_mixture,
)

__all__ = [
    "MAX_CHUNKS",
    "MAX_COMPONENTS",
    "MAX_KEEP",
    "RECORD_KEY",
    "SOURCE_FORMATS",
    "NotAModelError",
    "OutputExistsError",
    "OutputKind",
    "as_dask_array",
    "atomic_output",
    "check_replaceable",
    "ingest",
    "make_gaussian_mixture",
    "memory_limit_bytes",
    "open_synthetic",
    "open_zarr_array",
    "parse_source_format",
    "sample_gaussian_mixture",
]
