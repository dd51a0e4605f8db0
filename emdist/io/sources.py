"""Open what a user hands us (numpy, Dask, Zarr, a path) as a row-chunked Dask array.

Dask row-blocks are aligned with the store's chunks (or shards): a block is a whole number
of stored chunks, several small ones grouped up to a byte target
(:func:`emdist.io.chunking.read_block_rows`), so each stored chunk is read once per pass.
Column chunking is removed: every kernel needs whole rows.

A Zarr array is verified before anything is read (:func:`emdist.io.integrity.verify_array`):
one that emdist wrote must match the shape, chunks, dtype and chunk count it recorded and
have every chunk file holding the data recorded for its position, and each chunk's CRC-32C
is checked as it is read. Any array's declared chunk count and chunk size are bounded, so an
edited header fails fast.

While a Dask array made here from an emdist store lives (a fit), it holds a shared lock on
the store (:class:`emdist.io.locks.ReaderLock`), so that ``ingest(..., overwrite=True)`` of
the same path is refused instead of replacing the data under the fit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, cast

import dask.array as da
import numpy as np
import scipy.sparse
import zarr
from dask.base import tokenize

from emdist.exceptions import InvalidDataError, InvalidDataTypeError
from emdist.io.chunking import read_block_rows
from emdist.io.integrity import RECORD_KEY, CheckedReader, check_metadata_files, verify_array
from emdist.io.locks import ReaderLock

__all__ = [
    "as_dask_array",
    "as_numpy_array",
    "data_array_of_group",
    "is_out_of_core",
    "open_zarr_array",
    "validate_array_like",
]

# In-memory input is split into blocks of about this size so that the threaded scheduler
# has work for every core while per-block overhead stays negligible.
_NUMPY_BLOCK_BYTES = 32 * 2**20


# The array a dataset group holds: ``generate`` (emdist.io.synthetic) writes its rows to
# ``<group>/data`` beside ``truth/`` and ``labels``.
DATA_ARRAY_NAME = "data"


def open_zarr_array(path: str | os.PathLike[str]) -> zarr.Array[Any]:
    """Open a Zarr array read-only and verify it, with a clear error when that fails.

    Parameters
    ----------
    path : str or path
        A Zarr array, or a dataset group (as ``emdist generate`` writes) whose ``data``
        array is then opened.

    Returns
    -------
    zarr.Array
        Verified by :func:`emdist.io.integrity.verify_array`.

    Raises
    ------
    InvalidDataError
        Nothing at ``path``, unreadable metadata, a group without a ``data`` array (the
        message lists the arrays it holds), or (``IntegrityError``) an array that fails
        verification.
    """
    if "\0" not in os.fspath(path) and Path(path).is_file():
        # A Zarr array is a directory; a file is data to convert first (CSV, .npy...).
        raise InvalidDataError(
            f"{os.fspath(path)} is a file, not a Zarr array; convert it first with "
            f"emdist.io.ingest.ingest({os.fspath(path)!r}, 'data.zarr') and pass data.zarr"
        ).naming(
            "emdist.io.ingest",
            f"emdist.io.ingest.ingest({os.fspath(path)!r}, 'data.zarr')",
            os.fspath(path),
        )
    check_metadata_files(path)  # before zarr opens it: a named pipe would never return
    try:
        node = zarr.open(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
        raise InvalidDataError(f"no Zarr array at {os.fspath(path)!r}: {exc}") from None
    except Exception as exc:  # zarr raises many kinds on a damaged zarr.json
        raise InvalidDataError(
            f"the Zarr metadata at {os.fspath(path)!r} cannot be read ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(node, zarr.Group):
        node = data_array_of_group(node, os.fspath(path))
    verify_array(node, os.fspath(path))
    return node


def data_array_of_group(group: zarr.Group, where: str) -> zarr.Array[Any]:
    """The ``data`` array of a dataset group; a clear error if it has none.

    Only the name ``data`` is taken: a group's other arrays (``labels``, ``truth/means``)
    are not rows to fit, so guessing among them could fit the wrong thing silently.
    """
    member = group.get(DATA_ARRAY_NAME)
    if isinstance(member, zarr.Array):
        return member
    arrays = sorted(name for name, _ in group.arrays())
    holds = f"it holds the arrays {arrays}" if arrays else "it holds no array"
    example = f"{where}/{arrays[0]}" if arrays else f"{where}/<array>"
    raise InvalidDataError(
        f"{where!r} is a Zarr group, not an array, and has no {DATA_ARRAY_NAME!r} array "
        f"({holds}); pass the path of the array to use, e.g. {example!r}"
    )


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
    # The messages contain scikit-learn's phrases ("Reshape your data", "Complex data not
    # supported", "0 feature(s) (shape=...) while a minimum of 1 is required") so that code
    # and checks written against scikit-learn's estimators recognise them.
    if len(shape) != 2:
        raise InvalidDataError(
            f"{what} must be 2-D (n_samples, n_features); got {len(shape)}-D data of "
            f"shape {shape}. Reshape your data, e.g. with X.reshape(-1, 1) if it has a "
            f"single feature."
        )
    if np.issubdtype(dtype, np.complexfloating):
        raise InvalidDataError(
            f"{what} must hold real numbers; got dtype {dtype}. Complex data not supported."
        )
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)) or (
        np.issubdtype(dtype, np.bool_)
    ):
        raise InvalidDataError(f"{what} must hold real numbers; got dtype {dtype}.")
    if shape[0] == 0:
        raise InvalidDataError(
            f"{what} has 0 samples: found array with 0 sample(s) (shape={shape}) while a "
            f"minimum of 1 is required."
        )
    if shape[1] == 0:
        raise InvalidDataError(
            f"{what} has 0 features: found array with 0 feature(s) (shape={shape}) while a "
            f"minimum of 1 is required."
        )


def is_out_of_core(X: Any) -> bool:
    """Whether ``X`` is data we keep lazy: a Dask array, a Zarr array or node, or a path.

    Everything else (numpy, lists, pandas, any object with ``__array__``) is converted to
    numpy, as scikit-learn does, and results on it are numpy too.
    """
    return isinstance(X, da.Array | zarr.Array | zarr.Group | str | os.PathLike)


def as_numpy_array(X: Any, what: str = "X") -> np.ndarray[Any, Any]:
    """In-memory ``X`` as a validated numpy array (scikit-learn's ``check_array`` rules).

    Sparse matrices are refused (every kernel works on dense row-blocks). An object array
    (a pandas frame with mixed or nullable columns, a list of ``Decimal``) is converted to
    float64 as scikit-learn does; one holding a value that is not a number (text,
    ``None``, ``pd.NA``) is refused naming the first such value, its row and column (and
    the column's name for a DataFrame).

    Raises
    ------
    TypeError
        For sparse input.
    InvalidDataTypeError
        For an object array holding something that is not a number (a ``TypeError`` and
        an :class:`InvalidDataError`).
    InvalidDataError
        As :func:`validate_array_like`.
    """
    if scipy.sparse.issparse(X):
        raise TypeError(
            f"{what} is a sparse {type(X).__name__}; sparse data is not supported, pass a "
            f"dense array (X.toarray()) or store it densely in Zarr."
        )
    try:
        arr = np.asarray(X)
    except ValueError as exc:  # rows of different lengths (a ragged list)
        raise InvalidDataError(
            f"{what} cannot be read as a 2-D array: {' '.join(str(exc).split())}"
        ) from None
    if arr.dtype == object and arr.ndim == 2:
        arr = _object_to_float(arr, X, what)
    validate_array_like(arr.shape, arr.dtype, what)
    return arr


def _object_to_float(arr: np.ndarray[Any, Any], X: Any, what: str) -> np.ndarray[Any, Any]:
    """An object array of numbers as float64; else the first value that is not one."""
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        failure = exc
    for (row, col), value in np.ndenumerate(arr):
        try:
            float(value)
        except (TypeError, ValueError) as exc:
            columns = getattr(X, "columns", None)
            name = f" ({columns[col]!r})" if columns is not None and len(columns) > col else ""
            # numpy's own words end the message ("float() argument must be a string or a
            # real number, not 'dict'"): code written against scikit-learn matches them.
            raise InvalidDataTypeError(
                f"{what} must hold real numbers; got {value!r} at row {row}, column "
                f"{col}{name} of an object array ({exc})."
            ) from None
    raise InvalidDataTypeError(f"{what} must hold real numbers; got an object array ({failure}).")


def _numpy_chunk_rows(n: int, d: int, itemsize: int) -> int:
    by_bytes = max(1, _NUMPY_BLOCK_BYTES // max(1, d * itemsize))
    by_cores = math.ceil(n / (2 * (os.cpu_count() or 1)))
    return int(max(1, min(by_bytes, max(by_cores, 8192))))


def as_dask_array(X: Any, *, chunk_rows: int | None = None) -> da.Array:
    """Row-chunked Dask view of ``X``; nothing is read.

    Parameters
    ----------
    X : array-like, dask.array.Array, zarr.Array, zarr.Group, str or path
        The data. A string or path names a Zarr array on disk, or a dataset group whose
        ``data`` array is used (as ``emdist generate`` writes).
    chunk_rows : int, optional
        Rows per block. Defaults: for Zarr, whole stored chunks (or shards) grouped up to
        the Dask configuration ``emdist.block-size`` (16 MiB unless set; see
        :func:`emdist.io.chunking.read_block_rows`); the existing row chunks for Dask; about
        32 MB blocks for numpy.

    Returns
    -------
    dask.array.Array
        Chunked along rows only.

    Raises
    ------
    InvalidDataError
        For data of the wrong rank or dtype, or with no rows.
    """
    verified = False
    if isinstance(X, str | os.PathLike | Path):
        X = open_zarr_array(X)
        verified = X.attrs.get(RECORD_KEY) is not None
    elif isinstance(X, zarr.Group):
        X = data_array_of_group(X, str(X.store_path))
        verified = verify_array(X, _where(X))
    elif isinstance(X, zarr.Array):
        verified = verify_array(X, _where(X))
    if isinstance(X, zarr.Array):
        validate_array_like(X.shape, X.dtype)
        stored_rows = (X.shards or X.chunks)[0]
        row_bytes = X.shape[1] * X.dtype.itemsize
        rows = chunk_rows or read_block_rows(X.shape[0], stored_rows, row_bytes)
        chunks = (rows, X.shape[1])
        # As da.from_zarr does (same name, so graphs stay deterministic), but reading through
        # CheckedReader: a chunk failing its CRC-32C is reported with the store and rows.
        reader = CheckedReader(X, _where(X))
        root = getattr(X.store, "root", None)
        if verified and root is not None:
            # Held by the reader, so for as long as the graph reading it lives.
            reader.hold(ReaderLock(root).acquire())
        return cast(
            da.Array,
            da.from_array(
                reader,
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
    arr = as_numpy_array(X)
    rows = chunk_rows or _numpy_chunk_rows(arr.shape[0], arr.shape[1], arr.dtype.itemsize)
    # name=False: don't hash the whole array to name it; each fit makes its own view.
    return cast(da.Array, da.from_array(arr, chunks=(rows, -1), name=False))
