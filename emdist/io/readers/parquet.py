"""Parquet files, read one record batch at a time; column names are feature names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from emdist._typing import AnyArray
from emdist.io.readers.base import IngestError, Reader, ReadOptions

__all__ = ["ParquetReader"]


_READ_BUFFER = 16 << 20  # bytes per column-chunk read


class ParquetReader(Reader):
    """Record batches of a Parquet file, checked column by column (needs pyarrow)."""

    name = "parquet"
    suffixes = (".parquet", ".pq")
    what = "a Parquet file"
    order = 30

    def __init__(self, path: Path, file: Any) -> None:
        import pyarrow as pa  # type: ignore[import-untyped]

        self.path = path
        self._file = file
        schema = self._file.schema_arrow
        self.feature_names = [str(n) for n in schema.names]
        self.n_features = len(self.feature_names)
        self.n_rows = int(self._file.metadata.num_rows)
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
        self.extra = {"row_groups": int(self._file.metadata.num_row_groups)}

    @classmethod
    def open(cls, path: Path, options: ReadOptions) -> ParquetReader:
        """Read the footer (schema, row count); no rows."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq  # type: ignore[import-untyped]
        except ImportError as exc:  # pragma: no cover - pyarrow is in the io extra
            raise ImportError("reading Parquet needs pyarrow: pip install 'emdist[io]'") from exc
        try:
            # pre_buffer (pyarrow's default) keeps every column chunk it has read until the
            # file is closed: memory grows to the file's size. A bounded read buffer instead
            # keeps an ingest's memory flat whatever the file's size.
            file = pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER)
        except (pa.ArrowInvalid, OSError) as exc:
            # The first sentence of pyarrow's message ("Parquet magic bytes not found...").
            lines = str(exc).strip().split(". ")[0].splitlines()
            detail = lines[0] if lines else type(exc).__name__
            raise cls.not_this_format(path, detail, options) from None
        try:
            return cls(path, file)
        except BaseException:
            file.close()
            raise

    def blocks(self, rows: int) -> Iterator[tuple[AnyArray, int]]:
        """Record batches of ``rows`` rows; a null is an error naming its row and column."""
        start = 0
        for batch in self._file.iter_batches(batch_size=rows, use_threads=True):
            n = batch.num_rows
            out = np.empty((n, self.n_features), dtype=np.float64)
            for j, col in enumerate(batch.columns):
                # A null is a missing value (NaN) when the ingest keeps them.
                if col.null_count and not self.allow_missing:
                    r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                    raise self.error(
                        start + r,
                        j,
                        "missing value (null)",
                        "Keep missing values as NaN with allow_missing=True, or remove them",
                    ).naming("allow_missing", "allow_missing=True")
                out[:, j] = col.to_numpy(zero_copy_only=False)
            yield out, start
            start += n

    def close(self) -> None:
        """Close the file."""
        self._file.close()
