"""A full disk, said in one line: the error, and how to recognise its causes.

Every writer of emdist (atomic outputs, lock files, checkpoints, saved models) turns an
``ENOSPC``/``EDQUOT`` into one :class:`DiskFullError` naming what was being written, the
space it needs when known, and what is free.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from emdist.exceptions import EmdistError

__all__ = ["DiskFullError", "disk_full_error", "is_disk_full"]


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
