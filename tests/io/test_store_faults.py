"""Store faults a fit must not read past: chunks moved, records removed, undecodable chunks,
files that would hang a read, data replaced while a fit reads it, a full disk, broken locks.

Every case damages a real Zarr store on disk, then asserts a one-line error naming the store
(and the chunk or file), or the warning said instead, and that nothing was lost. No mocks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import emdist
from emdist.exceptions import ConvergenceWarning
from emdist.io.atomic import DiskFullError
from emdist.io.checkpoint import CheckpointStore
from emdist.io.ingest import ingest
from emdist.io.integrity import RECORD_KEY, IntegrityError, IntegrityWarning
from emdist.io.locks import StaleLockWarning, WriterLockedError
from emdist.io.persistence import load_model, save_model
from emdist.io.sources import as_dask_array
from pipeline.cli import main as cli_main
from tests.io.test_faults import small_disk, tree_digest

__all__ = ["small_disk"]  # the 2 MiB tmpfs fixture, shared with test_faults


def one_line(message: str) -> None:
    assert "\n" not in message.strip(), message
    assert "Traceback" not in message, message


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 0.0], [0.0, 4.0, 4.0]])
    X = np.concatenate([c + rng.standard_normal((400, 3)) for c in centers])
    return X[rng.permutation(len(X))]


def fit(data: Any, **kwargs: Any) -> emdist.GaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        kwargs.setdefault("max_iter", 3)
        return emdist.GaussianMixture(3, random_state=0, **kwargs).fit(data)


def make_dataset(tmp_path: Path, X: np.ndarray, compressor: str | None, name: str = "data") -> Path:
    """An ingested dataset in 4 chunks of 300 rows."""
    np.save(tmp_path / f"{name}.npy", X)
    return ingest(
        tmp_path / f"{name}.npy", tmp_path / f"{name}.zarr", chunk_rows=300, compressor=compressor
    ).path  # type: ignore[arg-type]


def make_plain(tmp_path: Path, X: np.ndarray, compressor: str | None) -> Path:
    """A store emdist did not write: plain Zarr v3, 4 chunks of 300 rows, no checksum."""
    path = tmp_path / "plain.zarr"
    compressors = [zarr.codecs.ZstdCodec()] if compressor else None
    arr = zarr.create_array(str(path), shape=X.shape, chunks=(300, 3), dtype="f8",
                            compressors=compressors)  # fmt: skip
    arr[...] = X
    return path


@pytest.fixture(params=[None, "zstd"])
def dataset(request: pytest.FixtureRequest, tmp_path: Path, X: np.ndarray) -> Path:
    """An ingested dataset, uncompressed and zstd."""
    return make_dataset(tmp_path, X, request.param)


@pytest.fixture(params=[None, "zstd"])
def plain(request: pytest.FixtureRequest, tmp_path: Path, X: np.ndarray) -> Path:
    """A plain Zarr store, uncompressed and zstd."""
    return make_plain(tmp_path, X, request.param)


def chunk(store: Path, i: int) -> Path:
    return store / "c" / str(i) / "0"


def edit_meta(store: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads((store / "zarr.json").read_text())
    edit(doc)
    (store / "zarr.json").write_text(json.dumps(doc))


def _drop_record(d: dict[str, Any]) -> None:
    d["attributes"].pop(RECORD_KEY)


def _chunk_shape(d: dict[str, Any]) -> None:
    d["chunk_grid"]["configuration"]["chunk_shape"] = [200, 3]


def _dtype(d: dict[str, Any]) -> None:
    d["data_type"] = "float32"


# --------------------------------------------------------------------------------------------
# a chunk's position and the record
# --------------------------------------------------------------------------------------------


def _copy(store: Path) -> None:
    shutil.copy(chunk(store, 0), chunk(store, 3))


def _swap(store: Path) -> None:
    os.replace(chunk(store, 0), store / "tmp")
    os.replace(chunk(store, 1), chunk(store, 0))
    os.replace(store / "tmp", chunk(store, 1))


def _other_data(store: Path) -> None:
    # The chunk of another dataset of the same shape and codecs, whole, with a valid CRC.
    codecs = json.loads((store / "zarr.json").read_text())["codecs"]
    compressor = "zstd" if any(c["name"] == "zstd" for c in codecs) else None
    other_x = np.random.default_rng(7).standard_normal((1200, 3))
    other = make_dataset(store.parent, other_x, compressor, name="other")
    shutil.copy(chunk(other, 2), chunk(store, 2))


POSITION = {
    "copied": (_copy, "chunk 3/0 does not hold the data written there .*chunk 0/0's"),
    "swapped": (_swap, "chunk 0/0 does not hold the data written there .*chunk 1/0's"),
    "from another dataset": (_other_data, "chunk 2/0 .* matches no chunk of this array"),
}


@pytest.mark.parametrize("case", list(POSITION))
def test_chunk_moved_within_the_store_is_refused(dataset: Path, case: str) -> None:
    damage, expected = POSITION[case]
    damage(dataset)
    with pytest.raises(IntegrityError, match=expected) as info:
        fit(str(dataset))
    one_line(str(info.value))
    assert str(dataset) in str(info.value)


RECORD_REMOVED: dict[str, Callable[[Path], Any]] = {
    "record only": lambda s: edit_meta(s, _drop_record),
    "and a chunk deleted": lambda s: (edit_meta(s, _drop_record), chunk(s, 2).unlink()),
    "and the chunk shape edited": lambda s: edit_meta(
        s, lambda d: (_drop_record(d), _chunk_shape(d))
    ),
    "and the dtype edited": lambda s: edit_meta(s, lambda d: (_drop_record(d), _dtype(d))),
}


@pytest.mark.parametrize("case", list(RECORD_REMOVED))
def test_emdist_store_whose_record_was_removed_is_refused(dataset: Path, case: str) -> None:
    RECORD_REMOVED[case](dataset)
    with pytest.raises(IntegrityError, match="emdist wrote it .* record .* was removed") as info:
        fit(str(dataset))
    one_line(str(info.value))
    assert str(dataset) in str(info.value)


def test_ingested_store_with_only_its_provenance_is_refused_without_record(
    dataset: Path,
) -> None:
    # As an emdist that wrote no 'written_by' marker left it: the provenance says who wrote it.
    edit_meta(dataset, lambda d: (_drop_record(d), d["attributes"].pop("written_by")))
    with pytest.raises(IntegrityError, match="ingest or generate provenance"):
        fit(str(dataset))


@pytest.mark.parametrize("edit", ["removed", "shortened", "not base64"])
def test_record_whose_chunk_crcs_were_edited_is_refused(dataset: Path, edit: str) -> None:
    def change(d: dict[str, Any]) -> None:
        record = d["attributes"][RECORD_KEY]
        if edit == "removed":
            del record["chunk_crc32c"]
        elif edit == "shortened":
            record["chunk_crc32c"] = record["chunk_crc32c"][:8]
        else:
            record["chunk_crc32c"] = "not base64!"

    edit_meta(dataset, change)
    with pytest.raises(IntegrityError, match="field 'chunk_crc32c' is missing or damaged"):
        fit(str(dataset))


def test_record_of_version_1_is_read_with_a_warning(dataset: Path, X: np.ndarray) -> None:
    def to_v1(d: dict[str, Any]) -> None:
        record = d["attributes"][RECORD_KEY]
        record.pop("chunk_crc32c")
        record["version"] = 1

    edit_meta(dataset, to_v1)
    with pytest.warns(IntegrityWarning, match="record version 1.*write it again"):
        model = fit(str(dataset))
    np.testing.assert_allclose(model.means_, fit(X).means_, rtol=1e-9)


def test_intact_store_reads_as_the_in_memory_data(dataset: Path, X: np.ndarray) -> None:
    np.testing.assert_array_equal(as_dask_array(str(dataset)).compute(), X)


# --------------------------------------------------------------------------------------------
# stores emdist did not write
# --------------------------------------------------------------------------------------------


def test_plain_store_with_missing_chunks_warns_naming_their_count(plain: Path) -> None:
    chunk(plain, 1).unlink()
    chunk(plain, 2).unlink()
    with pytest.warns(IntegrityWarning, match="2 of 4 chunks are missing and read as the fill"):
        data = as_dask_array(str(plain)).compute()
    assert (data[300:900] == 0).all()


def _flip(store: Path) -> None:
    data = bytearray(chunk(store, 2).read_bytes())
    data[0] ^= 0xFF
    chunk(store, 2).write_bytes(bytes(data))


@pytest.mark.parametrize("make", [make_plain, make_dataset], ids=["plain", "emdist"])
def test_chunk_shape_edited_to_zero_is_one_line(
    tmp_path: Path, X: np.ndarray, make: Callable[..., Path]
) -> None:
    store = make(tmp_path, X, None)
    edit_meta(store, lambda d: d["chunk_grid"]["configuration"].update(chunk_shape=[0, 3]))
    with pytest.raises(IntegrityError, match="chunk shape") as info:
        fit(str(store))
    one_line(str(info.value))


UNDECODABLE = {
    "truncated": (lambda s: chunk(s, 2).write_bytes(chunk(s, 2).read_bytes()[:20]), None),
    "empty": (lambda s: chunk(s, 2).write_bytes(b""), None),
    "chunk shape edited": (lambda s: edit_meta(s, _chunk_shape), None),
    "dtype edited": (lambda s: edit_meta(s, _dtype), None),
    "zstd truncated": (lambda s: chunk(s, 2).write_bytes(chunk(s, 2).read_bytes()[:20]), "zstd"),
    "zstd empty": (lambda s: chunk(s, 2).write_bytes(b""), "zstd"),
    # (A flipped byte of an uncompressed chunk without checksum is a valid number.)
    "zstd flipped": (_flip, "zstd"),
    "zstd dtype edited": (lambda s: edit_meta(s, _dtype), "zstd"),
}


@pytest.mark.parametrize("case", list(UNDECODABLE))
def test_undecodable_chunk_of_a_plain_store_is_one_line(
    tmp_path: Path, X: np.ndarray, case: str
) -> None:
    damage, compressor = UNDECODABLE[case]
    plain = make_plain(tmp_path, X, compressor)
    damage(plain)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IntegrityWarning)
        with pytest.raises(IntegrityError, match="cannot be decoded") as info:
            fit(str(plain))
    one_line(str(info.value))
    assert str(plain) in str(info.value) and "rows " in str(info.value)


def test_undecodable_chunk_on_the_cli_is_one_line(
    tmp_path: Path, plain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chunk(plain, 2).write_bytes(b"")
    out = tmp_path / "model.zarr"
    code = cli_main(["fit", str(plain), "-k", "3", "--max-iter", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "error:" in err and "rows 600-900" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def _fifo_chunk(store: Path) -> None:
    chunk(store, 2).unlink()
    os.mkfifo(chunk(store, 2))


def _endless_chunk(store: Path) -> None:
    chunk(store, 2).unlink()
    chunk(store, 2).symlink_to("/dev/zero")


def _fifo_metadata(store: Path) -> None:
    (store / "zarr.json").unlink()
    os.mkfifo(store / "zarr.json")


NEVER_ENDING = {"pipe chunk": _fifo_chunk, "/dev/zero chunk": _endless_chunk,
                "pipe zarr.json": _fifo_metadata}  # fmt: skip


@pytest.mark.parametrize("case", list(NEVER_ENDING))
@pytest.mark.parametrize("make", [make_plain, make_dataset], ids=["plain", "emdist"])
def test_a_file_whose_read_never_ends_is_refused(
    tmp_path: Path, X: np.ndarray, make: Callable[..., Path], case: str
) -> None:
    store = make(tmp_path, X, None)
    NEVER_ENDING[case](store)
    with pytest.raises(IntegrityError, match="is not a regular file") as info:
        fit(str(store))
    one_line(str(info.value))


# --------------------------------------------------------------------------------------------
# the data replaced while a fit reads it
# --------------------------------------------------------------------------------------------


@pytest.fixture
def two_datasets(tmp_path: Path, X: np.ndarray) -> tuple[Path, Path]:
    np.save(tmp_path / "a.npy", X)
    np.save(tmp_path / "b.npy", X[::-1] + 3.0)  # same shape, other values
    return tmp_path / "a.npy", tmp_path / "b.npy"


def test_overwrite_of_a_dataset_a_fit_reads_is_refused(
    tmp_path: Path, two_datasets: tuple[Path, Path]
) -> None:
    a, b = two_datasets
    data = ingest(a, tmp_path / "data.zarr", chunk_rows=300).path
    refused: list[str] = []

    def replace(state: Any) -> None:
        if state.iteration == 2:
            with pytest.raises(WriterLockedError, match="is being read by pid") as info:
                ingest(b, data, chunk_rows=300, overwrite=True)
            refused.append(str(info.value))

    model = fit(str(data), observer=replace, tol=0.0)
    assert refused and str(data) in refused[0] and "a running fit" in refused[0]
    one_line(refused[0])
    untouched = ingest(a, tmp_path / "copy.zarr", chunk_rows=300).path
    np.testing.assert_array_equal(model.means_, fit(str(untouched), tol=0.0).means_)
    # The fit is over: its shared lock is gone and the overwrite goes through.
    ingest(b, data, chunk_rows=300, overwrite=True)
    assert not list(tmp_path.glob("data.zarr.read-*"))


def test_dataset_replaced_under_a_fit_stops_it(
    tmp_path: Path, two_datasets: tuple[Path, Path]
) -> None:
    a, b = two_datasets
    data = ingest(a, tmp_path / "data.zarr", chunk_rows=300).path
    other = ingest(b, tmp_path / "other.zarr", chunk_rows=300).path

    def swap(state: Any) -> None:
        if state.iteration == 2:  # as ingest's overwrite swaps, bypassing the reader's lock
            os.replace(data, tmp_path / "aside")
            os.replace(other, data)

    with pytest.raises(IntegrityError, match="changed after it was opened") as info:
        fit(str(data), observer=swap, tol=0.0)
    one_line(str(info.value))
    assert str(data) in str(info.value)


# --------------------------------------------------------------------------------------------
# a full disk while taking a lock
# --------------------------------------------------------------------------------------------


def fill(disk: Path) -> Path:
    ballast = disk / "ballast"
    with contextlib.suppress(OSError), ballast.open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    return ballast


def test_model_save_on_a_full_disk_is_one_line_and_keeps_the_model(
    small_disk: Path, X: np.ndarray
) -> None:
    path = small_disk / "model.zarr"
    save_model(fit(X), path)
    before = tree_digest(path)
    fill(small_disk)
    with pytest.raises(DiskFullError, match=f"no space left on the device writing {path}") as e:
        save_model(fit(X), path, overwrite=True)
    one_line(str(e.value))
    assert "free" in str(e.value)
    assert tree_digest(path) == before and load_model(path) is not None
    assert sorted(p.name for p in small_disk.iterdir()) == ["ballast", "model.zarr"]


def test_checkpoint_on_a_full_disk_is_one_line_and_keeps_the_checkpoint(
    small_disk: Path, X: np.ndarray
) -> None:
    ckpt = small_disk / "ckpt"
    fit(X, checkpoint=CheckpointStore(ckpt))
    before = tree_digest(ckpt)
    fill(small_disk)
    with pytest.raises(DiskFullError, match=f"no space left on the device writing {ckpt}") as e:
        fit(X, checkpoint=CheckpointStore(ckpt), max_iter=6)
    one_line(str(e.value))
    assert tree_digest(ckpt) == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["ballast", "ckpt"]  # no lock left


def test_new_checkpoint_with_room_for_its_lock_only_is_one_line(
    small_disk: Path, X: np.ndarray
) -> None:
    # One free page: the lock file fits, the checkpoint's root metadata does not.
    free = shutil.disk_usage(small_disk).free
    (small_disk / "ballast").write_bytes(b"\0" * (free - 4096))
    ckpt = small_disk / "ckpt"
    with pytest.raises(DiskFullError, match=f"no space left on the device writing {ckpt}") as e:
        fit(X, checkpoint=CheckpointStore(ckpt))
    one_line(str(e.value))
    assert not ckpt.exists()  # no half-made checkpoint for the next run to refuse as foreign


# --------------------------------------------------------------------------------------------
# a lock file that names no writer
# --------------------------------------------------------------------------------------------

GARBAGE_LOCKS = {
    "empty": "",
    "a list": "[1, 2]",
    "pid abc": json.dumps({"host": socket.gethostname(), "pid": "abc"}),
    "pid -1": json.dumps({"host": socket.gethostname(), "pid": -1}),
    "pid 0": json.dumps({"host": socket.gethostname(), "pid": 0}),
    "not json": "{garbage",
}


@pytest.mark.parametrize("case", list(GARBAGE_LOCKS))
def test_lock_file_naming_no_writer_is_taken_over_with_a_warning(
    tmp_path: Path, X: np.ndarray, case: str
) -> None:
    path = tmp_path / "model.zarr"
    lock = tmp_path / "model.zarr.lock"
    lock.write_text(GARBAGE_LOCKS[case])
    with pytest.warns(StaleLockWarning, match=f"the lock file {lock} names no writer"):
        save_model(fit(X), path)
    assert load_model(path) is not None and not lock.exists()
    ckpt = tmp_path / "ckpt"
    (tmp_path / "ckpt.lock").write_text(GARBAGE_LOCKS[case])
    with pytest.warns(StaleLockWarning, match="ckpt.lock names no writer"):
        fit(X, checkpoint=ckpt)


def test_reader_lock_naming_no_reader_does_not_block_an_overwrite(
    tmp_path: Path, two_datasets: tuple[Path, Path]
) -> None:
    a, b = two_datasets
    data = ingest(a, tmp_path / "data.zarr", chunk_rows=300).path
    litter = tmp_path / "data.zarr.read-0123.lock"
    litter.write_text("")
    with pytest.warns(StaleLockWarning, match="names no writer"):
        ingest(b, data, chunk_rows=300, overwrite=True)
    assert not litter.exists()
