"""How emdist cuts a dataset into row chunks when it writes one (ingest, synthetic data).

Chunks hold whole rows and at most ``DEFAULT_CHUNK_BYTES`` (about 16 MiB: 65,536 rows of 32
float64 features). Row chunks of 50k-100k rows (13-26 MB) read fastest here; 250k+ rows
read 2x slower (docs/design.md, "Zarr layout"). The rows are split into near-equal chunks:
Zarr stores the last chunk padded to the full chunk shape, and equal chunks make equal Dask
tasks.
"""

from __future__ import annotations

from emdist.exceptions import InvalidParameterError

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "balanced_chunk_rows",
    "chunk_rows_for_bytes",
    "default_chunk_rows",
]

DEFAULT_CHUNK_BYTES = 16 * 2**20


def chunk_rows_for_bytes(n_features: int, itemsize: int, chunk_bytes: int) -> int:
    """Rows per chunk so that a chunk holds at most ``chunk_bytes`` (at least one row)."""
    if chunk_bytes < 1:
        raise InvalidParameterError(f"chunk_bytes must be positive; got {chunk_bytes}")
    return max(1, chunk_bytes // max(1, n_features * itemsize))


def balanced_chunk_rows(n_rows: int, max_rows: int) -> int:
    """Rows per chunk, at most ``max_rows``, splitting ``n_rows`` into near-equal chunks.

    1,000,000 rows in chunks of 65,536 would take 16 full chunks on disk (5% padding when
    uncompressed); chunks of 62,500 take exactly the data.
    """
    n_chunks = -(-n_rows // max_rows)
    return -(-n_rows // n_chunks)


def default_chunk_rows(
    n_rows: int, n_features: int, itemsize: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> int:
    """Near-equal row chunks of at most ``chunk_bytes`` each, never more rows than the data."""
    rows = balanced_chunk_rows(n_rows, chunk_rows_for_bytes(n_features, itemsize, chunk_bytes))
    return min(rows, max(n_rows, 1))
