"""Oracle: scikit-learn. From the same starting parameters, emdist reproduces its numbers.

Both estimators run a fixed number of iterations (``tol=0`` and the same ``max_iter`` for the
mixture), so any difference is in the arithmetic, not in when the loop stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import sklearn.cluster
import sklearn.exceptions
import sklearn.mixture
from numpy.testing import assert_allclose, assert_array_equal

import emdist
from tests.conftest import COVARIANCE_TYPES, gmm_init, make_blobs, overlapping_data

RTOL = 1e-7
# Off-diagonal covariances can be near zero, where a purely relative tolerance means nothing;
# this absolute floor is far below anything a wrong formula would produce on unit-scale data.
ATOL = 1e-11


def _as_input(X: np.ndarray, kind: str) -> np.ndarray | da.Array:
    if kind == "numpy":
        return X
    # Uneven row-blocks: the oracle must hold whatever the chunking.
    sizes = [97, 3, 250, 41]
    sizes.append(len(X) - sum(sizes))
    return da.from_array(X, chunks=(tuple(sizes), X.shape[1]))


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gaussian_mixture_matches_sklearn(covariance_type: str, kind: str) -> None:
    X = overlapping_data(seed=1)
    init = gmm_init(X, 3, covariance_type, seed=2)
    common = dict(
        n_components=3, covariance_type=covariance_type, tol=0.0, max_iter=12, reg_covar=1e-6
    )
    with pytest.warns(sklearn.exceptions.ConvergenceWarning):
        ref = sklearn.mixture.GaussianMixture(**common, **init, random_state=0).fit(X)
    with pytest.warns(emdist.ConvergenceWarning, match="did not converge"):
        ours = emdist.GaussianMixture(**common, **init, random_state=0, acceleration=None).fit(
            _as_input(X, kind)
        )

    assert ours.n_iter_ == ref.n_iter_ == 12
    assert ours.converged_ is False
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        assert_allclose(getattr(ours, name), getattr(ref, name), rtol=RTOL, atol=ATOL, err_msg=name)
    assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=RTOL)
    assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=RTOL)
    # The fitted models agree on new data too.
    X_new = overlapping_data(seed=7, n_per_cluster=50)
    assert_allclose(ours.score_samples(X_new), ref.score_samples(X_new), rtol=RTOL)
    assert_allclose(ours.predict_proba(X_new), ref.predict_proba(X_new), rtol=RTOL, atol=1e-12)
    assert_array_equal(ours.predict(X_new), ref.predict(X_new))
    assert_allclose(ours.score(X_new), ref.score(X_new), rtol=RTOL)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gaussian_mixture_converged_run_matches_sklearn(covariance_type: str) -> None:
    # Same init, default tol: both must stop at the same iteration and agree.
    X = overlapping_data(seed=3)
    init = gmm_init(X, 3, covariance_type, seed=4)
    common = dict(n_components=3, covariance_type=covariance_type, tol=1e-3, max_iter=200)
    ref = sklearn.mixture.GaussianMixture(**common, **init).fit(X)
    ours = emdist.GaussianMixture(**common, **init, acceleration=None).fit(X)
    assert ref.converged_ and ours.converged_
    assert ours.n_iter_ == ref.n_iter_
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert_allclose(getattr(ours, name), getattr(ref, name), rtol=RTOL, atol=ATOL, err_msg=name)
    assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=RTOL)


def _kmeans_case(case: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Data, initial centres and max_iter of one K-means oracle case."""
    if case == "overlapping":
        X = overlapping_data(seed=5)
        init = X[[0, 1, 2, 3]].copy()
        return X, init, 300
    if case == "max_iter":
        # Stopped before convergence: both re-assign under the final centres.
        X = overlapping_data(seed=6)
        return X, X[[0, 1, 2]].copy(), 2
    if case == "empty_cluster":
        # One centre far from every point: its cluster is empty after the first assignment
        # and both implementations re-seed it from the point farthest from its centre.
        X, _ = make_blobs(150, [[20.0, 20.0], [26.0, 20.0], [23.0, 26.0]], seed=8)
        init = np.array([[20.0, 21.0], [25.0, 22.0], [1e3, -1e3]])
        return X, init, 300
    raise AssertionError(case)


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("case", ["overlapping", "max_iter", "empty_cluster"])
def test_kmeans_matches_sklearn_lloyd(case: str, kind: str) -> None:
    X, init, max_iter = _kmeans_case(case)
    ref = sklearn.cluster.KMeans(
        n_clusters=len(init), init=init, n_init=1, algorithm="lloyd", max_iter=max_iter
    ).fit(X)
    ours = emdist.KMeans(n_clusters=len(init), init=init, max_iter=max_iter)
    if case == "max_iter":
        with pytest.warns(emdist.ConvergenceWarning, match="did not converge"):
            ours.fit(_as_input(X, kind))
    else:
        ours.fit(_as_input(X, kind))
    labels = np.asarray(ours.labels_)

    assert ours.n_iter_ == ref.n_iter_
    assert_array_equal(labels, ref.labels_)
    assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-10, atol=1e-12)
    assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-10)
    assert_array_equal(np.asarray(ours.predict(X)), ref.predict(X))
    assert_allclose(np.asarray(ours.transform(X)), ref.transform(X), rtol=1e-10, atol=1e-12)


def test_warm_started_refit_matches_sklearn() -> None:
    # sklearn's warm start carries the previous lower bound into the next fit, so a refit of
    # a converged model stops as soon as the bound moves by less than tol.
    X = overlapping_data(seed=3)
    init = gmm_init(X, 3, "full", seed=4)
    common = dict(n_components=3, tol=1e-3, warm_start=True, **init)
    ref = sklearn.mixture.GaussianMixture(**common).fit(X)
    ours = emdist.GaussianMixture(**common, acceleration=None).fit(X)
    assert ours.n_iter_ == ref.n_iter_
    ref.fit(X)
    ours.fit(X)
    assert ours.converged_ == ref.converged_
    assert ours.n_iter_ == ref.n_iter_
    assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=RTOL)
    assert_allclose(ours.means_, ref.means_, rtol=RTOL, atol=ATOL)
    assert_allclose(ours.covariances_, ref.covariances_, rtol=RTOL, atol=ATOL)


def _strict_case() -> tuple[np.ndarray, np.ndarray]:
    """Blobs whose Lloyd run settles after a dozen iterations, and random rows as centres."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((5, 8)) * 3
    X = centers[rng.integers(0, 5, 3000)] + rng.standard_normal((3000, 8)) * 2.0
    return X, X[rng.choice(len(X), 5, replace=False)].copy()


@pytest.mark.parametrize("kind", ["zarr", "dask", "numpy-checkpoint"])
def test_kmeans_passes_converge_strictly_as_sklearn(
    kind: str, write_zarr: Callable[..., str], tmp_path: Path
) -> None:
    # tol=0 is scikit-learn's strict convergence: the run stops at the first iteration whose
    # labels equal the previous one's. Passes keep no labels (a Zarr store, a Dask array,
    # in-memory data with a checkpoint): the same rows must give the same centre bit for
    # bit, so that the shift is exactly 0 there.
    X, init = _strict_case()
    ref = sklearn.cluster.KMeans(
        n_clusters=5, init=init, n_init=1, algorithm="lloyd", tol=0.0, max_iter=300
    ).fit(X)
    assert ref.n_iter_ < 300
    data: np.ndarray | str | da.Array = X
    checkpoint = None
    if kind == "zarr":
        data = write_zarr(X, chunk_rows=700)
    elif kind == "dask":
        data = da.from_array(X, chunks=((97, 3, 1250, 41, 1609), 8))
    else:
        checkpoint = tmp_path / "fit.ckpt"
    ours = emdist.KMeans(n_clusters=5, init=init, tol=0.0, max_iter=300, checkpoint=checkpoint)
    ours.fit(data)

    assert ours.converged_ is True
    assert ours.n_iter_ == ref.n_iter_
    assert_array_equal(np.asarray(ours.labels_), ref.labels_)
    assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-10, atol=1e-12)
    assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-10)
