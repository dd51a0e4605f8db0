"""Verify on read what emdist wrote, and confine every name read from a store to that store.

Zarr trusts its store: a flipped byte reads as a wrong number, a chunk file that is missing
(or replaced by a directory) reads as the fill value, an edited ``zarr.json`` changes the
shape or dtype of everything read after it. None of that raises. So every array emdist
writes (datasets from ingest and generate, predictions, saved models, checkpoints) is made
with :func:`create_verified_array`:

* each chunk ends with a CRC-32C of its encoded bytes (Zarr v3's ``crc32c`` codec), checked
  by Zarr on every read of the chunk;
* every chunk is written, even one equal to the fill value, so a missing chunk is damage;
* after the data are written, :func:`seal` records the shape, chunk shape, dtype and chunk
  count in the array's attributes (key ``emdist_integrity``).

:func:`verify_array` compares that record with the metadata and checks that every chunk is
a regular file inside the store, before anything is read; :class:`CheckedReader` turns
Zarr's checksum failure during a read into an error that names the chunk. Whole small
arrays (model parameters, checkpoint states) also carry a SHA-256 (:func:`array_digest`).

The naming helpers (:func:`safe_name`, :func:`safe_child`, :func:`check_contained`) exist
because a store's documents name other files: a checkpoint lists its states, a model its
arrays. A name that is absolute, holds ``..``, or crosses a symbolic link out of the store
is refused before anything is read or deleted.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import Crc32cCodec

from emdist._typing import AnyArray
from emdist.exceptions import EmdistError, InvalidDataError

__all__ = [
    "RECORD_KEY",
    "CheckedReader",
    "IntegrityError",
    "UnsafeNameError",
    "array_digest",
    "check_contained",
    "check_declared_size",
    "create_verified_array",
    "memory_limit_bytes",
    "safe_child",
    "safe_name",
    "seal",
    "verify_array",
]

RECORD_KEY = "emdist_integrity"
RECORD_VERSION = 1

MAX_CHUNKS = 1_000_000
"""Most chunks an array may declare. A dataset of 1 TB in 16 MiB chunks has 62,500; a header
declaring more is damaged or hostile, and a Dask graph of that many tasks would not fit."""


class IntegrityError(InvalidDataError):
    """A store emdist wrote fails its verification (damaged, edited or incomplete)."""


class UnsafeNameError(EmdistError, ValueError):
    """A name read from a store would lead outside it (absolute, ``..``, symbolic link)."""


# -- names -------------------------------------------------------------------------------------

_BAD_CHARS = re.compile(r"[\x00\\]")


def safe_name(name: Any, what: str) -> str:
    """Check that ``name`` is a relative path that stays inside the folder it is joined to.

    Parameters
    ----------
    name : object
        What a store's document holds (only a non-empty string can pass).
    what : str
        Where the name comes from, for the message (e.g. ``"checkpoint field 'committed'"``).

    Returns
    -------
    str
        ``name``, unchanged.

    Raises
    ------
    UnsafeNameError
        If ``name`` is not a string, is empty, absolute, or has an empty, ``.`` or ``..``
        part, a backslash or a NUL byte.
    """
    if not isinstance(name, str) or not name:
        raise UnsafeNameError(f"{what}: {name!r} is not a name")
    # An empty part also catches a leading "/" (absolute) and "a//b".
    if _BAD_CHARS.search(name) or any(p in ("", ".", "..") for p in name.split("/")):
        raise UnsafeNameError(f"{what}: {name!r} would lead outside the store; refused")
    return name


def safe_child(root: str | os.PathLike[str], name: Any, what: str) -> Path:
    """``root / name``, refused unless it stays inside ``root`` without following a symlink.

    Parameters
    ----------
    root : path
        The store.
    name : object
        A relative name read from the store (see :func:`safe_name`).
    what : str
        Where the name comes from, for the message.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    UnsafeNameError
        If the name is unsafe, or any part of the path below ``root`` is a symbolic link
        (a link could point anywhere, and ``rmtree`` of a linked folder's contents would
        delete outside the store).
    """
    root = Path(root)
    path = root
    for part in safe_name(name, what).split("/"):
        path = path / part
        if path.is_symlink():
            raise UnsafeNameError(f"{what}: {path} is a symbolic link; refused")
    return path


def check_contained(root: str | os.PathLike[str], what: str) -> None:
    """Refuse a store holding a symbolic link that resolves outside it.

    Parameters
    ----------
    root : path
    what : str
        What the store is, for the message (e.g. ``"model"``).

    Raises
    ------
    UnsafeNameError
        Naming the first such link.
    """
    root = Path(root)
    if root.is_symlink():
        # The store itself may be a link (a user's choice); what counts is what it holds.
        root = root.resolve()
    top = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            p = Path(dirpath) / name
            if p.is_symlink():
                target = p.resolve()
                if target != top and top not in target.parents:
                    raise UnsafeNameError(
                        f"the {what} at {root} holds {p.relative_to(root)}, a symbolic link "
                        f"to {target} outside it; refused"
                    )


# -- digests and limits ------------------------------------------------------------------------


def array_digest(arr: AnyArray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (C order), as hex.

    Parameters
    ----------
    arr : ndarray

    Returns
    -------
    str
    """
    a = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    h.update(str(a.dtype).encode())
    h.update(repr(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def memory_limit_bytes() -> int:
    """Half the machine's physical memory: the most one array read whole may take."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        total = 8 * 2**30
    return int(total) // 2


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_declared_size(
    shape: tuple[int, ...], dtype: np.dtype[Any], what: str, *, limit: int | None = None
) -> None:
    """Refuse an array whose declared size cannot be read into memory.

    Parameters
    ----------
    shape : tuple of int
    dtype : numpy dtype
    what : str
        The array, for the message.
    limit : int, optional
        Bytes allowed; default :func:`memory_limit_bytes`.

    Raises
    ------
    IntegrityError
        Stating the declared size and the limit.
    """
    limit = memory_limit_bytes() if limit is None else limit
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > limit:
        raise IntegrityError(
            f"{what} declares shape {tuple(shape)} ({_gib(nbytes)}), more than the "
            f"{_gib(limit)} limit (half this machine's memory); the header is damaged"
        )


# -- writing -----------------------------------------------------------------------------------


def create_verified_array(
    where: zarr.Group | str | os.PathLike[str],
    name: str | None = None,
    *,
    shape: tuple[int, ...],
    dtype: Any,
    chunks: tuple[int, ...] | None = None,
    compressors: list[BytesBytesCodec] | None = None,
    fill_value: Any = 0,
    dimension_names: tuple[str, ...] | None = None,
) -> zarr.Array[Any]:
    """Create a Zarr v3 array whose chunks carry a CRC-32C and are always written.

    Call :func:`seal` once its data are written.

    Parameters
    ----------
    where : zarr.Group or path
        A group to create the array in (then ``name`` is required), or the array's path.
    name : str, optional
    shape, dtype, chunks, fill_value, dimension_names
        As for :func:`zarr.create_array` (``chunks`` defaults to the whole array).
    compressors : list of bytes-to-bytes codecs, optional
        Applied before the checksum (which therefore covers the compressed bytes).

    Returns
    -------
    zarr.Array
    """
    kwargs: dict[str, Any] = {
        "shape": shape,
        "dtype": dtype,
        "chunks": chunks if chunks is not None else (tuple(max(1, s) for s in shape) or "auto"),
        "compressors": [*(compressors or []), Crc32cCodec()],
        "fill_value": fill_value,
        "dimension_names": dimension_names,
        # Zarr skips chunks equal to the fill value by default; then a missing chunk file
        # could not be told from damage. Writing all also avoids the per-chunk comparison.
        "config": {"write_empty_chunks": True},
    }
    if isinstance(where, zarr.Group):
        if name is None:
            raise ValueError("name is required when creating an array in a group")
        return where.create_array(name, **kwargs)
    return zarr.create_array(os.fspath(where), zarr_format=3, **kwargs)


def _record(array: zarr.Array[Any]) -> dict[str, Any]:
    return {
        "version": RECORD_VERSION,
        "shape": [int(s) for s in array.shape],
        "chunks": [int(c) for c in array.chunks],
        "dtype": str(array.dtype),
        "n_chunks": int(array.nchunks),
        "checksum": "crc32c",
    }


def seal(array: zarr.Array[Any]) -> None:
    """Record the shape, chunks, dtype and chunk count of a fully written array.

    Parameters
    ----------
    array : zarr.Array
        Made by :func:`create_verified_array`, with all its data written.
    """
    array.attrs[RECORD_KEY] = _record(array)


# -- reading -----------------------------------------------------------------------------------


def _chunk_file(array: zarr.Array[Any], coords: tuple[int, ...]) -> Path | None:
    root = getattr(array.store, "root", None)
    if root is None:
        return None  # not a local store: the chunk listing is Zarr's business
    key = array.metadata.chunk_key_encoding.encode_chunk_key(coords)  # type: ignore[union-attr]
    prefix = array.path
    return Path(root) / prefix / key if prefix else Path(root) / key


def verify_array(array: zarr.Array[Any], where: str) -> bool:
    """Check an array against the record emdist wrote, before anything is read from it.

    Parameters
    ----------
    array : zarr.Array
    where : str
        The array's location, for messages.

    Returns
    -------
    bool
        ``True`` if the array carries a record and passes; ``False`` if it has no record
        (not written by emdist: only its declared size is bounded).

    Raises
    ------
    IntegrityError
        Naming the field (``shape``, ``chunks``, ``dtype``, ``codecs``) or the chunk that
        fails, or a declared size beyond :data:`MAX_CHUNKS` chunks or the memory limit per
        chunk.
    """
    check_declared_size(tuple(array.chunks), array.dtype, f"a chunk of {where}")
    record = array.attrs.get(RECORD_KEY)
    if record is None:
        if array.nchunks > MAX_CHUNKS:
            raise IntegrityError(
                f"{where} declares {array.nchunks:,} chunks (shape {array.shape}, chunks "
                f"{array.chunks}); emdist reads at most {MAX_CHUNKS:,}: the header is damaged "
                f"or the chunks are far too small (re-ingest it)"
            )
        return False
    if not isinstance(record, dict):
        raise IntegrityError(f"{where}: attribute {RECORD_KEY!r} is damaged")
    actual = _record(array)
    for key in ("shape", "chunks", "dtype"):
        if record.get(key) != actual[key]:
            raise IntegrityError(
                f"{where}: zarr.json field '{key}' is {actual[key]} but {record.get(key)} was "
                f"written; the metadata was edited or damaged"
            )
    if not any(isinstance(c, Crc32cCodec) for c in array.compressors):
        raise IntegrityError(
            f"{where}: zarr.json field 'codecs' lost the crc32c checksum emdist wrote"
        )
    if record.get("n_chunks") != actual["n_chunks"] or actual["n_chunks"] > MAX_CHUNKS:
        raise IntegrityError(
            f"{where}: {actual['n_chunks']} chunks declared, {record.get('n_chunks')} written"
        )
    if array.shards is None:
        grid = tuple(-(-s // c) for s, c in zip(array.shape, array.chunks, strict=True))
        for coords in np.ndindex(*grid):
            path = _chunk_file(array, coords)
            if path is None:
                break
            if path.is_symlink() or not path.is_file():
                problem = "is missing" if not path.exists() else "is not a regular file"
                raise IntegrityError(
                    f"{where}: chunk {'/'.join(map(str, coords))} {problem} ({path}); "
                    f"the store is damaged"
                )
    return True


class CheckedReader:
    """Array-like wrapper of a Zarr array for :func:`dask.array.from_array`.

    Zarr reports a chunk whose CRC-32C fails as a bare ``ValueError`` ("Stored and computed
    checksum do not match") from deep inside a Dask task; this names the store and the rows
    of the stored chunk that failed. A Dask block may span several stored chunks
    (:func:`emdist.io.chunking.read_block_rows`): after a failure, and only then, they are
    read again one by one to find the damaged one.

    Parameters
    ----------
    array : zarr.Array
    where : str
        The array's location, for messages.
    """

    def __init__(self, array: zarr.Array[Any], where: str) -> None:
        self.array = array
        self.where = where
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.array[key]
        except ValueError as exc:
            if "checksum" not in str(exc):
                raise
            rows = key[0] if isinstance(key, tuple) and key else key
            what = self._damaged_rows(rows) if isinstance(rows, slice) else "one chunk"
            raise IntegrityError(
                f"{self.where}: {what} failed the crc32c checksum of their chunk; the data "
                f"are damaged (regenerate or re-ingest them)"
            ) from None

    def _damaged_rows(self, rows: slice) -> str:
        """``rows a-b`` of the first stored chunk in ``rows`` that fails its checksum."""
        start, stop, _ = rows.indices(self.shape[0])
        step = self.array.chunks[0]  # the checksummed unit (inner chunk of a shard)
        first = start - start % step
        for lo in range(first, stop, step):
            hi = min(lo + step, self.shape[0])
            try:
                self.array[lo:hi]
            except ValueError as exc:
                if "checksum" in str(exc):
                    return f"rows {lo}-{hi}"
                raise
        return f"rows {start}-{stop}"  # the failure did not repeat: name the whole block
