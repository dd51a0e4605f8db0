"""Lloyd with Hamerly's bounds (``kernels/kmeans_bounds``) makes exactly Lloyd's decisions.

Against a plain numpy Lloyd written here (every distance from float64 differences, lowest
index on ties, centres as each cluster's mean about the mean of the starting centres,
empty clusters re-seeded from the farthest rows): the labels of every iteration are equal
on random data, ties, duplicates, empty clusters, K = 1, d = 1, float32 and data
translated by 1e9. Against scikit-learn's Lloyd from the same start with ``tol=0``: the
final labels, centres, inertia and iteration count.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import sklearn.cluster
from numpy.testing import assert_allclose, assert_array_equal

import emdist
from emdist.io import as_dask_array
from emdist.kernels.kmeans_bounds import lloyd_bounds


def reference_lloyd(
    X: np.ndarray, centers: np.ndarray, max_iter: int, tol: float
) -> tuple[list[np.ndarray], list[float], np.ndarray, bool]:
    """Labels and inertia of every iteration, the final centres, and whether it converged."""
    X64 = np.asarray(X, dtype=np.float64)
    centers = np.array(centers, dtype=np.float64)
    n, K = X64.shape[0], centers.shape[0]
    ref = centers.mean(axis=0)
    labels_seen: list[np.ndarray] = []
    inertias: list[float] = []
    converged = False
    for _ in range(max_iter):
        diff = X64[:, None, :] - centers[None, :, :]
        sq = np.einsum("nkd,nkd->nk", diff, diff)
        labels = np.argmin(sq, axis=1)
        dist = sq[np.arange(n), labels]
        labels_seen.append(labels)
        inertias.append(float(dist.sum()))
        counts = np.bincount(labels, minlength=K)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, X64 - ref)
        new = centers.copy()
        empty = np.flatnonzero(counts == 0)
        order = np.lexsort((np.arange(n), -dist))[: int(np.count_nonzero(dist > 0))]
        relocated = {}
        for j, k in enumerate(empty[: len(order)]):
            row = order[j]
            sums[labels[row]] -= X64[row] - ref
            counts[labels[row]] -= 1
            relocated[k] = X64[row]
        for k in range(K):
            if k in relocated:
                new[k] = relocated[k]
            elif counts[k] > 0:
                new[k] = ref + sums[k] / counts[k]
        shift = float(np.sum((new - centers) ** 2))
        centers = new
        if shift <= tol:
            converged = True
            break
    return labels_seen, inertias, centers, converged


def _blobs(n: int, d: int, K: int, seed: int, spread: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(K, d))
    return means[rng.integers(0, K, n)] + spread * rng.standard_normal((n, d))


def _case(name: str) -> tuple[Any, np.ndarray]:
    """``(X, starting centres)`` of each case."""
    rng = np.random.default_rng(CASES.index(name))
    if name == "random":
        X = _blobs(3000, 6, 9, seed=1)
        return X, X[rng.choice(len(X), 9, replace=False)].copy()
    if name == "many-clusters":
        X = _blobs(2000, 4, 40, seed=2, spread=0.5)
        return X, X[rng.choice(len(X), 40, replace=False)].copy()
    if name == "ties":
        # Points and centres on a small integer grid: many rows exactly halfway.
        X = rng.integers(0, 5, (1500, 2)).astype(np.float64)
        return X, np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [4.0, 4.0]])
    if name == "duplicates":
        # Fewer distinct rows than clusters: some clusters stay empty, with no candidate.
        base = rng.standard_normal((4, 3))
        X = base[rng.integers(0, 4, 400)]
        return X, np.vstack([base, base[:2] + 10.0])
    if name == "empty-cluster":
        X = _blobs(600, 2, 3, seed=3)
        return X, np.vstack([X[:2], [[1e3, -1e3]]])
    if name == "K=1":
        X = _blobs(500, 3, 2, seed=4)
        return X, X[:1].copy()
    if name == "d=1":
        X = _blobs(2000, 1, 5, seed=5)
        return X, X[:6].copy()
    if name == "float32":
        X = _blobs(2000, 5, 6, seed=6).astype(np.float32)
        return X, X[rng.choice(len(X), 6, replace=False)].astype(np.float64)
    if name == "translated-1e9":
        # The plain expansion ‖x‖² - 2x·c + ‖c‖² loses every digit of the distances here.
        X = _blobs(2000, 4, 5, seed=7) + 1e9
        return X, X[rng.choice(len(X), 5, replace=False)].copy()
    if name == "translated-1e9-float32":
        X = (_blobs(2000, 3, 4, seed=8) * 64 + 1e9).astype(np.float32)
        return X, X[rng.choice(len(X), 4, replace=False)].astype(np.float64)
    raise AssertionError(name)


CASES = [
    "random",
    "many-clusters",
    "ties",
    "duplicates",
    "empty-cluster",
    "K=1",
    "d=1",
    "float32",
    "translated-1e9",
    "translated-1e9-float32",
]


@pytest.mark.parametrize("name", CASES)
def test_every_iteration_assigns_as_lloyd(name: str) -> None:
    X, init = _case(name)
    want_labels, want_inertia, want_centers, want_converged = reference_lloyd(X, init, 100, 0.0)
    got = lloyd_bounds(X, init, max_iter=100, tol=0.0, record_labels=True)

    assert got.n_iter == len(want_labels)
    for iteration, (g, w) in enumerate(zip(got.label_history, want_labels, strict=True)):
        assert_array_equal(g, w, err_msg=f"iteration {iteration + 1}")
    assert got.converged == want_converged
    scale = max(float(np.max(want_inertia)), 1.0)
    assert_allclose(got.inertias, want_inertia, rtol=1e-10, atol=1e-12 * scale)
    ref = init.mean(axis=0)
    # About the reference point: at 1e9 a relative tolerance on the centres would hide
    # every digit that matters.
    assert_allclose(got.centers - ref, want_centers - ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["random", "many-clusters", "translated-1e9"])
def test_bounds_skip_most_rows_after_the_first_iterations(name: str) -> None:
    X, init = _case(name)
    got = lloyd_bounds(X, init, max_iter=100, tol=0.0)
    n = X.shape[0]
    assert got.full_rows[0] == n  # the first assignment scores every row
    assert got.n_iter > 3
    # Later, only a fraction of the rows is scored against every centre.
    assert sum(got.full_rows[1:]) < 0.5 * n * (got.n_iter - 1)
    if name == "many-clusters":
        # ... and, with many clusters, most are left alone by the moves: their rows are
        # not summed again.
        assert sum(got.swept_rows[1:]) < 0.8 * n * (got.n_iter - 1)


def test_a_converged_run_keeps_its_centres_bit_for_bit() -> None:
    # Once no label changes, every centre is recomputed from the same rows: no drift at all,
    # so tol=0 stops (scikit-learn's strict convergence) and the final inertia is the last.
    X, init = _case("random")
    got = lloyd_bounds(X, init, max_iter=300, tol=0.0, record_labels=True)
    assert got.converged
    assert_array_equal(got.label_history[-1], got.label_history[-2])
    assert got.final_inertia == got.inertias[-1]
    assert_array_equal(got.final_labels, got.labels)


def test_stopped_early_assigns_under_the_final_centres() -> None:
    X, init = _case("random")
    got = lloyd_bounds(X, init, max_iter=2, tol=0.0)
    assert not got.converged and got.n_iter == 2
    diff = X[:, None, :] - got.centers[None, :, :]
    sq = np.einsum("nkd,nkd->nk", diff, diff)
    assert_array_equal(got.final_labels, np.argmin(sq, axis=1))
    assert_allclose(got.final_inertia, sq.min(axis=1).sum(), rtol=1e-12)


def test_the_iteration_hook_sees_every_update_and_can_stop() -> None:
    X, init = _case("random")
    seen: list[tuple[int, float, bool]] = []

    def hook(iteration: int, inertia: float, centers: np.ndarray, converged: bool) -> bool:
        seen.append((iteration, inertia, converged))
        return iteration == 3

    got = lloyd_bounds(X, init, max_iter=100, tol=0.0, on_iteration=hook)
    assert [s[0] for s in seen] == [1, 2, 3]
    assert [s[1] for s in seen] == list(got.inertias)
    assert got.n_iter == 3 and not got.converged


def _sklearn_datasets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    blobs = _blobs(4000, 8, 16, seed=12)
    uniform = rng.uniform(size=(3000, 5))
    wide = _blobs(1500, 40, 6, seed=13, spread=2.0)
    offset = _blobs(2000, 3, 5, seed=14) + 1e4
    # More rows than one in-memory block holds: the fit gathers the blocks into one array.
    blocks = _blobs(30_000, 4, 6, seed=15, spread=1.5)
    return {
        "several-blocks": (blocks, blocks[rng.choice(30_000, 6, replace=False)].copy()),
        "blobs": (blobs, blobs[rng.choice(4000, 16, replace=False)].copy()),
        "uniform": (uniform, uniform[:7].copy()),
        "wide": (wide, wide[rng.choice(1500, 6, replace=False)].copy()),
        "offset-1e4": (offset, offset[rng.choice(2000, 5, replace=False)].copy()),
    }


@pytest.mark.parametrize("name", ["blobs", "uniform", "wide", "offset-1e4"])
def test_final_fit_equals_scikit_learn_lloyd(name: str) -> None:
    X, init = _sklearn_datasets()[name]
    ref = sklearn.cluster.KMeans(
        n_clusters=len(init), init=init, n_init=1, algorithm="lloyd", tol=0.0, max_iter=300
    ).fit(X)
    got = lloyd_bounds(X, init, max_iter=300, tol=0.0)
    assert got.converged
    assert got.n_iter == ref.n_iter_
    assert_array_equal(got.final_labels, ref.labels_)
    assert_allclose(got.centers, ref.cluster_centers_, rtol=1e-10, atol=1e-10)
    assert_allclose(got.final_inertia, ref.inertia_, rtol=1e-10)


@pytest.mark.parametrize("name", ["blobs", "offset-1e4", "several-blocks"])
def test_in_memory_estimator_equals_scikit_learn_lloyd(name: str) -> None:
    # emdist.KMeans on in-memory data runs lloyd_bounds (no pass per iteration). The
    # passes' centres (each the previous one plus the mean difference) can keep moving by
    # an ulp once the labels are stable, so there tol=0 may run to max_iter.
    X, init = _sklearn_datasets()[name]
    assert as_dask_array(X).numblocks[0] > 1 or name != "several-blocks"
    ref = sklearn.cluster.KMeans(
        n_clusters=len(init), init=init, n_init=1, algorithm="lloyd", tol=0.0, max_iter=300
    ).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged: no warning
        ours = emdist.KMeans(n_clusters=len(init), init=init, tol=0.0, max_iter=300).fit(X)
    assert ours.converged_
    assert ours.n_iter_ == ref.n_iter_
    assert_array_equal(ours.labels_, ref.labels_)
    assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-10, atol=1e-10)
    assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-10)
    # lower_bounds_ are minus the inertia of every iteration, which Lloyd never raises.
    bounds = np.asarray(ours.lower_bounds_)
    assert len(bounds) == ours.n_iter_
    assert np.all(np.diff(bounds) >= -1e-12 * np.abs(bounds[1:]))


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("n_threads", [2, 3, 7])
def test_steps_split_over_threads_give_the_one_thread_loop_bit_for_bit(
    name: str, n_threads: int
) -> None:
    # Rows split for the assignment, clusters for the sums: every array the loop keeps or
    # returns must not depend on the split, through ties, empty clusters and 1e9 offsets.
    X, start = _case(name)
    one = lloyd_bounds(X, start, max_iter=300, tol=0.0, record_labels=True, n_threads=1)
    many = lloyd_bounds(X, start, max_iter=300, tol=0.0, record_labels=True, n_threads=n_threads)
    assert_array_equal(many.centers, one.centers)
    assert_array_equal(many.final_labels, one.final_labels)
    assert many.inertias == one.inertias and many.final_inertia == one.final_inertia
    assert (many.n_iter, many.converged) == (one.n_iter, one.converged)
    assert many.full_rows == one.full_rows and many.swept_rows == one.swept_rows
    for a, b in zip(many.label_history, one.label_history, strict=True):
        assert_array_equal(a, b)


def test_a_large_block_is_split_over_the_cores_by_default() -> None:
    # From 65,536 rows the default splits each step; the result is the one-thread loop's.
    X = _blobs(70_000, 3, 4, seed=9)
    start = X[:4].copy()
    default = lloyd_bounds(X, start, max_iter=50, tol=0.0)
    one = lloyd_bounds(X, start, max_iter=50, tol=0.0, n_threads=1)
    assert_array_equal(default.centers, one.centers)
    assert default.inertias == one.inertias
