"""The pieces of the bounded K-means kernel (``kmeans_estep_bounded``), each against the
computation it stands for, bit for bit.

The kernel moves every row's bounds without reading the row, then reads from lists the rows
it must (tightened, scored, summed again), asking for them ahead of use (software prefetch);
it sums a row's differences and their squares in one walk; it takes a row's distance to its
old centre, once tightened, instead of measuring it again while scoring; and it skips the
far rows' second walk where no unmeasured row can enter. None of these may change a value:
each is checked here against the plain computation, and the whole pass against the plain
pass over Lloyd's iterations with many rows changing label.
"""

from __future__ import annotations

import platform
from typing import Any

import numba
import numpy as np
import pytest
from numpy.testing import assert_array_equal

from emdist.kernels import kmeans
from emdist.kernels._prefetch import prefetch_row
from emdist.kernels.kmeans import (
    KMeansParams,
    KMeansStats,
    kmeans_estep_bounded,
    kmeans_estep_many,
    kmeans_mstep,
)
from emdist.kernels.rows import RowBlock


@numba.njit
def _sum_rows(X: Any, ahead: bool) -> float:
    s = 0.0
    for i in range(X.shape[0]):
        if ahead:
            prefetch_row(X, min(i + 3, X.shape[0] - 1))
        for j in range(X.shape[1]):
            s += X[i, j]
    return s


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(lambda X: X, id="float64"),
        pytest.param(lambda X: X.astype(np.float32), id="float32"),
        pytest.param(lambda X: np.repeat(X, 2, axis=0)[::2], id="strided"),
        pytest.param(lambda X: X[:, :0], id="no-columns"),
    ],
)
def test_prefetching_rows_reads_nothing_and_changes_no_value(layout: Any) -> None:
    X = layout(np.random.default_rng(0).standard_normal((50, 9)))
    assert _sum_rows(X, True) == _sum_rows(X, False) == sum(float(v) for v in X.ravel())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction")
def test_a_prefetched_row_compiles_to_prefetch_instructions() -> None:
    _sum_rows(np.zeros((4, 40)), True)
    # (The caller's code, compiled here: a kernel cached on disk shows none.)
    code = "".join(_sum_rows.inspect_asm().values())
    assert "prefetcht0" in code


@pytest.mark.parametrize("d", [1, 3, 4, 7, 32, 33])
@pytest.mark.parametrize("offset", [0.0, 1e9])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_walk_over_a_row_sums_as_the_two_walks(d: int, offset: float, dtype: Any) -> None:
    rng = np.random.default_rng(d)
    X = (rng.standard_normal((40, d)) * 3 + offset).astype(dtype)
    about = rng.standard_normal((3, d)) + offset
    weights = rng.uniform(0.0, 2.0, 40)
    one, two = np.zeros((3, d)), np.zeros((3, d))
    one_w, two_w = np.zeros((3, d)), np.zeros((3, d))
    for i in range(40):
        k = i % 3
        sq = kmeans._add_row(X, i, k, about, one)
        kmeans._add_sums(X, i, k, about, two)
        assert sq == kmeans._sq_dist(X, i, k, about)
        sq_w = kmeans._add_row_weighted(X, i, k, about, one_w, weights[i])
        kmeans._add_sums_weighted(X, i, k, about, two_w, weights[i])
        assert sq_w == sq
    assert_array_equal(one, two)
    assert_array_equal(one_w, two_w)


@pytest.mark.parametrize("offset", [0.0, 1e9])
def test_a_known_distance_gives_the_label_and_bounds_of_a_measured_one(offset: float) -> None:
    # Centres in pairs close together, so that many rows have several centres within the
    # scores' rounding reach and are decided by exact distances.
    rng = np.random.default_rng(5)
    d, K = 6, 6
    base = rng.standard_normal((3, d)) * 4
    centers = np.repeat(base, 2, axis=0) + rng.standard_normal((K, d)) * 1e-3 + offset
    X = np.repeat(base, 40, axis=0) + rng.standard_normal((120, d)) + offset
    scoring = kmeans._Scoring.of(centers, X.dtype)
    scores = (X - scoring.ref) @ scoring.neg2_t if scoring.shift_rows else X @ scoring.neg2_t
    radius = float(
        np.linalg.norm(scoring.ref) + np.max(np.linalg.norm(centers - scoring.ref, axis=1))
    )
    eps = float(np.finfo(np.float64).eps)
    gamma = (d + 5) * eps / (1.0 - (d + 5) * eps)
    close = 0
    for i in range(len(X)):
        band = gamma * (float(np.linalg.norm(X[i])) + radius) ** 2
        want = kmeans._pick(X, i, scores, i, scoring.bias, centers, band, True, -1, -1.0)
        for k in range(K):
            known = kmeans._sq_dist(X, i, k, centers)
            got = kmeans._pick(X, i, scores, i, scoring.bias, centers, band, True, k, known)
            assert got == want
        close += want[2] >= 0.0 and want[1] > 0.0
    assert close > 0  # some rows were decided by exact distances


def _true_far(
    X: np.ndarray, centers: np.ndarray, labels: np.ndarray, weights: np.ndarray, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    dist = np.array([kmeans._sq_dist(X, i, int(labels[i]), centers) for i in range(len(X))])
    rows = np.flatnonzero(weights > 0)
    order = rows[np.lexsort((rows, -dist[rows]))][:keep]
    return dist[order], order


@pytest.mark.parametrize("slack", [0.0, 0.05, 3.0])
@pytest.mark.parametrize("measured_share", [0.0, 0.1, 0.9])
def test_far_rows_from_bounds_are_those_of_exact_distances(
    slack: float, measured_share: float
) -> None:
    # Upper bounds from tight (the second walk is then skipped: no row left can enter) to
    # loose (it must measure rows beyond the first K), some rows' distances known.
    rng = np.random.default_rng(int(10 * slack + 100 * measured_share))
    n, d, K = 3_000, 5, 7
    X = rng.standard_normal((n, d)) * rng.uniform(0.2, 3.0, (n, 1))
    centers = rng.standard_normal((K, d))
    labels = rng.integers(0, K, n)
    weights = rng.uniform(0.0, 1.0, n)
    weights[rng.random(n) < 0.1] = 0.0
    exact = np.array([kmeans._sq_dist(X, i, int(labels[i]), centers) for i in range(n)])
    loose = np.sqrt(exact) * (1.0 + slack * rng.random(n)) * (1.0 + kmeans._DELTA)
    upper = (loose * kmeans._UP32 + kmeans._TINY32).astype(np.float32)
    dist = np.where(rng.random(n) < measured_share, exact, -1.0)
    for weighted in (False, True):
        w = weights if weighted else np.ones(n)
        far_dist = np.empty((1, K))
        far_row = np.empty((1, K), dtype=np.int64)
        far_label = np.empty((1, K), dtype=np.int64)
        n_far = np.zeros(1, dtype=np.int64)
        kmeans._far_kernel(
            X, 0, centers[None], labels[None].copy(), dist[None].copy(), upper[None].copy(),
            weights, weighted, far_dist, far_row, far_label, n_far, kmeans._DELTA, kmeans._TINY,
        )  # fmt: skip
        want_dist, want_row = _true_far(X, centers, labels, w, K)
        assert n_far[0] == K
        assert_array_equal(far_dist[0], want_dist)
        assert_array_equal(far_row[0], want_row)
        assert_array_equal(far_label[0], labels[want_row])


def _assert_identical(got: list[KMeansStats], want: list[KMeansStats]) -> None:
    for a, b in zip(got, want, strict=True):
        assert a.inertia == b.inertia
        assert_array_equal(a.counts, b.counts)
        assert_array_equal(a.sx, b.sx)
        assert_array_equal(a.far_dist, b.far_dist)
        assert_array_equal(a.far_row, b.far_row)
        assert_array_equal(a.far_label, b.far_label)
        assert_array_equal(a.far_x, b.far_x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_bounded_kernel_equals_the_plain_walk_through_jumps_and_churn(
    dtype: Any, weighted: bool
) -> None:
    # Several segments and sub-blocks, d not a multiple of 4, overlapping clusters (many
    # rows tightened, scored and summed again), three restarts, and passes whose centres
    # jump back several iterations (bounds loosened by a large drift).
    rng = np.random.default_rng(11)
    n, d, K = 9_000, 33, 8
    means = rng.standard_normal((5, d)) * 2.5
    X = (means[rng.integers(0, 5, n)] + rng.standard_normal((n, d))).astype(dtype)
    weights = rng.uniform(0.0, 2.0, n) if weighted else None
    if weights is not None:
        weights[::53] = 0.0
    block = RowBlock(X, 0, weights=weights)
    paths = [
        [KMeansParams(X[rng.choice(n, K, replace=False)].astype(np.float64))] for _ in range(3)
    ]
    for _ in range(10):
        stats = kmeans_estep_many(block, [p[-1] for p in paths])
        for p, s in zip(paths, stats, strict=True):
            p.append(kmeans_mstep(s)[0])
    tags = [0, 1, 2]
    previous = None
    scored = swept = 0
    for t in [0, 1, 2, 3, 4, 5, 9, 6, 10, 2, 7, 8]:
        params = [p[t] for p in paths]
        got, previous = kmeans_estep_bounded(block, params, tags, previous)
        _assert_identical(got, kmeans_estep_many(block, params))
        scored += previous.scored
        swept += previous.swept
    assert 0 < scored < 12 * 3 * n  # some rows kept their labels on their bounds
    assert swept > 0
