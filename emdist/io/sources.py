"""Open what a user hands us (numpy, Dask, Zarr, a path) as a row-chunked Dask array.

Dask row-blocks are aligned with the store's chunks (or shards) so that one block is one
read. Column chunking is removed: every kernel needs whole rows.

A Zarr array is verified before anything is read (:func:`emdist.io.integrity.verify_array`):
one that emdist wrote must match the shape, chunks, dtype and chunk count it recorded and
have every chunk file, and each chunk's CRC-32C is checked as it is read. Any array's
declared chunk count and chunk size are bounded, so an edited header fails fast.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, cast

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from emdist.exceptions import InvalidDataError
from emdist.io.integrity import CheckedReader, verify_array

__all__ = ["as_dask_array", "open_zarr_array", "validate_array_like"]

# In-memory input is split into blocks of about this size so that the threaded scheduler
# has work for every core while per-block overhead stays negligible.
_NUMPY_BLOCK_BYTES = 32 * 2**20


def open_zarr_array(path: str | os.PathLike[str]) -> zarr.Array[Any]:
    """Open a Zarr array read-only and verify it, with a clear error when that fails.

    Raises
    ------
    InvalidDataError
        No array at ``path``, unreadable metadata, or (``IntegrityError``) an array that
        fails :func:`emdist.io.integrity.verify_array`.
    """
    try:
        node = zarr.open(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
        raise InvalidDataError(f"no Zarr array at {os.fspath(path)!r}: {exc}") from None
    except Exception as exc:  # zarr raises many kinds on a damaged zarr.json
        raise InvalidDataError(
            f"the Zarr metadata at {os.fspath(path)!r} cannot be read ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(node, zarr.Array):
        raise InvalidDataError(
            f"{os.fspath(path)!r} is a Zarr group, not an array; pass the path of the array"
        )
    verify_array(node, os.fspath(path))
    return node


def _where(array: zarr.Array[Any]) -> str:
    root = getattr(array.store, "root", None)
    return os.fspath(Path(root) / array.path) if root is not None else repr(array)


def validate_array_like(shape: tuple[int, ...], dtype: np.dtype[Any], what: str = "X") -> None:
    """Check rank, dtype and emptiness before anything is read.

    Raises
    ------
    InvalidDataError
        With a message that says what is wrong and what is expected.
    """
    if len(shape) != 2:
        raise InvalidDataError(
            f"{what} must be 2-D (n_samples, n_features); got {len(shape)}-D data of "
            f"shape {shape}. Reshape 1-D data with X.reshape(-1, 1)."
        )
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)) or (
        np.issubdtype(dtype, np.bool_)
    ):
        raise InvalidDataError(f"{what} must hold real numbers; got dtype {dtype}.")
    if shape[0] == 0:
        raise InvalidDataError(f"{what} has 0 samples; at least one is required.")
    if shape[1] == 0:
        raise InvalidDataError(f"{what} has 0 features; at least one is required.")


def _numpy_chunk_rows(n: int, d: int, itemsize: int) -> int:
    by_bytes = max(1, _NUMPY_BLOCK_BYTES // max(1, d * itemsize))
    by_cores = math.ceil(n / (2 * (os.cpu_count() or 1)))
    return int(max(1, min(by_bytes, max(by_cores, 8192))))


def as_dask_array(X: Any, *, chunk_rows: int | None = None) -> da.Array:
    """Row-chunked Dask view of ``X``; nothing is read.

    Parameters
    ----------
    X : array-like, dask.array.Array, zarr.Array, str or path
        The data. A string or path names a Zarr array on disk.
    chunk_rows : int, optional
        Rows per block. Defaults: the store's chunk (or shard) rows for Zarr, the existing
        row chunks for Dask, about 32 MB blocks for numpy.

    Returns
    -------
    dask.array.Array
        Chunked along rows only.

    Raises
    ------
    InvalidDataError
        For data of the wrong rank or dtype, or with no rows.
    """
    if isinstance(X, str | os.PathLike | Path):
        X = open_zarr_array(X)
    elif isinstance(X, zarr.Array):
        verify_array(X, _where(X))
    if isinstance(X, zarr.Array):
        validate_array_like(X.shape, X.dtype)
        rows = chunk_rows or (X.shards or X.chunks)[0]
        chunks = (rows, X.shape[1])
        # As da.from_zarr does (same name, so graphs stay deterministic), but reading through
        # CheckedReader: a chunk failing its CRC-32C is reported with the store and rows.
        return cast(
            da.Array,
            da.from_array(
                CheckedReader(X, _where(X)),
                chunks=chunks,
                name="from-zarr-" + tokenize(X, chunks),
                fancy=False,
            ),
        )
    if isinstance(X, da.Array):
        validate_array_like(X.shape, X.dtype)
        if math.isnan(X.shape[0]):
            raise InvalidDataError("X has unknown chunk sizes; call X.compute_chunk_sizes()")
        if chunk_rows is not None:
            return cast(da.Array, X.rechunk((chunk_rows, -1)))
        return X if X.numblocks[1] == 1 else cast(da.Array, X.rechunk({1: -1}))
    arr = np.asarray(X)
    validate_array_like(arr.shape, arr.dtype)
    rows = chunk_rows or _numpy_chunk_rows(arr.shape[0], arr.shape[1], arr.dtype.itemsize)
    # name=False: don't hash the whole array to name it; each fit makes its own view.
    return cast(da.Array, da.from_array(arr, chunks=(rows, -1), name=False))
