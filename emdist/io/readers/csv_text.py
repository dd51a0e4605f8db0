"""CSV (and tab-separated) text, streamed in blocks of lines; a header row gives names.

The text must be UTF-8 (a byte-order mark is dropped). Anything else (Latin-1, UTF-16, a
binary file, a NUL byte) is refused with the byte offset and line of the first byte that is
not UTF-8 text: found by :func:`first_non_text_byte`, a second pass over the bytes made only
once decoding has failed, so a clean file costs nothing.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from emdist._typing import AnyArray
from emdist.io.chunking import DEFAULT_CHUNK_BYTES, chunk_rows_for_bytes
from emdist.io.readers.base import (
    IngestError,
    Reader,
    ReadOptions,
    cast_and_check,
    column_name,
)

__all__ = ["CsvReader", "first_non_text_byte"]

_BOMS = {
    codecs.BOM_UTF32_LE: "UTF-32",  # before UTF-16: its mark starts with UTF-16's
    codecs.BOM_UTF32_BE: "UTF-32",
    codecs.BOM_UTF16_LE: "UTF-16",
    codecs.BOM_UTF16_BE: "UTF-16",
}


def first_non_text_byte(path: Path, block: int = 2**20) -> tuple[int, int, str] | None:
    """The first byte of ``path`` that is not UTF-8 text: (offset, 1-based line, why).

    A NUL byte counts as not text (no text file holds one; binary files do). None when the
    whole file is UTF-8 text.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    position = 0  # file offset of the start of `chunk`
    lines = 0  # newlines before `chunk`
    with open(path, "rb") as f:
        while chunk := f.read(block):
            tail = decoder.getstate()[0]  # the start of a character cut by the last read
            found: tuple[int, str] | None = None
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                data = tail + chunk
                found = (position - len(tail) + exc.start, f"byte 0x{data[exc.start]:02x}")
            nul = chunk.find(b"\0")
            if nul >= 0 and (found is None or position + nul < found[0]):
                found = (position + nul, "a NUL byte")
            if found is not None:
                at, why = found
                return at, lines + chunk.count(b"\n", 0, max(0, at - position)) + 1, why
            lines += chunk.count(b"\n")
            position += len(chunk)
        tail = decoder.getstate()[0]
        if tail:
            return position - len(tail), lines + 1, "a character cut off by the end of the file"
    return None


def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


#: What pyarrow's CSV reader reads as null by default: missing values when they are kept.
_NULL_SPELLINGS = frozenset(
    {
        "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
        "1.#QNAN", "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null",
    }
)  # fmt: skip


def _missing_as_nan(text: str) -> float:
    """A CSV field as a float, a null spelling (an empty field, ``NA``...) as NaN."""
    field = text.strip().strip('"')
    return math.nan if field in _NULL_SPELLINGS else float(field)


def _detect_delimiter(path: Path, first_line: str) -> str:
    """Tab for a ``.tsv`` file or a first line with tabs and no comma; else comma."""
    if path.suffix.lower() == ".tsv" or ("\t" in first_line and "," not in first_line):
        return "\t"
    return ","


class CsvReader(Reader):
    """CSV streamed in blocks of lines, parsed by numpy's C parser or pyarrow's.

    Both engines find the same problems. The pyarrow engine (multi-threaded, ~4x faster)
    does not know line numbers, so when it meets a problem the file is re-read with the
    numpy engine, which does, up to the first problem: the error costs a second pass, a
    clean file costs nothing.
    """

    name = "csv"
    suffixes = (".csv", ".tsv", ".txt")
    what = "a CSV file"
    order = 20

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
        self.n_rows = None
        self.source_dtype = "text"
        if engine == "auto":
            try:
                import pyarrow.csv  # type: ignore[import-untyped]  # noqa: F401

                engine = "pyarrow"
            except ImportError:  # pragma: no cover - pyarrow is in the io extra
                engine = "numpy"
        self.engine = engine
        with open(path, "rb") as f:
            start = f.read(4)
        for bom, encoding in _BOMS.items():
            if start.startswith(bom):
                raise self.not_utf8(f"it starts with a {encoding} byte-order mark", 0, 1)
        # The first non-blank line decides the width and whether there is a header.
        self._skip_lines = 0  # raw lines before the first data line
        first: list[str] | None = None
        with self._open() as f:
            for line in self._text(f):
                self._skip_lines += 1
                if line.strip():
                    if delimiter is None:
                        delimiter = _detect_delimiter(path, line)
                    first = next(csv.reader([line], delimiter=delimiter))
                    break
        self.delimiter = delimiter or ","
        self.extra = {"delimiter": self.delimiter}
        if first is None:
            raise IngestError(path, "the file is empty (no header, no data rows)")
        if header is None:
            # A header row is one with no number in it; a row mixing numbers and text is
            # data with a text column, and is reported as such.
            header = all(_parse_float(x) is None for x in first)
        if header:
            self.feature_names = [x.strip() for x in first]
        else:
            self.feature_names = None
            self._skip_lines -= 1
        self.n_features = len(first)
        self.extra["header"] = bool(header)
        # State of the block being read by the numpy engine, to turn a row into a line.
        self._lines: list[str] = []
        self._first_line = 0
        self._row0 = 0

    @classmethod
    def open(cls, path: Path, options: ReadOptions) -> CsvReader:
        """Read the first non-blank line (width, header, delimiter); no data rows."""
        return cls(
            path,
            header=options.header,
            delimiter=options.delimiter,
            engine=options.csv_engine,
            dtype=options.dtype,
        )

    def _open(self) -> io.TextIOWrapper:
        # utf-8-sig drops a byte-order mark that spreadsheet exports put before the header.
        return open(self.path, encoding="utf-8-sig", newline=None)

    def not_utf8(self, why: str, offset: int, line: int) -> IngestError:
        """The error "path is not UTF-8 text", naming the first byte that is not and its line."""
        error = IngestError(
            self.path,
            f"is not UTF-8 text: {why} at byte offset {offset} (line {line})",
            offset=offset,
            hint="Save it as UTF-8 text (e.g. iconv -t utf-8), or name the format of a binary file",
        )
        error.line = line
        return error

    def _find_not_utf8(self) -> IngestError:
        found = first_non_text_byte(self.path)
        if found is None:  # pragma: no cover - decoding failed, so the scan finds it
            return IngestError(self.path, "is not UTF-8 text")
        return self.not_utf8(found[2], found[0], found[1])

    def _text(self, lines: Iterator[str]) -> Iterator[str]:
        """``lines`` as they decode; text that is not UTF-8 (or holds NUL) is an error.

        For the first line only: the numpy engine's blocks check NUL when they fail to parse.
        """
        try:
            for line in lines:
                if "\0" in line:
                    raise self._find_not_utf8()
                yield line
        except UnicodeDecodeError:
            raise self._find_not_utf8() from None

    def blocks(self, rows: int) -> Iterator[tuple[AnyArray, int]]:
        """Blocks of ``rows`` data lines (numpy) or pyarrow's batches, as float64."""
        if self.engine == "pyarrow":
            return self._blocks_pyarrow(rows)
        return self._blocks_numpy(rows)

    # numpy engine ----------------------------------------------------------------------

    def _blocks_numpy(self, rows: int) -> Iterator[tuple[AnyArray, int]]:
        with self._open() as f:
            try:
                for _ in range(self._skip_lines):
                    next(f)
            except UnicodeDecodeError:
                raise self._find_not_utf8() from None
            line_no = self._skip_lines
            row0 = 0
            while True:
                try:
                    lines = list(itertools.islice(f, rows))
                except UnicodeDecodeError:
                    raise self._find_not_utf8() from None
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
                        # Kept missing values: pyarrow's null spellings read as NaN, alike
                        # in both engines.
                        converters=_missing_as_nan if self.allow_missing else None,
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
        # A NUL byte is never part of a number: found here, at no cost to clean blocks.
        if any("\0" in text for text in self._lines):
            return self._find_not_utf8()
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
                if self.allow_missing and field.strip().strip('"') in _NULL_SPELLINGS:
                    continue
                if _parse_float(field) is None:
                    empty = not field.strip()
                    what = (
                        "empty value (missing)"
                        if empty
                        else f"value {field.strip()[:40]!r} is not a number"
                    )
                    error = IngestError(
                        self.path,
                        what,
                        row=row,
                        line=line,
                        column=j,
                        column_name=column_name(self.feature_names, j),
                        hint="Only numeric columns without missing values can be ingested"
                        + (", unless allow_missing=True keeps them as NaN" if empty else ""),
                    )
                    return error.naming("allow_missing", "allow_missing=True") if empty else error
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
                    if col.null_count and not self.allow_missing:
                        raise self._locate("missing value")
                    out[:, j] = col.to_numpy(zero_copy_only=False)
                yield out, row0
                row0 += n

    def _locate(self, message: str) -> IngestError:
        """Re-read with the numpy engine to name the line of the first problem."""
        numpy_reader = CsvReader(
            self.path,
            header=self.feature_names is not None,
            delimiter=self.delimiter,
            engine="numpy",
            dtype=self._target_dtype,
        )
        numpy_reader.allow_missing = self.allow_missing
        try:
            rows = chunk_rows_for_bytes(self.n_features, 8, DEFAULT_CHUNK_BYTES)
            for block, row0 in numpy_reader.blocks(rows):
                # The same check as the writer's: the numpy pass must find what pyarrow did.
                cast_and_check(numpy_reader, block, row0, self._target_dtype, self.allow_missing)
        except IngestError as exc:
            return exc
        return IngestError(self.path, f"cannot parse the CSV: {message}")

    def error(self, row: int, column: int, problem: str, hint: str = "") -> IngestError:
        """Only the numpy engine knows lines: the pyarrow engine re-reads with it."""
        if self.engine == "pyarrow":
            # It finds this same problem (or an earlier one, which is the one to report).
            return self._locate(problem)
        line = next((ln for r, ln, _ in self._block_rows() if r == row), None)
        return IngestError(
            self.path,
            problem,
            row=row,
            line=line,
            column=column,
            column_name=column_name(self.feature_names, column),
            hint=hint,
        )
