"""Input/output: open data as row-chunked Dask arrays."""

from __future__ import annotations

from emdist.io.sources import as_dask_array, open_zarr_array

__all__ = ["as_dask_array", "open_zarr_array"]
