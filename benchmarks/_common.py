"""Shared helpers of the emdist benchmarks: data, Zarr stores, timing, tables, environment.

Nothing here is measured; it only makes the measurements reproducible and the output
uniform. Data are Gaussian blobs drawn from a fixed seed; stores are uncompressed Zarr v3
arrays chunked along rows (docs/design.md: zstd reads 2.7x slower for a 3-8% saving on
dense floats, and 50k-100k-row chunks read fastest).
"""

from __future__ import annotations

import collections
import contextlib
import os
import platform
import shutil
import statistics
import tempfile
import threading
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore, WrapperStore

REPO = Path(__file__).resolve().parent.parent
# Scratch space for stores; .bench-data/ sits next to .venv/ and is meant to be gitignored.
DEFAULT_DATA_ROOT = REPO / ".bench-data"


@contextlib.contextmanager
def scratch_dir(root: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A fresh temporary directory under ``root`` (default ``.bench-data/``), removed after."""
    base = Path(root) if root is not None else DEFAULT_DATA_ROOT
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="bench-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def blob_parameters(
    n_features: int, n_components: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights, means and per-component mixing matrices of overlapping Gaussian blobs.

    Means are spread so that neighbouring blobs overlap: EM and Lloyd keep moving for many
    iterations, which is what a per-iteration benchmark wants.
    """
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, n_components)
    weights /= weights.sum()
    means = rng.normal(scale=2.0, size=(n_components, n_features))
    mixing = rng.normal(size=(n_components, n_features, n_features)) / np.sqrt(n_features)
    mixing += np.eye(n_features) * 0.5
    return weights, means, mixing


def blob_rows(start: int, stop: int, n_features: int, n_components: int, seed: int) -> np.ndarray:
    """Rows ``start:stop`` of the blob dataset; each row depends only on (seed, row block).

    Rows are drawn in blocks of 65536 from streams keyed by the block index, so any slice
    (and therefore any chunking) of the same dataset holds the same numbers.
    """
    weights, means, mixing = blob_parameters(n_features, n_components, seed)
    block = 65536
    out = np.empty((stop - start, n_features))
    first, last = start // block, (stop - 1) // block
    for b in range(first, last + 1):
        rng = np.random.default_rng([seed, 1, b])
        labels = rng.choice(n_components, size=block, p=weights)
        noise = rng.standard_normal((block, n_features))
        rows = np.empty((block, n_features))
        for k in range(n_components):
            sel = labels == k
            rows[sel] = noise[sel] @ mixing[k] + means[k]
        lo, hi = max(start, b * block), min(stop, (b + 1) * block)
        out[lo - start : hi - start] = rows[lo - b * block : hi - b * block]
    return out


def make_blobs(n_samples: int, n_features: int, n_components: int, seed: int = 0) -> np.ndarray:
    """The blob dataset in memory, float64, shape ``(n_samples, n_features)``."""
    return blob_rows(0, n_samples, n_features, n_components, seed)


def write_zarr(
    path: str | os.PathLike[str],
    n_samples: int,
    n_features: int,
    *,
    chunk_rows: int,
    fill: Callable[[int, int], np.ndarray] | np.ndarray,
) -> zarr.Array:
    """An uncompressed float64 Zarr v3 array, written one chunk at a time.

    ``fill`` is an in-memory array to copy, or ``fill(start, stop)`` returning those rows
    (so a dataset larger than memory never has to exist in memory).
    """
    arr = zarr.create_array(
        str(path),
        shape=(n_samples, n_features),
        chunks=(chunk_rows, n_features),
        dtype="float64",
        compressors=None,
        overwrite=True,
    )
    for start in range(0, n_samples, chunk_rows):
        stop = min(n_samples, start + chunk_rows)
        rows = fill[start:stop] if isinstance(fill, np.ndarray) else fill(start, stop)
        arr[start:stop] = rows
    return arr


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """``min-max`` of a sequence, for showing the noise next to a median."""
    return f"{min(values):.3g}-{max(values):.3g}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with right-aligned columns (left-aligned first column)."""
    cells = [[str(h) for h in header]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, row in enumerate(cells):
        parts = [
            row[i].ljust(widths[i]) if i == 0 else row[i].rjust(widths[i])
            for i in range(len(header))
        ]
        lines.append("  ".join(parts))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def environment() -> str:
    """One paragraph on the machine and library versions a result was measured with."""
    import dask
    import distributed
    import sklearn
    import threadpoolctl

    blas = [
        f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads)"
        for p in threadpoolctl.threadpool_info()
        if p.get("user_api") == "blas"
    ]
    try:
        one, five, fifteen = os.getloadavg()
        load = f" load avg {one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:
        load = ""
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores,{load}; "
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"scikit-learn {sklearn.__version__}, dask {dask.__version__}, "
        f"distributed {distributed.__version__}, zarr {zarr.__version__}; "
        f"BLAS: {', '.join(sorted(set(blas)))}"
    )


class CountingStore(WrapperStore[LocalStore]):
    """A read-only store that counts the reads of every chunk key (whole, partial, batched).

    A pass over the data is one read of every chunk, so the counts are passes.
    """

    def __init__(self, store: LocalStore, counts: collections.Counter[str] | None = None) -> None:
        super().__init__(store)
        self.counts: collections.Counter[str] = collections.Counter() if counts is None else counts
        self._lock = threading.Lock()

    @classmethod
    def open_array(cls, path: str | os.PathLike[str]) -> tuple[zarr.Array, CountingStore]:
        """The array at ``path``, read through a new counting store."""
        store = cls(LocalStore(str(path), read_only=True))
        return zarr.open_array(store, mode="r"), store

    def _with_store(self, store: LocalStore) -> CountingStore:
        return type(self)(store, self.counts)

    def _note(self, key: str) -> None:
        if key.startswith("c/"):
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

    def reads_per_chunk(self, n_chunks: int | None = None) -> str:
        """Reads per chunk: one number when every chunk (of ``n_chunks``) was read as often."""
        reads = list(self.counts.values())
        if n_chunks is not None and len(reads) < n_chunks:
            reads.append(0)
        if reads and min(reads) == max(reads):
            return str(reads[0])
        return f"{min(reads, default=0)}-{max(reads, default=0)}"
