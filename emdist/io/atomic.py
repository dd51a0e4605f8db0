"""Outputs that appear whole or not at all.

A Zarr store is a directory of many files, and no file system renames a non-empty
directory over another atomically. So an output is written to a hidden sibling
``<dest>.partial-<id>`` and swapped in when complete: the old output (if any) is renamed
aside, the new one renamed in, the old one deleted. A failure before the swap deletes the
partial output and leaves a previous good output untouched; a crash between the two renames
leaves the previous output under ``<dest>.old-<id>``, which :func:`recover_output` puts
back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from emdist.exceptions import EmdistError

__all__ = ["OutputExistsError", "atomic_output", "recover_output"]


class OutputExistsError(EmdistError, FileExistsError):
    """The destination exists and overwriting was not asked for."""


def recover_output(dest: str | os.PathLike[str]) -> None:
    """Undo a swap that a crash interrupted, and delete stray partial outputs of ``dest``."""
    dest = Path(dest)
    parent = dest.parent if dest.parent.exists() else None
    if parent is None:
        return
    for sibling in parent.glob(f"{dest.name}.old-*"):
        if not dest.exists():
            os.replace(sibling, dest)
        else:
            shutil.rmtree(sibling, ignore_errors=True)
    for sibling in parent.glob(f"{dest.name}.partial-*"):
        shutil.rmtree(sibling, ignore_errors=True)


@contextlib.contextmanager
def atomic_output(dest: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``dest`` into; swap it in when the block succeeds.

    Parameters
    ----------
    dest : path
        Final location (a directory, e.g. a Zarr store).
    overwrite : bool, default=False
        Replace an existing ``dest``. Without it an existing ``dest`` raises
        :class:`OutputExistsError` before anything is written.

    Yields
    ------
    pathlib.Path
        Where to write. It does not exist yet.
    """
    dest = Path(dest)
    recover_output(dest)
    if dest.exists() and not overwrite:
        raise OutputExistsError(f"{dest} exists; pass overwrite=True to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    tmp = dest.with_name(f"{dest.name}.partial-{token}")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not tmp.exists():
        raise FileNotFoundError(f"nothing was written to {tmp}")
    old = dest.with_name(f"{dest.name}.old-{token}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
