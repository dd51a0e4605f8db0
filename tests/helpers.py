"""Helpers several test modules share: Zarr arrays on disk, a read-counting store, digests.

Fixtures live in ``tests/conftest.py``; plain functions and classes that tests import live
here, so that each is written once.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import AsyncGenerator, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore, WrapperStore

__all__ = ["CountingStore", "estimator_classes", "open_counted", "tree_digest", "write_zarr"]


def write_zarr(path: Path | str, X: np.ndarray, chunk_rows: int, *, compressors: Any = None) -> str:
    """Write ``X`` as a Zarr v3 array at ``path`` in ``chunk_rows``-row chunks; return the path.

    Chunks are stored raw by default (``compressors=None``), so that a test can damage a
    chunk's bytes where it wants; pass ``compressors="auto"`` for Zarr's default codec.
    An array already at ``path`` is replaced.
    """
    zarr.create_array(
        str(path),
        data=X,
        chunks=(chunk_rows, X.shape[1]),
        compressors=compressors,
        zarr_format=3,
        overwrite=True,
    )
    return str(path)


def tree_digest(path: Path) -> dict[str, str]:
    """Content hash of every file under ``path`` (to prove a location was left untouched)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


class CountingStore(WrapperStore[LocalStore]):
    """Counts the reads of every key (``get``, partial reads and batched reads alike)."""

    def __init__(self, store: LocalStore, counts: collections.Counter[str] | None = None) -> None:
        super().__init__(store)
        self.counts: collections.Counter[str] = collections.Counter() if counts is None else counts
        self._lock = threading.Lock()

    def _with_store(self, store: LocalStore) -> CountingStore:
        return type(self)(store, self.counts)  # copies share one counter

    def _note(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        self._note(key)
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: Any, key_ranges: Iterable[tuple[str, Any]]
    ) -> list[Any]:
        key_ranges = list(key_ranges)
        for key, _ in key_ranges:
            self._note(key)
        return await self._store.get_partial_values(prototype, key_ranges)

    async def _get_many(self, requests: Iterable[tuple[str, Any, Any]]) -> AsyncGenerator[Any]:
        requests = list(requests)
        for key, *_ in requests:
            self._note(key)
        async for item in self._store._get_many(requests):
            yield item

    def chunk_reads(self) -> dict[str, int]:
        """Reads per chunk key (metadata documents left out)."""
        return {k: v for k, v in self.counts.items() if k.startswith("c/")}


def open_counted(path: Path | str) -> tuple[zarr.Array[Any], CountingStore]:
    """The Zarr array at ``path``, read-only through a :class:`CountingStore` (counts at 0)."""
    store = CountingStore(LocalStore(str(path), read_only=True))
    arr = zarr.open_array(store, mode="r")
    store.counts.clear()
    return arr, store


def estimator_classes() -> list[type[Any]]:
    """Every registered estimator class (``emdist.registry``), in the order of family names.

    Tests that must hold for every estimator take their list from here, so that a new
    family is tested as soon as it registers.
    """
    import emdist  # noqa: F401 - importing emdist registers the families
    from emdist.registry import model_families

    return [cls for _, cls in sorted(model_families().items())]
