"""The reader interface every source format implements, its registry, and its errors.

A reader is a subclass of :class:`Reader` that sets ``name`` (the format's name, as
``source_format=`` and ``--format`` take it) and ``suffixes``: defining the class registers
it, as Zarr registers a codec. :func:`emdist.io.ingest.ingest` asks the registry for the
reader of a name (:func:`reader_for_name`) or of a path (:func:`reader_for_path`) and then
only calls the methods below, so adding a format is adding one module to this package
(:mod:`emdist.io.readers` imports every module in it).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from emdist._typing import AnyArray
from emdist.exceptions import InvalidDataError, InvalidParameterError

__all__ = [
    "ArrayReader",
    "IngestError",
    "ReadOptions",
    "Reader",
    "cast_and_check",
    "column_name",
    "reader_for_name",
    "reader_for_path",
    "registered_formats",
]


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
    offset : int or None
        0-based byte offset in the file (text that is not UTF-8).
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
        offset: int | None = None,
        hint: str = "",
    ) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        self.row = row
        self.line = line
        self.column = column
        self.column_name = column_name
        self.offset = offset
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
        # "x.csv is not an HDF5 file" reads as a sentence; "x.csv: line 3: ..." as a place.
        joint = " " if not where and problem.startswith("is ") else ": "
        message = f"{self.path}{joint}{location}{problem}"
        super().__init__(message + (f". {hint}" if hint else ""))


@dataclass(frozen=True)
class ReadOptions:
    """What :func:`emdist.io.ingest.ingest` tells every reader; each uses what concerns it.

    Attributes
    ----------
    dtype : numpy.dtype
        The output dtype (float64 or float32).
    dataset : str or None
        HDF5: the dataset to read.
    header, delimiter, csv_engine
        CSV: see :func:`emdist.io.ingest.ingest`.
    allow_missing : bool
        Keep missing values as NaN (:func:`emdist.io.ingest.ingest`'s ``allow_missing``).
    """

    dtype: np.dtype[Any]
    dataset: str | None = None
    header: bool | None = None
    delimiter: str | None = None
    csv_engine: Literal["auto", "pyarrow", "numpy"] = "auto"
    format_given: bool = False
    allow_missing: bool = False


_REGISTRY: dict[str, type[Reader]] = {}


class Reader(abc.ABC):
    """A source being read: its shape and names, then its rows one block at a time.

    Subclasses set the class attributes and implement :meth:`open` and :meth:`blocks`.

    Attributes
    ----------
    name : str
        The format's name (``source_format=``, ``--format``, the provenance's ``format``).
    suffixes : tuple of str
        Lower-case file suffixes that select this format when none is given.
    what : str
        What a file of this format is, for "x.csv is not <what>".
    order : int
        Place in :data:`emdist.io.ingest.SOURCE_FORMATS` (lower first).
    path : pathlib.Path
    n_rows : int or None
        None when only a full pass can tell (CSV).
    n_features : int
    feature_names : list of str or None
    source_dtype : str
    extra : dict
        Format-specific provenance (HDF5 dataset, CSV delimiter...).
    allow_missing : bool
        Whether a missing value (a null, an empty CSV field) is read as NaN rather than
        refused; set by :func:`emdist.io.ingest.ingest` after :meth:`open`.
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = ()
    what: ClassVar[str]
    order: ClassVar[int] = 1000

    path: Path
    n_rows: int | None
    n_features: int
    feature_names: list[str] | None
    source_dtype: str
    extra: dict[str, Any]
    allow_missing: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is None:
            return  # a base for other readers (ArrayReader), not a format
        other = _REGISTRY.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise TypeError(f"two readers are named {name!r}: {other} and {cls}")
        _REGISTRY[name] = cls

    @classmethod
    def claims(cls, path: Path) -> bool:
        """Whether ``path`` is of this format by its name (a directory by its content)."""
        return not path.is_dir() and path.suffix.lower() in cls.suffixes

    @classmethod
    @abc.abstractmethod
    def open(cls, path: Path, options: ReadOptions) -> Reader:
        """Open ``path``; read its shape and names, but no rows.

        Raises
        ------
        IngestError
            Not a file of this format (:meth:`not_this_format`), not numeric, not 2-D.
        """

    @abc.abstractmethod
    def blocks(self, rows: int) -> Iterator[tuple[AnyArray, int]]:
        """Row blocks (about ``rows`` rows, the source's dtype) with their first row's index."""

    def error(self, row: int, column: int, problem: str, hint: str = "") -> IngestError:
        """The error for a bad value at ``(row, column)``."""
        return IngestError(
            self.path,
            problem,
            row=row,
            column=column,
            column_name=column_name(self.feature_names, column),
            hint=hint,
        )

    def close(self) -> None:  # noqa: B027 - most readers hold nothing open
        """Release what the reader holds open (may be called twice)."""

    @classmethod
    def not_this_format(cls, path: Path, detail: str, options: ReadOptions) -> IngestError:
        """The error "path is not <what>", naming what chose this reader (argument or suffix)."""
        if options.format_given:
            return IngestError(
                path,
                f"is not {cls.what} ({detail}), as source_format={cls.name!r} says; pass "
                f"the format it is in",
            ).naming("source_format", f"source_format={cls.name!r}", cls.name)
        return IngestError(
            path,
            f"is not {cls.what} ({detail}), as its suffix {path.suffix!r} says; pass "
            f"source_format= the format it is in",
        ).naming("source_format", "source_format=")


def registered_formats() -> tuple[str, ...]:
    """The names of the registered readers, in their ``order``."""
    return tuple(sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].order, n)))


def reader_for_name(name: str) -> type[Reader]:
    """The reader registered as ``name``.

    Raises
    ------
    InvalidParameterError
        Naming the formats there are.
    """
    reader = _REGISTRY.get(name)
    if reader is None:
        allowed = ", ".join(repr(f) for f in ("auto", *registered_formats()))
        raise InvalidParameterError(f"source_format must be one of {allowed}; got {name!r}").naming(
            "source_format", "source_format", name
        )
    return reader


def reader_for_path(path: Path) -> type[Reader]:
    """The reader whose suffix (or, for a directory, content) matches ``path``.

    Raises
    ------
    IngestError
        No reader claims it; the message says to pass ``source_format``.
    """
    for name in registered_formats():
        if _REGISTRY[name].claims(path):
            return _REGISTRY[name]
    formats = ", ".join(repr(f) for f in registered_formats())
    if path.is_dir():
        raise IngestError(path, "is a directory but not a Zarr array (no zarr.json)")
    raise IngestError(
        path,
        f"cannot tell the format from its suffix {path.suffix!r}; pass source_format= one of "
        f"{formats}",
    ).naming("source_format", "source_format=")


def column_name(names: list[str] | None, column: int) -> str | None:
    """The name of ``column`` when there are names."""
    return names[column] if names is not None and column < len(names) else None


def check_numeric_dtype(path: Path, dtype: np.dtype[Any], what: str) -> None:
    """Refuse a dtype that is not integer or floating-point."""
    # Booleans are integers to numpy but not features: reject them with the other
    # non-numbers rather than silently turning them into 0.0 / 1.0.
    if dtype.kind not in "iuf":
        raise IngestError(
            path,
            f"{what} has dtype {dtype}, not a real number type",
            hint="Only numeric (integer or floating-point) data can be ingested",
        )


class ArrayReader(Reader):
    """Anything sliceable by rows with a numpy dtype: a .npy memmap, HDF5, a Zarr array."""

    def __init__(
        self,
        path: Path,
        array: Any,
        feature_names: list[str] | None,
        extra: dict[str, Any] | None = None,
        on_close: Any = None,
        block_multiple: int = 1,
    ) -> None:
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
        check_numeric_dtype(path, dtype, "the data")
        self._length = int(shape[0])
        self.n_rows = self._length
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
        """Whole source chunks at a time: a source chunk is never decoded twice."""
        step = max(self._block_multiple, rows // self._block_multiple * self._block_multiple)
        for start in range(0, self._length, step):
            yield np.asarray(self._array[start : start + step]), start

    def close(self) -> None:
        """Run the close callback once (an HDF5 file handle)."""
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


def decode_names(value: Any) -> list[str] | None:
    """Feature names stored as an attribute (bytes or str, any shape) as a list of str."""
    if value is None:
        return None
    items = np.asarray(value).ravel().tolist()
    return [v.decode() if isinstance(v, bytes) else str(v) for v in items]


def cast_and_check(
    reader: Reader,
    block: AnyArray,
    row0: int,
    dtype: np.dtype[Any],
    allow_missing: bool = False,
) -> AnyArray:
    """Cast a block to ``dtype``; raise at the first value that is not finite after it.

    ``allow_missing``: NaN is kept (a missing value); infinity is still refused.
    """
    with np.errstate(over="ignore"):  # overflow to float32 is reported below, by value
        out = np.ascontiguousarray(block, dtype=dtype)
    finite = np.isfinite(out)
    bad = ~finite
    if allow_missing and not finite.all():
        bad &= ~np.isnan(out)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        before = block[r, c]
        if np.isfinite(before):
            problem = f"value {before.item()!r} overflows {dtype} (it would become {out[r, c]})"
            hint = "Ingest as float64 or rescale the feature"
        elif allow_missing or not np.isnan(before):
            problem = f"non-finite value {float(before)}"
            hint = "Remove or replace infinite values first"
        else:
            problem = f"non-finite value {float(before)}"
            hint = (
                "Remove or impute NaN and infinite values first, or keep NaN as missing "
                "values with allow_missing=True"
            )
        error = reader.error(row0 + r, c, problem, hint)
        if not allow_missing and np.isnan(before):
            error.naming("allow_missing", "allow_missing=True")
        raise error
    return out
