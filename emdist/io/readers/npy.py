"""``.npy`` files, memory-mapped: the OS pages rows in as blocks are sliced."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emdist.io.readers.base import ArrayReader, IngestError, ReadOptions

__all__ = ["NpyReader"]

_MAGIC = b"\x93NUMPY"


class NpyReader(ArrayReader):
    """A 2-D numeric ``.npy`` array; nothing is loaded up front."""

    name = "npy"
    suffixes = (".npy",)
    what = "a .npy file"
    order = 10

    @classmethod
    def open(cls, path: Path, options: ReadOptions) -> NpyReader:
        """Memory-map ``path`` (never unpickling: an object array could run code)."""
        with open(path, "rb") as f:
            magic = f.read(len(_MAGIC))
        if magic != _MAGIC:
            raise cls.not_this_format(path, f"it does not start with {_MAGIC!r}", options)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise IngestError(path, f"cannot memory-map this .npy file: {exc}") from None
        if array.dtype.names is not None:
            raise IngestError(
                path,
                f"structured dtype {array.dtype} is not supported",
                hint="Save a plain 2-D numeric array",
            )
        return cls(path, array, None)
