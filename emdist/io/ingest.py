"""Ingest: convert a data file into a row-chunked Zarr v3 array that emdist fits out of core.

Sources: ``.npy`` (memory-mapped), CSV (streamed; a header row gives feature names),
Parquet (record batches; column names are feature names), HDF5 (one 2-D dataset) and an
existing Zarr array, each read by its module of :mod:`emdist.io.readers` (a registry: a
new format is one new module there). The source is never loaded whole: it is read one row
block at a time, each block is validated and cast, and written as one Zarr chunk, so memory
stays at a few chunks whatever the file size.

Contract
--------
- The output is a Zarr v3 array of shape ``(n_samples, n_features)``, float64 (or float32 on
  request), chunked by rows only: one chunk holds whole rows and about ``chunk_bytes``.
  ``emdist.io.as_dask_array`` aligns Dask blocks with these chunks, so one block is one read.
- No compression by default: for dense float features it saved only 3-8% of space while
  reading 2.7x slower (``benchmarks/bench_ingest.py``, docs/design.md).
- Only regular files and Zarr directories are read: a device, a FIFO or a socket is refused
  before it is opened (``/dev/zero`` never ends; a FIFO waits for a writer). Text must be
  UTF-8; the first byte that is not is reported with its offset and line.
- Every value is checked while converting: numeric columns only, finite values (after the
  cast), one row length. The first problem raises :class:`IngestError` naming the file, the
  row (and the 1-based line for CSV) and the column.
- Atomic output: the array is written to a sibling ``<dest>.partial-<id>`` and renamed into
  place only when complete. A failure deletes the partial output; a previous good ``dest``
  is untouched until the very end (see :func:`ingest`, ``overwrite``).
- Provenance is stored in the array's attributes: ``feature_names`` (when the source has
  them) and a ``provenance`` object (source path, format, shapes, dtypes, size, creation
  time in UTC, emdist version, chunking, codec).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec, ZstdCodec

from emdist._typing import AnyArray
from emdist._version import __version__
from emdist.exceptions import InvalidDataError, InvalidParameterError
from emdist.io.atomic import OutputExistsError, atomic_output, check_replaceable
from emdist.io.chunking import DEFAULT_CHUNK_BYTES, balanced_chunk_rows, chunk_rows_for_bytes
from emdist.io.integrity import create_verified_array, seal
from emdist.io.readers import (
    IngestError,
    ReadOptions,
    reader_for_name,
    reader_for_path,
    registered_formats,
)
from emdist.io.readers.base import cast_and_check

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "CompressorName",
    "IngestError",
    "IngestResult",
    "SOURCE_FORMATS",
    "SourceFormat",
    "balanced_chunk_rows",
    "chunk_rows_for_bytes",
    "detect_format",
    "parse_source_format",
    "ingest",
    "resolve_compressor",
]

#: A format's name: one of :data:`SOURCE_FORMATS`.
SourceFormat: TypeAlias = str
#: The formats ingest reads (the registered readers): the one list the run configuration
#: and the CLI offer.
SOURCE_FORMATS: tuple[SourceFormat, ...] = registered_formats()
CompressorName: TypeAlias = Literal["none", "zstd", "lz4", "blosc-lz4", "blosc-zstd"]


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` wrote.

    Attributes
    ----------
    path : pathlib.Path
        The Zarr array (pass it to ``emdist.GaussianMixture().fit(path)``).
    source : pathlib.Path
    source_format : str
    shape : tuple of int
        ``(n_samples, n_features)``.
    dtype : str
        ``'float64'`` or ``'float32'``.
    chunk_rows : int
        Rows per Zarr chunk.
    compressor : str
        Codec name, ``'none'`` when uncompressed.
    feature_names : tuple of str or None
    source_bytes : int
        Size of the source on disk.
    seconds : float
        Wall time of the conversion.
    """

    path: Path
    source: Path
    source_format: str
    shape: tuple[int, int]
    dtype: str
    chunk_rows: int
    compressor: str
    feature_names: tuple[str, ...] | None
    source_bytes: int
    seconds: float

    @property
    def nbytes(self) -> int:
        """Size of the array's values in bytes (uncompressed)."""
        return self.shape[0] * self.shape[1] * np.dtype(self.dtype).itemsize

    @property
    def mb_per_s(self) -> float:
        """Throughput in source megabytes (1e6 bytes) per second."""
        return self.source_bytes / 1e6 / self.seconds if self.seconds > 0 else math.inf


def parse_source_format(name: str | None) -> SourceFormat | None:
    """A format name as the config and the CLI give it: ``None`` for ``'auto'``.

    Raises
    ------
    InvalidParameterError
        Naming the formats there are.
    """
    if name is None or name == "auto":
        return None
    return reader_for_name(name).name


def detect_format(source: str | os.PathLike[str]) -> SourceFormat:
    """Guess a source's format from its name (or, for a directory, a Zarr ``zarr.json``).

    Raises
    ------
    IngestError
        When the suffix is unknown; pass ``source_format`` to :func:`ingest` then.
    """
    return reader_for_path(Path(source)).name


_SPECIAL_FILES = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_paths(source: str | os.PathLike[str], dest: str | os.PathLike[str]) -> os.stat_result:
    """Refuse, before anything is opened, paths no source or output can be; stat the source."""
    for argument, path in (("source", source), ("dest", dest)):
        text = os.fspath(path)
        if "\0" in str(text):
            raise InvalidParameterError(
                f"{argument} path {text!r} holds a NUL byte, which no file name can"
            ).naming(argument, f"{argument} path", text)
    src = Path(source)
    try:
        info = src.stat()  # stat, not open: opening a FIFO waits for a writer
    except FileNotFoundError:
        raise FileNotFoundError(f"no such source: {src}") from None
    for test, kind in _SPECIAL_FILES:
        if test(info.st_mode):
            # A device or a pipe has no size and may never end (/dev/zero): refused, not read.
            raise IngestError(
                src,
                f"is {kind}, not a regular file; ingest reads files and Zarr directories",
                hint="Save the data to a file first",
            )
    return info


class _ChunkWriter:
    """Assemble arbitrary row blocks into whole chunks and write each chunk once.

    The array is created at the first write, so a source shorter than one chunk gets a
    chunk of its own length: Zarr stores edge chunks padded to the full chunk shape, and a
    16 MB file for a 10-row CSV would be silly.
    """

    def __init__(
        self,
        path: Path,
        *,
        n_features: int,
        dtype: np.dtype[Any],
        chunk_rows: int,
        n_rows: int | None,
        compressors: list[BytesBytesCodec] | None,
    ) -> None:
        self.path = path
        self.n_features = n_features
        self.dtype = dtype
        self.chunk_rows = chunk_rows
        self.n_rows = n_rows
        self.compressors = compressors
        self.array: zarr.Array[Any] | None = None
        self.written = 0
        self._buf = np.empty((chunk_rows, n_features), dtype=dtype)
        self._fill = 0

    @property
    def buffered(self) -> int:
        """Rows received but not written yet."""
        return self._fill

    def _create(self, chunk_rows: int) -> zarr.Array[Any]:
        self.chunk_rows = chunk_rows
        # Every chunk written (data chunks are never all fill value, and skipping them
        # costs a comparison per chunk that halved write speed), each with a CRC-32C.
        return create_verified_array(
            self.path,
            shape=(self.n_rows if self.n_rows is not None else 0, self.n_features),
            chunks=(chunk_rows, self.n_features),
            dtype=self.dtype,
            compressors=self.compressors,
            fill_value=0.0,
            dimension_names=("sample", "feature"),
        )

    def _flush(self, data: AnyArray) -> None:
        if self.array is None:
            self.array = self._create(self.chunk_rows)
        stop = self.written + data.shape[0]
        if self.n_rows is None:
            # Length unknown until the end (CSV): grow as chunks arrive. Only zarr.json is
            # rewritten; chunks already written stay where they are.
            self.array.resize((stop, self.n_features))
        elif stop > self.n_rows:
            raise RuntimeError(f"source yielded more than the {self.n_rows} rows it declared")
        self.array[self.written : stop] = data
        self.written = stop

    def write(self, block: AnyArray) -> None:
        i = 0
        n = block.shape[0]
        while i < n:
            if self._fill == 0 and n - i >= self.chunk_rows:
                # A whole chunk straight from the block: no copy into the buffer.
                self._flush(block[i : i + self.chunk_rows])
                i += self.chunk_rows
                continue
            take = min(self.chunk_rows - self._fill, n - i)
            self._buf[self._fill : self._fill + take] = block[i : i + take]
            self._fill += take
            i += take
            if self._fill == self.chunk_rows:
                self._flush(self._buf)
                self._fill = 0

    def finish(self) -> zarr.Array[Any]:
        if self.array is None and self._fill > 0:
            self.array = self._create(self._fill)
        if self._fill:
            self._flush(self._buf[: self._fill])
            self._fill = 0
        if self.array is None:
            raise RuntimeError("no rows were written")
        if self.n_rows is not None and self.written != self.n_rows:
            raise RuntimeError(f"wrote {self.written} rows, the source declared {self.n_rows}")
        return self.array


def resolve_compressor(
    compressor: CompressorName | BytesBytesCodec | None, itemsize: int
) -> tuple[list[BytesBytesCodec] | None, str]:
    """The Zarr codecs of a compressor name (or codec), and the name recorded for it.

    ``None`` and ``'none'`` give no codec. Shared by ingest and the synthetic datasets, so
    both name their compressors alike.
    """
    if compressor is None or compressor == "none":
        return None, "none"
    if isinstance(compressor, BytesBytesCodec):
        return [compressor], type(compressor).__name__
    if compressor == "zstd":
        # Level 1: nearly the ratio of the default level on float features, faster to write.
        return [ZstdCodec(level=1)], "zstd"
    if compressor in ("lz4", "blosc-lz4"):
        return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=itemsize)], (
            "blosc-lz4"
        )
    if compressor == "blosc-zstd":
        return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=itemsize)], (
            "blosc-zstd"
        )
    raise InvalidDataError(
        f"compressor must be None, 'none', 'zstd', 'lz4', 'blosc-lz4', 'blosc-zstd' or a "
        f"Zarr bytes-to-bytes codec; got {compressor!r}"
    )


def _check_dest(dest: Path, overwrite: bool) -> None:
    """Refuse, before reading the source, a destination that may not be replaced."""
    if not (dest.exists() or dest.is_symlink()):
        return
    if not overwrite:
        raise OutputExistsError(f"{dest} exists; pass overwrite=True to replace it")
    check_replaceable(dest, "dataset")


def _json_names(names: list[str] | None) -> list[str] | None:
    return None if names is None else [str(n) for n in names]


def ingest(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    source_format: SourceFormat | None = None,
    dataset: str | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    chunk_rows: int | None = None,
    compressor: CompressorName | BytesBytesCodec | None = None,
    dtype: Literal["float64", "float32"] | type[np.floating[Any]] = "float64",
    header: bool | None = None,
    delimiter: str | None = None,
    csv_engine: Literal["auto", "pyarrow", "numpy"] = "auto",
    overwrite: bool = False,
    allow_missing: bool = False,
) -> IngestResult:
    """Convert a data file into a row-chunked Zarr v3 array, streaming and validating it.

    Parameters
    ----------
    source : path
        A ``.npy`` file, a CSV file, a Parquet file, an HDF5 file or a Zarr array: a
        regular file (of any length) or a Zarr directory, never a device, FIFO or socket.
    dest : path
        Where the Zarr array goes (a directory). Its parent is created if needed.
    source_format : {'npy', 'csv', 'parquet', 'hdf5', 'zarr'}, optional
        One of :data:`SOURCE_FORMATS` (the readers of :mod:`emdist.io.readers`).
        Default: from the suffix (``.npy``, ``.csv``/``.tsv``/``.txt``, ``.parquet``/``.pq``,
        ``.h5``/``.hdf5``, ``.zarr`` or a directory holding ``zarr.json``).
    dataset : str, optional
        HDF5 only: the dataset to read. Default: the file's only 2-D dataset.
    chunk_bytes : int, default=16 MiB
        Largest size of one chunk: at most ``chunk_bytes // (n_features * itemsize)``
        rows (at least 1), lowered so that the rows split into near-equal chunks when the
        source's length is known (every format but CSV); see :func:`balanced_chunk_rows`.
        50k-100k rows of 32 float64 features (13-26 MB) read fastest on our machines.
    chunk_rows : int, optional
        Rows per chunk exactly (at most ``n_samples``), overriding ``chunk_bytes``.
    compressor : {'none', 'zstd', 'lz4', 'blosc-lz4', 'blosc-zstd'} or codec, optional
        Default: none. Dense float features barely compress (3-8%) and compressed chunks
        read several times slower; see ``benchmarks/bench_ingest.py``.
    dtype : {'float64', 'float32'}, default='float64'
        Output dtype. Integers are converted exactly up to 2**53 (float64).
    header : bool, optional
        CSV only: whether the first non-blank line holds column names. Default: inferred
        (a header is a first line in which no field is a number).
    delimiter : str, optional
        CSV only. Default: a tab for a ``.tsv`` file or a first line holding tabs and no
        comma, else a comma.
    csv_engine : {'auto', 'pyarrow', 'numpy'}, default='auto'
        CSV only: pyarrow's multi-threaded parser when installed, else numpy's.
    overwrite : bool, default=False
        Replace an existing ``dest`` (only a Zarr array or an empty directory). The old
        output stays intact until the new one is complete, then is swapped out; see
        "Atomicity" below. ``source`` and ``dest`` may be the same Zarr array (to rechunk
        or recompress it).
    allow_missing : bool, default=False
        Keep missing values as NaN instead of refusing them: NaN in any format, a null in
        Parquet, an empty field (or ``NA``, ``null``... pyarrow's null spellings) in CSV.
        For a fit with ``missing='marginalize'``; infinity is still refused. Recorded in
        the provenance (``allow_missing: true``).

    Returns
    -------
    IngestResult
        Path, shape, dtype, chunking, feature names and timing of the output.

    Raises
    ------
    IngestError
        A non-numeric column, a missing, non-finite or (for float32) overflowing value, a
        ragged CSV row, a source that is not 2-D, or no data rows. The message names the
        file, the row (and CSV line) and the column. No output is left behind. Also, before
        anything is read: a device, FIFO or socket; a file that is not ``source_format``;
        CSV text that is not UTF-8 (naming the byte offset and line); an unknown suffix.
    FileExistsError
        ``dest`` exists and ``overwrite`` is false, or it is not something we may replace.
    ValueError
        Unknown format or options, a path holding a NUL byte (``InvalidParameterError``).
    DiskFullError
        The disk filled up: one line naming ``dest``, the space needed (when the source's
        length is known) and free; nothing is left behind.

    Notes
    -----
    Atomicity (:func:`emdist.io.atomic.atomic_output`). The array is written to
    ``<dest>.partial-<id>`` next to ``dest`` and renamed into place when complete; any
    failure (including Ctrl-C) deletes it. With ``overwrite``, the old ``dest`` is renamed
    to ``<dest>.old-<id>``, the new one renamed in, the old one deleted: for the
    microseconds between the two renames ``dest`` does not exist (a reader gets "not
    found", never a mix of old and new chunks). A hard kill in that window leaves the old
    output whole in ``<dest>.old-<id>``; the next ingest to ``dest`` (or
    ``emdist.io.atomic.recover_output``) puts it back and deletes stray ``*.partial-*``
    siblings, so do not run two ingests into the same ``dest`` at once. Renames give
    atomicity, not durability: no ``fsync`` is issued, so a power cut may lose recently
    written chunks.

    Examples
    --------
    >>> from emdist.io.ingest import ingest  # doctest: +SKIP
    >>> result = ingest("features.csv", "data/features.zarr")  # doctest: +SKIP
    >>> emdist.GaussianMixture(16).fit(result.path)  # doctest: +SKIP
    """
    started = time.perf_counter()
    info = _check_paths(source, dest)
    src = Path(source)
    out = Path(dest)
    reader_type = reader_for_name(source_format) if source_format else reader_for_path(src)
    fmt = reader_type.name
    target = np.dtype(dtype)
    if target not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise InvalidParameterError(f"dtype must be float64 or float32; got {target}")
    if chunk_rows is not None and (not isinstance(chunk_rows, int | np.integer) or chunk_rows < 1):
        raise InvalidParameterError(f"chunk_rows must be a positive int; got {chunk_rows!r}")
    if csv_engine not in ("auto", "pyarrow", "numpy"):
        raise InvalidParameterError(
            f"csv_engine must be 'auto', 'pyarrow' or 'numpy'; got {csv_engine!r}"
        )
    compressors, codec_name = resolve_compressor(compressor, target.itemsize)
    _check_dest(out, overwrite)  # fail before reading a byte of a large source
    # Size and mtime before reading: if the source changes while we convert, the recorded
    # provenance no longer matches it, so pipeline.steps re-ingests instead of reusing.
    source_bytes = _source_bytes(src)
    source_mtime = dt.datetime.fromtimestamp(info.st_mtime, dt.UTC).isoformat()

    options = ReadOptions(
        dtype=target,
        dataset=dataset,
        header=header,
        delimiter=delimiter,
        csv_engine=csv_engine,
        format_given=source_format is not None,
        allow_missing=bool(allow_missing),
    )
    if stat.S_ISDIR(info.st_mode) and not reader_type.claims(src):
        raise reader_type.not_this_format(src, "it is a directory", options)
    reader = reader_type.open(src, options)
    reader.allow_missing = bool(allow_missing)
    if chunk_rows is not None:
        rows = int(chunk_rows)
        if reader.n_rows:
            rows = min(rows, reader.n_rows)
    else:
        rows = chunk_rows_for_bytes(reader.n_features, target.itemsize, chunk_bytes)
        if reader.n_rows:
            rows = balanced_chunk_rows(reader.n_rows, rows)
    # Known when the source knows its length: for the message if the disk fills up.
    needed = reader.n_rows * reader.n_features * target.itemsize if reader.n_rows else None
    # Folders made for dest (and its lock) go again if the ingest fails: nothing is left.
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    try:
        # atomic_output writes into <dest>.partial-<id>, deletes it on any error, and on
        # success swaps it in (old dest renamed aside, new renamed in, old deleted).
        with atomic_output(out, overwrite=overwrite, kind="dataset", needed=needed) as tmp:
            writer = _ChunkWriter(
                tmp,
                n_features=reader.n_features,
                dtype=target,
                chunk_rows=rows,
                n_rows=reader.n_rows or None,
                compressors=compressors,
            )
            for block, row0 in reader.blocks(rows):
                writer.write(cast_and_check(reader, block, row0, target, bool(allow_missing)))
            if writer.written + writer.buffered == 0:
                raise IngestError(src, "no data rows")
            array = writer.finish()
            n = writer.written
            attrs: dict[str, Any] = {}
            if reader.feature_names is not None:
                attrs["feature_names"] = _json_names(reader.feature_names)
            attrs["provenance"] = {
                "source": str(src.resolve()),
                "format": fmt,
                "source_shape": [n, reader.n_features],
                "source_dtype": reader.source_dtype,
                "source_bytes": source_bytes,
                "source_mtime": source_mtime,
                **reader.extra,
                "shape": [n, reader.n_features],
                "dtype": str(target),
                "chunk_rows": writer.chunk_rows,
                "compressor": codec_name,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "emdist_version": __version__,
                "created_by": "emdist.io.ingest",
            }
            if allow_missing:
                attrs["provenance"]["allow_missing"] = True
            array.update_attributes(attrs)
            seal(array)  # shape, chunks, dtype and chunk count, checked on every open
            # Close before the swap: an HDF5 handle, or the old store when source is dest.
            reader.close()
    except BaseException:
        for folder in made:  # deepest first; one that is not empty is someone else's now
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        reader.close()
    return IngestResult(
        path=out,
        source=src,
        source_format=fmt,
        shape=(n, reader.n_features),
        dtype=str(target),
        chunk_rows=writer.chunk_rows,
        compressor=codec_name,
        feature_names=tuple(reader.feature_names) if reader.feature_names else None,
        source_bytes=source_bytes,
        seconds=time.perf_counter() - started,
    )


def _source_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
