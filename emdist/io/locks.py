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
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import uuid
import weakref
from pathlib import Path
from typing import Any

from emdist.exceptions import EmdistError

__all__ = ["WriterLock", "WriterLockedError", "remove_stale_lock"]


class WriterLockedError(EmdistError, FileExistsError):
    """Another process is writing the same checkpoint or output."""


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

    def _holder(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            doc = {}
        return doc if isinstance(doc, dict) else {}

    def _write(self, fd: int) -> None:
        doc = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)

    def acquire(self) -> WriterLock:
        """Take the lock, or raise :class:`WriterLockedError` naming its holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock removed by a racing writer: try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue
                host, pid = holder.get("host"), holder.get("pid")
                here = host == socket.gethostname()
                if here and pid == os.getpid():
                    # Ours (an earlier fit of this process): take it over with our token.
                    self.path.write_text(json.dumps({**holder, "token": self.token}))
                    break
                if here and isinstance(pid, int) and not _alive(pid):
                    self.path.unlink(missing_ok=True)  # stale: its writer is gone
                    continue
                since = holder.get("since", "?")
                raise WriterLockedError(
                    f"another process is writing the {self.what} {self.target}"
                    f": pid {pid} on {host} since {since} (lock file {self.path}); wait for it"
                    f" to finish, or delete the lock file if that process is gone"
                ) from None
            else:
                try:
                    self._write(fd)
                except BaseException:
                    # An empty lock file (a full disk) would refuse every later writer.
                    self.path.unlink(missing_ok=True)
                    raise
                break
        else:
            raise WriterLockedError(f"could not take the lock file {self.path}")
        # Released when the holder is garbage-collected or the process exits, if not before.
        self._finalizer = weakref.finalize(self, _release, self.path, self.token)
        return self

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
    """Delete ``<target>.lock`` if its writer was a process of this host that is gone.

    Returns
    -------
    bool
        Whether a stale lock was removed.
    """
    target = Path(target)
    lock = target.with_name(target.name + ".lock")
    try:
        doc = json.loads(lock.read_text())
    except (OSError, ValueError):
        return False
    pid = doc.get("pid") if isinstance(doc, dict) else None
    if doc.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        lock.unlink(missing_ok=True)
        return True
    return False
