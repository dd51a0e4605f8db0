"""``emdist ingest`` refusing what it cannot read, run as a user runs it: a process each.

Every refusal is one line with exit status 2, in the command line's words (``--format``,
``emdist ingest``), and nothing is written. Marked ``service`` as the other CLI tests are:
each case starts an ``emdist`` process.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.markers import root_fixture
from tests.pipeline.test_cli import Workspace, in_process, ok, user_error
from tests.prefect_fixtures import subprocess_environment

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("cli-ingest")
    (root / "x.csv").write_text("a,b\n1,2\n3,4\n")
    return Workspace(root, subprocess_environment(root / "prefect-home"))


def nothing_written(ws: Workspace, name: str = "o.zarr") -> None:
    assert not any(p.name.startswith(name) for p in ws.dir.iterdir()), sorted(ws.dir.iterdir())


def test_a_character_device_is_refused_before_reading(ws: Workspace) -> None:
    err = user_error(ws.emdist("ingest", "/dev/zero", "o.zarr", "--format", "csv"))
    assert "/dev/zero is a character device, not a regular file" in err
    nothing_written(ws)


def test_a_fifo_is_refused_without_waiting_for_a_writer(ws: Workspace) -> None:
    os.mkfifo(ws.dir / "pipe.csv")
    err = user_error(ws.emdist("ingest", "pipe.csv", "o.zarr"))
    assert "pipe.csv is a FIFO (named pipe), not a regular file" in err
    nothing_written(ws)


def test_a_socket_is_refused(ws: Workspace) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(ws.dir / "s.csv"))
        err = user_error(ws.emdist("ingest", "s.csv", "o.zarr"))
    assert "s.csv is a socket, not a regular file" in err
    nothing_written(ws)


@pytest.mark.parametrize(("fmt", "says"), [("hdf5", "HDF5"), ("parquet", "Parquet")])
def test_a_csv_read_as_another_format_names_the_flag(ws: Workspace, fmt: str, says: str) -> None:
    err = user_error(ws.emdist("ingest", "x.csv", "o.zarr", "--format", fmt))
    assert f"x.csv is not {'an' if fmt == 'hdf5' else 'a'} {says} file" in err
    assert f"--format {fmt}" in err and "source_format" not in err
    nothing_written(ws)


@pytest.mark.parametrize(
    ("data", "where"),
    [
        pytest.param("a,b\n1,é\n".encode("latin-1"), "byte offset 6 (line 2)", id="latin1"),
        pytest.param("a,b\n1,2\n".encode("utf-16"), "byte offset 0 (line 1)", id="utf16"),
    ],
)
def test_text_that_is_not_utf8_is_one_line(ws: Workspace, data: bytes, where: str) -> None:
    (ws.dir / "enc.csv").write_bytes(data)
    err = user_error(ws.emdist("ingest", "enc.csv", "o.zarr"))
    assert "enc.csv is not UTF-8 text" in err and where in err
    nothing_written(ws)


def test_an_unknown_suffix_names_the_flag(ws: Workspace) -> None:
    (ws.dir / "data.json").write_text("[[1, 2]]")
    err = user_error(ws.emdist("ingest", "data.json", "o.zarr"))
    assert "pass --format one of" in err and "source_format" not in err
    nothing_written(ws)


def test_a_nul_byte_in_a_path_is_one_line(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No process: an argument vector cannot hold a NUL byte; the same main, in this one.
    code, _, err = in_process(["ingest", "x\0.csv", "o.zarr"], ws.dir, monkeypatch, capsys)
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert "SOURCE" in err and "NUL byte" in err
    nothing_written(ws)


@root_fixture("mounts a 1 MiB tmpfs")
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs filled to the last byte: a real full file system (needs root; skipped
    where not root, failed instead under ``EMDIST_REQUIRE_ROOT_TESTS=1``)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        fd = os.open(mnt / "fill", os.O_WRONLY | os.O_CREAT)
        try:
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * 4096):
                    pass
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("kind", ["npy", "csv"])
def test_a_full_disk_is_one_line_naming_the_space(
    ws: Workspace, full_disk: Path, kind: str
) -> None:
    src = ws.dir / f"big.{kind}"
    X = np.random.default_rng(0).standard_normal((20_000, 4))
    if kind == "npy":
        np.save(src, X)
    else:
        np.savetxt(src, X, delimiter=",")
    dest = full_disk / "data.zarr"
    err = user_error(ws.emdist("ingest", str(src), str(dest)))
    assert f"no space left on the device writing {dest}" in err and "free" in err
    assert sorted(p.name for p in full_disk.iterdir()) == ["fill"]
    (full_disk / "fill").unlink()
    ok(ws.emdist("ingest", str(src), str(dest)))
