"""Zarr arrays (to re-chunk or re-compress one, or copy one another program wrote)."""

from __future__ import annotations

from pathlib import Path

import zarr

from emdist.io.integrity import verify_array
from emdist.io.readers.base import ArrayReader, ReadOptions, decode_names

__all__ = ["ZarrReader"]


class ZarrReader(ArrayReader):
    """A Zarr array, read in whole stored chunks (or shards); verified first."""

    name = "zarr"
    suffixes = (".zarr",)
    what = "a Zarr array"
    order = 50

    @classmethod
    def claims(cls, path: Path) -> bool:
        """A ``.zarr`` name, or a directory holding Zarr metadata."""
        if path.is_dir():
            return (path / "zarr.json").exists() or (path / ".zarray").exists()
        return super().claims(path)

    @classmethod
    def open(cls, path: Path, options: ReadOptions) -> ZarrReader:
        """Open the array read-only; a damaged array emdist wrote is refused, not copied."""
        if not path.is_dir():
            raise cls.not_this_format(path, "a Zarr array is a directory", options)
        try:
            array = zarr.open_array(str(path), mode="r")
        except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
            raise cls.not_this_format(path, str(exc), options) from None
        verify_array(array, str(path))
        names = array.attrs.get("feature_names")
        source_rows = int((array.shards or array.chunks)[0])
        # Keep the chain: re-chunking an ingested array must not forget the original file.
        previous = array.attrs.get("provenance")
        return cls(
            path,
            array,
            decode_names(names) if isinstance(names, list) else None,
            extra={"source_provenance": previous} if isinstance(previous, dict) else None,
            block_multiple=source_rows,
        )
