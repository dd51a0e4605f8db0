"""``partial_fit``: stepwise EM on GaussianMixture, mini-batch K-means on KMeans.

Oracles: one update from given parameters on a batch holding all the data is one EM
iteration (scikit-learn's ``GaussianMixture(max_iter=1)``); K-means' steps are those of
scikit-learn's ``MiniBatchKMeans.partial_fit`` from the same centres. Invariants: a Dask
batch gives the numpy batch's update; save/load between batches changes nothing; ``fit``
starts the stream over. And the stream reaches the generator's truth.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import sklearn.cluster
import sklearn.exceptions
import sklearn.mixture
import zarr
from numpy.testing import assert_allclose, assert_array_equal

import emdist
from emdist.exceptions import InvalidDataError, InvalidParameterError
from emdist.io.persistence import ModelFormatError
from emdist.kernels.stepwise import step_size
from tests.conftest import COVARIANCE_TYPES, gmm_init, make_blobs, overlapping_data
from tests.helpers import write_zarr

TRUE_MEANS = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
TRUE_WEIGHTS = np.array([0.5, 0.3, 0.2])


def _draw(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` rows of a separated three-component mixture (unit covariances)."""
    z = rng.choice(3, size=n, p=TRUE_WEIGHTS)
    return TRUE_MEANS[z] + rng.standard_normal((n, 2))


def _sklearn_one_iteration(X: np.ndarray, covariance_type: str, init: dict) -> object:
    ref = sklearn.mixture.GaussianMixture(
        init["means_init"].shape[0], covariance_type=covariance_type, max_iter=1, tol=0.0, **init
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        return ref.fit(X)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_first_update_is_one_em_iteration(covariance_type: str) -> None:
    X = overlapping_data(seed=1)
    init = gmm_init(X, 3, covariance_type, seed=2)
    ours = emdist.GaussianMixture(3, covariance_type=covariance_type, **init).partial_fit(X)
    ref = _sklearn_one_iteration(X, covariance_type, init)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-9, atol=1e-12)
    # The bound is that of the parameters before the update, as fit's.
    fit = emdist.GaussianMixture(3, covariance_type=covariance_type, max_iter=1, tol=0, **init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        fit.fit(X)
    assert ours.lower_bound_ == pytest.approx(fit.lower_bound_, rel=1e-12)
    assert_allclose(ours.means_, fit.means_, rtol=1e-12, atol=1e-13)
    assert ours.n_steps_ == 1 and ours.n_iter_ == 1 and ours.converged_ is False


def test_stepwise_em_streams_to_the_truth() -> None:
    rng = np.random.default_rng(0)
    gm = emdist.GaussianMixture(3, covariance_type="full", random_state=0)
    for _ in range(60):
        gm.partial_fit(_draw(rng, 200))
    order = np.argsort(gm.means_[:, 0] + 2 * gm.means_[:, 1])
    assert_allclose(gm.means_[order], TRUE_MEANS, atol=0.1)
    assert_allclose(gm.weights_[order], TRUE_WEIGHTS, atol=0.03)
    for cov in gm.covariances_:
        assert_allclose(cov, np.eye(2), atol=0.1)
    assert gm.n_steps_ == 60


def test_update_uses_the_step_size_schedule() -> None:
    # The second update is the convex combination (1 - η) s_1 + η s_2 with η = 3^-κ: two
    # batches whose statistics are known in closed form (hard, far-apart components).
    a = np.array([[0.0, 0.0], [1.0, 0.0], [100.0, 0.0], [101.0, 0.0]])
    b = np.array([[2.0, 0.0], [3.0, 0.0], [102.0, 0.0], [104.0, 0.0]])
    init = {
        "weights_init": np.array([0.5, 0.5]),
        "means_init": np.array([[0.0, 0.0], [100.0, 0.0]]),
        "precisions_init": np.array([1.0, 1.0]),
    }
    gm = emdist.GaussianMixture(2, covariance_type="spherical", step_decay=0.7, **init)
    gm.partial_fit(a).partial_fit(b)
    eta = step_size(1, 0.7)
    assert eta == pytest.approx(3**-0.7)
    expected = (1 - eta) * np.array([0.5, 100.5]) + eta * np.array([2.5, 103.0])
    assert_allclose(gm.means_[:, 0], expected, rtol=1e-12)
    assert gm.n_steps_ == 2


def test_dask_batches_give_the_numpy_updates() -> None:
    rng = np.random.default_rng(3)
    batches = [_draw(rng, 300) for _ in range(4)]
    a = emdist.GaussianMixture(3, random_state=1)
    b = emdist.GaussianMixture(3, random_state=1)
    for X in batches:
        a.partial_fit(X)
        b.partial_fit(da.from_array(X, chunks=(70, 2)))
    for name in ("weights_", "means_", "covariances_", "running_sxx_"):
        assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-12, atol=1e-13)
    ka = emdist.KMeans(3, random_state=1)
    kb = emdist.KMeans(3, random_state=1)
    for X in batches:
        ka.partial_fit(X)
        kb.partial_fit(da.from_array(X, chunks=(70, 2)))
    assert_allclose(kb.cluster_centers_, ka.cluster_centers_, rtol=1e-12, atol=1e-13)
    assert_array_equal(kb.counts_, ka.counts_)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_partial_fit_after_fit_starts_from_the_fitted_parameters(covariance_type: str) -> None:
    rng = np.random.default_rng(5)
    gm = emdist.GaussianMixture(3, covariance_type=covariance_type, random_state=0)
    gm.fit(_draw(rng, 2000))
    assert not hasattr(gm, "n_steps_")
    fitted = {
        "weights_init": gm.weights_.copy(),
        "means_init": gm.means_.copy(),
        "precisions_init": gm.precisions_.copy(),
    }
    batch = _draw(rng, 500)
    gm.partial_fit(batch)
    ref = _sklearn_one_iteration(batch, covariance_type, fitted)
    assert_allclose(gm.means_, ref.means_, rtol=1e-9, atol=1e-12)
    assert_allclose(gm.covariances_, ref.covariances_, rtol=1e-9, atol=1e-12)
    assert gm.n_steps_ == 1
    # A fit starts the stream over: no running statistics survive it.
    gm.fit(batch)
    assert not any(hasattr(gm, a) for a in ("n_steps_", "running_nk_", "running_sxx_"))


def _stream(est: object, batches: list[np.ndarray], tmp: Path | None, at: int) -> object:
    for i, X in enumerate(batches):
        if tmp is not None and i == at:
            emdist.save_model(est, tmp)
            est = emdist.load_model(tmp)
        est.partial_fit(X)  # type: ignore[attr-defined]
    return est


@pytest.mark.parametrize("family", ["gmm", "kmeans"])
def test_save_and_load_between_batches_change_nothing(family: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    batches = [_draw(rng, 150) for _ in range(6)]

    def make() -> object:
        if family == "gmm":
            return emdist.GaussianMixture(3, covariance_type="tied", random_state=4)
        return emdist.KMeans(5, random_state=4)  # 5 centres on 3 blobs: reassignments

    plain = _stream(make(), batches, None, 0)
    resumed = _stream(make(), batches, tmp_path / "model", 3)
    names = (
        ("means_", "covariances_", "weights_", "running_nk_", "running_sx_", "running_sxx_")
        if family == "gmm"
        else ("cluster_centers_", "counts_")
    )
    for name in names:
        assert_array_equal(getattr(resumed, name), getattr(plain, name))
    assert resumed.n_steps_ == plain.n_steps_ == 6  # type: ignore[attr-defined]


def test_kmeans_partial_fit_equals_sklearn_minibatch() -> None:
    centers = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    X, _ = make_blobs(600, centers, seed=11)
    init = centers + 0.5
    ours = emdist.KMeans(4, init=init)
    ref = sklearn.cluster.MiniBatchKMeans(4, init=init, n_init=1, random_state=0)
    for batch in np.array_split(X, 12):
        ours.partial_fit(batch)
        ref.partial_fit(batch)
        assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-12, atol=1e-12)
        assert_allclose(ours.counts_, ref._counts, rtol=1e-12)
    assert ours.n_steps_ == ref.n_steps_ == 12


def test_kmeans_partial_fit_weighted_equals_sklearn_minibatch() -> None:
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    X, _ = make_blobs(400, centers, seed=12)
    w = np.random.default_rng(0).uniform(0.2, 3.0, len(X))
    ours = emdist.KMeans(3, init=centers)
    ref = sklearn.cluster.MiniBatchKMeans(3, init=centers, n_init=1, random_state=0)
    for idx in np.array_split(np.arange(len(X)), 6):
        ours.partial_fit(X[idx], sample_weight=w[idx])
        ref.partial_fit(X[idx], sample_weight=w[idx])
    assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-12, atol=1e-12)
    assert_allclose(ours.counts_, ref._counts, rtol=1e-12)


def test_kmeans_centre_without_rows_moves_to_a_row_of_the_batch() -> None:
    X, _ = make_blobs(100, [[0.0, 0.0], [10.0, 10.0]], seed=2)
    init = np.array([[0.0, 0.0], [10.0, 10.0], [1000.0, 1000.0]])
    km = emdist.KMeans(3, init=init, random_state=0).partial_fit(X)
    # As scikit-learn: a centre that nothing was assigned to takes a random row, and the
    # weight of the lightest other centre.
    assert any(np.array_equal(km.cluster_centers_[2], row) for row in X)
    assert km.counts_[2] == km.counts_[:2].min() > 0


def test_partial_fit_checks_its_batch() -> None:
    rng = np.random.default_rng(0)
    gm = emdist.GaussianMixture(3, random_state=0).partial_fit(_draw(rng, 100))
    bad = _draw(rng, 50)
    bad[7, 1] = np.nan
    with pytest.raises(InvalidDataError, match="row 7, column 1"):
        gm.partial_fit(bad)
    lazy = da.from_array(bad, chunks=(5, 2))
    with pytest.raises(InvalidDataError, match="row 7, column 1"):
        gm.partial_fit(lazy)
    with pytest.raises(InvalidDataError, match="3 features.*expecting 2"):
        gm.partial_fit(np.ones((10, 3)))
    with pytest.raises(InvalidParameterError, match="sample_weight"):
        gm.partial_fit(_draw(rng, 10), sample_weight=np.ones(9))
    before = gm.means_.copy()
    assert gm.n_steps_ == 1  # the refused batches changed nothing
    assert_array_equal(gm.means_, before)
    with pytest.raises(InvalidParameterError, match="step_decay"):
        emdist.GaussianMixture(3, step_decay=0.5).partial_fit(_draw(rng, 100))
    with pytest.raises(InvalidParameterError, match="checkpoint"):
        emdist.KMeans(3, checkpoint="somewhere").partial_fit(_draw(rng, 100))
    with pytest.raises(InvalidDataError, match="NaN"):
        emdist.KMeans(3).partial_fit(bad)  # the first batch is scanned as fit's data


def test_loaded_stream_state_is_checked(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    km = emdist.KMeans(3, random_state=0).partial_fit(_draw(rng, 100))
    path = tmp_path / "m"
    emdist.save_model(km, path)
    group = zarr.open_group(str(path), mode="r+")
    fitted = dict(group.attrs["fitted"])
    fitted["n_since_reassign_"] = -1
    group.attrs["fitted"] = fitted
    with pytest.raises(ModelFormatError, match="n_since_reassign_"):
        emdist.load_model(path)


# -- the variational mixture: stochastic variational inference ---------------------------


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_first_variational_update_is_one_variational_iteration(covariance_type: str) -> None:
    X = overlapping_data(seed=3)
    # No prefit on the scan sample: its budget follows max_iter, which differs here.
    common = dict(
        covariance_type=covariance_type, random_state=5, init_params="k-means++",
        prefit_on_sample=False,
    )  # fmt: skip
    ours = emdist.BayesianGaussianMixture(4, **common).partial_fit(X)
    fit = emdist.BayesianGaussianMixture(4, max_iter=1, tol=0.0, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        fit.fit(X)
    for name in ("weight_concentration_", "mean_precision_", "means_", "covariances_"):
        assert_allclose(getattr(ours, name), getattr(fit, name), rtol=1e-10, atol=1e-12)
    assert ours.lower_bound_ == pytest.approx(fit.lower_bound_, rel=1e-10)
    assert ours.n_seen_ == len(X) and ours.n_steps_ == 1


def test_svi_streams_to_the_truth_and_prunes_extra_components() -> None:
    rng = np.random.default_rng(1)
    bgm = emdist.BayesianGaussianMixture(6, random_state=0, init_params="k-means++")
    for _ in range(60):
        bgm.partial_fit(_draw(rng, 250))
    big = np.argsort(bgm.weights_)[::-1][:3]
    assert bgm.weights_[big].sum() > 0.97  # the three extra components are emptied
    order = big[np.argsort(bgm.means_[big, 0] + 2 * bgm.means_[big, 1])]
    assert_allclose(bgm.means_[order], TRUE_MEANS, atol=0.1)
    assert_allclose(bgm.weights_[order], TRUE_WEIGHTS, atol=0.03)
    assert bgm.n_seen_ == 60 * 250


def test_svi_save_and_load_between_batches_change_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    batches = [_draw(rng, 150) for _ in range(5)]

    def make() -> emdist.BayesianGaussianMixture:
        return emdist.BayesianGaussianMixture(
            4, covariance_type="diag", weight_concentration_prior_type="dirichlet_distribution",
            random_state=2,
        )  # fmt: skip

    plain = _stream(make(), batches, None, 0)
    resumed = _stream(make(), batches, tmp_path / "model", 2)
    for name in ("weight_concentration_", "means_", "covariances_", "running_sxx_", "n_seen_"):
        assert_array_equal(getattr(resumed, name), getattr(plain, name))
    # A Dask batch gives the numpy batch's update.
    lazy = make()
    for X in batches:
        lazy.partial_fit(da.from_array(X, chunks=(40, 2)))
    assert_allclose(lazy.means_, plain.means_, rtol=1e-12, atol=1e-13)


def test_kmeans_partial_fit_after_fit_starts_from_the_fitted_centres() -> None:
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    X, _ = make_blobs(300, centers, seed=4)
    km = emdist.KMeans(3, random_state=0).fit(X)
    fitted = km.cluster_centers_.copy()
    batch, _ = make_blobs(100, centers, seed=5)
    km.partial_fit(batch)
    # As scikit-learn's MiniBatchKMeans started from those centres (zero counts).
    ref = sklearn.cluster.MiniBatchKMeans(3, init=fitted, n_init=1).partial_fit(batch)
    assert_allclose(km.cluster_centers_, ref.cluster_centers_, rtol=1e-12, atol=1e-12)
    assert_allclose(km.counts_, ref._counts)
    assert not hasattr(km, "labels_")  # the fitted data's labels no longer match
    km.fit(X)
    assert not any(hasattr(km, a) for a in ("n_steps_", "counts_", "stream_seed_"))


def test_kmeans_looks_for_light_centres_when_one_had_no_weight_before_the_step() -> None:
    # 19 rows (fewer than 10 * n_clusters): only a centre without weight *before* the step
    # makes scikit-learn look, and the first step always does. Centre 1 gets 0.001 of
    # weight, below 1% of centre 0's 18: it moves to a row and takes the lightest other
    # weight, as scikit-learn's.
    rng = np.random.default_rng(0)
    X = np.vstack([rng.standard_normal((18, 2)), [[50.0, 50.0]]])
    w = np.r_[np.ones(18), 0.001]
    init = np.array([[0.0, 0.0], [50.0, 50.0]])
    km = emdist.KMeans(2, init=init, random_state=0).partial_fit(X, sample_weight=w)
    ref = sklearn.cluster.MiniBatchKMeans(2, init=init, n_init=1, random_state=0)
    ref.partial_fit(X, sample_weight=w)
    assert_allclose(km.counts_, ref._counts, rtol=1e-12)
    assert km.counts_[1] == km.counts_[0] == pytest.approx(18.0)
    assert any(np.array_equal(km.cluster_centers_[1], row) for row in X)


def test_a_first_batch_that_fails_leaves_the_estimator_unfitted() -> None:
    # From given parameters, the second component gets no weight on this batch: with no
    # reg_covar its covariance is zero and the M-step of the update refuses it.
    X = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    gm = emdist.GaussianMixture(
        2,
        reg_covar=0.0,
        weights_init=np.array([0.5, 0.5]),
        means_init=np.array([[0.5, 0.5], [100.0, 100.0]]),
        precisions_init=np.array([np.eye(2), np.eye(2)]),
    )
    with pytest.raises(emdist.FitError):
        gm.partial_fit(X)
    assert not gm.__sklearn_is_fitted__()


def test_zarr_batches_give_the_numpy_updates(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    batches = [_draw(rng, 200) for _ in range(3)]
    paths = [write_zarr(tmp_path / f"b{i}.zarr", X, 64) for i, X in enumerate(batches)]
    a = emdist.GaussianMixture(3, covariance_type="diag", random_state=3)
    b = emdist.GaussianMixture(3, covariance_type="diag", random_state=3)
    for X, path in zip(batches, paths, strict=True):
        a.partial_fit(X)
        b.partial_fit(path)
    assert_allclose(b.means_, a.means_, rtol=1e-12, atol=1e-13)
    assert_allclose(b.covariances_, a.covariances_, rtol=1e-12, atol=1e-13)
