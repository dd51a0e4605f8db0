"""Small stored chunks are read as fewer, larger Dask blocks, each a whole number of chunks.

Counted on the store itself (``tests.helpers.CountingStore``): grouping chunks into
blocks must still read every stored chunk exactly once per pass, and a damaged chunk inside
a block of many must still be named by its own rows.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

import emdist
from emdist.exceptions import InvalidParameterError
from emdist.io import as_dask_array
from emdist.io.chunking import (
    BLOCK_SIZE_CONFIG,
    DEFAULT_BLOCK_BYTES,
    MIN_READ_BLOCKS,
    read_block_bytes,
    read_block_rows,
)
from emdist.io.integrity import IntegrityError, create_verified_array, seal
from tests.helpers import CountingStore

CHUNK = 50


@pytest.mark.parametrize(
    ("n_rows", "chunk_rows", "row_bytes", "target"),
    [
        (1_000_000, 50, 256, DEFAULT_BLOCK_BYTES),
        (1_000_000, 3_000, 256, DEFAULT_BLOCK_BYTES),
        (1_000_000, 62_500, 256, DEFAULT_BLOCK_BYTES),
        (1_000_000, 100_000, 256, 2**20),  # a chunk over the target stays one block
        (12_345, 7, 24, 4096),
        (600, 64, 24, DEFAULT_BLOCK_BYTES),  # 10 chunks: fewer than MIN_READ_BLOCKS
        (30, 64, 24, DEFAULT_BLOCK_BYTES),  # fewer rows than one chunk
    ],
)
def test_blocks_are_whole_chunks_within_the_target(
    n_rows: int, chunk_rows: int, row_bytes: int, target: int
) -> None:
    rows = read_block_rows(n_rows, chunk_rows, row_bytes, target)
    n_chunks = -(-n_rows // chunk_rows)
    if rows < n_rows:
        assert rows % chunk_rows == 0
    assert rows * row_bytes <= max(target, chunk_rows * row_bytes)
    n_blocks = -(-n_rows // rows)
    assert n_blocks >= min(n_chunks, MIN_READ_BLOCKS)
    # No more blocks than the target and MIN_READ_BLOCKS call for.
    most = max(1, min(target // (chunk_rows * row_bytes), n_chunks // MIN_READ_BLOCKS))
    assert n_blocks == -(-n_chunks // most)


def test_50_row_chunks_of_1m_x_32_become_16_mb_blocks() -> None:
    assert read_block_rows(1_000_000, 50, 32 * 8) == 62_500  # 1,250 chunks, 16 MB per block
    # emdist's own chunks (about 16 MiB) are read as they are, one block each.
    assert read_block_rows(1_000_000, 62_500, 32 * 8) == 62_500


def test_the_target_comes_from_dask_config() -> None:
    assert read_block_bytes() == DEFAULT_BLOCK_BYTES
    with dask.config.set({BLOCK_SIZE_CONFIG: "1MiB"}):
        assert read_block_bytes() == 2**20
        assert read_block_rows(1_000_000, 50, 256) == 4_050  # 81 chunks of 12,800 bytes
    with dask.config.set({BLOCK_SIZE_CONFIG: 0}), pytest.raises(InvalidParameterError) as info:
        read_block_bytes()
    assert BLOCK_SIZE_CONFIG in str(info.value) and "16MiB" in str(info.value)
    with dask.config.set({BLOCK_SIZE_CONFIG: "lots"}), pytest.raises(InvalidParameterError):
        read_block_bytes()


@pytest.fixture
def small_chunks(tmp_path: Path) -> tuple[str, np.ndarray]:
    """4,000 x 4 float64 in 50-row chunks (80 chunks), with emdist's checksums."""
    X = np.random.default_rng(0).normal(size=(4_000, 4))
    X[:1000] += 5.0
    path = tmp_path / "small-chunks.zarr"
    arr = create_verified_array(str(path), shape=X.shape, dtype=X.dtype, chunks=(CHUNK, 4))
    arr[...] = X
    seal(arr)
    return str(path), X


def test_a_store_of_small_chunks_is_read_in_grouped_blocks(
    small_chunks: tuple[str, np.ndarray],
) -> None:
    path, X = small_chunks
    Xd = as_dask_array(path)
    assert Xd.numblocks[0] == MIN_READ_BLOCKS  # 80 chunks, 5 per block
    assert all(rows % CHUNK == 0 for rows in Xd.chunks[0])
    np.testing.assert_array_equal(Xd.compute(), X)
    # An explicit chunk_rows still wins.
    assert as_dask_array(path, chunk_rows=CHUNK).numblocks[0] == 80


def test_grouped_blocks_read_each_stored_chunk_once_per_pass(
    small_chunks: tuple[str, np.ndarray],
) -> None:
    path, X = small_chunks
    store = CountingStore(LocalStore(path, read_only=True))
    arr = zarr.open_array(store, mode="r")
    store.counts.clear()
    km = emdist.KMeans(2, init=X[[0, 3_999]], n_init=1, max_iter=3, tol=0.0)
    # Every pass reads every block (none left unread on its kept bounds).
    with warnings.catch_warnings(), dask.config.set({"emdist.kept-skip": False}):
        # Whether tol=0 holds within 3 iterations depends on the data; the reads are the point.
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        km.fit(arr)
    reads = store.chunk_reads()
    assert len(reads) == 80
    # 1 scan pass + 1 Lloyd pass per iteration (+ 1 final labelling pass if the last one moved
    # centres).
    n = 1 + km.n_iter_
    assert set(reads.values()) <= {n, n + 1} and len(set(reads.values())) == 1


def test_a_damaged_chunk_inside_a_block_is_named_by_its_rows(
    small_chunks: tuple[str, np.ndarray],
) -> None:
    path, _ = small_chunks
    chunk = Path(path) / "c" / "7" / "0"  # rows 350-400, in the second block (250-500)
    data = bytearray(chunk.read_bytes())
    data[10] ^= 0xFF
    chunk.write_bytes(bytes(data))
    Xd = as_dask_array(path)
    assert Xd.chunks[0][0] == 250
    with pytest.raises(IntegrityError, match="rows 350-400 failed the crc32c checksum"):
        Xd.compute()
