"""Per-row weights: rows that count several times, checked before any pass.

``GaussianMixture.fit(X, sample_weight=w)`` with integer weights equals the fit of the rows
repeated that many times (the statistics are those sums). The weighted K-means kernel,
driven by the engine over the rows and their weights, equals scikit-learn's
``KMeans.fit(X, sample_weight=w)`` from the same centres (``KMeans.fit`` does not take
weights yet: its seeding and empty-cluster relocation do not weigh rows). In memory and out
of core alike.
"""

from __future__ import annotations

import warnings
from typing import Any

import dask.array as da
import numpy as np
import pytest
from sklearn.cluster import KMeans as SkKMeans

import emdist
from emdist.engine.em import run_em
from emdist.engine.reduce import Rows, map_reduce
from emdist.exceptions import InvalidParameterError
from emdist.kernels.kmeans import KMeansParams
from emdist.models.kmeans import KMeansFamily
from tests.conftest import gmm_init, make_blobs

X, _ = make_blobs(100, [[0.0, 0.0, 0.0], [3.0, 3.0, 0.0], [0.0, 3.0, 3.0]], seed=4)
N = len(X)


def _as(kind: str, values: np.ndarray) -> Any:
    return values if kind == "numpy" else da.from_array(values, chunks=64)


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_weighted_kmeans_equals_scikit_learn(kind: str) -> None:
    w = np.random.default_rng(1).uniform(0.2, 3.0, N)
    init = X[[0, 100, 200]].copy()
    sk = SkKMeans(3, init=init, n_init=1, max_iter=300, tol=1e-4, algorithm="lloyd")
    sk.fit(X, sample_weight=w)
    rows = Rows(_as(kind, X), {"weights": _as(kind, w)})
    tol = 1e-4 * float(np.mean(np.var(X, axis=0)))  # scikit-learn's relative tolerance
    result = run_em(rows, KMeansFamily(), KMeansParams(init), tol=tol, max_iter=300)
    centers = result.params.centers
    np.testing.assert_allclose(centers, sk.cluster_centers_, rtol=1e-10)
    final = map_reduce(rows, KMeansFamily().estep_chunk, KMeansParams(centers))
    assert final.inertia == pytest.approx(sk.inertia_, rel=1e-10)
    np.testing.assert_allclose(final.counts, np.bincount(sk.labels_, weights=w), rtol=1e-12)
    assert result.n_iter == sk.n_iter_


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_integer_weights_fit_as_repeated_rows(kind: str, covariance_type: str) -> None:
    w = np.random.default_rng(2).integers(0, 4, N)
    init = gmm_init(X, 3, covariance_type, seed=3)
    make = lambda: emdist.GaussianMixture(  # noqa: E731
        3, covariance_type=covariance_type, max_iter=40, tol=1e-6, **init
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        weighted = make().fit(_as(kind, X), sample_weight=_as(kind, w.astype(float)))
        repeated = make().fit(np.repeat(X, w, axis=0))
    assert weighted.n_iter_ == repeated.n_iter_
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(
            getattr(weighted, name), getattr(repeated, name), rtol=1e-8, atol=1e-12
        )
    assert weighted.lower_bound_ == pytest.approx(repeated.lower_bound_, rel=1e-10)


def _unreadable() -> da.Array:
    """X whose every read fails: an error raised before any pass names the weights."""

    def boom(block: np.ndarray) -> np.ndarray:
        raise AssertionError("the data was read")

    return da.from_array(X, chunks=64).map_blocks(boom, dtype=X.dtype)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.ones(N - 1), r"shape \(299,\); expected \(300,\)"),
        (-np.ones(N), "must be >= 0"),
        (np.where(np.arange(N) == 5, np.nan, 1.0), "NaN or infinity"),
        (np.zeros(N), "sums to zero"),
    ],
)
def test_bad_weights_are_one_line_errors_before_any_pass(weights: np.ndarray, message: str) -> None:
    for w in (weights, da.from_array(weights, chunks=100)):
        with pytest.raises(InvalidParameterError, match=message) as err:
            emdist.GaussianMixture(3).fit(_unreadable(), sample_weight=w)
        assert "\n" not in str(err.value)


def test_weights_and_a_checkpoint_are_refused(tmp_path: Any) -> None:
    with pytest.raises(InvalidParameterError, match="checkpoint"):
        emdist.GaussianMixture(3, checkpoint=tmp_path / "c").fit(
            _unreadable(), sample_weight=np.ones(N)
        )
    assert not (tmp_path / "c").exists()
