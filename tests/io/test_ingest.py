"""emdist.io.ingest: every format round-trips exactly; bad files fail loudly and leave nothing.

All sources are real files written to ``tmp_path`` by the libraries users write them with
(numpy, pyarrow, h5py, zarr, plain text); outputs are real Zarr v3 arrays read back with zarr.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

import emdist
from emdist.exceptions import InvalidDataError, InvalidParameterError
from emdist.io import as_dask_array
from emdist.io.atomic import DiskFullError, OutputExistsError, recover_output
from emdist.io.ingest import (
    DEFAULT_CHUNK_BYTES,
    IngestError,
    balanced_chunk_rows,
    chunk_rows_for_bytes,
    detect_format,
    ingest,
)
from tests.markers import root_fixture

NAMES = ["alpha", "beta", "gamma", "delta"]
CSV_ENGINES = ["numpy", "pyarrow"]


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    """1003 x 4 values of very different magnitudes: exactness is not an accident of scale."""
    rng = np.random.default_rng(42)
    X = rng.standard_normal((1003, 4)) * np.array([1.0, 1e-8, 1e12, 3.0])
    X[0] = [0.0, -0.0, 1e-300, -1e300]
    return X


def write_csv(path: Path, X: np.ndarray, names: list[str] | None = None) -> Path:
    with open(path, "w") as f:
        if names is not None:
            f.write(",".join(names) + "\n")
        for row in X:
            f.write(",".join(repr(float(v)) for v in row) + "\n")
    return path


def siblings(dest: Path) -> list[str]:
    """What ingest left next to ``dest`` (partial or old outputs), besides dest itself."""
    return sorted(p.name for p in dest.parent.glob(f"{dest.name}.*"))


def read(dest: Path) -> zarr.Array:
    arr = zarr.open_array(str(dest), mode="r")
    assert arr.metadata.zarr_format == 3
    return arr


# --------------------------------------------------------------------------------------
# Round trips


def make_source(kind: str, tmp_path: Path, X: np.ndarray) -> tuple[Path, dict, list | None]:
    """A source file holding ``X``; the ingest options it needs; the names it carries."""
    if kind == "npy":
        return _save(tmp_path / "x.npy", X), {}, None
    if kind == "npy-fortran":
        return _save(tmp_path / "x.npy", np.asfortranarray(X)), {}, None
    if kind.startswith("csv-header"):
        engine = kind.rsplit("-", 1)[1]
        return write_csv(tmp_path / "x.csv", X, NAMES), {"csv_engine": engine}, NAMES
    if kind.startswith("csv-bare"):
        engine = kind.rsplit("-", 1)[1]
        return write_csv(tmp_path / "x.csv", X), {"csv_engine": engine}, None
    if kind == "parquet":
        table = pa.table({name: X[:, j] for j, name in enumerate(NAMES)})
        pq.write_table(table, tmp_path / "x.parquet", row_group_size=300)
        return tmp_path / "x.parquet", {}, NAMES
    if kind == "hdf5":
        with h5py.File(tmp_path / "x.h5", "w") as f:
            f.create_dataset("meta/ids", data=np.arange(10))  # 1-D: not a candidate
            ds = f.create_dataset("group/features", data=X, chunks=(128, 4))
            ds.attrs["feature_names"] = NAMES
        return tmp_path / "x.h5", {}, NAMES
    if kind == "zarr":
        src = zarr.create_array(
            str(tmp_path / "src.zarr"), shape=X.shape, chunks=(100, 4), dtype="float64"
        )
        src[...] = X
        src.attrs["feature_names"] = NAMES
        return tmp_path / "src.zarr", {}, NAMES
    raise AssertionError(kind)


def _save(path: Path, X: np.ndarray) -> Path:
    np.save(path, X)
    return path


KINDS = [
    "npy",
    "npy-fortran",
    "csv-header-numpy",
    "csv-header-pyarrow",
    "csv-bare-numpy",
    "csv-bare-pyarrow",
    "parquet",
    "hdf5",
    "zarr",
]


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_exact(kind: str, tmp_path: Path, X: np.ndarray) -> None:
    src, options, names = make_source(kind, tmp_path, X)
    dest = tmp_path / "out.zarr"
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    result = ingest(src, dest, chunk_rows=256, **options)

    arr = read(dest)
    np.testing.assert_array_equal(arr[...], X, strict=True)
    assert arr.shape == X.shape == result.shape
    assert arr.dtype == np.float64 and result.dtype == "float64"
    assert arr.chunks == (256, 4) and result.chunk_rows == 256
    # Uncompressed by default: the only bytes codec is the per-chunk checksum.
    assert [type(c).__name__ for c in arr.compressors] == ["Crc32cCodec"]
    assert result.feature_names == (tuple(names) if names else None)
    assert arr.attrs.get("feature_names") == names
    prov = arr.attrs["provenance"]
    assert prov["source"] == str(src.resolve())
    assert prov["format"] == kind.split("-")[0]
    assert prov["shape"] == prov["source_shape"] == list(X.shape)
    assert prov["dtype"] == "float64"
    assert prov["chunk_rows"] == 256
    assert prov["compressor"] == "none"
    assert prov["emdist_version"] == emdist.__version__
    created = dt.datetime.fromisoformat(prov["created"])
    assert created.utcoffset() == dt.timedelta(0)
    assert before <= created <= dt.datetime.now(dt.UTC)
    assert siblings(dest) == []


def test_parquet_integer_columns_and_types_are_recorded(tmp_path: Path) -> None:
    ints = np.arange(-5, 995, dtype=np.int64)
    floats32 = np.linspace(-1, 1, 1000, dtype=np.float32)
    pq.write_table(pa.table({"i": ints, "f": floats32}), tmp_path / "x.parquet")
    ingest(tmp_path / "x.parquet", tmp_path / "out.zarr")
    arr = read(tmp_path / "out.zarr")
    np.testing.assert_array_equal(arr[:, 0], ints.astype(np.float64))
    np.testing.assert_array_equal(arr[:, 1], floats32.astype(np.float64))
    assert arr.attrs["provenance"]["source_dtype"] == "int64, float"


def test_a_parquet_read_holds_a_few_row_groups_not_the_file(tmp_path: Path) -> None:
    # pyarrow's default pre-buffering keeps every column chunk read until the file is
    # closed: an ingest's memory grew to the file's size (2 GB for a 1.6 GB file).
    from emdist.io.readers.base import ReadOptions
    from emdist.io.readers.parquet import ParquetReader

    rows, groups, d = 20_000, 12, 8
    rng = np.random.default_rng(0)
    names = [f"f{j}" for j in range(d)]
    schema = pa.schema([(n, pa.float64()) for n in names])
    with pq.ParquetWriter(tmp_path / "x.parquet", schema, compression="none") as writer:
        for _ in range(groups):
            X = rng.normal(size=(rows, d))
            writer.write_table(pa.table({n: X[:, j] for j, n in enumerate(names)}))
    group_bytes = rows * d * 8
    reader = ParquetReader.open(tmp_path / "x.parquet", ReadOptions(np.dtype(np.float64)))
    base = pa.total_allocated_bytes()
    held = []
    try:
        for _block, _start in reader.blocks(rows // 4):
            held.append(pa.total_allocated_bytes() - base)
    finally:
        reader.close()
    assert len(held) == 4 * groups
    assert max(held) < 3 * group_bytes, (max(held), group_bytes)


def test_float32_output(tmp_path: Path, X: np.ndarray) -> None:
    small = (X[:, [0, 3]] / 1e300 * 1e30).astype(np.float32)  # inside float32's range
    np.save(tmp_path / "x.npy", small)
    ingest(tmp_path / "x.npy", tmp_path / "out.zarr", dtype="float32")
    arr = read(tmp_path / "out.zarr")
    np.testing.assert_array_equal(arr[...], small, strict=True)
    # From text, values are parsed as float64 then rounded once to float32.
    write_csv(tmp_path / "x.csv", small.astype(np.float64))
    ingest(tmp_path / "x.csv", tmp_path / "csv.zarr", dtype="float32")
    np.testing.assert_array_equal(read(tmp_path / "csv.zarr")[...], small, strict=True)


def test_csv_details(tmp_path: Path) -> None:
    """Quoted numbers, spaces, CRLF, blank lines, a byte-order mark, a semicolon delimiter."""
    text = '\ufeff"a";"b"\r\n1.5;"2"\r\n\r\n -3e2 ; 4\r\n\r\n'
    (tmp_path / "x.csv").write_text(text, encoding="utf-8", newline="")
    for engine in CSV_ENGINES:
        dest = tmp_path / f"{engine}.zarr"
        result = ingest(tmp_path / "x.csv", dest, delimiter=";", csv_engine=engine)
        np.testing.assert_array_equal(read(dest)[...], [[1.5, 2.0], [-300.0, 4.0]])
        assert result.feature_names == ("a", "b")


def test_csv_numeric_header_needs_header_true(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("1,2\n3,4\n")
    ingest(tmp_path / "x.csv", tmp_path / "a.zarr")
    assert read(tmp_path / "a.zarr").shape == (2, 2)
    result = ingest(tmp_path / "x.csv", tmp_path / "b.zarr", header=True)
    assert result.feature_names == ("1", "2") and result.shape == (1, 2)


def test_hdf5_with_several_datasets_needs_a_name(tmp_path: Path, X: np.ndarray) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["train"] = X
        f["test"] = X[:10]
    with pytest.raises(ValueError, match="2 two-dimensional datasets .test, train.; pass dataset="):
        ingest(tmp_path / "x.h5", tmp_path / "out.zarr")
    result = ingest(tmp_path / "x.h5", tmp_path / "out.zarr", dataset="test")
    np.testing.assert_array_equal(read(tmp_path / "out.zarr")[...], X[:10])
    assert read(result.path).attrs["provenance"]["dataset"] == "/test"


def test_detect_format(tmp_path: Path) -> None:
    assert detect_format("a/b.NPY") == "npy"
    assert detect_format("b.tsv") == "csv"
    assert detect_format("b.pq") == "parquet"
    assert detect_format("b.hdf5") == "hdf5"
    with pytest.raises(ValueError, match="source_format="):
        detect_format("b.xlsx")


# --------------------------------------------------------------------------------------
# Chunking


def test_default_chunk_is_in_the_measured_sweet_spot() -> None:
    rows = chunk_rows_for_bytes(32, 8, DEFAULT_CHUNK_BYTES)
    assert 50_000 <= rows <= 100_000  # docs/design.md: 50k-100k rows of 32 float64 fastest
    assert rows * 32 * 8 <= DEFAULT_CHUNK_BYTES < (rows + 1) * 32 * 8


@pytest.mark.parametrize("kind", ["npy", "csv-header-pyarrow", "csv-header-numpy", "parquet"])
@pytest.mark.parametrize("chunk_bytes", [4096, 10_000, 10**9])
def test_chunk_rows_follow_the_byte_target(
    kind: str, chunk_bytes: int, tmp_path: Path, X: np.ndarray
) -> None:
    src, options, _ = make_source(kind, tmp_path, X)
    result = ingest(src, tmp_path / "out.zarr", chunk_bytes=chunk_bytes, **options)
    arr = read(result.path)
    n, d = X.shape
    most = chunk_bytes // (d * 8)  # whole rows within the target
    if kind.startswith("csv"):
        # Length unknown until the end: full-size chunks, or one chunk of all the rows.
        expected = min(most, n)
    else:
        # Length known: near-equal chunks, none over the target (Zarr pads the last chunk
        # to full size on disk).
        expected = -(-n // -(-n // most))
        assert expected <= most and -(-n // expected) == -(-n // min(most, n))
    assert arr.chunks == (expected, d) == (result.chunk_rows, d)
    np.testing.assert_array_equal(arr[...], X)
    # The fitter's Dask blocks are the store's chunks: one block, one read.
    assert as_dask_array(result.path).chunks[0][0] == expected


def test_balanced_chunks_waste_no_disk(tmp_path: Path) -> None:
    assert balanced_chunk_rows(1_000_000, 65_536) == 62_500
    assert balanced_chunk_rows(72_000, 65_536) == 36_000
    assert balanced_chunk_rows(10, 65_536) == 10
    assert balanced_chunk_rows(65_537, 65_536) == 32_769
    np.save(tmp_path / "x.npy", np.ones((10_000, 8)))
    result = ingest(tmp_path / "x.npy", tmp_path / "o.zarr", chunk_bytes=64 * 3000)
    assert result.chunk_rows == 2500
    chunk_files = [p for p in (tmp_path / "o.zarr" / "c").rglob("*") if p.is_file()]
    # The data and a 4-byte CRC-32C per chunk, no padding.
    assert sum(p.stat().st_size for p in chunk_files) == 10_000 * 8 * 8 + 4 * len(chunk_files)


def test_float32_halves_the_row_bytes(tmp_path: Path, X: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", np.ones((1003, 2), dtype=np.float32))
    result = ingest(tmp_path / "x.npy", tmp_path / "o.zarr", chunk_bytes=4096, dtype="float32")
    assert result.chunk_rows == balanced_chunk_rows(1003, 4096 // (2 * 4))


# --------------------------------------------------------------------------------------
# Validation: bad files raise a clear error and leave nothing behind

BAD_CSV = {
    # name: (text, line, data row, column index, column name, words in the message)
    "nan": ("a,b,c\n1,2,3\n\n4,nan,6\n", 4, 1, 1, "b", "non-finite"),
    "inf": ("a,b,c\n1,2,3\n4,5,-inf\n", 3, 1, 2, "c", "non-finite"),
    "ragged-short": ("a,b,c\n1,2,3\n4,5\n", 3, 1, None, None, "2 value(s), expected 3"),
    "ragged-long": ("a,b,c\n1,2,3\n4,5,6\n7,8,9,10\n", 4, 2, None, None, "4 value(s)"),
    "text-column": ("a,b,label\n1,2,3\n4,5,cat\n", 3, 1, 2, "label", "'cat' is not a number"),
    "empty-field": ("a,b,c\n1,2,3\n4,,6\n", 3, 1, 1, "b", "empty value"),
    "no-header-text": ("1,2,x\n3,4,5\n", 1, 0, 2, None, "'x' is not a number"),
}


@pytest.mark.parametrize("engine", CSV_ENGINES)
@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_csv_names_row_and_column_and_leaves_nothing(
    case: str, engine: str, tmp_path: Path
) -> None:
    text, line, row, column, name, words = BAD_CSV[case]
    src = tmp_path / f"{case}.csv"
    src.write_text(text)
    dest = tmp_path / "out.zarr"
    with pytest.raises(IngestError) as info:
        ingest(src, dest, csv_engine=engine, chunk_rows=1)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, emdist.InvalidDataError)
    assert (err.line, err.row, err.column, err.column_name) == (line, row, column, name)
    message = str(err)
    assert str(src) in message and f"line {line}" in message and words in message
    if name is not None:
        assert repr(name) in message
    assert not dest.exists() and siblings(dest) == []


@pytest.mark.parametrize("engine", CSV_ENGINES)
def test_bad_row_far_into_the_file_is_located(engine: str, tmp_path: Path) -> None:
    """The error is found after several chunks were written; the line number is exact."""
    X = np.arange(30_000, dtype=np.float64).reshape(-1, 3)
    src = write_csv(tmp_path / "x.csv", X, ["a", "b", "c"])
    lines = src.read_text().splitlines()
    lines[8765] = lines[8765].rsplit(",", 1)[0] + ",oops"  # line 8766, data row 8764
    src.write_text("\n".join(lines) + "\n")
    dest = tmp_path / "out.zarr"
    with pytest.raises(IngestError, match="line 8766 .data row index 8764., column 'c'"):
        ingest(src, dest, csv_engine=engine, chunk_rows=1000)
    assert not dest.exists() and siblings(dest) == []


def test_float32_overflow_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n1,2\n3,1e300\n")
    with pytest.raises(IngestError, match="overflows float32") as info:
        ingest(tmp_path / "x.csv", tmp_path / "o.zarr", dtype="float32")
    assert (info.value.line, info.value.column_name) == (3, "b")


def test_bad_csv_does_not_touch_an_existing_good_output(tmp_path: Path, X: np.ndarray) -> None:
    dest = tmp_path / "out.zarr"
    ingest(write_csv(tmp_path / "good.csv", X, NAMES), dest, chunk_rows=100)
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    (tmp_path / "bad.csv").write_text("a,b,c,d\n1,2,3,4\n5,6,seven,8\n")
    with pytest.raises(IngestError, match="'seven'"):
        ingest(tmp_path / "bad.csv", dest, overwrite=True)
    after = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert after == before
    np.testing.assert_array_equal(read(dest)[...], X)
    assert siblings(dest) == []


def test_npy_problems(tmp_path: Path, X: np.ndarray) -> None:
    bad = X.copy()
    bad[700, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(IngestError, match="data row index 700, column 2: non-finite") as info:
        ingest(tmp_path / "nan.npy", tmp_path / "o.zarr", chunk_rows=256)
    assert (info.value.row, info.value.column, info.value.line) == (700, 2, None)
    np.save(tmp_path / "bool.npy", X > 0)
    with pytest.raises(IngestError, match="dtype bool"):
        ingest(tmp_path / "bool.npy", tmp_path / "o.zarr")
    np.save(tmp_path / "flat.npy", X[:, 0])
    with pytest.raises(IngestError, match="1-D"):
        ingest(tmp_path / "flat.npy", tmp_path / "o.zarr")
    np.save(tmp_path / "obj.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(IngestError, match="memory-map"):  # never unpickled
        ingest(tmp_path / "obj.npy", tmp_path / "o.zarr")
    np.save(tmp_path / "empty.npy", np.empty((0, 3)))
    with pytest.raises(IngestError, match="no data rows"):
        ingest(tmp_path / "empty.npy", tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists() and siblings(tmp_path / "o.zarr") == []


def test_parquet_problems(tmp_path: Path) -> None:
    pq.write_table(pa.table({"x": [1.0, 2.0], "name": ["a", "b"]}), tmp_path / "text.parquet")
    with pytest.raises(IngestError, match="column 'name' .index 1.: has type string") as info:
        ingest(tmp_path / "text.parquet", tmp_path / "o.zarr")
    assert info.value.row is None
    pq.write_table(
        pa.table({"x": [1.0, 2.0, 3.0], "y": pa.array([1.0, None, 3.0])}),
        tmp_path / "null.parquet",
    )
    with pytest.raises(IngestError, match="data row index 1, column 'y' .index 1.: missing"):
        ingest(tmp_path / "null.parquet", tmp_path / "o.zarr")
    pq.write_table(pa.table({"x": [1.0], "b": [True]}), tmp_path / "bool.parquet")
    with pytest.raises(IngestError, match="column 'b'.*type bool"):
        ingest(tmp_path / "bool.parquet", tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists() and siblings(tmp_path / "o.zarr") == []


# --------------------------------------------------------------------------------------
# Overwrite and atomicity


def test_overwrite(tmp_path: Path, X: np.ndarray) -> None:
    dest = tmp_path / "out.zarr"
    np.save(tmp_path / "a.npy", X)
    np.save(tmp_path / "b.npy", X[:500] * 2)
    ingest(tmp_path / "a.npy", dest)
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        ingest(tmp_path / "b.npy", dest)
    np.testing.assert_array_equal(read(dest)[...], X)
    ingest(tmp_path / "b.npy", dest, overwrite=True)
    np.testing.assert_array_equal(read(dest)[...], X[:500] * 2)
    assert siblings(dest) == []


def test_overwrite_refuses_a_directory_that_is_not_zarr(tmp_path: Path, X: np.ndarray) -> None:
    np.save(tmp_path / "a.npy", X)
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    # overwrite replaces only a dataset emdist ingested, never someone's folder.
    with pytest.raises(FileExistsError, match="not an emdist output"):
        ingest(tmp_path / "a.npy", precious, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_rechunk_a_zarr_array_in_place(tmp_path: Path, X: np.ndarray) -> None:
    dest = tmp_path / "out.zarr"
    first = ingest(write_csv(tmp_path / "x.csv", X, NAMES), dest, chunk_rows=100)
    result = ingest(dest, dest, chunk_rows=333, compressor="zstd", overwrite=True)
    arr = read(dest)
    np.testing.assert_array_equal(arr[...], X)
    assert arr.chunks == (333, 4) and result.compressor == "zstd"
    assert arr.attrs["feature_names"] == NAMES
    # The provenance chain still leads to the CSV.
    assert arr.attrs["provenance"]["source_provenance"]["source"] == str(first.source.resolve())


@pytest.mark.parametrize("compressor", ["zstd", "lz4", "blosc-zstd"])
def test_compressors_round_trip(compressor: str, tmp_path: Path, X: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", X)
    result = ingest(tmp_path / "x.npy", tmp_path / "o.zarr", compressor=compressor)
    arr = read(result.path)
    # The compressor, then the per-chunk checksum over the compressed bytes.
    assert [type(c).__name__ for c in arr.compressors][1:] == ["Crc32cCodec"]
    assert len(arr.compressors) == 2
    np.testing.assert_array_equal(arr[...], X)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from emdist.io.ingest import ingest
    print("start", flush=True)
    ingest(sys.argv[1], sys.argv[2], chunk_rows=2000, overwrite=True, compressor="zstd")
    """
)


@pytest.mark.service
def test_sigkill_during_ingest_never_damages_the_old_output(tmp_path: Path) -> None:
    """A real process, killed with SIGKILL mid-conversion: the old output stays whole."""
    dest = tmp_path / "out.zarr"
    old = np.arange(12.0).reshape(4, 3)
    np.save(tmp_path / "old.npy", old)
    ingest(tmp_path / "old.npy", dest)
    big = np.random.default_rng(0).standard_normal((400_000, 3))  # ~10 MB, 200 chunks
    np.save(tmp_path / "big.npy", big)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    rng = np.random.default_rng(7)
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "big.npy"), str(dest)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"start"
        # Wait until the new array is being written beside the old one, then kill at a
        # random moment of the conversion.
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob("out.zarr.partial-*")) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # Killed mid-write, or finished first: either the old array or the complete new one.
        arr = read(dest)
        if arr.shape == old.shape:
            np.testing.assert_array_equal(arr[...], old)
            assert siblings(dest) != []  # it really was killed mid-write
        else:
            np.testing.assert_array_equal(arr[...], big)
            ingest(tmp_path / "old.npy", dest, overwrite=True)
        recover_output(dest)  # what the next ingest does first: stray partials go
        assert siblings(dest) == []


# --------------------------------------------------------------------------------------
# Inputs that are refused in one line, before anything is read or written


def one_line(message: str) -> str:
    assert "\n" not in message and "Traceback" not in message, message
    return message


@pytest.mark.parametrize("fmt", ["csv", "npy", None])
def test_a_character_device_is_refused_before_reading(fmt: str | None, tmp_path: Path) -> None:
    dest = tmp_path / "o.zarr"
    with pytest.raises(IngestError, match="/dev/zero is a character device, not a regular file"):
        ingest("/dev/zero", dest, source_format=fmt)
    assert not dest.exists() and siblings(dest) == []


def test_a_fifo_and_a_socket_are_refused_without_opening_them(tmp_path: Path) -> None:
    import socket

    fifo = tmp_path / "x.csv"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(IngestError, match=r"x\.csv is a FIFO \(named pipe\), not a regular"):
        ingest(fifo, tmp_path / "o.zarr")
    sock_path = tmp_path / "s.csv"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(IngestError, match=r"s\.csv is a socket, not a regular file"):
            ingest(sock_path, tmp_path / "o.zarr", source_format="csv")
    assert not (tmp_path / "o.zarr").exists() and siblings(tmp_path / "o.zarr") == []


@pytest.mark.parametrize(
    ("fmt", "says"),
    [
        ("hdf5", "is not an HDF5 file"),
        ("parquet", "is not a Parquet file"),
        ("npy", "is not a .npy file"),
        ("zarr", "is not a Zarr array"),
    ],
)
def test_a_csv_read_as_another_format_names_source_format(
    fmt: str, says: str, tmp_path: Path, X: np.ndarray
) -> None:
    src = write_csv(tmp_path / "x.csv", X[:20], NAMES)
    with pytest.raises(IngestError, match=says) as info:
        ingest(src, tmp_path / "o.zarr", source_format=fmt)
    message = one_line(str(info.value))
    assert str(src) in message and f"source_format={fmt!r}" in message
    assert not (tmp_path / "o.zarr").exists() and siblings(tmp_path / "o.zarr") == []


@pytest.mark.parametrize("fmt", ["csv", "npy", "parquet", "hdf5", "zarr"])
def test_a_directory_read_as_a_file_format_is_one_line(fmt: str, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(IngestError, match=f"d is not .*it is a directory.*{fmt!r}") as info:
        ingest(tmp_path / "d", tmp_path / "o.zarr", source_format=fmt)
    one_line(str(info.value))
    assert not (tmp_path / "o.zarr").exists()


def test_a_parquet_file_read_as_csv_is_not_utf8_text(tmp_path: Path) -> None:
    pq.write_table(pa.table({"x": [1.0, 2.0]}), tmp_path / "x.parquet")
    with pytest.raises(IngestError, match="not UTF-8 text"):
        ingest(tmp_path / "x.parquet", tmp_path / "o.zarr", source_format="csv")


NOT_UTF8 = {
    # name: (bytes, byte offset of the first bad byte, its 1-based line)
    "latin1-header": ("x,température\n1,2\n".encode("latin-1"), 6, 1),
    "latin1-deep": (b"a,b\n" + b"1,2\n" * 5000 + "3,é\n".encode("latin-1"), 4 + 4 * 5000 + 2, 5002),
    "utf16": ("a,b\n1,2\n".encode("utf-16"), 0, 1),
    "binary": (b"\x93NUMPY\x01\x00v\x00{'descr': '<f8'}", 0, 1),
    "nul": (b"a,b\n1,2\n\x00\x00\x00\x00", 8, 3),
}


@pytest.mark.parametrize("engine", CSV_ENGINES)
@pytest.mark.parametrize("case", sorted(NOT_UTF8))
def test_text_that_is_not_utf8_is_one_line_naming_offset_and_line(
    case: str, engine: str, tmp_path: Path
) -> None:
    data, offset, line = NOT_UTF8[case]
    src = tmp_path / "x.csv"
    src.write_bytes(data)
    with pytest.raises(IngestError, match="not UTF-8 text") as info:
        ingest(src, tmp_path / "o.zarr", csv_engine=engine)  # type: ignore[arg-type]
    message = one_line(str(info.value))
    assert str(src) in message
    assert f"byte offset {offset}" in message and f"line {line}" in message
    assert (info.value.line, info.value.offset) == (line, offset)
    assert not (tmp_path / "o.zarr").exists() and siblings(tmp_path / "o.zarr") == []


def test_utf16_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_bytes("a,b\n1,2\n".encode("utf-16"))
    with pytest.raises(IngestError, match="UTF-16"):
        ingest(tmp_path / "x.csv", tmp_path / "o.zarr")


def test_a_nul_byte_in_a_path_is_one_line(tmp_path: Path, X: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(InvalidParameterError, match="source .* NUL byte") as info:
        ingest(str(tmp_path / "x\0.npy"), tmp_path / "o.zarr")
    one_line(str(info.value))
    with pytest.raises(InvalidParameterError, match="dest .* NUL byte"):
        ingest(tmp_path / "x.npy", str(tmp_path / "o\0.zarr"))
    assert list(tmp_path.iterdir()) == [tmp_path / "x.npy"]


def test_an_unknown_suffix_names_source_format(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text("[[1, 2]]")
    with pytest.raises(IngestError, match="suffix '.json'; pass source_format=") as info:
        ingest(tmp_path / "data.json", tmp_path / "o.zarr")
    one_line(str(info.value))


@pytest.mark.parametrize("estimator", ["GaussianMixture", "KMeans"])
def test_fitting_a_csv_path_says_to_ingest_it_first(
    estimator: str, tmp_path: Path, X: np.ndarray
) -> None:
    src = write_csv(tmp_path / "data.csv", X[:50], NAMES)
    with pytest.raises(InvalidDataError, match="emdist.io.ingest") as info:
        getattr(emdist, estimator)(2).fit(str(src))
    message = one_line(str(info.value))
    assert f"{src} is a file, not a Zarr array" in message
    assert "No group found" not in message


# --------------------------------------------------------------------------------------
# A full disk: one line naming the path and the space, nothing left behind


@root_fixture("mounts a 1 MiB tmpfs")
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs filled to the last byte by ``fill``: a real full file system.

    Skipped where not root, and failed instead under ``EMDIST_REQUIRE_ROOT_TESTS=1`` (as
    .ci/run runs): a skipped test proves nothing (``tests/markers.py``).
    """
    mnt = tmp_path / "full"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        fd = os.open(mnt / "fill", os.O_WRONLY | os.O_CREAT)
        try:
            with contextlib.suppress(OSError):  # unbuffered writes until ENOSPC
                while os.write(fd, b"\0" * 4096):
                    pass
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("kind", ["npy", "csv"])
@pytest.mark.parametrize("where", ["data.zarr", "new/dir/data.zarr"])
def test_a_full_disk_under_a_new_output_is_one_line_and_leaves_nothing(
    kind: str, where: str, full_disk: Path, tmp_path: Path, X: np.ndarray
) -> None:
    src = _save(tmp_path / "x.npy", X) if kind == "npy" else write_csv(tmp_path / "x.csv", X)
    dest = full_disk / where
    with pytest.raises(DiskFullError, match="no space left on the device writing") as info:
        ingest(src, dest)
    message = one_line(str(info.value))
    assert str(dest) in message and "free" in message
    if kind == "npy":
        assert f"it needs about {X.nbytes / 2**10:,.1f} KiB" in message
    assert sorted(p.name for p in full_disk.iterdir()) == ["fill"]  # no lock, partial, dirs
    (full_disk / "fill").unlink()
    # Space freed: the same command now succeeds (nothing stale blocks it).
    np.testing.assert_array_equal(read(ingest(src, dest).path)[...], X)


# --------------------------------------------------------------------------------------
# The reader registry


def test_a_new_format_is_one_reader_subclass(tmp_path: Path) -> None:
    """Defining a Reader subclass is all a format needs: by name, by suffix, in provenance."""
    import json

    from emdist.io.ingest import parse_source_format
    from emdist.io.readers import base

    class JsonLinesReader(base.Reader):
        name = "test-jsonl"
        suffixes = (".jsonl",)
        what = "a JSON-lines file"

        @classmethod
        def open(cls, path: Path, options: base.ReadOptions) -> JsonLinesReader:
            reader = cls()
            reader.path = path
            reader.rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            reader.n_rows, reader.n_features = len(reader.rows), len(reader.rows[0])
            reader.feature_names, reader.source_dtype, reader.extra = None, "json", {}
            return reader

        def blocks(self, rows: int) -> Iterator[tuple[np.ndarray, int]]:
            for start in range(0, len(self.rows), rows):
                yield np.asarray(self.rows[start : start + rows], dtype=float), start

    try:
        (tmp_path / "x.jsonl").write_text("[1, 2]\n[3, 4.5]\n[5, 6]\n")
        assert detect_format(tmp_path / "x.jsonl") == "test-jsonl"
        assert parse_source_format("test-jsonl") == "test-jsonl"
        result = ingest(tmp_path / "x.jsonl", tmp_path / "o.zarr", chunk_rows=2)
        np.testing.assert_array_equal(read(result.path)[...], [[1, 2], [3, 4.5], [5, 6]])
        assert read(result.path).attrs["provenance"]["format"] == "test-jsonl"
        (tmp_path / "y.jsonl").write_text("[1, 2]\n[3, NaN]\n")
        with pytest.raises(IngestError, match="data row index 1, column 1: non-finite"):
            ingest(tmp_path / "y.jsonl", tmp_path / "p.zarr")
    finally:
        base._REGISTRY.pop("test-jsonl", None)
    with pytest.raises(IngestError, match="suffix '.jsonl'"):
        detect_format(tmp_path / "x.jsonl")


def test_every_reader_module_registers_its_format() -> None:
    from emdist.io.ingest import SOURCE_FORMATS
    from emdist.io.readers import reader_for_name

    assert SOURCE_FORMATS == ("npy", "csv", "parquet", "hdf5", "zarr")
    modules = {reader_for_name(f).__module__.rsplit(".", 1)[1] for f in SOURCE_FORMATS}
    assert modules == {"npy", "csv_text", "parquet", "hdf5", "zarr_array"}
