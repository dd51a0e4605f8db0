"""The compiled K-means kernels against their numpy reference (``kernels/kmeans_reference``).

Random blocks of every shape the kernels special-case (one row, fewer rows than clusters,
K = 1, d = 1, several sub-blocks), every dtype and memory layout a block can arrive in,
plus the exact cases: ties (lowest index, as numpy's argmin), empty clusters, tied far
points, chunking, and float32 far from the origin.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from emdist.kernels.kmeans import (
    KMeansParams,
    KMeansStats,
    kmeans_estep_chunk,
    kmeans_estep_many,
    kmeans_labels_chunk,
    kmeans_transform_chunk,
)
from emdist.kernels.kmeans_reference import (
    kmeans_estep_reference,
    kmeans_labels_reference,
    kmeans_transform_reference,
)
from emdist.kernels.rows import RowBlock

# (rows, features, clusters): one row, fewer rows than clusters, K = 1, d = 1, and blocks
# longer than one sub-block (~680 rows at K = 16, d = 32) with a short last sub-block.
SHAPES = [(1, 3, 4), (3, 2, 5), (200, 4, 1), (300, 1, 6), (257, 5, 3), (2000, 32, 16)]

LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "float64": lambda X: X,
    "float32": lambda X: X.astype(np.float32),
    "int32": lambda X: np.round(X * 8).astype(np.int32),
    "int64": lambda X: np.round(X * 8).astype(np.int64),
    "fortran": np.asfortranarray,
    "float32-fortran": lambda X: np.asfortranarray(X, dtype=np.float32),
    "strided": lambda X: np.repeat(X, 2, axis=0)[::2],
    "read-only": lambda X: _read_only(X),
}


def _read_only(X: np.ndarray) -> np.ndarray:
    Y = X.copy()
    Y.flags.writeable = False
    return Y


def _block(n: int, d: int, K: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * 3 + rng.integers(0, 3, (n, 1))
    centers = rng.standard_normal((K, d)) * 3
    return X, centers


def assert_same_stats(got: KMeansStats, want: KMeansStats) -> None:
    """Counts, labels of the far rows and their order exactly; sums to rounding."""
    assert got.n == want.n
    assert_array_equal(got.counts, want.counts)
    assert got.counts.dtype == got.sx.dtype == got.far_dist.dtype == np.float64
    assert_allclose(got.sx, want.sx, rtol=1e-12, atol=1e-11)
    assert_allclose(got.inertia, want.inertia, rtol=1e-12)
    assert_array_equal(got.far_row, want.far_row)
    assert_array_equal(got.far_label, want.far_label)
    assert_allclose(got.far_dist, want.far_dist, rtol=1e-12)
    assert_array_equal(got.far_x, want.far_x)
    assert got.far_x.dtype == np.float64
    assert got.far_row.dtype == got.far_label.dtype == np.int64


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(("n", "d", "K"), SHAPES)
def test_compiled_estep_matches_the_numpy_reference(n: int, d: int, K: int, layout: str) -> None:
    X, centers = _block(n, d, K, seed=n + d + K)
    Xl = LAYOUTS[layout](X)
    params = KMeansParams(centers)
    got = kmeans_estep_chunk(RowBlock(Xl, 100), params)
    assert_same_stats(got, kmeans_estep_reference(RowBlock(Xl, 100), params))
    assert got.shift is params.centers
    assert_array_equal(kmeans_labels_chunk(Xl, centers), kmeans_labels_reference(Xl, centers))
    assert_allclose(
        kmeans_transform_chunk(Xl, centers), kmeans_transform_reference(Xl, centers), rtol=1e-13
    )


@pytest.mark.parametrize("layout", ["float64", "float32", "int32", "fortran"])
@pytest.mark.parametrize(("n", "d", "K"), SHAPES)
def test_compiled_estep_sums_about_the_reference_as_the_numpy_one(
    n: int, d: int, K: int, layout: str
) -> None:
    X, centers = _block(n, d, K, seed=n + d + K)
    Xl = LAYOUTS[layout](X)
    reference = centers + np.random.default_rng(n).standard_normal(centers.shape)
    params = KMeansParams(centers, reference)
    got = kmeans_estep_chunk(RowBlock(Xl, 100), params)
    assert_same_stats(got, kmeans_estep_reference(RowBlock(Xl, 100), params))
    assert got.shift is params.centers and got.reference is reference


def test_labels_are_int64_and_transform_float64_for_every_dtype() -> None:
    X, centers = _block(50, 3, 4, seed=1)
    for Xl in (X, X.astype(np.float32), np.round(X).astype(np.int16)):
        assert kmeans_labels_chunk(Xl, centers).dtype == np.int64
        assert kmeans_transform_chunk(Xl, centers).dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_ties_go_to_the_lowest_index_as_numpy_argmin(dtype: Any) -> None:
    # Row 0 is halfway between centres 0 and 1; centres 2 and 3 are the same point, nearest to
    # row 1. Small integers: every score and distance is exact in every dtype.
    X = np.array([[1, 0], [9, 9], [1, 0], [0, 0]], dtype=dtype)
    centers = np.array([[0.0, 0.0], [2.0, 0.0], [9.0, 8.0], [9.0, 8.0]])
    want = np.array([0, 2, 0, 0])
    assert_array_equal(kmeans_labels_chunk(X, centers), want)
    assert_array_equal(kmeans_labels_reference(X, centers), want)
    stats = kmeans_estep_chunk(RowBlock(X, 0), KMeansParams(centers))
    assert_array_equal(stats.counts, [3, 0, 1, 0])
    assert stats.inertia == 1 + 1 + 1 + 0


def test_empty_clusters_have_zero_counts_and_sums() -> None:
    X, _ = _block(500, 3, 1, seed=2)
    centers = np.array([[0.0, 0.0, 0.0], [1e3, 1e3, 1e3], [1.0, 1.0, 1.0], [-1e3, 0.0, 0.0]])
    stats = kmeans_estep_chunk(RowBlock(X, 0), KMeansParams(centers))
    assert stats.counts[1] == stats.counts[3] == 0
    assert np.all(stats.sx[[1, 3]] == 0)
    assert stats.counts.sum() == 500
    assert_same_stats(stats, kmeans_estep_reference(RowBlock(X, 0), KMeansParams(centers)))


def test_tied_far_points_are_ordered_by_row_whatever_the_chunking() -> None:
    # Every row is at distance 1 or 4 from its centre: many exact ties among the farthest.
    rng = np.random.default_rng(3)
    X = np.zeros((90, 2))
    X[:, 0] = rng.choice([-2.0, -1.0, 1.0, 2.0], 90)
    centers = np.array([[0.0, 0.0], [50.0, 0.0], [60.0, 0.0]])
    params = KMeansParams(centers)
    whole = kmeans_estep_chunk(RowBlock(X, 0), params)
    assert_array_equal(whole.far_dist, [4.0, 4.0, 4.0])
    assert_array_equal(whole.far_row, np.flatnonzero(np.abs(X[:, 0]) == 2)[:3])
    cuts = [0, 1, 7, 40, 41, 90]
    parts = [kmeans_estep_chunk(RowBlock(X[a:b], a), params) for a, b in itertools.pairwise(cuts)]
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    assert_array_equal(total.far_row, whole.far_row)
    assert_array_equal(total.far_x, whole.far_x)
    assert_array_equal(total.counts, whole.counts)
    assert_allclose(total.sx, whole.sx, rtol=1e-14)
    assert total.inertia == whole.inertia


def test_empty_block_gives_empty_statistics() -> None:
    centers = np.ones((3, 2))
    stats = kmeans_estep_chunk(RowBlock(np.empty((0, 2)), 5), KMeansParams(centers))
    assert stats.n == 0 and stats.inertia == 0.0
    assert stats.far_row.shape == (0,) and stats.far_x.shape == (0, 2)
    assert_array_equal(stats.counts, np.zeros(3))
    assert kmeans_labels_chunk(np.empty((0, 2)), centers).shape == (0,)
    assert kmeans_transform_chunk(np.empty((0, 2)), centers).shape == (0, 3)


def test_float32_far_from_the_origin_keeps_labels_and_float64_statistics() -> None:
    # A grid of 1/8 at 1e6 is exact in float32 (24-bit significand, 1e6 < 2^20).
    X, centers = _block(3000, 4, 5, seed=4)
    X = np.round(X * 8) / 8
    X32 = (X + 1e6).astype(np.float32)
    assert_array_equal(X32.astype(np.float64) - 1e6, X)
    near = kmeans_estep_chunk(RowBlock(X, 0), KMeansParams(centers))
    far = kmeans_estep_chunk(RowBlock(X32, 0), KMeansParams(centers + 1e6))
    assert_array_equal(kmeans_labels_chunk(X32, centers + 1e6), kmeans_labels_chunk(X, centers))
    assert_array_equal(far.counts, near.counts)
    # The differences are float64 from float64 centres: only the centres' rounding at 1e6
    # (~1e-10) separates the two; a float32 difference would be off by ~0.03.
    assert_allclose(far.sx, near.sx, rtol=0, atol=1e-6)
    assert_allclose(far.inertia, near.inertia, rtol=1e-9)
    assert_array_equal(far.far_row, near.far_row)


# --- restarts in one walk ------------------------------------------------------------------


def assert_identical_stats(got: KMeansStats, want: KMeansStats) -> None:
    """Every field equal, bit for bit."""
    assert got.n == want.n and got.inertia == want.inertia
    for name in ("counts", "sx", "far_dist", "far_row", "far_label", "far_x"):
        assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert (got.far_w is None) == (want.far_w is None)
    if want.far_w is not None:
        assert_array_equal(got.far_w, want.far_w)
    assert got.shift is want.shift and got.reference is want.reference


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("layout", ["float64", "float32", "int32", "fortran"])
def test_restarts_in_one_walk_equal_each_restart_alone(layout: str, weighted: bool) -> None:
    # Several sub-blocks (2000 rows at K = 16, d = 32), restarts of two sizes (the walk
    # groups them by K) in mixed order, one with reference points apart from its centres.
    X, _ = _block(2000, 32, 16, seed=11)
    Xl = LAYOUTS[layout](X)
    rng = np.random.default_rng(12)
    params = [KMeansParams(X[rng.choice(2000, 16, replace=False)]) for _ in range(3)]
    params.insert(1, KMeansParams(X[rng.choice(2000, 5, replace=False)]))
    moved = params[2].centers + rng.standard_normal((16, 32))
    params.append(KMeansParams(moved, reference=params[2].centers))
    weights = rng.uniform(0.0, 3.0, 2000) if weighted else None
    if weights is not None:
        weights[::7] = 0.0
    block = RowBlock(Xl, 40, weights=weights)
    walked = kmeans_estep_many(block, params)
    assert len(walked) == len(params)
    for p, got in zip(params, walked, strict=True):
        assert_identical_stats(got, kmeans_estep_chunk(block, p))


@pytest.mark.parametrize("offset", [1e4, 1e9])
def test_inertia_far_from_the_origin_is_that_of_exact_differences(offset: float) -> None:
    # Rows far from the origin relative to their spread: the expansion ‖x‖² - 2x·c + ‖c‖²
    # would lose ~eps·offset² to cancellation (~1e2 at 1e9), so these rows take float64
    # differences; on a grid the translated rows are the same points, exactly.
    X, centers = _block(1500, 6, 4, seed=13)
    X, centers = np.round(X * 64) / 64, np.round(centers * 64) / 64
    near = kmeans_estep_chunk(RowBlock(X, 0), KMeansParams(centers))
    far = kmeans_estep_chunk(RowBlock(X + offset, 0), KMeansParams(centers + offset))
    assert_array_equal(far.counts, near.counts)
    assert_allclose(far.inertia, near.inertia, rtol=1e-12)
    assert_array_equal(far.far_row, near.far_row)
    assert_allclose(far.far_dist, near.far_dist, rtol=1e-12)


def test_far_rows_are_kept_by_exact_distance_where_the_inertia_is_expanded() -> None:
    # Near the origin the inertia comes from the expansion; the far rows still are the rows
    # of largest exact distance, ties broken by row, whatever the chunking.
    X, centers = _block(3000, 8, 6, seed=14)
    params = KMeansParams(centers)
    whole = kmeans_estep_chunk(RowBlock(X, 0), params)
    exact = ((X - centers[kmeans_labels_chunk(X, centers)]) ** 2).sum(axis=1)
    order = np.lexsort((np.arange(3000), -exact))[:6]
    assert_array_equal(whole.far_row, order)
    assert_array_equal(
        whole.far_dist,
        [_exact_row(X[i], centers[k]) for i, k in zip(whole.far_row, whole.far_label, strict=True)],
    )
    assert_allclose(whole.inertia, exact.sum(), rtol=1e-13)


def _exact_row(x: np.ndarray, c: np.ndarray) -> float:
    """``‖x - c‖²`` summed as the kernel sums it (four running sums, for exact equality)."""
    t = (x - c) ** 2
    s = [0.0, 0.0, 0.0, 0.0]
    for j in range(len(t) - len(t) % 4):
        s[j % 4] += t[j]
    for j in range(len(t) - len(t) % 4, len(t)):
        s[0] += t[j]
    return (s[0] + s[1]) + (s[2] + s[3])
