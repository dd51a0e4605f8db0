"""HDF5 files: one 2-D dataset, read in whole HDF5 chunks (needs h5py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emdist.exceptions import InvalidDataError
from emdist.io.readers.base import ArrayReader, ReadOptions, decode_names

__all__ = ["Hdf5Reader"]


def _candidates(file: Any) -> list[str]:
    import h5py  # type: ignore[import-untyped]

    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim == 2:
            found.append(name)

    file.visititems(visit)
    return found


class Hdf5Reader(ArrayReader):
    """The 2-D dataset ``options.dataset`` (default: the file's only one)."""

    name = "hdf5"
    suffixes = (".h5", ".hdf5", ".hdf", ".he5")
    what = "an HDF5 file"
    order = 40

    @classmethod
    def open(cls, path: Path, options: ReadOptions) -> Hdf5Reader:
        """Open the file and find the dataset; the file stays open until :meth:`close`."""
        try:
            import h5py
        except ImportError as exc:  # pragma: no cover - h5py is in the io extra
            raise ImportError("reading HDF5 needs h5py: pip install 'emdist[io]'") from exc
        if not h5py.is_hdf5(path):
            raise cls.not_this_format(path, "no HDF5 signature", options)
        file = h5py.File(path, "r")
        dataset = options.dataset
        try:
            if dataset is None:
                candidates = _candidates(file)
                if len(candidates) != 1:
                    raise InvalidDataError(
                        f"{path} holds {len(candidates)} two-dimensional datasets "
                        f"({', '.join(candidates) or 'none'}); pass dataset= to choose one"
                    ).naming("dataset", "dataset=")
                dataset = candidates[0]
            if dataset not in file or not isinstance(file[dataset], h5py.Dataset):
                raise InvalidDataError(f"{path} has no dataset {dataset!r}")
            ds = file[dataset]
            names = None
            for key in ("feature_names", "columns", "column_names"):
                if key in ds.attrs:
                    names = decode_names(ds.attrs[key])
                    break
            multiple = int(ds.chunks[0]) if ds.chunks else 1
            return cls(
                path,
                ds,
                names,
                extra={"dataset": ds.name},
                on_close=file.close,
                block_multiple=multiple,
            )
        except BaseException:
            file.close()
            raise
