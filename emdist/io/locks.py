"""One writer per checkpoint or output: a lock file naming the writer, stale locks detected.

Two fits on one checkpoint, or two runs writing one output, would interleave their writes
(the loser then failed with zarr's ``An array exists in store``). So a writer first creates
``<path>.lock`` beside the target, exclusively (``O_CREAT | O_EXCL``), holding its host, pid
and a random token. Another writer finding it is refused with a message naming the holder,
unless the holder is on this host and its process is gone: then the lock is stale and is
taken over. A lock of another host cannot be checked from here; the message says which file
to delete once that process is known to be gone.

The same process may take a lock it already holds (a second fit in one session): the file is
rewritten with the new token, and only the holder of the current token removes it.

A lock file appears with its content in one step (written to a hidden temporary file, then
hard-linked to ``<path>.lock``, which fails if it exists), so a lock file that does not parse
as a writer (empty, a list, a pid that is not a positive integer) was left by no live writer:
it is stale, and taken over with a warning naming it. A full disk while writing the lock is
one :class:`~emdist.io.atomic.DiskFullError` line, and leaves no lock file behind.

Readers of an emdist dataset (a running fit) hold a *shared* lock: a file
``<path>.read-<token>.lock`` each (:class:`ReaderLock`). Replacing the dataset
(``ingest --overwrite``) is refused while a live reader holds one (:func:`check_no_readers`).
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import socket
import uuid
import warnings
import weakref
from pathlib import Path
from typing import Any

from emdist.exceptions import EmdistError, EmdistWarning

__all__ = [
    "ReaderLock",
    "StaleLockWarning",
    "WriterLock",
    "WriterLockedError",
    "check_no_readers",
    "remove_stale_lock",
]


class WriterLockedError(EmdistError, FileExistsError):
    """Another process is writing the same checkpoint or output (or reading a dataset)."""


class StaleLockWarning(EmdistWarning):
    """A lock file that names no live writer was taken over."""


def _writer_of(doc: Any) -> tuple[str, int] | None:
    """``(host, pid)`` of a parsed lock document, ``None`` if it names no writer."""
    if not isinstance(doc, dict):
        return None
    host, pid = doc.get("host"), doc.get("pid")
    if not isinstance(host, str) or not host or isinstance(pid, bool) or not isinstance(pid, int):
        return None
    return (host, pid) if pid > 0 else None


def _warn_stale(path: Path, text: str) -> None:
    shown = text if len(text) <= 60 else text[:57] + "..."
    warnings.warn(
        f"the lock file {path} names no writer ({shown!r}); it is stale and was taken over",
        StaleLockWarning,
        stacklevel=4,
    )


def _create_with(path: Path, doc: dict[str, Any]) -> bool:
    """Create ``path`` holding ``doc`` in one step; ``False`` if it exists already.

    Written to a hidden sibling, then hard-linked to ``path`` (which fails if ``path``
    exists): no reader ever sees the file empty or half written, so a lock file that does not
    parse is not a writer that is still writing it. On a file system without hard links, an
    exclusive create followed by the write.
    """
    tmp = path.with_name(f".{path.name}.{doc['token']}.tmp")
    try:
        try:
            with tmp.open("x") as f:
                json.dump(doc, f)
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(doc, f)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _disk_full(path: Path, exc: OSError) -> None:
    """Raise a one-line DiskFullError for ``exc`` if it is ``ENOSPC``/``EDQUOT``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(exc, EmdistError):
        # Imported here: atomic.py imports this module.
        from emdist.io.atomic import disk_full_error

        raise disk_full_error(path, None) from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class WriterLock:
    """An exclusive, stale-aware lock file ``<target>.lock``.

    Parameters
    ----------
    target : path
        The checkpoint or output to protect (it need not exist).
    what : str
        What it is, for the message (``"checkpoint"``, ``"output"``).
    """

    def __init__(self, target: str | os.PathLike[str], what: str) -> None:
        self.target = Path(target)
        self.path = self.target.with_name(self.target.name + ".lock")
        self.what = what
        self.token = uuid.uuid4().hex
        self._finalizer: weakref.finalize[Any, WriterLock] | None = None

    def _holder(self) -> tuple[dict[str, Any], str] | None:
        """The lock's document (``{}`` if it does not parse) and its text; ``None`` if gone."""
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return None
        except OSError:
            return {}, ""
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        return (doc if isinstance(doc, dict) else {}), text

    def _doc(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }

    def acquire(self) -> WriterLock:
        """Take the lock, or raise :class:`WriterLockedError` naming its holder."""
        try:
            self._acquire()
        except OSError as exc:
            _disk_full(self.target, exc)
            raise
        # Released when the holder is garbage-collected or the process exits, if not before.
        self._finalizer = weakref.finalize(self, _release, self.path, self.token)
        return self

    def _acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock removed by a racing writer: try again
            if _create_with(self.path, self._doc()):
                return
            found = self._holder()
            if found is None:
                continue
            holder, text = found
            writer = _writer_of(holder)
            if writer is None:
                # Lock files appear whole (_create_with): one that names no writer is litter.
                _warn_stale(self.path, text)
                self.path.unlink(missing_ok=True)
                continue
            host, pid = writer
            here = host == socket.gethostname()
            if here and pid == os.getpid():
                # Ours (an earlier fit of this process): take it over with our token.
                self.path.write_text(json.dumps({**holder, "token": self.token}))
                return
            if here and not _alive(pid):
                self.path.unlink(missing_ok=True)  # stale: its writer is gone
                continue
            since = holder.get("since", "?")
            raise WriterLockedError(
                f"another process is writing the {self.what} {self.target}"
                f": pid {pid} on {host} since {since} (lock file {self.path}); wait for it"
                f" to finish, or delete the lock file if that process is gone"
            ) from None
        raise WriterLockedError(f"could not take the lock file {self.path}")

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _release(path: Path, token: str) -> None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(doc, dict) and doc.get("token") == token:
        path.unlink(missing_ok=True)


def remove_stale_lock(target: str | os.PathLike[str]) -> bool:
    """Delete ``<target>.lock`` if it names no writer, or one of this host that is gone.

    Returns
    -------
    bool
        Whether a stale lock was removed.
    """
    target = Path(target)
    lock = target.with_name(target.name + ".lock")
    try:
        text = lock.read_text(errors="replace")
    except OSError:
        return False
    try:
        writer = _writer_of(json.loads(text))
    except ValueError:
        writer = None
    if writer is None:
        _warn_stale(lock, text)
    elif writer[0] != socket.gethostname() or _alive(writer[1]):
        return False
    lock.unlink(missing_ok=True)
    return True


# -- shared locks of readers -------------------------------------------------------------------

_READ_SUFFIX = ".lock"


def _reader_glob(target: Path) -> str:
    return f"{target.name}.read-*{_READ_SUFFIX}"


class ReaderLock:
    """A shared lock on a dataset: the file ``<target>.read-<token>.lock``, one per reader.

    Taken by a fit for as long as it reads the dataset; :func:`check_no_readers` refuses to
    replace the dataset meanwhile. It is best effort: a dataset in a folder the reader may
    not write is read without it (the per-chunk check of
    :class:`emdist.io.integrity.CheckedReader` still notices a replaced dataset).

    Parameters
    ----------
    target : path
        The dataset.
    """

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = Path(target)
        self.token = uuid.uuid4().hex
        self.path = self.target.with_name(f"{self.target.name}.read-{self.token}{_READ_SUFFIX}")
        self._finalizer: weakref.finalize[Any, ReaderLock] | None = None

    def acquire(self) -> ReaderLock:
        """Take the shared lock (silently skipped if the folder cannot be written)."""
        doc = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        try:
            _create_with(self.path, doc)
        except OSError:
            return self  # read-only or full: the per-chunk check remains
        self._finalizer = weakref.finalize(self, _release, self.path, self.token)
        return self

    def release(self) -> None:
        """Remove the lock file."""
        if self._finalizer is not None:
            self._finalizer()


def check_no_readers(target: str | os.PathLike[str], what: str) -> None:
    """Refuse to replace ``target`` while a live process reads it; remove stale reader locks.

    Parameters
    ----------
    target : path
    what : str
        What ``target`` is, for the message (``"dataset"``).

    Raises
    ------
    WriterLockedError
        Naming the reading process and its lock file.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return
    for lock in sorted(target.parent.glob(_reader_glob(target))):
        try:
            text = lock.read_text(errors="replace")
        except OSError:
            continue  # removed meanwhile: that reader is done
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        writer = _writer_of(doc)
        if writer is None:
            _warn_stale(lock, text)
            lock.unlink(missing_ok=True)
            continue
        host, pid = writer
        if host == socket.gethostname() and not _alive(pid):
            lock.unlink(missing_ok=True)  # its reader is gone
            continue
        since = doc.get("since", "?") if isinstance(doc, dict) else "?"
        raise WriterLockedError(
            f"the {what} {target} is being read by pid {pid} on {host} since {since} (a running "
            f"fit; lock file {lock}); wait for it to finish, or delete the lock file if that "
            f"process is gone"
        )
