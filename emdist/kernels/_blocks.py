"""Helpers for walking a chunk in cache-sized sub-blocks.

A chunk (tens of MB) is processed in sub-blocks of a few hundred to a few thousand rows so
that the per-sub-block temporaries stay in (or near) the core's L2 cache; the temporaries
are allocated once per chunk and reused (``out=``), which also spares the mmap and page
faults that fresh allocations cost under distributed's ``MALLOC_TRIM_THRESHOLD_=65536``.

Sub-blocks must not be too small either: every numpy call releases and re-takes the GIL, and
with two Dask threads short calls spend as long handing the GIL over as computing. Each
kernel's sub-block size is a compromise measured on 1M x 32, K=16 (benchmarks/README.md,
"Kernel sub-block sizes").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from emdist._typing import AnyArray, FloatArray

__all__ = [
    "as_row_major",
    "component_block_rows",
    "compute_dtype",
    "feature_block_rows",
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

# Elements of one sub-block's quadratic features (float64): ~1 MB, see feature_block_rows.
_TARGET_FEATURE_ELEMENTS = 1 << 17
# OpenBLAS (0.3.x, x86-64) runs a GEMM with M N K <= 100³ in its small-matrix kernels; a
# margin below that keeps the mixture E-step's GEMMs there (feature_block_rows).
_SMALL_GEMM_MNK = 900_000


def sub_block_rows(width: int) -> int:
    """Rows per sub-block so that a ``(rows, width)`` float64 temporary stays ~4 MB."""
    return int(min(8192, max(256, _TARGET_TEMP_ELEMENTS // max(width, 1))))


def component_block_rows(n_components: int, n_features: int, covariance_type: str) -> int:
    """Rows per sub-block for ``(n_components, n_features, rows)`` float64 temporaries."""
    width = max(n_components * n_features, 1)
    return int(min(4096, max(64, _TARGET_COMPONENT_ELEMENTS[covariance_type] // width)))


def feature_block_rows(n_columns: int, n_components: int) -> int:
    """Rows per sub-block of the mixture E-step's quadratic features, ``(rows, n_columns)``.

    As many rows as keep the two GEMMs on them (``rows x n_columns x n_components`` each)
    within OpenBLAS's small-matrix path, which skips packing and ran them 1.6x faster
    (``full``, d = 32, K = 16: 96 rows at 65 GFLOP/s, 116 rows or more at 41), and the
    features within ~1 MB of L2. Measurements: benchmarks/README.md, "Mixture E-step as two
    GEMMs".
    """
    width = max(n_columns, 1)
    small = _SMALL_GEMM_MNK // (width * max(n_components, 1))
    return int(min(4096, _TARGET_FEATURE_ELEMENTS // width, max(32, small)))


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


def compute_dtype(dtype: np.dtype[Any]) -> type[np.floating[Any]]:
    """The dtype a mixture kernel computes a block of ``dtype`` in: float32 stays float32.

    float32 data runs its GEMMs in float32 (twice the float64 rate); every other dtype
    (float64, integers) is computed in float64, so float64 data keeps scikit-learn's digits.
    Statistics are accumulated in float64 either way (docs/design.md, "Numerics").
    """
    return np.float32 if dtype == np.float32 else np.float64


def as_row_major(X: AnyArray) -> AnyArray:
    """``X`` as the compiled row kernels take it: C-contiguous float32, else float64.

    Returns ``X`` itself when it already is (chunks of a Zarr or Dask array are); other
    layouts and dtypes are copied once.
    """
    X = np.asarray(X)
    target = compute_dtype(X.dtype)
    return np.ascontiguousarray(X, dtype=target)


def iter_sub_blocks_t(
    X: AnyArray, rows: int, dtype: Any = np.float64
) -> Iterator[tuple[int, AnyArray]]:
    """Yield ``(start, block_t)``: each sub-block transposed, ``(n_features, m)`` of ``dtype``.

    The feature-major copy is written into one reused buffer (the last, shorter sub-block
    gets its own), so the yielded array is only valid until the next step. Whatever the
    input dtype, the values are converted to ``dtype`` (float64 by default) exactly once,
    here.
    """
    n, d = X.shape
    buf = np.empty((d, min(rows, n)), dtype=dtype)
    for start in range(0, n, rows):
        m = min(rows, n - start)
        if m != buf.shape[1]:
            buf = np.empty((d, m), dtype=dtype)
        np.copyto(buf, X[start : start + m].T, casting="unsafe")
        yield start, buf


def logsumexp_rows(a: FloatArray) -> FloatArray:
    """Row-wise ``log(sum(exp(a)))`` computed stably (max-shifted)."""
    amax = np.max(a, axis=1, keepdims=True)
    amax[~np.isfinite(amax)] = 0.0
    out: FloatArray = np.log(np.sum(np.exp(a - amax), axis=1))
    out += amax[:, 0]
    return out
