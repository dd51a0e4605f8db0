"""Bad input gets a clear error that says what is wrong and what to change."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
import pytest
import zarr
from sklearn.cluster import KMeans as SkKMeans
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import emdist
from emdist.exceptions import InvalidParameterError
from tests.conftest import COVARIANCE_TYPES, make_blobs
from tests.helpers import estimator_classes

# Every registered estimator, with 2 clusters or components (its first parameter).
ESTIMATORS: dict[str, Callable[..., Any]] = {
    cls.family_name: functools.partial(cls, 2, random_state=0) for cls in estimator_classes()
}


def _good_data() -> np.ndarray:
    X, _ = make_blobs(60, [[0.0, 0.0], [8.0, 8.0]], seed=1)
    return X


def _as_kind(X: np.ndarray, kind: str, write_zarr: Callable[..., str]) -> Any:
    if kind == "numpy":
        return X
    if kind == "dask":
        return da.from_array(X, chunks=(25, X.shape[1]))
    return write_zarr(X, 25)  # a path to a Zarr array with 25-row chunks


# --- non-finite values --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("model", ESTIMATORS)
def test_fit_rejects_non_finite_values_naming_row_and_column(
    model: str, value: float, kind: str, write_zarr: Callable[..., str]
) -> None:
    X = _good_data()
    X[83, 1] = value
    X[90, 0] = value  # a later one: the first is reported
    with pytest.raises(emdist.InvalidDataError, match=r"NaN or infinity at row 83, column 1"):
        ESTIMATORS[model]().fit(_as_kind(X, kind, write_zarr))


def test_fit_error_names_the_row_block_of_chunked_data(write_zarr: Callable[..., str]) -> None:
    X = _good_data()
    X[83, 1] = np.nan
    with pytest.raises(emdist.InvalidDataError, match=r"row 83, column 1 \(row-block 3\)"):
        emdist.KMeans(n_clusters=2).fit(write_zarr(X, 25))  # 83 // 25 = block 3


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("method", ["predict", "predict_proba", "score_samples"])
def test_predict_rejects_non_finite_values(
    method: str, kind: str, write_zarr: Callable[..., str]
) -> None:
    X = _good_data()
    gm = emdist.GaussianMixture(n_components=2, random_state=0).fit(X)
    bad = X.copy()
    bad[57, 0] = np.nan
    with pytest.raises(emdist.InvalidDataError, match=r"row 57, column 0"):
        out = getattr(gm, method)(_as_kind(bad, kind, write_zarr))
        if isinstance(out, da.Array):
            out.compute()


# --- shape, dtype and size ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("X", "match"),
    [
        pytest.param(np.arange(10.0), r"must be 2-D.*got 1-D.*reshape\(-1, 1\)", id="1-D"),
        pytest.param(np.zeros((4, 5, 2)), r"must be 2-D.*got 3-D", id="3-D"),
        pytest.param(np.array([["a", "b"], ["c", "d"]]), r"real numbers.*<U1", id="strings"),
        # An object array of numbers is converted as scikit-learn does
        # (tests/models/test_sklearn.py); one holding text is refused, naming the value.
        pytest.param(
            np.array([[1.0, 2.0], [3.0, "x"]], dtype=object),
            r"real numbers; got 'x' at row 1, column 1 of an object array",
            id="object-with-text",
        ),
        pytest.param(np.ones((5, 2), dtype=complex), r"real numbers.*complex", id="complex"),
        pytest.param(np.empty((0, 3)), r"0 samples", id="zero-rows"),
        pytest.param(np.empty((5, 0)), r"0 features", id="zero-features"),
    ],
)
@pytest.mark.parametrize("model", ESTIMATORS)
def test_fit_rejects_badly_shaped_or_typed_data(model: str, X: np.ndarray, match: str) -> None:
    with pytest.raises(emdist.InvalidDataError, match=match):
        ESTIMATORS[model]().fit(X)


def test_lazy_dask_input_of_wrong_rank() -> None:
    with pytest.raises(emdist.InvalidDataError, match=r"must be 2-D.*got 3-D"):
        emdist.GaussianMixture(n_components=1).fit(da.zeros((4, 3, 2), chunks=2))


def test_dask_input_of_unknown_length() -> None:
    X = da.from_array(_good_data(), chunks=(25, 2))
    filtered = X[X[:, 0] > 4]  # row count unknown until computed
    with pytest.raises(emdist.InvalidDataError, match=r"unknown chunk sizes.*compute_chunk_sizes"):
        emdist.KMeans(n_clusters=2).fit(filtered)


def test_empty_zarr_array(tmp_path: Any) -> None:
    path = str(tmp_path / "empty.zarr")
    zarr.create_array(path, shape=(0, 2), chunks=(10, 2), dtype="f8", zarr_format=3)
    with pytest.raises(emdist.InvalidDataError, match=r"0 samples"):
        emdist.GaussianMixture(n_components=1).fit(path)


def test_boolean_zarr_array(tmp_path: Any) -> None:
    path = str(tmp_path / "bools.zarr")
    zarr.create_array(path, shape=(4, 2), chunks=(2, 2), dtype="bool", zarr_format=3)
    with pytest.raises(emdist.InvalidDataError, match=r"real numbers.*bool"):
        emdist.KMeans(n_clusters=1).fit(path)


@pytest.mark.parametrize(("model", "name"), [("kmeans", "n_clusters"), ("gmm", "n_components")])
def test_fewer_samples_than_components(model: str, name: str) -> None:
    X = np.arange(6.0).reshape(3, 2)
    est = emdist.KMeans(n_clusters=5) if model == "kmeans" else emdist.GaussianMixture(5)
    with pytest.raises(emdist.InvalidDataError, match=rf"n_samples=3 should be >= {name}=5"):
        est.fit(X)


def test_fewer_distinct_points_than_clusters_fits_and_warns_as_sklearn() -> None:
    # 100 copies of a row that is not exactly representable: the scan variance is rounding
    # residue, so only "the assignment stopped changing" can stop the fit (as scikit-learn).
    X = np.repeat(np.array([[5.1, 3.5, 1.4, 0.2]]), 100, axis=0)
    sk = SkKMeans(2, n_init=1, random_state=0)
    with pytest.warns(Warning, match=r"Number of distinct clusters \(1\) found smaller"):
        sk.fit(X)
    with pytest.warns(emdist.ConvergenceWarning, match=r"distinct clusters \(1\) found smaller"):
        km = emdist.KMeans(n_clusters=2, random_state=0).fit(X)
    assert km.converged_ and km.n_iter_ == sk.n_iter_ == 1
    assert km.inertia_ == pytest.approx(sk.inertia_, abs=1e-25)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_identical_rows_fit_a_mixture_as_sklearn() -> None:
    X = np.repeat(np.array([[5.1, 3.5, 1.4, 0.2]]), 100, axis=0)
    sk = SkGaussianMixture(2, random_state=0).fit(X)
    gm = emdist.GaussianMixture(2, random_state=0).fit(X)
    assert gm.converged_ and sk.converged_
    np.testing.assert_allclose(np.sort(gm.weights_), np.sort(sk.weights_), atol=1e-12)
    np.testing.assert_allclose(gm.means_, np.broadcast_to(X[0], (2, 4)), rtol=1e-12)


def test_zero_variance_data_with_one_component_is_fine() -> None:
    X = np.full((40, 3), 7.5)
    km = emdist.KMeans(n_clusters=1).fit(X)
    np.testing.assert_array_equal(km.cluster_centers_, [[7.5, 7.5, 7.5]])
    assert km.inertia_ == 0.0
    gm = emdist.GaussianMixture(n_components=1, reg_covar=1e-3).fit(X)
    np.testing.assert_allclose(gm.means_, [[7.5, 7.5, 7.5]])
    np.testing.assert_allclose(gm.covariances_, [np.eye(3) * 1e-3], atol=1e-15)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("init", ["kmeans", "means_init"])
def test_collapsed_component_raises_fit_error_naming_reg_covar(
    covariance_type: str, init: str
) -> None:
    # Three distinct points, each repeated: every component collapses onto one of them and
    # with reg_covar=0 its covariance is singular. Never a NaN: a FitError that says what to do.
    points = np.array([[0.1, 0.7], [4.3, 0.2], [0.5, 3.9]])
    X = np.repeat(points, 7, axis=0)
    kw: dict[str, Any] = {"means_init": points} if init == "means_init" else {}
    gm = emdist.GaussianMixture(
        n_components=3, covariance_type=covariance_type, reg_covar=0.0, random_state=0, **kw
    )
    with pytest.raises(emdist.FitError, match=r"collapsed.*increase reg_covar"):
        gm.fit(X)


def test_collapsed_component_is_fine_with_reg_covar() -> None:
    points = np.array([[0.1, 0.7], [4.3, 0.2], [0.5, 3.9]])
    X = np.repeat(points, 7, axis=0)
    gm = emdist.GaussianMixture(n_components=3, reg_covar=1e-4, random_state=0).fit(X)
    assert np.all(np.isfinite(gm.covariances_)) and np.all(np.isfinite(gm.means_))
    np.testing.assert_allclose(np.sort(gm.weights_), [1 / 3] * 3, rtol=1e-6)


# --- prediction ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ESTIMATORS)
@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_predict_with_the_wrong_number_of_features(
    model: str, kind: str, write_zarr: Callable[..., str]
) -> None:
    est = ESTIMATORS[model]().fit(_good_data())
    X3 = np.ones((10, 3))
    name = type(est).__name__
    with pytest.raises(emdist.InvalidDataError, match=rf"3 features, but {name} is expecting 2"):
        est.predict(_as_kind(X3, kind, write_zarr))


@pytest.mark.parametrize(
    ("model", "method"),
    [
        ("kmeans", "predict"),
        ("kmeans", "transform"),
        ("gmm", "predict"),
        ("gmm", "predict_proba"),
        ("gmm", "score_samples"),
        ("gmm", "score"),
    ],
)
def test_predict_before_fit(model: str, method: str) -> None:
    with pytest.raises(emdist.InvalidDataError, match=r"not fitted yet; call fit first"):
        getattr(ESTIMATORS[model](), method)(_good_data())


def test_sample_before_fit() -> None:
    with pytest.raises(emdist.InvalidDataError, match="not fitted"):
        emdist.GaussianMixture(n_components=2).sample(3)


# --- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"covariance_type": "bogus"}, r"covariance_type must be one of.*'bogus'"),
        ({"init_params": "bogus"}, r"init_params must be one of.*'bogus'"),
        ({"n_components": 0}, r"n_components must be a positive int; got 0"),
        ({"n_components": 2.5}, r"n_components must be a positive int"),
        ({"max_iter": 0}, r"max_iter must be a positive int"),
        ({"n_init": 0}, r"n_init must be a positive int"),
        ({"tol": -1.0}, r"tol must be >= 0"),
        ({"tol": float("nan")}, r"tol must be >= 0"),
        ({"reg_covar": -1e-6}, r"reg_covar must be >= 0"),
        ({"random_state": -1}, r"random_state must be non-negative"),
        ({"random_state": "seed"}, r"random_state must be None, an int"),
        ({"weights_init": [0.5, 0.6]}, r"weights_init must be non-negative and sum to 1"),
        ({"weights_init": [1.0]}, r"weights_init has shape \(1,\); expected \(2,\)"),
        ({"means_init": np.zeros((2, 3))}, r"means_init has shape \(2, 3\); expected \(2, 2\)"),
        ({"means_init": [[0.0, np.nan], [1.0, 1.0]]}, r"means_init contains NaN"),
        (
            {"precisions_init": np.stack([np.eye(2), -np.eye(2)])},
            r"precisions_init must be symmetric positive definite",
        ),
    ],
)
def test_gaussian_mixture_rejects_bad_parameters(params: dict[str, Any], match: str) -> None:
    gm = emdist.GaussianMixture(n_components=2).set_params(**params)
    with pytest.raises(ValueError, match=match):
        gm.fit(_good_data())


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n_clusters": 0}, r"n_clusters must be a positive int; got 0"),
        ({"init": "bogus"}, r"init must be 'k-means\+\+', 'random' or an array; got 'bogus'"),
        ({"init": np.zeros((3, 2))}, r"init has shape \(3, 2\); expected \(2, 2\)"),
        ({"init": [[0.0, np.inf], [1.0, 1.0]]}, r"init contains NaN or infinity"),
        ({"max_iter": 0}, r"max_iter must be a positive int"),
        ({"n_init": 0}, r"n_init must be 'auto' or a positive int"),
        ({"tol": -1.0}, r"tol must be >= 0"),
        ({"init_sample_size": 1}, r"init_sample_size=1 must be >= n_clusters=2"),
    ],
)
def test_kmeans_rejects_bad_parameters(params: dict[str, Any], match: str) -> None:
    km = emdist.KMeans(n_clusters=2).set_params(**params)
    with pytest.raises(ValueError, match=match):
        km.fit(_good_data())


# --- what is passed as X ------------------------------------------------------------------


def test_missing_zarr_path(tmp_path: Any) -> None:
    with pytest.raises(emdist.InvalidDataError, match=r"no Zarr array at"):
        emdist.KMeans(n_clusters=2).fit(str(tmp_path / "nowhere.zarr"))


def test_zarr_group_instead_of_array(tmp_path: Any) -> None:
    path = tmp_path / "group.zarr"
    zarr.open_group(str(path), mode="w").create_array("x", shape=(10, 2), dtype="f8")
    with pytest.raises(emdist.InvalidDataError, match=r"is a Zarr group, not an array"):
        emdist.KMeans(n_clusters=2).fit(str(path))


def test_errors_are_value_errors() -> None:
    # Callers that catch ValueError (as for scikit-learn) keep working.
    assert issubclass(emdist.InvalidDataError, ValueError)
    assert issubclass(emdist.FitError, ValueError)


@pytest.mark.filterwarnings("error")
def test_negative_precisions_init_raises_without_numpy_noise() -> None:
    # The ValueError alone should reach the user, not a RuntimeWarning from sqrt first.
    gm = emdist.GaussianMixture(
        n_components=2, covariance_type="diag", precisions_init=[[1.0, 1.0], [1.0, -1.0]]
    )
    with pytest.raises(ValueError, match=r"precisions_init must be positive"):
        gm.fit(_good_data())


# --- data whose squared distances overflow, sizes beyond the machine ---------------------------


@pytest.mark.parametrize("kind", ["numpy", "zarr"])
@pytest.mark.parametrize("scale", [1e300, 1e160])
@pytest.mark.parametrize(
    "cls", [emdist.KMeans, emdist.GaussianMixture, emdist.BayesianGaussianMixture]
)
def test_data_whose_squared_distances_overflow_is_refused_before_any_pass(
    cls: type[Any], scale: float, kind: str, write_zarr: Callable[..., str]
) -> None:
    """K-means used to report converged, an infinite inertia and one cluster here."""
    X = _good_data() * scale
    passes: list[Any] = []
    model = cls(2, random_state=0, observer=passes.append)
    with pytest.raises(emdist.InvalidDataError, match="scale") as info:
        model.fit(_as_kind(X, kind, write_zarr))
    message = str(info.value)
    assert "\n" not in message and "divide X by" in message
    assert passes == []  # refused after the scan, before any EM pass


def test_data_at_a_large_but_safe_scale_still_fits() -> None:
    X = _good_data() * 1e100
    model = emdist.KMeans(2, random_state=0).fit(X)
    assert np.isfinite(model.inertia_) and len(set(model.labels_.tolist())) == 2


@pytest.mark.parametrize("cls", [emdist.KMeans, emdist.GaussianMixture])
def test_huge_n_init_is_refused_up_front(cls: type[Any]) -> None:
    with pytest.raises(InvalidParameterError, match=r"n_init must be .*at most 10,000"):
        cls(2, n_init=10**9).fit(_good_data())


@pytest.mark.parametrize(
    "X", [[[1.0, 2.0], [3.0], [4.0, 5.0]], [[1.0, 2.0], [3.0, [4.0]]]], ids=["short", "nested"]
)
@pytest.mark.parametrize("model", ESTIMATORS)
def test_ragged_list_is_one_line_invalid_data_error(model: str, X: Any) -> None:
    with pytest.raises(emdist.InvalidDataError, match="cannot be read as a 2-D array") as info:
        ESTIMATORS[model]().fit(X)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"n_samples": 2_000_000, "n_features": 2, "chunk_rows": 1}, "chunks"),
        ({"n_samples": 10, "n_features": 10**9}, "n_features"),
        ({"n_samples": 10, "n_features": 100_000, "chunk_rows": 1}, "covariances"),
        ({"n_samples": 10**14, "n_features": 1, "chunk_rows": 10**8}, "free"),
    ],
)
def test_generating_beyond_the_machine_is_refused_before_writing(
    tmp_path: Any, kwargs: dict[str, Any], words: str
) -> None:
    from emdist.io.synthetic import make_gaussian_mixture

    with pytest.raises(InvalidParameterError, match=words) as info:
        make_gaussian_mixture(tmp_path / "big.zarr", n_components=3, **kwargs)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
