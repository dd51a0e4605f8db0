"""Outputs that appear whole or not at all.

A Zarr store is a directory of many files, and no file system renames a non-empty
directory over another atomically. So an output is written to a hidden sibling
``<dest>.partial-<id>`` and swapped in when complete: the old output (if any) is renamed
aside, the new one renamed in, the old one deleted. A failure before the swap deletes the
partial output and leaves a previous good output untouched; a crash between the two renames
leaves the previous output under ``<dest>.old-<id>``, which :func:`recover_output` puts
back.

With ``overwrite``, only an output of the same kind that emdist wrote (or an empty folder) is
replaced: :func:`output_kind` recognises it by the attribute emdist writes in its root
``zarr.json``. A user's folder given by mistake as a destination is never deleted, and an
output a running fit is reading (a dataset: :class:`emdist.io.locks.ReaderLock`) is not
replaced under it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from emdist.exceptions import EmdistError
from emdist.io.locks import WriterLock, check_no_readers, remove_stale_lock

__all__ = [
    "DiskFullError",
    "NotAnOutputError",
    "OutputExistsError",
    "OutputKind",
    "atomic_output",
    "check_replaceable",
    "output_kind",
    "recover_output",
]

OutputKind = Literal["model", "predictions", "synthetic", "dataset"]

# Siblings atomic_output makes: <dest>.partial-<12 hex> and <dest>.old-<12 hex>. Only those
# are ever deleted or renamed back, never another folder that merely starts with dest's name.
_SIBLING = re.compile(r"\.(partial|old)-[0-9a-f]{12}")


class OutputExistsError(EmdistError, FileExistsError):
    """The destination exists and overwriting was not asked for."""


class DiskFullError(EmdistError, OSError):
    """The file system filled up while writing; what was partly written has been removed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is ``ENOSPC``/``EDQUOT``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        current = current.__cause__ or current.__context__
    return False


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


def disk_full_error(dest: Path, needed: int | None, written: Path | None = None) -> DiskFullError:
    """A one-line :class:`DiskFullError` naming ``dest``, the space needed and what is free.

    Parameters
    ----------
    dest : pathlib.Path
        What was being written.
    needed : int, optional
        Bytes the whole output needs, when the caller knows.
    written : pathlib.Path, optional
        The partial output, to report how much fitted before the disk filled (measure it
        before deleting it).
    """
    probe = dest if dest.exists() else dest.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    parts = [f"no space left on the device writing {dest}"]
    if needed is not None:
        parts.append(f"it needs about {_size(needed)}")
    elif written is not None and written.exists():
        done = sum(p.stat().st_size for p in written.rglob("*") if p.is_file())
        parts.append(f"{_size(done)} were written before the disk filled")
    if free is not None:
        parts.append(f"{_size(free)} free")
    return DiskFullError(
        "; ".join(parts) + "; nothing was replaced or lost: free some space and run it again"
    )


class NotAnOutputError(OutputExistsError):
    """The destination exists and is not an output of the kind being written: never replaced."""


def output_kind(path: str | os.PathLike[str]) -> OutputKind | None:
    """The kind of emdist output at ``path``, from the attribute emdist writes in its root.

    Parameters
    ----------
    path : path

    Returns
    -------
    {'model', 'predictions', 'synthetic', 'dataset'} or None
        ``None`` for anything else (not a Zarr node, unreadable, or not written by emdist).
    """
    meta = Path(path) / "zarr.json"
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    if not isinstance(attrs, dict):
        return None
    if attrs.get("format") == "emdist-model":
        return "model"
    if attrs.get("emdist") == "predictions":
        return "predictions"
    if isinstance(attrs.get("synthetic"), dict):
        return "synthetic"
    provenance = attrs.get("provenance")
    # "pipeline.ingest": stores ingested before ingest moved into emdist.io.
    if isinstance(provenance, dict) and provenance.get("created_by") in (
        "emdist.io.ingest",
        "pipeline.ingest",
    ):
        return "dataset"
    return None


def check_replaceable(dest: Path, kind: OutputKind) -> None:
    """Refuse to replace ``dest`` unless it is an emdist output of ``kind`` or an empty folder.

    Raises
    ------
    NotAnOutputError
        Naming what ``dest`` is (a link, another kind of output, not an emdist output).
    """
    if dest.is_symlink():
        raise NotAnOutputError(f"refusing to replace {dest}: it is a symbolic link")
    if dest.is_dir() and not any(dest.iterdir()):
        return  # an empty folder: nothing to lose
    found = output_kind(dest)
    if found != kind:
        what = f"an emdist {found} output" if found else "not an emdist output"
        raise NotAnOutputError(
            f"refusing to replace {dest}: it is {what}, and only an emdist {kind} output is "
            f"replaced; choose another destination"
        )


def recover_output(dest: str | os.PathLike[str]) -> None:
    """Undo a swap that a crash interrupted; delete stray partial outputs and a stale lock."""
    dest = Path(dest)
    remove_stale_lock(dest)
    parent = dest.parent if dest.parent.exists() else None
    if parent is None:
        return
    for sibling in parent.glob(f"{dest.name}.old-*"):
        if not _SIBLING.fullmatch(sibling.name[len(dest.name) :]):
            continue
        if not dest.exists():
            os.replace(sibling, dest)
        else:
            shutil.rmtree(sibling, ignore_errors=True)
    for sibling in parent.glob(f"{dest.name}.partial-*"):
        if not _SIBLING.fullmatch(sibling.name[len(dest.name) :]):
            continue
        shutil.rmtree(sibling, ignore_errors=True)


@contextlib.contextmanager
def atomic_output(
    dest: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    kind: OutputKind | None = None,
    needed: int | None = None,
) -> Iterator[Path]:
    """Yield a temporary path to write ``dest`` into; swap it in when the block succeeds.

    Parameters
    ----------
    dest : path
        Final location (a directory, e.g. a Zarr store).
    overwrite : bool, default=False
        Replace an existing ``dest``. Without it an existing ``dest`` raises
        :class:`OutputExistsError` before anything is written.
    kind : {'model', 'predictions', 'synthetic', 'dataset'}, optional
        What is written. When given, an existing ``dest`` is replaced only if it is an emdist
        output of this kind (:func:`output_kind`) or an empty folder; anything else raises
        :class:`NotAnOutputError` before anything is written. Without it the caller has
        checked ``dest`` itself.
    needed : int, optional
        Bytes the output needs, for the message if the disk fills up.

    Yields
    ------
    pathlib.Path
        Where to write. It does not exist yet.
    """
    dest = Path(dest)
    # One writer at a time: a second one would delete the first's partial output in
    # recover_output below, or swap over it.
    try:
        lock = WriterLock(dest, "output").acquire()
    except OSError as exc:
        # A disk too full for even the lock file: the same one line as a full disk later.
        if not is_disk_full(exc):
            raise
        raise disk_full_error(dest, needed) from None
    try:
        with _atomic_output(dest, overwrite, kind, needed) as tmp:
            yield tmp
    finally:
        lock.release()


@contextlib.contextmanager
def _atomic_output(
    dest: Path, overwrite: bool, kind: OutputKind | None, needed: int | None
) -> Iterator[Path]:
    recover_output(dest)
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{dest} exists; pass overwrite=True to replace it")
    if (dest.exists() or dest.is_symlink()) and kind is not None:
        check_replaceable(dest, kind)
    # A running fit reading dest holds a shared lock: replacing its data under it would feed
    # it a mixture of two datasets. Checked again just before the swap.
    check_no_readers(dest, kind or "output")
    dest.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    tmp = dest.with_name(f"{dest.name}.partial-{token}")
    try:
        yield tmp
    except BaseException as exc:
        full = is_disk_full(exc)
        error = disk_full_error(dest, needed, tmp) if full else None
        shutil.rmtree(tmp, ignore_errors=True)
        if error is not None:
            # One line instead of a 60-line traceback from deep inside Zarr.
            raise error from None
        raise
    if not tmp.exists():
        raise FileNotFoundError(f"nothing was written to {tmp}")
    try:
        check_no_readers(dest, kind or "output")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = dest.with_name(f"{dest.name}.old-{token}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
