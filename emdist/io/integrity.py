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
  count in the array's attributes (key ``emdist_integrity``, record version 2), and the
  CRC-32C each chunk file ends with, in chunk order.

A chunk's own CRC-32C proves its bytes are what some chunk held, not *which* chunk: a chunk
overwritten by a copy of another, or two chunks swapped, pass it. The list of CRCs in the
record binds each chunk's bytes to its position (and, with the recorded shape, to the
array's shape): :func:`verify_array` reads the last 4 bytes of every chunk file before
anything is read and compares them with the record, and :class:`CheckedReader` does so again
for each chunk it has read. The second check pins the version of the data a fit opened: a
store replaced while the fit reads it (another dataset written to the same path) is noticed
at the next chunk read, and the fit stops instead of mixing two datasets.

:func:`verify_array` also checks that every chunk is a regular file inside the store (a
named pipe or a link to ``/dev/zero`` would hang the read); :class:`CheckedReader` turns
Zarr's checksum failure, or any failure to decode a chunk (a damaged compressed chunk, a
chunk of the wrong size), into one line naming the store and the chunk's rows. Whole small
arrays (model parameters, checkpoint states) also carry a SHA-256 (:func:`array_digest`).

An array that says emdist wrote it (:data:`WRITER_KEY`, or the provenance of an ingested or
generated dataset) but whose record is gone was edited: it is refused. A record of version 1
(written before chunk positions were recorded) is still read, with a warning. A store
emdist did not write is read as it is, but its chunk files must be regular files too, and
chunks missing from it (which Zarr reads as the fill value) are counted in a warning.

The naming helpers (:func:`safe_name`, :func:`safe_child`, :func:`check_contained`) exist
because a store's documents name other files: a checkpoint lists its states, a model its
arrays. A name that is absolute, holds ``..``, or crosses a symbolic link out of the store
is refused before anything is read or deleted.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import itertools
import os
import re
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.config
import numpy as np
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import Crc32cCodec

from emdist._typing import AnyArray
from emdist._version import __version__
from emdist.exceptions import EmdistError, EmdistWarning, InvalidDataError
from emdist.io.chunk_files import ChunkFiles

__all__ = [
    "RECORD_KEY",
    "CheckedReader",
    "IntegrityError",
    "IntegrityWarning",
    "UnsafeNameError",
    "WRITER_KEY",
    "array_digest",
    "check_contained",
    "check_declared_size",
    "check_metadata_files",
    "create_verified_array",
    "memory_limit_bytes",
    "pinned_crcs",
    "safe_child",
    "safe_name",
    "seal",
    "verify_array",
]

RECORD_KEY = "emdist_integrity"
RECORD_VERSION = 2
"""Version 2 adds ``chunk_crc32c``: each chunk's CRC-32C in chunk order (positions bound)."""

WRITER_KEY = "written_by"
"""Attribute :func:`seal` writes beside the record (``"emdist <version>"``): an array that
keeps it but lost its record was edited, and is refused rather than read unverified."""

MAX_CHUNKS = 1_000_000
"""Most chunks an array may declare. A dataset of 1 TB in 16 MiB chunks has 62,500; a header
declaring more is damaged or hostile, and a Dask graph of that many tasks would not fit."""


class IntegrityError(InvalidDataError):
    """A store emdist wrote fails its verification (damaged, edited or incomplete)."""


class IntegrityWarning(EmdistWarning):
    """A store is read with less verification than a current emdist store gets."""


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
    """Record the shape, chunks, dtype, chunk count and each chunk's CRC of a written array.

    Parameters
    ----------
    array : zarr.Array
        Made by :func:`create_verified_array`, with all its data written.

    Raises
    ------
    IntegrityError
        If a chunk file is missing or not a regular file (the write did not complete).
    """
    record = _record(array)
    crcs = _stored_crcs(array, str(array.store_path))
    if crcs is not None:
        # Little-endian uint32s, base64: 5.3 characters per chunk in zarr.json.
        record["chunk_crc32c"] = base64.b64encode(crcs.astype("<u4").tobytes()).decode()
    # One metadata write (``attrs.update`` writes zarr.json once per key).
    array.update_attributes({RECORD_KEY: record, WRITER_KEY: f"emdist {__version__}"})


# -- reading -----------------------------------------------------------------------------------


def _chunk_file(array: zarr.Array[Any], coords: tuple[int, ...]) -> Path | None:
    root = getattr(array.store, "root", None)
    if root is None:
        return None  # not a local store: the chunk listing is Zarr's business
    key = array.metadata.chunk_key_encoding.encode_chunk_key(coords)  # type: ignore[union-attr]
    prefix = array.path
    return Path(root) / prefix / key if prefix else Path(root) / key


def _grid(array: zarr.Array[Any]) -> tuple[int, ...]:
    """Stored files per dimension (shards if sharded, else chunks)."""
    unit = array.shards or array.chunks
    return tuple(-(-s // c) for s, c in zip(array.shape, unit, strict=True))


def _coords_name(coords: tuple[int, ...]) -> str:
    return "/".join(map(str, coords))


class _ChunkFile:
    """Open one chunk file without following a pipe or a device into a read that never ends.

    ``O_NONBLOCK`` makes opening a named pipe return at once; ``fstat`` then tells a regular
    file from anything else. ``follow=False`` refuses a symbolic link (emdist never writes
    one into a store).
    """

    @staticmethod
    def tail(path: Path, follow: bool) -> tuple[str, bytes | None]:
        """``("ok", last 4 bytes)``, ``("missing", None)`` or ``(problem, None)``."""
        flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return "missing", None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "is a symbolic link", None
            if exc.errno == errno.EISDIR:
                return "is not a regular file", None
            return f"cannot be opened ({exc.strerror})", None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return "is not a regular file", None
            if st.st_size < 4:
                return f"is truncated ({st.st_size} bytes)", None
            return "ok", os.pread(fd, 4, st.st_size - 4)
        finally:
            os.close(fd)


def _stored_crcs(array: zarr.Array[Any], where: str) -> np.ndarray[Any, Any] | None:
    """The CRC-32C every chunk file ends with, in C order of the chunk grid.

    ``None`` for a sharded array (a shard ends with its index's checksum, not its data's) or
    a store that is not a local folder.
    """
    if array.shards is not None or _chunk_file(array, (0,) * array.ndim) is None:
        return None
    grid = _grid(array)
    out = np.empty(int(np.prod(grid, dtype=np.int64)), dtype=np.uint32)
    for i, coords in enumerate(np.ndindex(*grid)):
        path = _chunk_file(array, coords)
        assert path is not None
        problem, tail = _ChunkFile.tail(path, follow=False)
        if tail is None:
            raise IntegrityError(
                f"{where}: chunk {_coords_name(coords)} {problem} ({path}); the store is damaged"
            )
        out[i] = int.from_bytes(tail, "little")
    return out


_EMDIST_CREATORS = ("emdist.io.ingest", "pipeline.ingest")


def _written_by_emdist(attrs: Any) -> str | None:
    """What in ``attrs`` says emdist wrote the array, or ``None``."""
    if attrs.get(WRITER_KEY) is not None:
        return f"attribute {WRITER_KEY!r}"
    provenance = attrs.get("provenance")
    if isinstance(provenance, dict) and (
        provenance.get("created_by") in _EMDIST_CREATORS
        or (provenance.get("source") == "synthetic" and "seed" in provenance)
    ):
        return "its ingest or generate provenance"
    return None


def pinned_crcs(array: zarr.Array[Any]) -> np.ndarray[Any, Any] | None:
    """The chunk CRCs the array's record (as read when it was opened) holds, or ``None``."""
    record = array.attrs.get(RECORD_KEY)
    if not isinstance(record, dict) or not isinstance(record.get("chunk_crc32c"), str):
        return None
    try:
        raw = base64.b64decode(record["chunk_crc32c"], validate=True)
    except ValueError:
        return None
    if len(raw) % 4:
        return None
    return np.frombuffer(raw, dtype="<u4").astype(np.uint32)


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
        (not written by emdist: its declared size is bounded, its chunk files must be
        regular files, and missing chunks are counted in an :class:`IntegrityWarning`).

    Raises
    ------
    IntegrityError
        Naming the field (``shape``, ``chunks``, ``dtype``, ``codecs``) or the chunk that
        fails (missing, not a regular file, holding another position's data), a record
        removed from an array emdist wrote, or a declared size beyond :data:`MAX_CHUNKS`
        chunks or the memory limit per chunk.
    """
    unit = array.shards or array.chunks
    if any(int(c) < 1 for c in (*array.chunks, *unit)):
        raise IntegrityError(
            f"{where}: zarr.json declares chunk shape {tuple(array.chunks)}; a chunk needs at "
            f"least one element along each axis: the metadata is damaged"
        )
    check_declared_size(tuple(array.chunks), array.dtype, f"a chunk of {where}")
    record = array.attrs.get(RECORD_KEY)
    if record is None:
        if array.nchunks > MAX_CHUNKS:
            raise IntegrityError(
                f"{where} declares {array.nchunks:,} chunks (shape {array.shape}, chunks "
                f"{array.chunks}); emdist reads at most {MAX_CHUNKS:,}: the header is damaged "
                f"or the chunks are far too small (re-ingest it)"
            )
        marker = _written_by_emdist(array.attrs)
        if marker is not None:
            raise IntegrityError(
                f"{where}: emdist wrote it ({marker}) but its integrity record "
                f"{RECORD_KEY!r} was removed from zarr.json; the store was edited: write it again"
            )
        _check_plain_chunks(array, where)
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
    version = record.get("version")
    crcs = pinned_crcs(array)
    local = array.shards is None and _chunk_file(array, (0,) * array.ndim) is not None
    if version == 1:
        warnings.warn(
            f"{where} was written by an older emdist (integrity record version 1): a chunk "
            f"copied or moved within it cannot be detected; write it again (re-ingest, "
            f"regenerate or re-save it) to get that check",
            IntegrityWarning,
            stacklevel=3,
        )
    elif (local or "chunk_crc32c" in record) and (crcs is None or len(crcs) != array.nchunks):
        # seal() records the CRCs of every local, unsharded array it seals.
        raise IntegrityError(
            f"{where}: attribute {RECORD_KEY!r} field 'chunk_crc32c' is missing or damaged; "
            f"the metadata was edited"
        )
    if not local:
        return True
    grid = _grid(array)
    expected = {int(c): i for i, c in enumerate(crcs)} if crcs is not None else {}
    chunk_coords = list(np.ndindex(*grid))
    for i, coords in enumerate(chunk_coords):
        path = _chunk_file(array, coords)
        assert path is not None
        problem, tail = _ChunkFile.tail(path, follow=False)
        if tail is None:
            problem = {"is a symbolic link": "is not a regular file", "missing": "is missing"}.get(
                problem, problem
            )
            raise IntegrityError(
                f"{where}: chunk {_coords_name(coords)} {problem} ({path}); the store is damaged"
            )
        if crcs is not None and int.from_bytes(tail, "little") != crcs[i]:
            raise IntegrityError(
                f"{where}: chunk {_coords_name(coords)} does not hold the data written there "
                f"({_what_it_holds(tail, expected, chunk_coords)}); the store is damaged"
            )
    return True


def _what_it_holds(
    tail: bytes, expected: dict[int, int], chunk_coords: list[tuple[int, ...]]
) -> str:
    other = expected.get(int.from_bytes(tail, "little"))
    if other is not None:
        return f"it holds chunk {_coords_name(chunk_coords[other])}'s: copied or moved"
    return "its checksum matches no chunk of this array: rewritten or replaced"


def _check_plain_chunks(array: zarr.Array[Any], where: str) -> None:
    """A store emdist did not write: chunk files must be regular files; count missing ones."""
    first = _chunk_file(array, (0,) * array.ndim)
    if first is None:
        return
    grid = _grid(array)
    missing = 0
    for coords in np.ndindex(*grid):
        path = _chunk_file(array, coords)
        assert path is not None
        problem, tail = _ChunkFile.tail(path, follow=True)
        if problem == "missing":
            missing += 1
        elif tail is None and not problem.startswith("is truncated"):
            raise IntegrityError(
                f"{where}: chunk {_coords_name(coords)} {problem} ({path}); the store is damaged"
            )
    total = int(np.prod(grid, dtype=np.int64))
    said = (where, missing, total)
    # Only for data that can be fitted: other dtypes are refused right after this check.
    if missing and said not in _SAID_MISSING and array.dtype.kind in "iuf":
        # Once per store and count per process: a fit opens its data more than once.
        _SAID_MISSING.add(said)
        fill = array.fill_value
        warnings.warn(
            f"{where}: {missing} of {total} chunks are missing and read as the fill value "
            f"{fill.item() if isinstance(fill, np.generic) else fill!r} (a store emdist did "
            f"not write cannot tell a chunk never written from one lost); ingest it to get "
            f"a verified copy",
            IntegrityWarning,
            stacklevel=3,
        )


_SAID_MISSING: set[tuple[str, int, int]] = set()


def check_metadata_files(path: str | os.PathLike[str]) -> None:
    """Refuse a Zarr metadata file that is not a regular file (a pipe would hang the open).

    Parameters
    ----------
    path : path
        A Zarr array or group folder; its metadata and those of a ``data`` member are checked.

    Raises
    ------
    IntegrityError
    """
    root = Path(path)
    for folder in (root, root / "data"):
        for name in ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"):
            meta = folder / name
            try:
                st = meta.stat()
            except OSError:
                continue  # absent (or a dangling link): zarr says so
            if not stat.S_ISREG(st.st_mode):
                raise IntegrityError(
                    f"{meta} is not a regular file; the Zarr store at {root} is damaged"
                )


def _chunk_range(index: Any, size: int, chunk: int) -> range:
    if isinstance(index, slice):
        start, stop, _ = index.indices(size)
        return range(start // chunk, -(-stop // chunk)) if stop > start else range(0)
    if isinstance(index, int | np.integer):
        i = int(index) % size
        return range(i // chunk, i // chunk + 1)
    return range(0, -(-size // chunk))  # anything else: every chunk along this axis


class CheckedReader:
    """Array-like wrapper of a Zarr array for :func:`dask.array.from_array`.

    Zarr reports a chunk whose CRC-32C fails as a bare ``ValueError`` ("Stored and computed
    checksum do not match"), and a chunk it cannot decode (damaged compressed bytes, a chunk
    of the wrong size for the declared shape or dtype) as whatever the codec raises, deep
    inside a Dask task; this names the store and the rows of the stored chunk that failed,
    in one line. A Dask block may span several stored chunks
    (:func:`emdist.io.chunking.read_block_rows`): after a failure, and only then, they are
    read again one by one to find the damaged one.

    For an array whose record holds each chunk's CRC (record version 2), the chunks just
    read are checked against the CRCs pinned when the array was opened: a store replaced
    or rewritten while it is read stops the read.

    Row blocks of a local array in a layout :class:`emdist.io.chunk_files.ChunkFiles` takes
    are read from the chunk files in the calling thread, not through Zarr's event loop; a
    chunk that read cannot take (missing, damaged) is read through Zarr, so what is returned
    or raised is Zarr's.

    Parameters
    ----------
    array : zarr.Array
    where : str
        The array's location, for messages.
    direct : bool, optional
        Read from the chunk files where the layout allows. Default: Dask configuration
        ``emdist.direct-read`` (``True`` unless set).
    """

    def __init__(self, array: zarr.Array[Any], where: str, direct: bool | None = None) -> None:
        if direct is None:
            direct = bool(dask.config.get("emdist.direct-read", True))
        self._direct = ChunkFiles.of(array) if direct else None
        self.array = array
        self.where = where
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim
        local = array.shards is None and _chunk_file(array, (0,) * array.ndim) is not None
        self._pinned = pinned_crcs(array) if local else None
        self._grid = _grid(array)
        self._hold: Any = None

    def hold(self, lock: Any) -> None:
        """Keep ``lock`` (a shared reader lock) for as long as this reader lives."""
        self._hold = lock

    def __getstate__(self) -> dict[str, Any]:
        # A copy sent to a Dask worker does not own the lock.
        return {**self.__dict__, "_hold": None}

    def __getitem__(self, key: Any) -> Any:
        try:
            out = self._read(key)
        except (EmdistError, MemoryError):
            raise
        except Exception as exc:
            checksum = isinstance(exc, ValueError) and "checksum" in str(exc)
            rows = key[0] if isinstance(key, tuple) and key else key
            what = self._damaged_rows(rows) if isinstance(rows, slice) else "one chunk"
            if checksum:
                raise IntegrityError(
                    f"{self.where}: {what} failed the crc32c checksum of their chunk; the "
                    f"data are damaged (regenerate or re-ingest them)"
                ) from None
            cause = " ".join(str(exc).split())[:120]
            raise IntegrityError(
                f"{self.where}: the chunk of {what} cannot be decoded ({type(exc).__name__}: "
                f"{cause}); the store is damaged (re-ingest it)"
            ) from None
        if self._pinned is not None:
            self._check_pinned(key)
        return out

    def _read(self, key: Any) -> Any:
        """``array[key]``, from the chunk files for whole rows where the layout allows."""
        if self._direct is not None and isinstance(key, tuple) and len(key) == 2:
            rows, cols = key
            if (
                isinstance(rows, slice)
                and isinstance(cols, slice)
                and rows.step in (None, 1)
                and cols.indices(self.shape[1]) == (0, self.shape[1], 1)
            ):
                start, stop, _ = rows.indices(self.shape[0])
                return self._direct.read(start, max(start, stop))
        return self.array[key]

    def _touched(self, key: Any) -> Iterator[tuple[int, ...]]:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        ranges = [
            _chunk_range(k, s, c)
            for k, s, c in zip(key, self.shape, self.array.chunks, strict=False)
        ]
        return itertools.product(*ranges)

    def _check_pinned(self, key: Any) -> None:
        """The chunks just read still end with the CRCs pinned at open."""
        assert self._pinned is not None
        for coords in self._touched(key):
            i = int(np.ravel_multi_index(coords, self._grid))
            path = _chunk_file(self.array, coords)
            assert path is not None
            _, tail = _ChunkFile.tail(path, follow=False)
            if tail is None or int.from_bytes(tail, "little") != self._pinned[i]:
                raise IntegrityError(
                    f"{self.where}: chunk {_coords_name(coords)} changed after it was opened "
                    f"(the store was replaced or rewritten while it was read); stopped "
                    f"rather than mix two versions of the data: run it again"
                )

    def _damaged_rows(self, rows: slice) -> str:
        """``rows a-b`` of the first stored chunk in ``rows`` that fails to read."""
        start, stop, _ = rows.indices(self.shape[0])
        step = self.array.chunks[0]  # the checksummed unit (inner chunk of a shard)
        first = start - start % step
        for lo in range(first, stop, step):
            hi = min(lo + step, self.shape[0])
            try:
                self.array[lo:hi]
            except Exception:
                return f"rows {lo}-{hi}"
        return f"rows {start}-{stop}"  # the failure did not repeat: name the whole block
