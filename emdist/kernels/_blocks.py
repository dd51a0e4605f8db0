"""Helpers for walking a chunk in cache-sized sub-blocks.

A chunk (tens of MB) is processed in sub-blocks of a few hundred to a few thousand rows so
that the per-sub-block temporaries stay in (or near) the core's L2 cache; the temporaries
are allocated once per chunk and reused (``out=``), which also spares the mmap and page
faults that fresh allocations cost under distributed's ``MALLOC_TRIM_THRESHOLD_=65536``.

Sub-blocks must not be too small either: every numpy call releases and re-takes the GIL, and
with two Dask threads calls of ~10 us spend as long handing the GIL over as computing
(measured: a 1024 x 32 subtraction ran 1.1x faster on two threads than on one, a 4096 x 32
exponential 2.0x). Each kernel's sub-block size is a compromise measured on 1M x 32, K=16.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from emdist._typing import AnyArray, FloatArray

# Rows per converted block of iter_native_blocks: 2 MB of float64 at 32 features, small
# next to a chunk, long enough that the compiled kernel's per-call cost does not show.
_CONVERT_ROWS = 8192

__all__ = [
    "component_block_rows",
    "compute_dtype",
    "iter_native_blocks",
    "iter_row_blocks",
    "iter_sub_blocks",
    "iter_sub_blocks_t",
    "logsumexp_rows",
    "sub_block_rows",
]

# Sub-blocks of a few thousand rows keep the per-component temporaries in cache (measured
# 22.7 vs 14.1 GFLOP/s per thread for 512 vs 8192 rows; docs/design.md). The Python loop
# overhead grows as the sub-block shrinks, so the size is chosen from the temporary's width.
_TARGET_TEMP_ELEMENTS = 1 << 19

# Feature-major component temporaries ``(n_components, n_features, rows)``, per covariance
# type (K=16, d=32: full/tied 256 rows, diag 512, spherical 1024): full/tied keep their
# ~1 MB temporaries in L2; diag and spherical prefer fewer, longer numpy calls (fewer GIL
# hand-overs). Measurements: benchmarks/README.md, "Kernel sub-block sizes".
_TARGET_COMPONENT_ELEMENTS = {
    "full": 1 << 17,
    "tied": 1 << 17,
    "diag": 1 << 18,
    "spherical": 1 << 19,
}


def sub_block_rows(width: int) -> int:
    """Rows per sub-block so that a ``(rows, width)`` float64 temporary stays ~4 MB."""
    return int(min(8192, max(256, _TARGET_TEMP_ELEMENTS // max(width, 1))))


def component_block_rows(n_components: int, n_features: int, covariance_type: str) -> int:
    """Rows per sub-block for ``(n_components, n_features, rows)`` float64 temporaries."""
    width = max(n_components * n_features, 1)
    return int(min(4096, max(64, _TARGET_COMPONENT_ELEMENTS[covariance_type] // width)))


def iter_sub_blocks(X: AnyArray, rows: int) -> Iterator[tuple[int, FloatArray]]:
    """Yield ``(start, block)`` pairs with each block converted to float64."""
    n = X.shape[0]
    for start in range(0, n, rows):
        yield start, np.asarray(X[start : start + rows], dtype=np.float64)


def iter_row_blocks(X: AnyArray, rows: int) -> Iterator[tuple[int, FloatArray]]:
    """Yield ``(start, block)``: C-contiguous float64 row blocks of at most ``rows`` rows.

    float64 C-contiguous input is yielded as views; anything else is converted into one
    reused buffer, so the yielded array is only valid until the next step.
    """
    X = np.asarray(X)
    n = X.shape[0]
    if X.dtype == np.float64 and X.flags.c_contiguous:
        for start in range(0, n, rows):
            yield start, X[start : start + rows]
        return
    buf = np.empty((min(rows, n), X.shape[1]))
    for start in range(0, n, rows):
        m = min(rows, n - start)
        np.copyto(buf[:m], X[start : start + m], casting="unsafe")
        yield start, buf[:m]


def compute_dtype(X: AnyArray) -> np.dtype[np.floating[Any]]:
    """The dtype a compiled kernel computes ``X`` in: float32 stays float32, all else float64."""
    return np.dtype(np.float32 if np.asarray(X).dtype == np.float32 else np.float64)


def iter_native_blocks(X: AnyArray) -> Iterator[tuple[int, AnyArray]]:
    """Yield ``(start, block)``: C-contiguous row blocks in :func:`compute_dtype`.

    Compiled kernels are specialised per dtype and memory layout, and each specialisation
    costs a compilation: they see only C-contiguous float32 and float64. Such input is
    yielded whole, as is; anything else (integers, Fortran order, strided views) is
    converted block by block into one reused buffer, so a block is only valid until the
    next step.
    """
    X = np.asarray(X)
    dtype = compute_dtype(X)
    if X.dtype == dtype and X.flags.c_contiguous:
        yield 0, X
        return
    n = X.shape[0]
    buf = np.empty((min(_CONVERT_ROWS, n), X.shape[1]), dtype=dtype)
    for start in range(0, n, _CONVERT_ROWS):
        m = min(_CONVERT_ROWS, n - start)
        np.copyto(buf[:m], X[start : start + m], casting="unsafe")
        yield start, buf[:m]


def iter_sub_blocks_t(X: AnyArray, rows: int) -> Iterator[tuple[int, FloatArray]]:
    """Yield ``(start, block_t)``: each sub-block transposed, ``(n_features, m)`` float64.

    The feature-major copy is written into one reused buffer (the last, shorter sub-block
    gets its own), so the yielded array is only valid until the next step. Whatever the
    input dtype, the values are converted to float64 exactly once, here.
    """
    n, d = X.shape
    buf = np.empty((d, min(rows, n)))
    for start in range(0, n, rows):
        m = min(rows, n - start)
        if m != buf.shape[1]:
            buf = np.empty((d, m))
        np.copyto(buf, X[start : start + m].T, casting="unsafe")
        yield start, buf


def logsumexp_rows(a: FloatArray) -> FloatArray:
    """Row-wise ``log(sum(exp(a)))`` computed stably (max-shifted)."""
    amax = np.max(a, axis=1, keepdims=True)
    amax[~np.isfinite(amax)] = 0.0
    out: FloatArray = np.log(np.sum(np.exp(a - amax), axis=1))
    out += amax[:, 0]
    return out
