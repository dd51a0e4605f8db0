"""How emdist cuts a dataset into row chunks: stored chunks to write, Dask blocks to read.

Chunks hold whole rows and at most ``DEFAULT_CHUNK_BYTES`` (about 16 MiB: 65,536 rows of 32
float64 features). Row chunks of 50k-100k rows (13-26 MB) read fastest here; 250k+ rows
read 2x slower (docs/design.md, "Zarr layout"). The rows are split into near-equal chunks:
Zarr stores the last chunk padded to the full chunk shape, and equal chunks make equal Dask
tasks.

When it reads a store, emdist groups whole stored chunks into Dask blocks of at most
``DEFAULT_BLOCK_BYTES`` (:func:`read_block_rows`): a store written in small chunks (say 50
rows) would otherwise make one task per chunk, and the per-task cost of Dask and Zarr would
dwarf the reading (benchmarks/README.md, "Read path"). A block is a whole number of stored
chunks, so each stored chunk is still read once per pass.
"""

from __future__ import annotations

import dask.config
from dask.utils import parse_bytes

from emdist.exceptions import InvalidParameterError

__all__ = [
    "BLOCK_SIZE_CONFIG",
    "DEFAULT_BLOCK_BYTES",
    "DEFAULT_CHUNK_BYTES",
    "MIN_READ_BLOCKS",
    "balanced_chunk_rows",
    "chunk_rows_for_bytes",
    "default_chunk_rows",
    "read_block_bytes",
    "read_block_rows",
]

DEFAULT_CHUNK_BYTES = 16 * 2**20

#: Most bytes of a Dask block made of several stored chunks: the size of emdist's own
#: chunks (``DEFAULT_CHUNK_BYTES``), so stores emdist writes are read one chunk per block as
#: before, and a store of small chunks is read in blocks like them (benchmarks/README.md,
#: "Read path").
DEFAULT_BLOCK_BYTES = 16 * 2**20

#: Chunks are grouped into no fewer blocks than this (when there are as many chunks), so
#: that a small dataset still gives every worker of a small cluster something to do.
MIN_READ_BLOCKS = 16

#: Dask configuration key that overrides :data:`DEFAULT_BLOCK_BYTES` (bytes, or a string
#: such as ``"64MiB"``): ``dask.config.set({"emdist.block-size": "64MiB"})``, a Dask YAML
#: file, or ``DASK_EMDIST__BLOCK_SIZE=64MiB``.
BLOCK_SIZE_CONFIG = "emdist.block-size"


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


def read_block_bytes() -> int:
    """The byte target of a Dask block when reading a store (``emdist.block-size``).

    Raises
    ------
    InvalidParameterError
        If the configured value is not a positive size.
    """
    value = dask.config.get(BLOCK_SIZE_CONFIG, None)
    if value is None:
        return DEFAULT_BLOCK_BYTES
    try:
        size = parse_bytes(value) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise InvalidParameterError(
            f"dask config {BLOCK_SIZE_CONFIG!r} must be a positive size such as 16777216 or "
            f"'16MiB'; got {value!r}"
        )
    return size


def read_block_rows(
    n_rows: int, chunk_rows: int, row_bytes: int, block_bytes: int | None = None
) -> int:
    """Rows of every Dask block reading a store of ``chunk_rows``-row chunks.

    A block is a whole number of stored chunks (so each is read once per pass), at most
    ``block_bytes`` (default :func:`read_block_bytes`) unless one chunk alone is larger;
    chunks are grouped only as far as that leaves :data:`MIN_READ_BLOCKS` blocks (small
    data keeps the blocks it has: work for every worker), and the blocks are as even as a
    regular chunking allows. The result depends on the store alone, not on the
    machine, so the same store is always cut the same way (checkpoints resume).

    Parameters
    ----------
    n_rows : int
        Rows of the array.
    chunk_rows : int
        Rows of a stored chunk (of a shard for sharded arrays).
    row_bytes : int
        Bytes of one row in memory.
    block_bytes : int, optional
        Byte target of a block.

    Returns
    -------
    int
        A multiple of ``chunk_rows`` (or ``n_rows`` if smaller).
    """
    target = read_block_bytes() if block_bytes is None else block_bytes
    n_chunks = -(-n_rows // chunk_rows)
    most = max(1, min(target // max(1, chunk_rows * row_bytes), n_chunks // MIN_READ_BLOCKS))
    per_block = balanced_chunk_rows(n_chunks, most) if n_chunks else 1
    return min(per_block * chunk_rows, max(n_rows, 1))
