"""Row blocks read straight from chunk files equal Zarr's reads, or are left to Zarr."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import zarr
from numcodecs.blosc import Blosc
from numcodecs.zstd import Zstd

from emdist.io import as_dask_array
from emdist.io.chunk_files import ChunkFiles, blosc_content_size, zstd_content_size
from emdist.io.integrity import CheckedReader, IntegrityError, create_verified_array, seal

ZSTD = zarr.codecs.ZstdCodec()
CRC = zarr.codecs.Crc32cCodec()
LAYOUTS: dict[str, Any] = {
    "bytes": None,
    "crc32c": [CRC],
    "zstd": [ZSTD],
    "zstd+crc32c": [ZSTD, CRC],
    "zstd checksum level 5": [zarr.codecs.ZstdCodec(level=5, checksum=True)],
    "blosc lz4": [zarr.codecs.BloscCodec(cname="lz4", shuffle="shuffle")],
    "blosc zstd+crc32c": [zarr.codecs.BloscCodec(cname="zstd", shuffle="bitshuffle"), CRC],
}


def _store(
    tmp_path: Path,
    compressors: Any,
    *,
    n: int = 1003,
    d: int = 5,
    chunk: int = 100,
    dtype: str = "float64",
    name: str = "a.zarr",
) -> tuple[zarr.Array[Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((n, d)) * 1e3).astype(dtype)
    arr = zarr.create_array(
        str(tmp_path / name),
        shape=data.shape,
        chunks=(chunk, d),
        dtype=dtype,
        compressors=compressors,
    )
    arr[:] = data
    return zarr.open_array(str(tmp_path / name), mode="r"), data


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", ["float64", "float32", "int32", "uint8"])
def test_every_row_range_reads_as_zarr_reads_it(tmp_path: Path, layout: str, dtype: str) -> None:
    arr, data = _store(tmp_path, LAYOUTS[layout], dtype=dtype)
    files = ChunkFiles.of(arr)
    assert files is not None
    # Whole chunks, parts of one, several, the short last chunk, the empty range.
    for start, stop in [
        (0, 100),
        (100, 300),
        (150, 160),
        (50, 1003),
        (990, 1003),
        (0, 1003),
        (1000, 1003),
        (7, 7),
    ]:
        got = files.read(start, stop)
        want = arr[start:stop]
        assert got.dtype == want.dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, data[start:stop])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_fit_reads_the_store_through_the_chunk_files(tmp_path: Path, layout: str) -> None:
    arr, data = _store(tmp_path, LAYOUTS[layout])
    reader = CheckedReader(arr, "a.zarr")
    assert reader._direct is not None
    for chunk_rows in (64, 100, 250):
        X = as_dask_array(str(tmp_path / "a.zarr"), chunk_rows=chunk_rows)
        np.testing.assert_array_equal(X.compute(), data)


def test_the_configuration_sends_every_read_through_zarr(tmp_path: Path) -> None:
    arr, _ = _store(tmp_path, [CRC])
    with dask.config.set({"emdist.direct-read": False}):
        assert CheckedReader(arr, "a.zarr")._direct is None
    assert CheckedReader(arr, "a.zarr", direct=False)._direct is None
    assert CheckedReader(arr, "a.zarr")._direct is not None


def test_layouts_it_cannot_take_are_left_to_zarr(tmp_path: Path) -> None:
    refused = {
        "gzip": dict(compressors=[zarr.codecs.GzipCodec()]),
        "big-endian": dict(serializer=zarr.codecs.BytesCodec(endian="big"), compressors=None),
        "transposed": dict(filters=[zarr.codecs.TransposeCodec(order=(1, 0))], compressors=None),
        "crc32c before zstd": dict(compressors=[CRC, ZSTD]),
        "sharded": dict(shards=(200, 5), compressors=None),
        "column chunks": dict(chunks=(100, 2), compressors=None),
    }
    data = np.arange(1000 * 5, dtype=np.float64).reshape(1000, 5)
    for name, layout in refused.items():
        options = {"chunks": (100, 5), **layout}
        arr = zarr.create_array(str(tmp_path / f"{name}.zarr"), data=data, **options)
        assert ChunkFiles.of(arr) is None, name
        np.testing.assert_array_equal(as_dask_array(arr).compute(), data)
    in_memory = zarr.create_array(zarr.storage.MemoryStore(), data=data, chunks=(100, 5))
    assert ChunkFiles.of(in_memory) is None


def _chunk(tmp_path: Path, index: int, name: str = "a.zarr") -> Path:
    return tmp_path / name / "c" / str(index) / "0"


def test_a_missing_chunk_reads_as_zarrs_fill_value(tmp_path: Path) -> None:
    arr = zarr.create_array(
        str(tmp_path / "a.zarr"),
        shape=(300, 4),
        chunks=(100, 4),
        dtype="f8",
        fill_value=7.5,
        compressors=[ZSTD, CRC],
    )
    arr[:100] = 1.0
    arr[200:] = 2.0
    assert not _chunk(tmp_path, 1).exists()
    files = ChunkFiles.of(zarr.open_array(str(tmp_path / "a.zarr"), mode="r"))
    assert files is not None
    got = files.read(50, 300)
    np.testing.assert_array_equal(got, arr[50:300])
    assert (got[50:150] == 7.5).all()


@pytest.mark.parametrize("layout", ["crc32c", "zstd+crc32c"])
@pytest.mark.parametrize("rows", [(0, 300), (100, 200), (150, 170)])
def test_a_flipped_byte_is_refused_in_one_line_naming_the_rows(
    tmp_path: Path, layout: str, rows: tuple[int, int]
) -> None:
    arr, _ = _store(tmp_path, LAYOUTS[layout], n=300)
    path = _chunk(tmp_path, 1)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    reader = CheckedReader(arr, "a.zarr")
    assert reader._direct is not None
    with pytest.raises(IntegrityError, match=r"^a\.zarr: rows 100-200 failed the crc32c") as err:
        reader[slice(*rows), slice(None)]
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("layout", ["bytes", "zstd", "blosc lz4"])
@pytest.mark.parametrize("change", ["truncated", "longer"])
def test_a_chunk_of_another_size_is_never_read_as_data(
    tmp_path: Path, layout: str, change: str
) -> None:
    # Without a CRC only the size gives a damaged chunk away: Zarr refuses it, so must this.
    arr, data = _store(tmp_path, LAYOUTS[layout], n=300)
    if layout != "bytes":  # a whole, valid frame of another length
        other = np.arange(99 * 5 if change == "truncated" else 101 * 5, dtype=np.float64)
        codec = Zstd() if layout == "zstd" else Blosc(cname="lz4", typesize=8)
        _chunk(tmp_path, 1).write_bytes(codec.encode(other))
    else:
        raw = _chunk(tmp_path, 1).read_bytes()
        _chunk(tmp_path, 1).write_bytes(raw[:-8] if change == "truncated" else raw + raw[:8])
    reader = CheckedReader(arr, "a.zarr")
    assert reader._direct is not None
    with pytest.raises(IntegrityError, match=r"rows 100-200 cannot be decoded"):
        reader[0:300, :]
    assert reader._direct.read(0, 100).tolist() == data[:100].tolist()


def test_a_chunk_that_is_not_a_regular_file_is_left_to_zarr(tmp_path: Path) -> None:
    arr, data = _store(tmp_path, [CRC], n=300)
    target = _chunk(tmp_path, 1)
    os.rename(target, tmp_path / "moved")
    target.mkdir()
    files = ChunkFiles.of(arr)
    assert files is not None
    # Zarr reads a directory in place of a chunk as its fill value; so does the direct read.
    np.testing.assert_array_equal(files.read(0, 300), arr[0:300])


def test_a_verified_store_is_read_directly_and_checked_against_its_record(
    tmp_path: Path,
) -> None:
    data = np.random.default_rng(1).standard_normal((500, 3))
    arr = create_verified_array(
        str(tmp_path / "v.zarr"), shape=data.shape, chunks=(100, 3), dtype="float64"
    )
    arr[:] = data
    seal(arr)
    X = as_dask_array(str(tmp_path / "v.zarr"))
    np.testing.assert_array_equal(X.compute(), data)
    # Another chunk's bytes in chunk 2's place pass its CRC but not the record's.
    opened = zarr.open_array(str(tmp_path / "v.zarr"), mode="r")
    reader = CheckedReader(opened, "v.zarr")
    assert reader._direct is not None
    _chunk(tmp_path, 2, "v.zarr").write_bytes(_chunk(tmp_path, 0, "v.zarr").read_bytes())
    with pytest.raises(IntegrityError, match="chunk 2/0 changed after it was opened"):
        reader[0:500, :]


@pytest.mark.parametrize("n_bytes", [0, 8, 200, 255, 256, 70_000, 66_000_000])
def test_the_zstd_header_gives_the_decoded_size(n_bytes: int) -> None:
    frame = np.frombuffer(Zstd(level=1).encode(bytes(n_bytes)), np.uint8)
    assert zstd_content_size(frame) == n_bytes
    assert zstd_content_size(frame[:3]) is None
    assert zstd_content_size(np.zeros(16, np.uint8)) is None


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_rows_come_from_the_chunk_files_not_through_zarr(tmp_path: Path, layout: str) -> None:
    # The reader's Zarr array (for chunks it leaves to Zarr) is another store of zeros:
    # every row equal to the files' data was read from the files.
    arr, data = _store(tmp_path, LAYOUTS[layout])
    zeros = zarr.create_array(
        str(tmp_path / "zeros.zarr"), data=np.zeros_like(data), chunks=(100, data.shape[1])
    )
    files = ChunkFiles.of(arr)
    assert files is not None
    direct = ChunkFiles(
        zeros,
        files.folder,
        compressor=files.compressor,
        checksummed=files.checksummed,
    )
    for start, stop in [(0, 1003), (150, 160), (990, 1003)]:
        np.testing.assert_array_equal(direct.read(start, stop), data[start:stop])
    assert (files.compressor, files.checksummed) == {
        "bytes": (None, False),
        "crc32c": (None, True),
        "zstd": ("zstd", False),
        "zstd+crc32c": ("zstd", True),
        "zstd checksum level 5": ("zstd", False),
        "blosc lz4": ("blosc", False),
        "blosc zstd+crc32c": ("blosc", True),
    }[layout]


@pytest.mark.parametrize("n_bytes", [0, 8, 70_000])
def test_the_blosc_header_gives_the_decoded_size(n_bytes: int) -> None:
    frame = np.frombuffer(Blosc(cname="lz4").encode(bytes(n_bytes)), np.uint8)
    assert blosc_content_size(frame) == n_bytes
    assert blosc_content_size(frame[:-1]) is None
    assert blosc_content_size(frame[:8]) is None


@pytest.mark.parametrize("layout", ["zstd", "blosc lz4"])
@pytest.mark.parametrize("at", [0.3, 0.6, 0.9])
def test_a_damaged_frame_without_a_crc_reads_as_zarr_reads_it(
    tmp_path: Path, layout: str, at: float
) -> None:
    # Without a CRC a flipped byte may decode to other numbers or fail to decode; either
    # way the direct read must give what Zarr gives (the same rows, or Zarr's error).
    arr, _ = _store(tmp_path, LAYOUTS[layout], n=300)
    path = _chunk(tmp_path, 1)
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= 0xFF
    path.write_bytes(bytes(raw))
    files = ChunkFiles.of(arr)
    assert files is not None
    try:
        want = arr[0:300]
    except Exception as exc:  # noqa: BLE001 - whatever Zarr raises, so must the read
        with pytest.raises(type(exc)):
            files.read(0, 300)
    else:
        np.testing.assert_array_equal(files.read(0, 300), want)
