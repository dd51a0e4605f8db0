"""Gaussian mixtures with missing values (``missing='marginalize'``).

Checked against an independent dense EM for incomplete data written here row by row
(Ghahramani & Jordan 1994), against scipy's multivariate normal on the observed
coordinates, and by the invariants: no NaN gives the ``missing='error'`` fit bit for bit,
the observed-data log-likelihood never decreases under plain EM, chunking does not change
the fit, a resumed fit equals the uninterrupted one.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import scipy.special
import scipy.stats

import emdist
from emdist.exceptions import InvalidDataError, InvalidParameterError
from tests.helpers import write_zarr

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


def _data(n: int = 240, d: int = 3, frac: float = 0.2, seed: int = 0) -> np.ndarray:
    """Three correlated clusters with ``frac`` of the values missing completely at random."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 0.0], [0.0, 5.0, 5.0]])[:, :d]
    A = np.array([[1.0, 0.6, 0.2], [0.0, 0.8, 0.3], [0.0, 0.0, 0.7]])[:d, :d]
    X = centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, d)) @ A
    X[rng.random(X.shape) < frac] = np.nan
    empty = np.flatnonzero(np.isnan(X).all(axis=1))
    X[empty, 0] = 1.0  # every row keeps an observed value
    return X


def _full_covs(cov: np.ndarray, ct: str, K: int, d: int) -> np.ndarray:
    if ct == "full":
        return cov.copy()
    if ct == "tied":
        return np.repeat(cov[None], K, axis=0)
    if ct == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([np.eye(d) * c for c in cov])


def _reference_em(
    X: np.ndarray,
    weights: np.ndarray,
    means: np.ndarray,
    covs: np.ndarray,
    ct: str,
    n_iter: int,
    reg_covar: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """Plain EM for incomplete data, one row and one component at a time (dense, slow)."""
    n, d = X.shape
    K = len(weights)
    bounds = []
    for _ in range(n_iter):
        full = _full_covs(covs, ct, K, d)
        resp = np.zeros((n, K))
        xhat = np.zeros((n, K, d))
        chat = np.zeros((n, K, d, d))
        log_lik = 0.0
        for i in range(n):
            o = ~np.isnan(X[i])
            m = ~o
            dens = np.zeros(K)
            for k in range(K):
                S = full[k]
                Soo = S[np.ix_(o, o)]
                dens[k] = weights[k] * scipy.stats.multivariate_normal(means[k][o], Soo).pdf(
                    X[i][o]
                )
                A = S[np.ix_(m, o)] @ np.linalg.inv(Soo)
                xhat[i, k][o] = X[i][o]
                xhat[i, k][m] = means[k][m] + A @ (X[i][o] - means[k][o])
                chat[i, k][np.ix_(m, m)] = S[np.ix_(m, m)] - A @ S[np.ix_(o, m)]
            log_lik += np.log(dens.sum())
            resp[i] = dens / dens.sum()
        bounds.append(log_lik / n)
        nk = resp.sum(axis=0)
        weights = nk / n
        means = np.einsum("nk,nkd->kd", resp, xhat) / nk[:, None]
        second = np.einsum("nk,nkd,nke->kde", resp, xhat, xhat) + np.einsum(
            "nk,nkde->kde", resp, chat
        )
        cov_k = second / nk[:, None, None] - np.einsum("kd,ke->kde", means, means)
        if ct == "full":
            covs = cov_k + reg_covar * np.eye(d)
        elif ct == "tied":
            covs = np.einsum("k,kde->de", nk, cov_k) / n + reg_covar * np.eye(d)
        elif ct == "diag":
            covs = np.stack([np.diag(c) for c in cov_k]) + reg_covar
        else:
            covs = np.array([np.trace(c) / d for c in cov_k]) + reg_covar
    return weights, means, covs, bounds


def _start(ct: str, d: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    weights = np.array([0.3, 0.3, 0.4])
    means = np.array([[0.5, 0.5, 0.0], [3.0, 3.5, 0.5], [0.5, 4.0, 4.0]])[:, :d]
    base = np.array([[1.5, 0.3, 0.0], [0.3, 1.2, 0.1], [0.0, 0.1, 1.0]])[:d, :d]
    if ct == "full":
        covs = np.stack([base, 1.3 * base, 0.8 * base])
    elif ct == "tied":
        covs = base
    elif ct == "diag":
        covs = np.array([[1.5, 1.2, 1.0], [1.0, 2.0, 1.5], [0.8, 0.9, 1.1]])[:, :d]
    else:
        covs = np.array([1.2, 1.5, 0.9])
    return weights, means, covs


def _precisions(covs: np.ndarray, ct: str) -> np.ndarray:
    if ct == "full":
        return np.stack([np.linalg.inv(c) for c in covs])
    if ct == "tied":
        return np.linalg.inv(covs)
    return 1.0 / covs


def _gmm(ct: str, **kw: Any) -> emdist.GaussianMixture:
    weights, means, covs = _start(ct)
    kw.setdefault("acceleration", None)
    return emdist.GaussianMixture(
        3,
        covariance_type=ct,
        weights_init=weights,
        means_init=means,
        precisions_init=_precisions(covs, ct),
        missing="marginalize",
        **kw,
    )


def _quiet() -> Any:
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore", emdist.ConvergenceWarning)
    return ctx


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_em_equals_a_dense_reference_em_for_incomplete_data(ct: str) -> None:
    X = _data(n=120)
    n_iter = 4
    reg = 1e-6
    weights, means, covs = _start(ct)
    ref_w, ref_m, ref_c, ref_bounds = _reference_em(X, weights, means, covs, ct, n_iter, reg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        gm = _gmm(ct, max_iter=n_iter, tol=0.0, reg_covar=reg).fit(X)
    assert gm.n_iter_ == n_iter
    np.testing.assert_allclose(gm.lower_bounds_, ref_bounds, rtol=1e-10)
    np.testing.assert_allclose(gm.weights_, ref_w, rtol=1e-9)
    np.testing.assert_allclose(gm.means_, ref_m, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gm.covariances_, ref_c, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ct", ["full", "diag", "tied", "spherical"])
@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_score_samples_is_the_mixture_density_of_the_observed_coordinates(
    ct: str, kind: str
) -> None:
    X = _data(n=150, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        gm = _gmm(ct, max_iter=3).fit(X)
    K, d = gm.means_.shape
    full = _full_covs(gm.covariances_, ct, K, d)
    expected = np.empty(len(X))
    joint = np.empty((len(X), K))
    for i, row in enumerate(X):
        o = ~np.isnan(row)
        joint[i] = [
            gm.weights_[k]
            * scipy.stats.multivariate_normal(gm.means_[k][o], full[k][np.ix_(o, o)]).pdf(row[o])
            for k in range(K)
        ]
        expected[i] = np.log(joint[i].sum())
    data: Any = X if kind == "numpy" else da.from_array(X, chunks=40)
    got = np.asarray(gm.score_samples(data))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    proba = np.asarray(gm.predict_proba(data))
    np.testing.assert_allclose(proba, joint / joint.sum(axis=1, keepdims=True), atol=1e-10)
    assert np.array_equal(np.asarray(gm.predict(data)), np.argmax(joint, axis=1))
    assert gm.score(data) == pytest.approx(expected.mean(), rel=1e-12)
    assert gm.information_criteria(data)["score"] == pytest.approx(expected.mean(), rel=1e-12)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
@pytest.mark.parametrize("acceleration", [None, "auto"])
def test_data_without_nan_fits_bit_for_bit_as_with_missing_error(
    ct: str, acceleration: str | None, tmp_path: Path
) -> None:
    X = _data(frac=0.0)
    for data in (X, write_zarr(tmp_path / f"x{ct}{acceleration}.zarr", X, 70)):
        a = emdist.GaussianMixture(
            3, covariance_type=ct, random_state=0, acceleration=acceleration
        ).fit(data)
        b = emdist.GaussianMixture(
            3,
            covariance_type=ct,
            random_state=0,
            acceleration=acceleration,
            missing="marginalize",
        ).fit(data)
        assert a.lower_bounds_ == b.lower_bounds_
        for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert np.array_equal(a.score_samples(X), b.score_samples(X))


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_observed_log_likelihood_never_decreases_with_20_percent_missing(ct: str) -> None:
    X = _data(n=400, frac=0.2, seed=3)
    assert 0.15 < np.isnan(X).mean() < 0.25
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        gm = emdist.GaussianMixture(
            3,
            covariance_type=ct,
            random_state=2,
            missing="marginalize",
            acceleration=None,
            max_iter=40,
            tol=0.0,
        ).fit(X)
    bounds = np.asarray(gm.lower_bounds_)
    assert len(bounds) == 40
    assert np.all(np.diff(bounds) >= -1e-12 * np.abs(bounds[1:])), np.diff(bounds).min()
    # The bound is the observed-data log-likelihood: score() of the parameters it ran under.
    assert bounds[-1] == pytest.approx(bounds[-2], abs=1e-6)


@pytest.mark.parametrize("acceleration", [None, "auto"])
def test_accelerated_em_keeps_its_safeguard_with_missing_values(
    acceleration: str | None,
) -> None:
    X = _data(n=400, frac=0.2, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        gm = emdist.GaussianMixture(
            3,
            random_state=0,
            missing="marginalize",
            acceleration=acceleration,
            tol=1e-8,
            max_iter=300,
        ).fit(X)
    bounds = np.asarray(gm.lower_bounds_)
    assert np.all(np.diff(bounds) >= 0.0)
    plain = emdist.GaussianMixture(
        3, random_state=0, missing="marginalize", acceleration=None, tol=1e-8, max_iter=300
    ).fit(X)
    assert gm.lower_bound_ == pytest.approx(plain.lower_bound_, abs=1e-6)


def test_chunking_does_not_change_a_fit_on_a_zarr_store_with_nan(tmp_path: Path) -> None:
    X = _data(n=300, seed=5)
    w = np.random.default_rng(1).uniform(0.2, 2.0, len(X))
    make = lambda: emdist.GaussianMixture(  # noqa: E731
        3, random_state=0, missing="marginalize", n_init=2, max_iter=30
    )
    reference = make().fit(X, sample_weight=w)
    for rows in (50, 97, 300):
        got = make().fit(write_zarr(tmp_path / f"x{rows}.zarr", X, rows), sample_weight=w)
        np.testing.assert_allclose(got.means_, reference.means_, rtol=1e-10)
        np.testing.assert_allclose(got.covariances_, reference.covariances_, rtol=1e-10)
        np.testing.assert_allclose(got.lower_bounds_, reference.lower_bounds_, rtol=1e-12)
        assert got.n_iter_ == reference.n_iter_


def test_integer_weights_fit_as_repeated_rows_with_missing_values() -> None:
    X = _data(n=120, seed=6)
    w = np.random.default_rng(2).integers(1, 4, len(X))
    kw = dict(max_iter=5, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        weighted = _gmm("full", **kw).fit(X, sample_weight=w)
        repeated = _gmm("full", **kw).fit(np.repeat(X, w, axis=0))
    np.testing.assert_allclose(weighted.means_, repeated.means_, rtol=1e-10)
    np.testing.assert_allclose(weighted.covariances_, repeated.covariances_, rtol=1e-10)
    np.testing.assert_allclose(weighted.lower_bounds_, repeated.lower_bounds_, rtol=1e-10)


class _Crash(Exception):
    pass


def _crash_at(iteration: int) -> Any:
    def observer(it: Any) -> None:
        if it.iteration == iteration:
            raise _Crash

    return observer


@pytest.mark.parametrize("acceleration", [None, "auto"])
def test_resumed_fit_with_missing_values_equals_the_uninterrupted_one(
    acceleration: str | None, tmp_path: Path
) -> None:
    from tests.io.test_checkpoint import assert_same_fit, fitted

    X = _data(n=300, seed=7)
    w = np.random.default_rng(3).uniform(0.5, 1.5, len(X))
    Xz = write_zarr(tmp_path / "x.zarr", X, 64)
    ckpt = tmp_path / "ckpt"
    make = lambda **kw: emdist.GaussianMixture(  # noqa: E731
        3,
        n_init=2,
        random_state=1,
        max_iter=8,
        tol=0.0,
        missing="marginalize",
        acceleration=acceleration,
        **kw,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        reference = fitted(make().fit(Xz, sample_weight=w))
        with pytest.raises(_Crash):
            make(checkpoint=ckpt, observer=_crash_at(3)).fit(Xz, sample_weight=w)
        resumed = fitted(make(checkpoint=ckpt).fit(Xz, sample_weight=w))
    assert_same_fit(resumed, reference)


@pytest.mark.parametrize("init_sample_size", [10_000, 120])
@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_every_start_copes_with_missing_values(init_params: str, init_sample_size: int) -> None:
    # A sample smaller than the data is the case where the default start would read the
    # data (k-means||): with missing values it keeps to the mean-imputed sample.
    X = _data(n=300, seed=8)
    gm = emdist.GaussianMixture(
        3,
        init_params=init_params,
        init_sample_size=init_sample_size,
        n_init=4,
        random_state=0,
        missing="marginalize",
        max_iter=200,
    ).fit(X)
    assert np.all(np.isfinite(gm.means_)) and np.isfinite(gm.lower_bound_)
    assert np.all(np.diff(gm.lower_bounds_) >= 0.0)
    if init_params == "random":
        # Random responsibilities start every component near the data mean: a local
        # optimum is its known weakness also without missing values.
        return
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 0.0], [0.0, 5.0, 5.0]])
    # Every true centre is found (to within the noise of 300 rows, a fifth of them missing).
    distance = np.linalg.norm(centres[:, None, :] - gm.means_[None, :, :], axis=2)
    assert np.all(distance.min(axis=1) < 0.6), distance


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "zarr"])
def test_nan_is_refused_by_default_naming_missing_marginalize(kind: str, tmp_path: Path) -> None:
    X = _data(frac=0.0)
    X[83, 1] = np.nan
    data: Any = X if kind == "numpy" else write_zarr(tmp_path / "x.zarr", X, 25)
    for model in (emdist.GaussianMixture(2), emdist.GaussianMixture(2, missing="error")):
        with pytest.raises(InvalidDataError, match=r"row 83, column 1") as err:
            model.fit(data)
        assert "missing='marginalize'" in str(err.value)
        assert "\n" not in str(err.value)


def test_kmeans_refuses_nan_and_points_to_the_mixtures() -> None:
    X = _data(frac=0.0)
    X[5, 2] = np.nan
    with pytest.raises(InvalidDataError, match=r"row 5, column 2.*missing='marginalize'"):
        emdist.KMeans(2).fit(X)


@pytest.mark.parametrize("kind", ["numpy", "zarr"])
def test_a_row_with_every_value_missing_is_refused_naming_it(kind: str, tmp_path: Path) -> None:
    X = _data()
    X[41] = np.nan
    data: Any = X if kind == "numpy" else write_zarr(tmp_path / "x.zarr", X, 30)
    with pytest.raises(InvalidDataError, match=r"row 41 .*every value missing") as err:
        emdist.GaussianMixture(2, missing="marginalize").fit(data)
    assert "\n" not in str(err.value)
    gm = emdist.GaussianMixture(2, missing="marginalize", random_state=0).fit(_data())
    for method in (gm.score_samples, gm.predict, gm.predict_proba):
        with pytest.raises(InvalidDataError, match=r"row 41 has every value missing"):
            np.asarray(method(data))


@pytest.mark.parametrize("kind", ["numpy", "zarr"])
def test_infinity_is_refused_also_with_missing_marginalize(kind: str, tmp_path: Path) -> None:
    X = _data()
    X[17, 0] = np.inf
    data: Any = X if kind == "numpy" else write_zarr(tmp_path / "x.zarr", X, 30)
    with pytest.raises(InvalidDataError, match=r"row 17, column 0.*infinite") as err:
        emdist.GaussianMixture(2, missing="marginalize").fit(data)
    assert "\n" not in str(err.value)
    gm = emdist.GaussianMixture(2, missing="marginalize", random_state=0).fit(_data())
    with pytest.raises(InvalidDataError, match=r"infinity at row 17, column 0"):
        np.asarray(gm.score_samples(data))


def test_missing_is_a_parameter_checked_before_any_read() -> None:
    gm = emdist.GaussianMixture(2)
    assert gm.get_params()["missing"] == "error"
    assert gm.set_params(missing="marginalize").missing == "marginalize"
    assert "missing='marginalize'" in repr(gm)
    from sklearn.base import clone

    assert clone(gm).missing == "marginalize"
    with pytest.raises(InvalidParameterError, match=r"missing must be one of"):
        emdist.GaussianMixture(2, missing="impute").fit(_data())


# --- BayesianGaussianMixture ---------------------------------------------------------------


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_variational_bound_never_decreases_with_20_percent_missing(ct: str) -> None:
    X = _data(n=400, frac=0.2, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        bgm = emdist.BayesianGaussianMixture(
            n_components=5,
            covariance_type=ct,
            random_state=0,
            missing="marginalize",
            acceleration=None,
            prefit_on_sample=False,
            max_iter=40,
            tol=0.0,
        ).fit(X)
    bounds = np.asarray(bgm.lower_bounds_)
    assert len(bounds) == 40
    assert np.all(np.diff(bounds) >= -1e-12 * np.abs(bounds[1:])), np.diff(bounds).min()
    assert bounds[-1] > bounds[0]


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_variational_fit_without_nan_is_bit_for_bit_that_of_missing_error(ct: str) -> None:
    X = _data(frac=0.0)
    w = np.random.default_rng(4).uniform(0.5, 2.0, len(X))
    for sample_weight in (None, w):
        a, b = (
            emdist.BayesianGaussianMixture(
                n_components=3, covariance_type=ct, random_state=0, missing=missing
            ).fit(X, sample_weight=sample_weight)
            for missing in ("error", "marginalize")
        )
        assert a.lower_bounds_ == b.lower_bounds_
        for name in ("weight_concentration_", "means_", "covariances_", "mean_prior_"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_variational_scores_of_incomplete_rows_use_the_observed_marginal(ct: str) -> None:
    from emdist.kernels.variational import _log_offsets

    X = _data(n=200, seed=9)
    bgm = emdist.BayesianGaussianMixture(
        n_components=3, covariance_type=ct, random_state=0, missing="marginalize"
    ).fit(X)
    K, d = bgm.means_.shape
    full = _full_covs(bgm.covariances_, ct, K, d)
    offsets = _log_offsets(bgm._params(), d)
    expected = np.array(
        [
            scipy.special.logsumexp(
                [
                    offsets[k]
                    + scipy.stats.multivariate_normal(
                        bgm.means_[k][~np.isnan(row)],
                        full[k][np.ix_(~np.isnan(row), ~np.isnan(row))],
                    ).logpdf(row[~np.isnan(row)])
                    for k in range(K)
                ]
            )
            for row in X
        ]
    )
    np.testing.assert_allclose(bgm.score_samples(X), expected, rtol=1e-10)


def test_variational_fit_with_nan_resumes_bit_for_bit_and_ignores_chunking(
    tmp_path: Path,
) -> None:
    from tests.io.test_checkpoint import assert_same_fit, fitted

    # Overlapping clusters: on the separated ones the start is already the fixed point and
    # accelerated EM stops (exactly converged at tol=0) before the crash point.
    X = _data(n=300, seed=10)
    X += np.random.default_rng(11).normal(scale=2.0, size=X.shape)
    make = lambda **kw: emdist.BayesianGaussianMixture(  # noqa: E731
        n_components=3,
        n_init=2,
        random_state=1,
        max_iter=8,
        tol=0.0,
        missing="marginalize",
        **kw,
    )
    Xz = write_zarr(tmp_path / "x.zarr", X, 64)
    ckpt = tmp_path / "ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        reference = fitted(make().fit(Xz))
        with pytest.raises(_Crash):
            make(checkpoint=ckpt, observer=_crash_at(3)).fit(Xz)
        resumed = fitted(make(checkpoint=ckpt).fit(Xz))
        # At tol=0 accelerated EM's accept/reject decisions at the optimum follow rounding:
        # the chunking comparison is of plain EM.
        plain = make(acceleration=None).fit(Xz)
        other = make(acceleration=None).fit(write_zarr(tmp_path / "y.zarr", X, 101))
    assert_same_fit(resumed, reference)
    np.testing.assert_allclose(other.means_, plain.means_, rtol=1e-8)
    np.testing.assert_allclose(other.lower_bounds_, plain.lower_bounds_, rtol=1e-10)


def test_incremental_em_and_partial_fit_take_missing_values() -> None:
    X = _data(n=600, seed=3)
    Xd = da.from_array(X, chunks=75)
    kw: dict[str, Any] = dict(random_state=0, missing="marginalize", tol=1e-8, max_iter=500)
    batch = emdist.GaussianMixture(3, acceleration=None, **kw).fit(Xd)
    incremental = emdist.GaussianMixture(3, updates="incremental", n_shards=4, **kw).fit(Xd)
    assert np.all(np.diff(incremental.lower_bounds_) >= 0.0)
    assert incremental.lower_bound_ == pytest.approx(batch.lower_bound_, abs=1e-6)
    np.testing.assert_allclose(incremental.means_, batch.means_, atol=1e-3)
    stream = emdist.GaussianMixture(3, missing="marginalize", random_state=0)
    for start in range(0, len(X), 200):
        stream.partial_fit(X[start : start + 200])
    distance = np.linalg.norm(stream.means_[:, None, :] - batch.means_[None, :, :], axis=2)
    assert np.all(distance.min(axis=1) < 0.5), distance
    bad = X[:200].copy()
    bad[5, 0] = np.inf
    with pytest.raises(InvalidDataError, match=r"infinity at row 5, column 0"):
        stream.partial_fit(bad)
    with pytest.raises(InvalidDataError, match=r"NaN or infinity at row"):
        emdist.GaussianMixture(3, random_state=0).partial_fit(X[:200])


@pytest.mark.parametrize("ct", ["full", "tied"])
def test_rows_grouped_by_pattern_or_factorised_row_by_row_give_the_same_statistics(
    ct: str,
) -> None:
    from emdist.kernels.missing import incomplete_stats

    X = _data(n=500, seed=11)
    weights, means, covs = _start(ct)
    w = np.random.default_rng(5).uniform(0.5, 2.0, len(X))
    mask = np.isnan(X)
    by_pattern, by_row = (
        incomplete_stats(X, mask, w, means, covs, ct, np.log(weights), grouping=g)
        for g in ("pattern", "row")
    )
    for a, b in ((by_pattern[0], by_row[0]),):
        assert a.n == pytest.approx(b.n, rel=1e-14)
        assert a.log_lik == pytest.approx(b.log_lik, rel=1e-12)
        np.testing.assert_allclose(a.nk, b.nk, rtol=1e-12)
        np.testing.assert_allclose(a.sx, b.sx, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(a.sxx, b.sxx, rtol=1e-10, atol=1e-10)
    assert by_pattern[1] == pytest.approx(by_row[1], rel=1e-12)
    assert by_pattern[2] == pytest.approx(by_row[2], rel=1e-12)


def test_prediction_of_nan_by_a_model_fitted_without_it_names_missing_marginalize() -> None:
    gm = emdist.GaussianMixture(3, random_state=0).fit(_data(frac=0.0))
    X = _data(seed=12)
    with pytest.raises(InvalidDataError, match=r"set missing='marginalize'") as err:
        gm.predict(X)
    assert "\n" not in str(err.value)
    # The choice is read at prediction: the fitted model scores the observed values.
    got = gm.set_params(missing="marginalize").score_samples(X)
    assert np.all(np.isfinite(got))
    complete = ~np.isnan(X).any(axis=1)
    np.testing.assert_array_equal(
        got[complete], gm.set_params(missing="error").score_samples(X[complete])
    )


def test_a_repeated_pattern_is_grouped_and_equals_the_dense_reference() -> None:
    from emdist.kernels.missing import ROWS_PER_PATTERN

    X = _data(n=600, frac=0.0, seed=13)
    X[::3, 0] = np.nan  # one structured pattern (a sensor often absent): 200 rows
    X[1::6, 2] = np.nan
    assert (np.isnan(X[:, 0]).sum()) >= ROWS_PER_PATTERN
    n_iter, reg = 3, 1e-6
    weights, means, covs = _start("full")
    ref_w, ref_m, ref_c, ref_bounds = _reference_em(X, weights, means, covs, "full", n_iter, reg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        gm = _gmm("full", max_iter=n_iter, tol=0.0, reg_covar=reg).fit(X)
    np.testing.assert_allclose(gm.lower_bounds_, ref_bounds, rtol=1e-10)
    np.testing.assert_allclose(gm.means_, ref_m, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gm.covariances_, ref_c, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("frac", [0.1, 0.3])
def test_marginalized_means_are_closer_to_the_truth_than_mean_imputation(frac: float) -> None:
    # The user's alternative without missing='marginalize': impute the feature means and fit
    # scikit-learn's GaussianMixture. Imputation pulls every incomplete row towards the
    # data's centre, so the fitted means shrink; marginalization does not.
    from scipy.optimize import linear_sum_assignment
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    rng = np.random.default_rng(7)
    n, d, k = 3000, 4, 3
    truth = rng.normal(scale=3.0, size=(k, d))
    A = rng.normal(size=(k, d, d)) / np.sqrt(d) + 0.6 * np.eye(d)
    labels = rng.integers(0, k, n)
    X = truth[labels] + np.einsum("nd,nde->ne", rng.normal(size=(n, d)), A[labels])
    X[rng.random(X.shape) < frac] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.0  # every row keeps an observed value

    def error(means: np.ndarray) -> float:
        distance = np.linalg.norm(truth[:, None, :] - means[None, :, :], axis=2)
        r, c = linear_sum_assignment(distance)
        return float(distance[r, c].max())

    ours = emdist.GaussianMixture(k, missing="marginalize", n_init=3, random_state=0).fit(X)
    imputed = np.where(np.isnan(X), np.nanmean(X, axis=0), X)
    theirs = SkGaussianMixture(k, n_init=3, random_state=0).fit(imputed)
    assert error(ours.means_) < 0.5 * error(theirs.means_), (
        error(ours.means_),
        error(theirs.means_),
    )
