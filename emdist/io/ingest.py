"""Ingest: convert a data file into a row-chunked Zarr v3 array that emdist fits out of core.

Sources: ``.npy`` (memory-mapped), CSV (streamed; a header row gives feature names),
Parquet (record batches; column names are feature names), HDF5 (one 2-D dataset) and an
existing Zarr array. The source is never loaded whole: it is read one row block at a time,
each block is validated and cast, and written as one Zarr chunk, so memory stays at a few
chunks whatever the file size.

Contract
--------
- The output is a Zarr v3 array of shape ``(n_samples, n_features)``, float64 (or float32 on
  request), chunked by rows only: one chunk holds whole rows and about ``chunk_bytes``.
  ``emdist.io.as_dask_array`` aligns Dask blocks with these chunks, so one block is one read.
- No compression by default: for dense float features it saved only 3-8% of space while
  reading 2.7x slower (``benchmarks/bench_ingest.py``, docs/design.md).
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

import csv
import datetime as dt
import io
import itertools
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias, get_args

import numpy as np
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec, ZstdCodec

from emdist._typing import AnyArray
from emdist._version import __version__
from emdist.exceptions import InvalidDataError, InvalidParameterError
from emdist.io.atomic import OutputExistsError, atomic_output, check_replaceable
from emdist.io.chunking import DEFAULT_CHUNK_BYTES, balanced_chunk_rows, chunk_rows_for_bytes
from emdist.io.integrity import create_verified_array, seal, verify_array

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "IngestError",
    "IngestResult",
    "SOURCE_FORMATS",
    "SourceFormat",
    "balanced_chunk_rows",
    "chunk_rows_for_bytes",
    "detect_format",
    "parse_source_format",
    "ingest",
]

SourceFormat: TypeAlias = Literal["npy", "csv", "parquet", "hdf5", "zarr"]
#: The formats ingest reads: the one list the run configuration and the CLI offer.
SOURCE_FORMATS: tuple[SourceFormat, ...] = get_args(SourceFormat)
CompressorName: TypeAlias = Literal["none", "zstd", "lz4", "blosc-lz4", "blosc-zstd"]


_SUFFIXES: dict[str, SourceFormat] = {
    ".npy": "npy",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".he5": "hdf5",
    ".zarr": "zarr",
}


class IngestError(InvalidDataError):
    """A source cannot be converted: a text column, a missing or non-finite value, a ragged row.

    A subclass of :class:`emdist.InvalidDataError` (hence of ``ValueError``). The message
    names the file, the row and the column; the same facts are attributes.

    Attributes
    ----------
    path : str
        The source file.
    row : int or None
        0-based index of the data row (header and blank lines not counted).
    line : int or None
        1-based line number in the file (CSV only).
    column : int or None
        0-based column index.
    column_name : str or None
        The column's name when the source has names.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        problem: str,
        *,
        row: int | None = None,
        line: int | None = None,
        column: int | None = None,
        column_name: str | None = None,
        hint: str = "",
    ) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        self.row = row
        self.line = line
        self.column = column
        self.column_name = column_name
        where = []
        if row is not None:
            where.append(
                f"line {line} (data row index {row})"
                if line is not None
                else f"data row index {row}"
            )
        elif line is not None:
            where.append(f"line {line}")
        if column_name is not None:
            where.append(
                f"column {column_name!r}" + (f" (index {column})" if column is not None else "")
            )
        elif column is not None:
            where.append(f"column {column}")
        location = "".join(f"{w}, " for w in where[:-1]) + (f"{where[-1]}: " if where else "")
        message = f"{self.path}: {location}{problem}"
        super().__init__(message + (f". {hint}" if hint else ""))


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
    for fmt in SOURCE_FORMATS:
        if fmt == name:
            return fmt
    allowed = ", ".join(repr(f) for f in ("auto", *SOURCE_FORMATS))
    raise InvalidParameterError(f"source_format must be one of {allowed}; got {name!r}")


def detect_format(source: str | os.PathLike[str]) -> SourceFormat:
    """Guess a source's format from its name (or, for a directory, a Zarr ``zarr.json``).

    Raises
    ------
    ValueError
        When the suffix is unknown; pass ``source_format`` to :func:`ingest` then.
    """
    path = Path(source)
    if path.is_dir():
        if (path / "zarr.json").exists() or (path / ".zarray").exists():
            return "zarr"
        raise InvalidDataError(f"{path} is a directory but not a Zarr array (no zarr.json)")
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise InvalidDataError(
            f"cannot tell the format of {path} from its suffix {path.suffix!r}; pass "
            f"source_format= one of {', '.join(repr(f) for f in SOURCE_FORMATS)}"
        )
    return fmt


# --------------------------------------------------------------------------------------
# Readers: each yields row blocks in the source's dtype with the index of their first row.


class _Reader(Protocol):
    fmt: SourceFormat
    path: Path
    n_rows: int | None  # None when only a full pass can tell (CSV)
    n_features: int
    feature_names: list[str] | None
    source_dtype: str
    extra: dict[str, Any]

    def blocks(self, rows: int) -> Iterator[tuple[AnyArray, int]]: ...

    def error(self, row: int, column: int, problem: str, hint: str = "") -> IngestError: ...

    def close(self) -> None: ...


def _column_name(names: list[str] | None, column: int) -> str | None:
    return names[column] if names is not None and column < len(names) else None


def _check_numeric_dtype(path: Path, dtype: np.dtype[Any], what: str) -> None:
    # Booleans are integers to numpy but not features: reject them with the other
    # non-numbers rather than silently turning them into 0.0 / 1.0.
    if dtype.kind not in "iuf":
        raise IngestError(
            path,
            f"{what} has dtype {dtype}, not a real number type",
            hint="Only numeric (integer or floating-point) data can be ingested",
        )


class _ArrayReader:
    """Anything sliceable by rows with a numpy dtype: a .npy memmap, HDF5, a Zarr array."""

    def __init__(
        self,
        fmt: SourceFormat,
        path: Path,
        array: Any,
        feature_names: list[str] | None,
        extra: dict[str, Any] | None = None,
        on_close: Any = None,
        block_multiple: int = 1,
    ) -> None:
        self.fmt = fmt
        self.path = path
        self._array = array
        shape = tuple(array.shape)
        if len(shape) != 2:
            raise IngestError(
                path,
                f"the data is {len(shape)}-D with shape {shape}; a 2-D "
                f"(n_samples, n_features) array is required",
                hint="Reshape 1-D data to (n, 1) before ingesting",
            )
        dtype = np.dtype(array.dtype)
        _check_numeric_dtype(path, dtype, "the data")
        self._length = int(shape[0])
        self.n_rows: int | None = self._length
        self.n_features = int(shape[1])
        if self.n_features == 0:
            raise IngestError(
                path, f"the data has 0 columns (shape {shape}); at least one is required"
            )
        if feature_names is not None and len(feature_names) != self.n_features:
            feature_names = None  # stale or foreign metadata: better no names than wrong ones
        self.feature_names = feature_names
        self.source_dtype = str(dtype)
        self.extra = extra or {}
        self._on_close = on_close
        self._block_multiple = block_multiple

    def blocks(self, rows: int) -> Iterator[tuple[AnyArray, int]]:
        # Reading whole source chunks avoids decoding a source chunk twice.
        step = max(self._block_multiple, rows // self._block_multiple * self._block_multiple)
        for start in range(0, self._length, step):
            yield np.asarray(self._array[start : start + step]), start

    def error(self, row: int, column: int, problem: str, hint: str = "") -> IngestError:
        return IngestError(
            self.path,
            problem,
            row=row,
            column=column,
            column_name=_column_name(self.feature_names, column),
            hint=hint,
        )

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


def _open_npy(path: Path) -> _ArrayReader:
    # mmap: the OS pages rows in as blocks are sliced; nothing is loaded up front.
    # allow_pickle=False: an object array in a .npy could run code when loaded.
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
    return _ArrayReader("npy", path, array, None)


def _hdf5_candidates(file: Any) -> list[str]:
    import h5py  # type: ignore[import-untyped]

    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim == 2:
            found.append(name)

    file.visititems(visit)
    return found


def _decode_names(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = np.asarray(value).ravel().tolist()
    return [v.decode() if isinstance(v, bytes) else str(v) for v in items]


def _open_hdf5(path: Path, dataset: str | None) -> _ArrayReader:
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py is in the io extra
        raise ImportError("reading HDF5 needs h5py: pip install 'emdist[io]'") from exc
    file = h5py.File(path, "r")
    try:
        if dataset is None:
            candidates = _hdf5_candidates(file)
            if len(candidates) != 1:
                raise InvalidDataError(
                    f"{path} holds {len(candidates)} two-dimensional datasets "
                    f"({', '.join(candidates) or 'none'}); pass dataset= to choose one"
                )
            dataset = candidates[0]
        if dataset not in file or not isinstance(file[dataset], h5py.Dataset):
            raise InvalidDataError(f"{path} has no dataset {dataset!r}")
        ds = file[dataset]
        names = None
        for key in ("feature_names", "columns", "column_names"):
            if key in ds.attrs:
                names = _decode_names(ds.attrs[key])
                break
        multiple = int(ds.chunks[0]) if ds.chunks else 1
        return _ArrayReader(
            "hdf5",
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


def _open_zarr(path: Path) -> _ArrayReader:
    try:
        array = zarr.open_array(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
        raise InvalidDataError(f"no Zarr array at {path}: {exc}") from None
    verify_array(array, str(path))  # a damaged source emdist wrote is refused, not copied
    names = array.attrs.get("feature_names")
    source_rows = int((array.shards or array.chunks)[0])
    # Keep the chain: re-chunking an ingested array must not forget the original file.
    previous = array.attrs.get("provenance")
    return _ArrayReader(
        "zarr",
        path,
        array,
        _decode_names(names) if isinstance(names, list) else None,
        extra={"source_provenance": previous} if isinstance(previous, dict) else None,
        block_multiple=source_rows,
    )


class _ParquetReader:
    """Record batches of a Parquet file, checked column by column."""

    fmt: SourceFormat = "parquet"

    def __init__(self, path: Path) -> None:
        try:
            import pyarrow as pa  # type: ignore[import-untyped]
            import pyarrow.parquet as pq  # type: ignore[import-untyped]
        except ImportError as exc:  # pragma: no cover - pyarrow is in the io extra
            raise ImportError("reading Parquet needs pyarrow: pip install 'emdist[io]'") from exc
        self.path = path
        self._file = pq.ParquetFile(path)
        schema = self._file.schema_arrow
        self.feature_names: list[str] | None = [str(n) for n in schema.names]
        self.n_features = len(self.feature_names)
        self.n_rows: int | None = int(self._file.metadata.num_rows)
        types = []
        for j, field in enumerate(schema):
            t = field.type
            # Decimals, booleans, dates and strings are not real-valued features; reject
            # them by name before a single row is read.
            if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
                raise IngestError(
                    path,
                    f"has type {t}, not a numeric type",
                    column=j,
                    column_name=field.name,
                    hint="Only numeric columns can be ingested; drop or encode this column",
                )
            types.append(str(t))
        if self.n_features == 0:
            raise IngestError(path, "has no columns")
        self.source_dtype = types[0] if len(set(types)) == 1 else ", ".join(types)
        self.extra: dict[str, Any] = {"row_groups": int(self._file.metadata.num_row_groups)}

    def blocks(self, rows: int) -> Iterator[tuple[AnyArray, int]]:
        start = 0
        for batch in self._file.iter_batches(batch_size=rows, use_threads=True):
            n = batch.num_rows
            out = np.empty((n, self.n_features), dtype=np.float64)
            for j, col in enumerate(batch.columns):
                if col.null_count:
                    r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                    raise self.error(start + r, j, "missing value (null)")
                out[:, j] = col.to_numpy(zero_copy_only=False)
            yield out, start
            start += n

    def error(self, row: int, column: int, problem: str, hint: str = "") -> IngestError:
        return IngestError(
            self.path,
            problem,
            row=row,
            column=column,
            column_name=_column_name(self.feature_names, column),
            hint=hint,
        )

    def close(self) -> None:
        self._file.close()


def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class _CsvReader:
    """CSV streamed in blocks of lines, parsed by numpy's C parser or pyarrow's.

    Both engines find the same problems. The pyarrow engine (multi-threaded, ~4x faster)
    does not know line numbers, so when it meets a problem the file is re-read with the
    numpy engine, which does, up to the first problem: the error costs a second pass, a
    clean file costs nothing.
    """

    fmt: SourceFormat = "csv"

    def __init__(
        self,
        path: Path,
        *,
        header: bool | None,
        delimiter: str | None,
        engine: Literal["auto", "pyarrow", "numpy"],
        dtype: np.dtype[Any],
    ) -> None:
        self.path = path
        self._target_dtype = dtype
        self.n_rows: int | None = None
        self.source_dtype = "text"
        if engine == "auto":
            try:
                import pyarrow.csv  # type: ignore[import-untyped]  # noqa: F401

                engine = "pyarrow"
            except ImportError:  # pragma: no cover - pyarrow is in the io extra
                engine = "numpy"
        self.engine = engine
        # The first non-blank line decides the width and whether there is a header.
        self._skip_lines = 0  # raw lines before the first data line
        first: list[str] | None = None
        with self._open() as f:
            for line in f:
                self._skip_lines += 1
                if line.strip():
                    if delimiter is None:
                        delimiter = _detect_delimiter(path, line)
                    first = next(csv.reader([line], delimiter=delimiter))
                    break
        self.delimiter = delimiter or ","
        self.extra: dict[str, Any] = {"delimiter": self.delimiter}
        if first is None:
            raise IngestError(path, "the file is empty (no header, no data rows)")
        if header is None:
            # A header row is one with no number in it; a row mixing numbers and text is
            # data with a text column, and is reported as such.
            header = all(_parse_float(x) is None for x in first)
        if header:
            self.feature_names: list[str] | None = [x.strip() for x in first]
        else:
            self.feature_names = None
            self._skip_lines -= 1
        self.n_features = len(first)
        self.extra["header"] = bool(header)
        # State of the block being read by the numpy engine, to turn a row into a line.
        self._lines: list[str] = []
        self._first_line = 0
        self._row0 = 0

    def _open(self) -> io.TextIOWrapper:
        # utf-8-sig drops a byte-order mark that spreadsheet exports put before the header.
        return open(self.path, encoding="utf-8-sig", newline=None)

    def blocks(self, rows: int) -> Iterator[tuple[AnyArray, int]]:
        if self.engine == "pyarrow":
            return self._blocks_pyarrow(rows)
        return self._blocks_numpy(rows)

    # numpy engine ----------------------------------------------------------------------

    def _blocks_numpy(self, rows: int) -> Iterator[tuple[AnyArray, int]]:
        with self._open() as f:
            for _ in range(self._skip_lines):
                next(f)
            line_no = self._skip_lines
            row0 = 0
            while True:
                lines = list(itertools.islice(f, rows))
                if not lines:
                    return
                self._lines, self._first_line, self._row0 = lines, line_no + 1, row0
                line_no += len(lines)
                # Blank lines (a trailing newline, separators) carry no data; skip them.
                data = [ln for ln in lines if ln.strip()]
                if not data:
                    continue
                try:
                    block = np.loadtxt(
                        data,
                        delimiter=self.delimiter,
                        comments=None,
                        quotechar='"',
                        dtype=np.float64,
                        ndmin=2,
                    )
                except ValueError as exc:
                    raise self._explain_block(str(exc)) from None
                if block.shape[1] != self.n_features:
                    raise self._explain_block(f"{block.shape[1]} columns")
                yield block, row0
                row0 += len(data)

    def _block_rows(self) -> Iterator[tuple[int, int, str]]:
        """(data row, line number, text) of the current block's non-blank lines."""
        row = self._row0
        for i, text in enumerate(self._lines):
            if text.strip():
                yield row, self._first_line + i, text
                row += 1

    def _explain_block(self, parser_message: str) -> IngestError:
        """Find, field by field, what numpy's parser refused in the current block."""
        for row, line, text in self._block_rows():
            fields = next(csv.reader([text], delimiter=self.delimiter))
            if len(fields) != self.n_features:
                return IngestError(
                    self.path,
                    f"the row has {len(fields)} value(s), expected {self.n_features} (the "
                    f"width of the {'header' if self.feature_names else 'first row'})",
                    row=row,
                    line=line,
                    hint="Every row needs the same number of values",
                )
            for j, field in enumerate(fields):
                if _parse_float(field) is None:
                    what = (
                        "empty value (missing)"
                        if not field.strip()
                        else f"value {field.strip()[:40]!r} is not a number"
                    )
                    return IngestError(
                        self.path,
                        what,
                        row=row,
                        line=line,
                        column=j,
                        column_name=_column_name(self.feature_names, j),
                        hint="Only numeric columns without missing values can be ingested",
                    )
        return IngestError(
            self.path,
            f"cannot parse lines {self._first_line}-{self._first_line + len(self._lines) - 1}: "
            f"{parser_message}",
        )

    # pyarrow engine --------------------------------------------------------------------

    def _blocks_pyarrow(self, rows: int) -> Iterator[tuple[AnyArray, int]]:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        # Our own column names: a header may repeat names, and pyarrow keys types by name.
        names = [f"c{j}" for j in range(self.n_features)]
        try:
            # open_csv already parses the first block: its errors are the file's errors too.
            reader = pacsv.open_csv(
                self.path,
                read_options=pacsv.ReadOptions(
                    column_names=names,
                    skip_rows=self._skip_lines,
                    # pyarrow's default 1 MiB batches parsed as fast as 4-16 MiB ones
                    # here; the writer re-assembles them into chunks of `rows` rows.
                    block_size=2**20,
                    encoding="utf8",
                ),
                parse_options=pacsv.ParseOptions(delimiter=self.delimiter, quote_char='"'),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.float64()),
                ),
            )
        except pa.ArrowInvalid as exc:
            raise self._locate(str(exc)) from None
        row0 = 0
        with reader:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except pa.ArrowInvalid as exc:
                    raise self._locate(str(exc)) from None
                n = batch.num_rows
                out = np.empty((n, self.n_features), dtype=np.float64)
                for j, col in enumerate(batch.columns):
                    # pyarrow reads "", "NaN", "NA", "null"... as null; the numpy pass
                    # tells which.
                    if col.null_count:
                        raise self._locate("missing value")
                    out[:, j] = col.to_numpy(zero_copy_only=False)
                yield out, row0
                row0 += n

    def _locate(self, message: str) -> IngestError:
        """Re-read with the numpy engine to name the line of the first problem."""
        numpy_reader = _CsvReader(
            self.path,
            header=self.feature_names is not None,
            delimiter=self.delimiter,
            engine="numpy",
            dtype=self._target_dtype,
        )
        try:
            _validate_only(numpy_reader, self._target_dtype)
        except IngestError as exc:
            return exc
        return IngestError(self.path, f"cannot parse the CSV: {message}")

    def error(self, row: int, column: int, problem: str, hint: str = "") -> IngestError:
        if self.engine == "pyarrow":
            # Only the numpy engine knows lines; it finds this same problem (or an
            # earlier one, which is the one to report).
            return self._locate(problem)
        line = next((ln for r, ln, _ in self._block_rows() if r == row), None)
        return IngestError(
            self.path,
            problem,
            row=row,
            line=line,
            column=column,
            column_name=_column_name(self.feature_names, column),
            hint=hint,
        )

    def close(self) -> None:
        pass


def _detect_delimiter(path: Path, first_line: str) -> str:
    """Tab for a ``.tsv`` file or a first line with tabs and no comma; else comma."""
    if path.suffix.lower() == ".tsv" or ("\t" in first_line and "," not in first_line):
        return "\t"
    return ","


def _open_reader(
    fmt: SourceFormat,
    path: Path,
    *,
    dataset: str | None,
    header: bool | None,
    delimiter: str | None,
    csv_engine: Literal["auto", "pyarrow", "numpy"],
    dtype: np.dtype[Any],
) -> _Reader:
    if fmt == "npy":
        return _open_npy(path)
    if fmt == "csv":
        return _CsvReader(path, header=header, delimiter=delimiter, engine=csv_engine, dtype=dtype)
    if fmt == "parquet":
        return _ParquetReader(path)
    if fmt == "hdf5":
        return _open_hdf5(path, dataset)
    if fmt == "zarr":
        return _open_zarr(path)
    raise InvalidParameterError(f"unknown source_format {fmt!r}")


# --------------------------------------------------------------------------------------
# Validation and writing


def _cast_and_check(reader: _Reader, block: AnyArray, row0: int, dtype: np.dtype[Any]) -> AnyArray:
    """Cast a block to the output dtype; raise at the first value that is not finite."""
    with np.errstate(over="ignore"):  # overflow to float32 is reported below, by value
        out = np.ascontiguousarray(block, dtype=dtype)
    finite = np.isfinite(out)
    if not finite.all():
        r, c = (int(i) for i in np.argwhere(~finite)[0])
        before = block[r, c]
        if np.isfinite(before):
            problem = f"value {before.item()!r} overflows {dtype} (it would become {out[r, c]})"
            hint = "Ingest as float64 or rescale the feature"
        else:
            problem = f"non-finite value {float(before)}"
            hint = "Remove or impute NaN and infinite values first"
        raise reader.error(row0 + r, c, problem, hint)
    return out


def _validate_only(reader: _Reader, dtype: np.dtype[Any]) -> None:
    rows = chunk_rows_for_bytes(reader.n_features, 8, DEFAULT_CHUNK_BYTES)
    for block, row0 in reader.blocks(rows):
        _cast_and_check(reader, block, row0, dtype)


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


def _resolve_compressor(
    compressor: CompressorName | BytesBytesCodec | None, itemsize: int
) -> tuple[list[BytesBytesCodec] | None, str]:
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
) -> IngestResult:
    """Convert a data file into a row-chunked Zarr v3 array, streaming and validating it.

    Parameters
    ----------
    source : path
        A ``.npy`` file, a CSV file, a Parquet file, an HDF5 file or a Zarr array.
    dest : path
        Where the Zarr array goes (a directory). Its parent is created if needed.
    source_format : {'npy', 'csv', 'parquet', 'hdf5', 'zarr'}, optional
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

    Returns
    -------
    IngestResult
        Path, shape, dtype, chunking, feature names and timing of the output.

    Raises
    ------
    IngestError
        A non-numeric column, a missing, non-finite or (for float32) overflowing value, a
        ragged CSV row, a source that is not 2-D, or no data rows. The message names the
        file, the row (and CSV line) and the column. No output is left behind.
    FileExistsError
        ``dest`` exists and ``overwrite`` is false, or it is not something we may replace.
    ValueError
        Unknown format or options.

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
    src = Path(source)
    out = Path(dest)
    if not src.exists():
        raise FileNotFoundError(f"no such source: {src}")
    fmt = source_format or detect_format(src)
    target = np.dtype(dtype)
    if target not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise InvalidParameterError(f"dtype must be float64 or float32; got {target}")
    if chunk_rows is not None and (not isinstance(chunk_rows, int | np.integer) or chunk_rows < 1):
        raise InvalidParameterError(f"chunk_rows must be a positive int; got {chunk_rows!r}")
    if csv_engine not in ("auto", "pyarrow", "numpy"):
        raise InvalidParameterError(
            f"csv_engine must be 'auto', 'pyarrow' or 'numpy'; got {csv_engine!r}"
        )
    compressors, codec_name = _resolve_compressor(compressor, target.itemsize)
    _check_dest(out, overwrite)  # fail before reading a byte of a large source
    # Size and mtime before reading: if the source changes while we convert, the recorded
    # provenance no longer matches it, so pipeline.steps re-ingests instead of reusing.
    source_bytes = _source_bytes(src)
    source_mtime = dt.datetime.fromtimestamp(src.stat().st_mtime, dt.UTC).isoformat()

    reader = _open_reader(
        fmt,
        src,
        dataset=dataset,
        header=header,
        delimiter=delimiter,
        csv_engine=csv_engine,
        dtype=target,
    )
    if chunk_rows is not None:
        rows = int(chunk_rows)
        if reader.n_rows:
            rows = min(rows, reader.n_rows)
    else:
        rows = chunk_rows_for_bytes(reader.n_features, target.itemsize, chunk_bytes)
        if reader.n_rows:
            rows = balanced_chunk_rows(reader.n_rows, rows)
    try:
        # atomic_output writes into <dest>.partial-<id>, deletes it on any error, and on
        # success swaps it in (old dest renamed aside, new renamed in, old deleted).
        with atomic_output(out, overwrite=overwrite, kind="dataset") as tmp:
            writer = _ChunkWriter(
                tmp,
                n_features=reader.n_features,
                dtype=target,
                chunk_rows=rows,
                n_rows=reader.n_rows or None,
                compressors=compressors,
            )
            for block, row0 in reader.blocks(rows):
                writer.write(_cast_and_check(reader, block, row0, target))
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
            array.attrs.update(attrs)
            seal(array)  # shape, chunks, dtype and chunk count, checked on every open
            # Close before the swap: an HDF5 handle, or the old store when source is dest.
            reader.close()
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
