"""BayesianGaussianMixture: oracle against scikit-learn, invariants, priors, I/O."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from sklearn.mixture import BayesianGaussianMixture as SkBGMM

import emdist
from emdist.engine.em import run_em
from emdist.kernels.mixture import mixture_stats_from_resp
from emdist.kernels.rows import RowBlock
from emdist.kernels.variational import (
    VariationalParams,
    VariationalPriors,
    VariationalStats,
    variational_estep_chunk,
    variational_mstep,
)
from emdist.models.bayesian_mixture import BayesianMixtureFamily

COV_TYPES = ["full", "tied", "diag", "spherical"]
PRIOR_TYPES = ["dirichlet_process", "dirichlet_distribution"]
N_ITER = 6


def _blobs(n_per: int = 200, seed: int = 0, offset: float = 50.0) -> np.ndarray:
    """Three clusters in 3-D, far from the origin (tests shift-centred moments)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 6.0, 0.0], [0.0, 7.0, 5.0]])
    scales = np.array([[1.0, 0.5, 0.8], [0.6, 1.2, 0.7], [0.9, 0.9, 0.4]])
    X = np.concatenate(
        [rng.normal(size=(n_per, 3)) * s + c for c, s in zip(centres, scales, strict=True)]
    )
    return X[rng.permutation(len(X))] + offset


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return _blobs()


def _uneven(X: np.ndarray) -> da.Array:
    """Uneven row-blocks, including a one-row block."""
    sizes = (1, 97, 250, 13, len(X) - 361)
    return da.from_array(X, chunks=(sizes, -1))


def _sk_params(sk: SkBGMM) -> dict[str, np.ndarray]:
    wc = sk.weight_concentration_
    return {
        "weight_concentration": np.stack(wc) if isinstance(wc, tuple) else wc,
        "mean_precision": sk.mean_precision_,
        "means": sk.means_,
        "degrees_of_freedom": np.asarray(sk.degrees_of_freedom_),
        "covariances": sk.covariances_,
        "precisions_cholesky": sk.precisions_cholesky_,
    }


def _sk_priors(sk: SkBGMM, prior_type: str) -> VariationalPriors:
    return VariationalPriors(
        weight_concentration_prior_type=prior_type,
        weight_concentration=sk.weight_concentration_prior_,
        mean_precision=sk.mean_precision_prior_,
        mean=sk.mean_prior_,
        degrees_of_freedom=sk.degrees_of_freedom_prior_,
        covariance=sk.covariance_prior_,
    )


def _assert_params_close(ours: VariationalParams, theirs: dict[str, np.ndarray]) -> None:
    for name, value in ours.arrays().items():
        np.testing.assert_allclose(value, theirs[name], rtol=1e-7, atol=0, err_msg=name)


# ---------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_iterations_match_sklearn(X: np.ndarray, covariance_type: str, prior_type: str) -> None:
    """From the same responsibilities, every iteration equals scikit-learn's."""
    K, n = 5, len(X)
    resp = np.random.default_rng(1).random((n, K))
    resp /= resp.sum(axis=1, keepdims=True)
    sk = SkBGMM(
        n_components=K,
        covariance_type=covariance_type,
        weight_concentration_prior_type=prior_type,
        reg_covar=1e-6,
    )
    sk._check_parameters(X)
    sk._initialize(X, resp)
    sk_bounds = []
    for _ in range(N_ITER):
        log_prob_norm, log_resp = sk._e_step(X)
        sk._m_step(X, log_resp)
        # scikit-learn returns a 1-element array for tied; the total over samples.
        sk_bounds.append(float(np.ravel(sk._compute_lower_bound(log_resp, log_prob_norm))[0]))

    priors = _sk_priors(sk, prior_type)
    family = BayesianMixtureFamily(covariance_type, 1e-6, priors)
    stats = mixture_stats_from_resp(X, resp, np.tile(X.mean(axis=0), (K, 1)), covariance_type)
    start = variational_mstep(stats, priors, covariance_type, 1e-6)
    result = run_em(_uneven(X), family, start, tol=0.0, max_iter=N_ITER)

    assert result.n_iter == N_ITER and not result.converged
    # Our bound is per sample: scikit-learn's total divided by n_samples.
    np.testing.assert_allclose(result.lower_bounds, np.array(sk_bounds) / n, rtol=1e-7)
    _assert_params_close(result.params, _sk_params(sk))
    sk._set_parameters(sk._get_parameters())  # derives weights_
    np.testing.assert_allclose(result.params.weights, sk.weights_, rtol=1e-7)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_estimator_continues_like_sklearn(X: np.ndarray, covariance_type: str) -> None:
    """The estimator's loop, default priors and attributes, from sklearn's starting point."""
    K = 4
    sk = SkBGMM(n_components=K, covariance_type=covariance_type, max_iter=1, random_state=0)
    sk._check_parameters(X)
    sk._initialize_parameters(X, np.random.RandomState(0))
    start = _sk_params(sk)
    ours = emdist.BayesianGaussianMixture(
        K,
        covariance_type=covariance_type,
        max_iter=N_ITER,
        tol=0.0,
        warm_start=True,
        acceleration=None,
    )
    # Install scikit-learn's initial posterior as if it were a previous fit, then continue.
    ours.converged_ = False
    ours._set_params(VariationalParams(**start))
    with pytest.warns(emdist.ConvergenceWarning):
        ours.fit(X)
    for _ in range(N_ITER):
        _, log_resp = sk._e_step(X)
        sk._m_step(X, log_resp)
    sk._set_parameters(sk._get_parameters())
    # Default priors resolved from the scan pass (+ one pass for the full covariance).
    np.testing.assert_allclose(ours.mean_prior_, sk.mean_prior_, rtol=1e-12)
    np.testing.assert_allclose(ours.covariance_prior_, sk.covariance_prior_, rtol=1e-12)
    assert ours.weight_concentration_prior_ == sk.weight_concentration_prior_
    assert ours.mean_precision_prior_ == sk.mean_precision_prior_
    assert ours.degrees_of_freedom_prior_ == sk.degrees_of_freedom_prior_
    for name in (
        "weights_",
        "means_",
        "covariances_",
        "precisions_",
        "precisions_cholesky_",
        "mean_precision_",
        "degrees_of_freedom_",
    ):
        np.testing.assert_allclose(getattr(ours, name), getattr(sk, name), rtol=1e-7, err_msg=name)
    a, b = ours.weight_concentration_
    np.testing.assert_allclose(a, sk.weight_concentration_[0], rtol=1e-7)
    np.testing.assert_allclose(b, sk.weight_concentration_[1], rtol=1e-7)
    assert ours.n_iter_ == N_ITER and len(ours.lower_bounds_) == N_ITER
    assert isinstance(ours.degrees_of_freedom_, float) == (covariance_type == "tied")
    # Predictions are scikit-learn's (variational responsibilities).
    np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(X), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours.score_samples(X), sk.score_samples(X), rtol=1e-7)
    np.testing.assert_array_equal(ours.predict(X), sk.predict(X))
    assert ours.score(X) == pytest.approx(sk.score(X), rel=1e-7)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_initial_responsibilities_are_gaussian_mixtures(X: np.ndarray, init_params: str) -> None:
    """The same seed gives the responsibilities GaussianMixture starts from."""
    from emdist.engine.data import prepare_fit_data
    from emdist.kernels.mixture import mixture_mstep
    from emdist.models.gaussian_mixture import initial_mixture_params, initial_resp_stats

    data = prepare_fit_data(_uneven(X), n_clusters=4, seed=5, sample_size=None, what="K")
    stats = initial_resp_stats(
        data, n_components=4, covariance_type="full", init_params=init_params, seed=11
    )
    gmm = initial_mixture_params(
        data,
        n_components=4,
        covariance_type="full",
        reg_covar=1e-6,
        init_params=init_params,
        weights_init=None,
        means_init=None,
        precisions_init=None,
        seed=11,
    )
    ours = mixture_mstep(stats, "full", 1e-6)
    for name, value in gmm.arrays().items():
        np.testing.assert_array_equal(ours.arrays()[name], value, err_msg=name)


# ------------------------------------------------------------------------------ invariants


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_elbo_never_decreases(X: np.ndarray, covariance_type: str, prior_type: str) -> None:
    model = emdist.BayesianGaussianMixture(
        6,
        covariance_type=covariance_type,
        weight_concentration_prior_type=prior_type,
        init_params="random",
        max_iter=30,
        tol=0.0,
        random_state=3,
        acceleration=None,  # plain EM at tol=0: all 30 iterations, none stopped at a fixed point
    )
    with pytest.warns(emdist.ConvergenceWarning):
        model.fit(X)
    bounds = np.array(model.lower_bounds_)
    assert np.all(np.isfinite(bounds))
    assert np.all(np.diff(bounds) >= -1e-12 * np.abs(bounds[1:])), np.diff(bounds).min()
    assert model.lower_bound_ == bounds[-1]


def _fit(X: Any, **kw: Any) -> emdist.BayesianGaussianMixture:
    params: dict[str, Any] = {
        "n_components": 5,
        "init_params": "k-means++",
        "max_iter": 8,
        "tol": 0.0,
        "random_state": 7,
    }
    params.update(kw)
    model = emdist.BayesianGaussianMixture(**params)
    with pytest.warns(emdist.ConvergenceWarning):
        model.fit(X)
    return model


def _assert_same_fit(a: emdist.BayesianGaussianMixture, b: Any, rtol: float) -> None:
    for name in ("weight_concentration_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, err_msg=name)
    np.testing.assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=rtol)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_chunking_does_not_change_the_fit(X: np.ndarray, covariance_type: str) -> None:
    # The scan sample is drawn by row keys, so every chunking seeds identically.
    # Plain EM at tol=0 runs all max_iter iterations under either chunking (an accelerated
    # run may stop at a fixed point, up to rounding, one iteration apart).
    one = _fit(
        da.from_array(X, chunks=(len(X), -1)), covariance_type=covariance_type, acceleration=None
    )
    many = _fit(_uneven(X), covariance_type=covariance_type, acceleration=None)
    _assert_same_fit(one, many, rtol=1e-10)


def test_schedulers_give_bitwise_identical_fits(X: np.ndarray) -> None:
    with dask.config.set(scheduler="sync"):
        sync = _fit(_uneven(X), covariance_type="full", acceleration=None)
    with dask.config.set(scheduler="threads"):
        threaded = _fit(_uneven(X), covariance_type="full", acceleration=None)
    _assert_same_fit(sync, threaded, rtol=0.0)


def test_distributed_cluster_matches_threads(X: np.ndarray, dask_client: Any) -> None:
    with dask.config.set(scheduler="threads"):
        threaded = _fit(_uneven(X), covariance_type="tied")
    remote = _fit(_uneven(X), covariance_type="tied")  # on the session's two-process cluster
    assert len(dask_client.scheduler_info()["workers"]) == 2
    _assert_same_fit(threaded, remote, rtol=0.0)


def test_statistics_add_associatively(X: np.ndarray) -> None:
    K = 3
    priors = VariationalPriors("dirichlet_process", 0.5, 1.0, X.mean(0), 3.0, np.cov(X.T))
    stats0 = mixture_stats_from_resp(X, np.full((len(X), K), 1 / K), X[:K].copy(), "full")
    params = variational_mstep(stats0, priors, "full", 1e-6)
    a, b, c = (
        variational_estep_chunk(RowBlock(part, 0), params, "full")
        for part in np.split(X, [100, 350])
    )
    whole = variational_estep_chunk(RowBlock(X, 0), params, "full")
    left, right = (a + b) + c, a + (b + c)
    for s in (left, right):
        assert s.n == whole.n
        np.testing.assert_allclose(s.resp_log_resp, whole.resp_log_resp, rtol=1e-12)
        np.testing.assert_allclose(s.moments.sxx, whole.moments.sxx, rtol=1e-12)
    zero = VariationalStats.zero(params.means, "full")
    assert (zero + a).resp_log_resp == a.resp_log_resp


# ------------------------------------------------------------------------------ behaviour


@pytest.mark.parametrize(
    ("covariance_type", "prior_type"),
    [
        ("full", "dirichlet_process"),
        ("diag", "dirichlet_distribution"),
        ("spherical", "dirichlet_process"),
    ],
)
def test_prunes_to_the_three_true_components(covariance_type: str, prior_type: str) -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    X = np.concatenate([rng.normal(size=(700, 2)) + c for c in centres])
    model = emdist.BayesianGaussianMixture(
        10,
        covariance_type=covariance_type,
        weight_concentration_prior_type=prior_type,
        max_iter=500,
        random_state=0,
    ).fit(X)
    assert model.converged_
    active = model.weights_ > 1e-2
    assert active.sum() == 3
    found = model.means_[active]
    assert np.allclose(np.sort(found, axis=0), np.sort(centres, axis=0), atol=0.2)


def _three_clusters(n_per: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated unit clusters in 2-D, shuffled, with their labels."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    X = np.concatenate([rng.normal(size=(n_per, 2)) + c for c in centres])
    y = np.repeat(np.arange(3), n_per)
    order = rng.permutation(len(X))
    return X[order], y[order]


@pytest.mark.parametrize(("n_components", "seed"), [(10, 0), (20, 1)])
def test_prunes_at_the_defaults(n_components: int, seed: int) -> None:
    # Every parameter at its default: no ConvergenceWarning, exactly the 3 clusters carry
    # weight, and the labels are the true ones.
    from sklearn.metrics import adjusted_rand_score

    X, y = _three_clusters(700, seed)
    model = emdist.BayesianGaussianMixture(n_components, random_state=seed).fit(X)
    assert model.converged_
    assert int((model.weights_ > 0.01).sum()) == 3, np.sort(model.weights_)[::-1]
    assert adjusted_rand_score(y, model.predict(X)) > 0.99


def test_prunes_from_a_sample_smaller_than_the_data(tmp_path: Any) -> None:
    # The fit on the scan sample (1,500 of 12,000 rows here) empties the unneeded
    # components; the passes over the Zarr data then only refine, a few of them.
    from sklearn.metrics import adjusted_rand_score

    X, y = _three_clusters(4_000, seed=2)
    path = tmp_path / "X.zarr"
    zarr.create_array(str(path), data=X, chunks=(3_000, 2), zarr_format=3)
    model = emdist.BayesianGaussianMixture(10, init_sample_size=1_500, random_state=0)
    model.fit(str(path))
    assert model.converged_ and model.n_iter_ <= 10, model.n_iter_
    assert int((model.weights_ > 0.01).sum()) == 3
    assert adjusted_rand_score(y, np.asarray(model.predict(X))) > 0.99
    # scikit-learn's algorithm (every iteration a pass) has not emptied them by max_iter.
    plain = emdist.BayesianGaussianMixture(
        10, init_sample_size=1_500, random_state=0, prefit_on_sample=False, acceleration=None
    )
    with pytest.warns(emdist.ConvergenceWarning):
        plain.fit(str(path))
    assert int((plain.weights_ > 0.01).sum()) > 3


def test_sample_fit_waits_for_the_weights(X: np.ndarray) -> None:
    # On the plateau of a merge the bound barely moves while the weights do.
    import dataclasses

    from emdist.models.bayesian_mixture import SampleFitFamily

    model = _fit(X, max_iter=2)
    params = model._params()
    priors = VariationalPriors(
        "dirichlet_process",
        model.weight_concentration_prior_,
        model.mean_precision_prior_,
        model.mean_prior_,
        model.degrees_of_freedom_prior_,
        model.covariance_prior_,
    )
    moved = dataclasses.replace(
        params, weight_concentration=params.weight_concentration * np.array([1.01, 1.0])[:, None]
    )
    assert np.abs(moved.weights - params.weights).max() > 1e-4
    family = SampleFitFamily("full", 1e-6, priors)
    assert family.converged(0.0, 0.0, params, params, tol=1e-6)
    assert not family.converged(0.0, 0.0, params, moved, tol=1e-6)
    assert not family.converged(0.0, 1e-5, params, params, tol=1e-6)


def test_fit_from_zarr_path_equals_in_memory(X: np.ndarray, tmp_path: Any) -> None:
    path = tmp_path / "X.zarr"
    z = zarr.create_array(str(path), shape=X.shape, chunks=(128, 3), dtype="f8")
    z[...] = X
    from_disk = _fit(str(path), covariance_type="spherical")
    in_memory = _fit(da.from_array(X, chunks=(128, -1)), covariance_type="spherical")
    _assert_same_fit(from_disk, in_memory, rtol=0.0)
    labels = from_disk.predict(str(path))
    assert isinstance(labels, da.Array)
    np.testing.assert_array_equal(labels.compute(), in_memory.predict(X))


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_checkpoint_resume_equals_uninterrupted(
    X: np.ndarray, tmp_path: Any, covariance_type: str
) -> None:
    class Stop(Exception):
        pass

    def stop_in_second_restart(state: emdist.IterationState) -> None:
        if state.restart == 1 and state.iteration == 5:
            raise Stop

    seen: list[tuple[int, int]] = []

    def record(state: emdist.IterationState) -> None:
        seen.append((state.restart, state.iteration))

    # Plain EM: the observer stops the second restart at an iteration of its sequence.
    kw = {"covariance_type": covariance_type, "max_iter": 10, "n_init": 2, "acceleration": None}
    reference = _fit(X, **kw)
    ckpt = tmp_path / "ckpt"
    interrupted = emdist.BayesianGaussianMixture(
        5,
        init_params="k-means++",
        tol=0.0,
        random_state=7,
        checkpoint=str(ckpt),
        observer=stop_in_second_restart,
        **kw,
    )
    with pytest.raises(Stop):
        interrupted.fit(X)
    resumed = _fit(X, checkpoint=str(ckpt), observer=record, **kw)
    # The restarts run side by side: both resume after iteration 5.
    assert seen[:2] == [(0, 6), (1, 6)], "the fit did not resume from the checkpoint"
    _assert_same_fit(reference, resumed, rtol=0.0)
    assert resumed.n_iter_ == reference.n_iter_


def test_save_and_load_roundtrip(X: np.ndarray, tmp_path: Any) -> None:
    model = _fit(X, covariance_type="tied")
    emdist.save_model(model, tmp_path / "model")
    loaded = emdist.load_model(tmp_path / "model")
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert loaded.degrees_of_freedom_ == model.degrees_of_freedom_


def test_warm_start_continues(X: np.ndarray) -> None:
    model = _fit(X, max_iter=4, acceleration=None)
    first = model.lower_bound_
    model.set_params(warm_start=True)
    with pytest.warns(emdist.ConvergenceWarning):
        model.fit(X)
    assert model.lower_bounds_[0] >= first - 1e-12 * abs(first)


def test_warm_start_of_a_converged_fit_stops_at_once(X: np.ndarray) -> None:
    # As scikit-learn: the first change is measured from the previous fit's bound.
    model = emdist.BayesianGaussianMixture(3, random_state=0, max_iter=500).fit(X)
    assert model.converged_
    model.set_params(warm_start=True)
    model.fit(X)
    assert model.converged_ and model.n_iter_ == 1


def test_sample_and_lazy_predictions(X: np.ndarray) -> None:
    model = _fit(X, covariance_type="diag")
    Xs, y = model.sample(50)
    assert Xs.shape == (50, 3) and y.shape == (50,)
    lazy = model.predict_proba(da.from_array(X, chunks=(100, -1)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), model.predict_proba(X), rtol=1e-12)
    assert np.allclose(model.predict_proba(X).sum(axis=1), 1.0)


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weight_concentration_prior_type": "beta"}, "weight_concentration_prior_type"),
        ({"weight_concentration_prior": 0.0}, "weight_concentration_prior"),
        ({"weight_concentration_prior": -1.0}, "weight_concentration_prior"),
        ({"mean_precision_prior": 0.0}, "mean_precision_prior"),
        ({"mean_precision_prior": float("nan")}, "mean_precision_prior"),
        ({"mean_prior": np.zeros(2)}, "mean_prior has shape"),
        ({"mean_prior": [0.0, np.inf, 0.0]}, "mean_prior contains NaN"),
        ({"degrees_of_freedom_prior": 2.0}, "greater than n_features - 1 = 2"),
        ({"covariance_prior": -np.eye(3)}, "symmetric positive definite"),
        ({"covariance_prior": np.ones((3, 3))}, "symmetric positive definite"),
        ({"covariance_prior": np.eye(2)}, "shape"),
        ({"covariance_type": "diag", "covariance_prior": [1.0, 0.0, 1.0]}, "positive"),
        ({"covariance_type": "spherical", "covariance_prior": -1.0}, "spherical covariance_prior"),
        ({"covariance_type": "spherical", "covariance_prior": [1.0]}, "spherical covariance_prior"),
        ({"covariance_type": "banana"}, "covariance_type"),
        ({"init_params": "magic"}, "init_params"),
    ],
)
def test_bad_parameters_fail_before_reading_data(kwargs: dict[str, Any], match: str) -> None:
    def explode(block: np.ndarray) -> np.ndarray:
        raise AssertionError("data was read before the parameters were checked")

    lazy = da.zeros((50, 3), chunks=(10, 3)).map_blocks(explode, dtype=float)
    with pytest.raises(ValueError, match=match):
        emdist.BayesianGaussianMixture(3, **kwargs).fit(lazy)


def test_single_sample_needs_a_covariance_prior() -> None:
    with pytest.raises(emdist.InvalidDataError, match="covariance_prior"):
        emdist.BayesianGaussianMixture(1).fit(np.ones((1, 2)))


def test_predict_before_fit_is_a_clear_error(X: np.ndarray) -> None:
    with pytest.raises(emdist.InvalidDataError, match="not fitted"):
        emdist.BayesianGaussianMixture(2).predict(X)
