"""Source readers for :func:`emdist.io.ingest.ingest`: one module per format.

Each module defines a subclass of :class:`~emdist.io.readers.base.Reader` that names its
format and suffixes; defining it registers it. Importing this package imports every module
in it, so a new format is one new module here and nothing else: ``source_format=``, the
``--format`` choices, the run configuration's ``input.format`` and suffix detection all
come from the registry.

=========  =======================================  =================
format     suffixes                                 module
=========  =======================================  =================
npy        .npy                                     :mod:`.npy`
csv        .csv .tsv .txt                           :mod:`.csv_text`
parquet    .parquet .pq                             :mod:`.parquet`
hdf5       .h5 .hdf5 .hdf .he5                      :mod:`.hdf5`
zarr       .zarr, a directory holding zarr.json     :mod:`.zarr_array`
=========  =======================================  =================
"""

from __future__ import annotations

import importlib
import pkgutil

from emdist.io.readers.base import (
    IngestError,
    Reader,
    ReadOptions,
    reader_for_name,
    reader_for_path,
    registered_formats,
)

__all__ = [
    "IngestError",
    "ReadOptions",
    "Reader",
    "reader_for_name",
    "reader_for_path",
    "registered_formats",
]

# Every module of the package registers its reader when imported (Reader.__init_subclass__).
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
