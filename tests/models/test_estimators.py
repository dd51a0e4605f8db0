"""The estimators' API (scikit-learn's conventions) and clustering quality.

Parameters, fitted attributes, output types (numpy in, numpy out; lazy in, lazy out),
information criteria against scikit-learn, sampling, warm starts, restarts, warnings,
reproducibility, the observer hook, and adjusted Rand index on well-separated mixtures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import sklearn.base
import sklearn.mixture
import zarr
from numpy.testing import assert_allclose, assert_array_equal
from scipy.spatial.distance import cdist
from sklearn.metrics import adjusted_rand_score

import emdist
from tests.conftest import COVARIANCE_TYPES, gmm_init, make_blobs, overlapping_data

SEPARATED = [[0.0, 0.0, 0.0], [12.0, 0.0, 0.0], [0.0, 12.0, 0.0], [0.0, 0.0, 12.0]]


def _separated(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return make_blobs(250, SEPARATED, seed=seed)


# --- parameters ---------------------------------------------------------------------------


def _configured() -> list[Any]:
    return [
        emdist.KMeans(n_clusters=3, init=np.zeros((3, 2)), max_iter=7, tol=1e-3, random_state=5),
        emdist.GaussianMixture(
            n_components=2,
            covariance_type="diag",
            reg_covar=1e-4,
            init_params="random",
            means_init=np.ones((2, 2)),
            warm_start=True,
            random_state=3,
        ),
    ]


@pytest.mark.parametrize("est", _configured(), ids=["kmeans", "gmm"])
def test_get_params_set_params_round_trip(est: Any) -> None:
    params = est.get_params()
    assert params == est.get_params(deep=False)
    rebuilt = type(est)(**params)
    for name, value in params.items():
        assert rebuilt.get_params()[name] is value, name
    fresh = type(est)().set_params(**params)
    assert all(fresh.get_params()[n] is v for n, v in params.items())
    # scikit-learn's clone relies on exactly this contract.
    cloned = sklearn.base.clone(est)
    assert cloned is not est
    assert cloned.get_params().keys() == params.keys()


@pytest.mark.parametrize("est", _configured(), ids=["kmeans", "gmm"])
def test_set_params_returns_self_and_rejects_unknown_names(est: Any) -> None:
    assert est.set_params(max_iter=11) is est
    assert est.get_params()["max_iter"] == 11
    with pytest.raises(ValueError, match=r"Invalid parameter 'n_neighbors'"):
        est.set_params(n_neighbors=3)


def test_repr_shows_changed_parameters() -> None:
    assert repr(emdist.GaussianMixture(n_components=3, tol=0.1)) == (
        "GaussianMixture(n_components=3, tol=0.1)"
    )
    assert repr(emdist.KMeans()) == "KMeans()"


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
def test_fit_does_not_touch_user_parameters() -> None:
    X = overlapping_data()
    init = gmm_init(X, 3, "full")
    gm = emdist.GaussianMixture(n_components=3, max_iter=3, **init)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in gm.get_params().items()}
    gm.fit(X)
    after = gm.get_params()
    for name, value in before.items():
        if isinstance(value, np.ndarray):
            assert_array_equal(after[name], value, err_msg=name)  # not modified in place
        else:
            assert after[name] is value or after[name] == value, name
    assert not np.array_equal(gm.means_, init["means_init"])  # it did fit


# --- fitted attributes --------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gmm_fitted_attributes(covariance_type: str) -> None:
    X, _ = _separated()
    gm = emdist.GaussianMixture(n_components=4, covariance_type=covariance_type, random_state=0)
    gm.fit(X)
    K, d = 4, 3
    shape = {"full": (K, d, d), "tied": (d, d), "diag": (K, d), "spherical": (K,)}[covariance_type]
    assert gm.weights_.shape == (K,) and gm.means_.shape == (K, d)
    for name in ("covariances_", "precisions_", "precisions_cholesky_"):
        assert getattr(gm, name).shape == shape, name
    assert_allclose(gm.weights_.sum(), 1.0)
    if covariance_type in ("full", "tied"):
        eye = np.broadcast_to(np.eye(d), shape)
        assert_allclose(gm.precisions_ @ gm.covariances_, eye, atol=1e-10)
    else:
        assert_allclose(gm.precisions_ * gm.covariances_, 1.0)
    assert gm.converged_ is True and 1 <= gm.n_iter_ <= gm.max_iter
    assert gm.lower_bound_ == gm.lower_bounds_[-1] and len(gm.lower_bounds_) == gm.n_iter_
    assert gm.n_features_in_ == d
    assert_allclose(gm.score(X), np.mean(gm.score_samples(X)), rtol=1e-12)


def test_kmeans_fitted_attributes() -> None:
    X, _ = _separated()
    km = emdist.KMeans(n_clusters=4, random_state=0).fit(X)
    assert km.cluster_centers_.shape == (4, 3)
    assert isinstance(km.labels_, np.ndarray) and km.labels_.shape == (len(X),)
    assert km.converged_ is True and len(km.lower_bounds_) == km.n_iter_
    assert km.n_features_in_ == 3
    expected_inertia = np.sum((X - km.cluster_centers_[km.labels_]) ** 2)
    assert_allclose(km.inertia_, expected_inertia, rtol=1e-12)
    assert_allclose(km.score(X), -km.inertia_, rtol=1e-12)


def test_fit_accepts_nested_lists() -> None:
    X, _ = _separated()
    a = emdist.KMeans(n_clusters=4, random_state=0).fit(X)
    b = emdist.KMeans(n_clusters=4, random_state=0).fit(X.tolist())
    assert_array_equal(a.cluster_centers_, b.cluster_centers_)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
def test_integer_and_float32_data_fit_like_float64(dtype: Any) -> None:
    X, _ = _separated()
    Xc = np.round(X * 4).astype(dtype)  # exactly representable in every dtype
    ref = np.round(X * 4)
    for make in (
        lambda: emdist.KMeans(n_clusters=4, random_state=0),
        lambda: emdist.GaussianMixture(n_components=4, random_state=0),
    ):
        a, b = make().fit(Xc), make().fit(ref)
        assert_array_equal(a.predict(Xc), b.predict(ref))
        assert_allclose(a.score(Xc), b.score(ref), rtol=1e-12)


# --- numpy in, numpy out; lazy in, lazy out -----------------------------------------------


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    X, _ = _separated(seed=1)
    return {
        "X": X,
        "gmm": emdist.GaussianMixture(n_components=4, random_state=0).fit(X),
        "kmeans": emdist.KMeans(n_clusters=4, random_state=0).fit(X),
    }


METHODS = [
    ("gmm", "predict", (1000,)),
    ("gmm", "predict_proba", (1000, 4)),
    ("gmm", "score_samples", (1000,)),
    ("kmeans", "predict", (1000,)),
    ("kmeans", "transform", (1000, 4)),
]


@pytest.mark.parametrize("kind", ["dask", "zarr-array", "zarr-path-str", "zarr-pathlib"])
@pytest.mark.parametrize(("model", "method", "shape"), METHODS)
def test_lazy_input_gives_lazy_output_with_the_same_values(
    fitted: dict[str, Any],
    model: str,
    method: str,
    shape: tuple[int, ...],
    kind: str,
    tmp_path: Path,
) -> None:
    X = fitted["X"]
    est = fitted[model]
    eager = getattr(est, method)(X)
    assert type(eager) is np.ndarray and eager.shape == shape
    if kind == "dask":
        lazy_input: Any = da.from_array(X, chunks=(300, 3))
    else:
        path = tmp_path / "x.zarr"
        zarr.create_array(str(path), data=X, chunks=(300, 3), zarr_format=3)
        lazy_input = {
            "zarr-array": zarr.open_array(str(path), mode="r"),
            "zarr-path-str": str(path),
            "zarr-pathlib": path,
        }[kind]
    lazy = getattr(est, method)(lazy_input)
    assert isinstance(lazy, da.Array)
    assert lazy.shape == shape and lazy.dtype == eager.dtype
    if method == "predict":
        assert_array_equal(lazy.compute(), eager)
    else:
        assert_allclose(lazy.compute(), eager, rtol=1e-12, atol=1e-14)


def test_kmeans_labels_are_lazy_for_zarr_input(write_zarr: Any) -> None:
    X, _ = _separated()
    path = write_zarr(X, 128)
    km = emdist.KMeans(n_clusters=4, random_state=0).fit(path)
    assert isinstance(km.labels_, da.Array)
    assert_array_equal(km.labels_.compute(), km.predict(X))


@pytest.mark.parametrize("model", ["gmm", "kmeans"])
def test_fit_predict_equals_fit_then_predict(model: str) -> None:
    X = overlapping_data(seed=4)
    make = {
        "gmm": lambda: emdist.GaussianMixture(n_components=3, random_state=1),
        "kmeans": lambda: emdist.KMeans(n_clusters=3, random_state=1),
    }[model]
    labels = make().fit_predict(X)
    est = make().fit(X)
    assert_array_equal(labels, est.predict(X))
    if model == "kmeans":
        assert_array_equal(labels, est.labels_)
        assert_allclose(make().fit_transform(X), est.transform(X))


# --- information criteria and sampling ----------------------------------------------------


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bic_aic_match_sklearn_for_the_same_parameters(covariance_type: str) -> None:
    X = overlapping_data(seed=2)
    ours = emdist.GaussianMixture(
        n_components=3, covariance_type=covariance_type, random_state=0
    ).fit(X)
    ref = sklearn.mixture.GaussianMixture(n_components=3, covariance_type=covariance_type)
    for name in (
        "weights_",
        "means_",
        "covariances_",
        "precisions_",
        "precisions_cholesky_",
        "n_features_in_",
        "converged_",
        "n_iter_",
        "lower_bound_",
    ):
        setattr(ref, name, getattr(ours, name))
    assert_allclose(ours.score(X), ref.score(X), rtol=1e-12)
    assert_allclose(ours.bic(X), ref.bic(X), rtol=1e-12)
    assert_allclose(ours.aic(X), ref.aic(X), rtol=1e-12)
    assert ours.bic(X) != ours.aic(X)


def test_bic_on_zarr_input_equals_numpy(write_zarr: Any) -> None:
    X = overlapping_data(seed=2)
    gm = emdist.GaussianMixture(n_components=3, random_state=0).fit(X)
    path = write_zarr(X, 100)
    assert_allclose(gm.bic(path), gm.bic(X), rtol=1e-12)
    assert_allclose(gm.aic(path), gm.aic(X), rtol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_sample_shapes_and_components(covariance_type: str) -> None:
    X, _ = _separated()
    gm = emdist.GaussianMixture(n_components=4, covariance_type=covariance_type, random_state=0)
    gm.fit(X)
    Xs, ys = gm.sample(2000)
    assert Xs.shape == (2000, 3) and ys.shape == (2000,)
    assert np.issubdtype(ys.dtype, np.integer) and set(np.unique(ys)) <= set(range(4))
    # Each sample comes from its component: the model recognises it, and the component's
    # sample mean is its mean.
    assert adjusted_rand_score(ys, gm.predict(Xs)) > 0.99
    for k in range(4):
        assert_allclose(Xs[ys == k].mean(axis=0), gm.means_[k], atol=0.3)
    assert gm.sample(1)[0].shape == (1, 3)


# --- warm start, restarts, warnings, reproducibility ---------------------------------------


def test_warm_start_continues_from_the_previous_fit() -> None:
    X = overlapping_data(seed=5)
    init = gmm_init(X, 3, "full", seed=1)
    with pytest.warns(emdist.ConvergenceWarning):
        cold = emdist.GaussianMixture(
            n_components=3, tol=0.0, max_iter=6, acceleration=None, **init
        ).fit(X)
    # Plain EM: a warm start carries the parameters, not an acceleration's step state.
    warm = emdist.GaussianMixture(
        n_components=3, tol=0.0, max_iter=3, warm_start=True, acceleration=None, **init
    )
    with pytest.warns(emdist.ConvergenceWarning):
        warm.fit(X)
    assert_array_equal(warm.lower_bounds_, cold.lower_bounds_[:3])
    with pytest.warns(emdist.ConvergenceWarning):
        warm.fit(X)
    # 3 + 3 iterations from the same start are the 6 of one run, bitwise.
    assert_array_equal(warm.lower_bounds_, cold.lower_bounds_[3:])
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert_array_equal(getattr(warm, name), getattr(cold, name), err_msg=name)


def test_without_warm_start_a_refit_starts_over() -> None:
    X = overlapping_data(seed=5)
    init = gmm_init(X, 3, "full", seed=1)
    gm = emdist.GaussianMixture(n_components=3, tol=0.0, max_iter=3, **init)
    with pytest.warns(emdist.ConvergenceWarning):
        first = list(gm.fit(X).lower_bounds_)
    with pytest.warns(emdist.ConvergenceWarning):
        assert gm.fit(X).lower_bounds_ == first


class _Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.states: list[emdist.IterationState[Any]] = []
        self.stop_at = stop_at

    def __call__(self, state: emdist.IterationState[Any]) -> bool:
        self.states.append(state)
        return self.stop_at is not None and state.iteration >= self.stop_at

    def last_per_restart(self) -> dict[int, emdist.IterationState[Any]]:
        return {s.restart: s for s in self.states}


def test_gmm_n_init_keeps_the_best_lower_bound() -> None:
    X = overlapping_data(seed=6)
    rec = _Recorder()
    gm = emdist.GaussianMixture(
        n_components=4, n_init=4, init_params="random_from_data", random_state=3, observer=rec
    ).fit(X)
    finals = rec.last_per_restart()
    assert sorted(finals) == [0, 1, 2, 3]
    bounds = [s.lower_bound for s in finals.values()]
    assert len(set(bounds)) > 1  # the restarts really ended in different places
    best = max(finals.values(), key=lambda s: s.lower_bound)
    assert gm.lower_bound_ == best.lower_bound == max(bounds)
    assert_array_equal(gm.means_, best.params.means)
    assert gm.lower_bounds_ == list(best.lower_bounds)


def test_kmeans_n_init_keeps_the_lowest_inertia() -> None:
    X = overlapping_data(seed=7)
    rec = _Recorder()
    km = emdist.KMeans(n_clusters=7, init="random", n_init=5, random_state=2, observer=rec).fit(X)
    finals = rec.last_per_restart()
    assert sorted(finals) == [0, 1, 2, 3, 4]
    inertia = {
        r: cdist(X, s.params.centers, "sqeuclidean").min(axis=1).sum() for r, s in finals.items()
    }
    assert len({round(v, 6) for v in inertia.values()}) > 1
    best = min(inertia, key=inertia.__getitem__)
    assert_allclose(km.inertia_, inertia[best], rtol=1e-12)
    assert_array_equal(km.cluster_centers_, finals[best].params.centers)


@pytest.mark.parametrize(("init", "restarts"), [("random", 10), ("k-means++", 1)])
def test_kmeans_n_init_auto(init: str, restarts: int) -> None:
    X, _ = _separated()
    rec = _Recorder()
    emdist.KMeans(n_clusters=4, init=init, random_state=0, observer=rec).fit(X)
    assert {s.restart for s in rec.states} == set(range(restarts))


def test_kmeans_explicit_init_runs_once() -> None:
    X, _ = _separated()
    with pytest.warns(RuntimeWarning, match="performing only one init"):
        km = emdist.KMeans(n_clusters=4, init=np.array(SEPARATED), n_init=3).fit(X)
    assert_allclose(km.cluster_centers_, SEPARATED, atol=0.2)


@pytest.mark.parametrize("model", ["gmm", "kmeans"])
def test_non_converged_fit_warns(model: str) -> None:
    X = overlapping_data(seed=8)
    est = (
        emdist.GaussianMixture(n_components=3, max_iter=1, random_state=0)
        if model == "gmm"
        else emdist.KMeans(n_clusters=3, max_iter=1, random_state=0)
    )
    with pytest.warns(emdist.ConvergenceWarning, match=r"did not converge in max_iter=1"):
        est.fit(X)
    assert est.converged_ is False and est.n_iter_ == 1


@pytest.mark.parametrize(
    "random_state",
    [lambda: 7, lambda: np.random.RandomState(7), lambda: np.random.default_rng(7)],
    ids=["int", "RandomState", "Generator"],
)
@pytest.mark.parametrize("model", ["gmm-random", "gmm-kmeans", "kmeans-random"])
def test_random_state_makes_fits_reproducible(model: str, random_state: Any) -> None:
    X = overlapping_data(seed=9)

    def fit() -> Any:
        if model == "kmeans-random":
            return emdist.KMeans(
                n_clusters=3, init="random", n_init=2, random_state=random_state()
            ).fit(X)
        init_params = model.removeprefix("gmm-")
        return emdist.GaussianMixture(
            n_components=3, init_params=init_params, random_state=random_state()
        ).fit(X)

    a, b = fit(), fit()
    for name in ("cluster_centers_", "means_", "covariances_", "weights_", "lower_bounds_"):
        if hasattr(a, name):
            assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# --- the observer -------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gmm", "kmeans"])
def test_observer_is_called_once_per_iteration(model: str) -> None:
    X = overlapping_data(seed=10)
    rec = _Recorder()
    if model == "gmm":
        est = emdist.GaussianMixture(n_components=3, random_state=0, observer=rec).fit(X)
        final = est.means_
    else:
        est = emdist.KMeans(n_clusters=3, random_state=0, observer=rec).fit(X)
        final = est.cluster_centers_
    assert est.n_iter_ >= 2
    assert [s.iteration for s in rec.states] == list(range(1, est.n_iter_ + 1))
    assert [s.lower_bound for s in rec.states] == est.lower_bounds_
    assert rec.states[-1].lower_bounds == tuple(est.lower_bounds_)
    assert rec.states[0].change == np.inf
    assert_allclose([s.change for s in rec.states[1:]], np.diff(est.lower_bounds_), rtol=1e-12)
    assert [s.converged for s in rec.states] == [False] * (est.n_iter_ - 1) + [True]
    last = rec.states[-1].params
    assert_array_equal(last.means if model == "gmm" else last.centers, final)
    assert all(s.seconds >= 0 for s in rec.states)


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")  # a stopped fit is unconverged
@pytest.mark.parametrize("model", ["gmm", "kmeans"])
def test_observer_returning_true_stops_the_fit(model: str) -> None:
    X = overlapping_data(seed=10)
    rec = _Recorder(stop_at=2)
    est = (
        emdist.GaussianMixture(n_components=3, tol=0.0, random_state=0, observer=rec)
        if model == "gmm"
        else emdist.KMeans(n_clusters=3, tol=0.0, random_state=0, observer=rec)
    )
    est.fit(X)
    assert len(rec.states) == 2
    assert est.n_iter_ == 2 and len(est.lower_bounds_) == 2
    assert est.converged_ is False


# --- K-means specifics --------------------------------------------------------------------


def test_kmeans_transform_is_the_distance_to_each_centre() -> None:
    X = overlapping_data(seed=11)
    km = emdist.KMeans(n_clusters=3, random_state=0).fit(X)
    assert_allclose(km.transform(X), cdist(X, km.cluster_centers_), rtol=1e-12, atol=1e-13)
    assert_array_equal(km.predict(X), np.argmin(km.transform(X), axis=1))


def test_kmeans_reseeds_an_empty_cluster_and_never_uses_the_origin() -> None:
    X, y = make_blobs(200, [[50.0, 50.0], [60.0, 50.0], [55.0, 60.0]], seed=12)
    init = np.array([[50.0, 51.0], [58.0, 53.0], [-1e4, 1e4]])  # the last one attracts nothing
    rec = _Recorder()
    km = emdist.KMeans(n_clusters=3, init=init, observer=rec).fit(X)
    # After the first M-step the empty cluster sits on a data row, far from its old centre.
    reseeded = rec.states[0].params.centers[2]
    assert np.any(np.all(X == reseeded, axis=1))
    centres = km.cluster_centers_
    assert np.all(np.isfinite(centres))
    assert np.all(np.linalg.norm(centres, axis=1) > 40)  # nowhere near the origin
    assert np.all(np.bincount(km.labels_, minlength=3) > 0)
    assert adjusted_rand_score(y, km.labels_) > 0.99


# --- quality ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["numpy", "zarr"])
@pytest.mark.parametrize("model", ["kmeans", "gmm-full", "gmm-diag"])
def test_well_separated_mixture_is_recovered(
    model: str, kind: str, seed: int, write_zarr: Any
) -> None:
    X, y = _separated(seed=seed)
    data = X if kind == "numpy" else write_zarr(X, 128)
    if model == "kmeans":
        est = emdist.KMeans(n_clusters=4, random_state=seed).fit(data)
        labels = np.asarray(est.labels_)
    else:
        ct = model.removeprefix("gmm-")
        est = emdist.GaussianMixture(n_components=4, covariance_type=ct, random_state=seed)
        labels = np.asarray(est.fit_predict(data))
    assert labels.shape == y.shape
    assert adjusted_rand_score(y, labels) > 0.99
