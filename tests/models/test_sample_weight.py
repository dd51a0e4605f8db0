"""Per-row weights: rows that count several times, checked before any pass.

``GaussianMixture`` and ``BayesianGaussianMixture`` fitted with integer weights equal the
fit of the rows repeated that many times (the statistics are those sums). ``KMeans.fit(X,
sample_weight=w)`` equals scikit-learn's from the same centres, empty-cluster relocation
included, and its seeding never picks a row of weight 0. Weights come as numpy, Dask or
Zarr (array or path), with any chunking; checkpoints cover them. In memory and out of core
alike.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import zarr
from sklearn.cluster import KMeans as SkKMeans

import emdist
from emdist.engine.em import run_em
from emdist.engine.reduce import Rows, map_reduce
from emdist.exceptions import InvalidParameterError
from emdist.io.checkpoint import CheckpointMismatchError
from emdist.kernels.kmeans import KMeansParams
from emdist.models.kmeans import KMeansFamily, initial_centers
from tests.conftest import gmm_init, make_blobs
from tests.helpers import write_zarr

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


def _kmeans_vs_sklearn(
    X: np.ndarray, w: np.ndarray, init: np.ndarray, kind: str, max_iter: int = 300
) -> None:
    K = len(init)
    sk = SkKMeans(K, init=init, n_init=1, max_iter=max_iter, tol=1e-4, algorithm="lloyd")
    sk.fit(X, sample_weight=w)
    ours = emdist.KMeans(K, init=init, n_init=1, max_iter=max_iter, tol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        ours.fit(_as(kind, X), sample_weight=_as(kind, w))
    np.testing.assert_allclose(ours.cluster_centers_, sk.cluster_centers_, rtol=1e-10)
    np.testing.assert_array_equal(np.asarray(ours.labels_), sk.labels_)
    assert ours.inertia_ == pytest.approx(sk.inertia_, rel=1e-10)
    assert ours.n_iter_ == sk.n_iter_
    assert ours.score(_as(kind, X), sample_weight=_as(kind, w)) == pytest.approx(
        sk.score(X, sample_weight=w), rel=1e-10
    )


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_kmeans_fit_with_weights_equals_scikit_learn(kind: str) -> None:
    w = np.random.default_rng(1).uniform(0.2, 3.0, N)
    w[::7] = 0.0  # rows that count for nothing
    _kmeans_vs_sklearn(X, w, X[[0, 100, 200]].copy(), kind)


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_weighted_empty_cluster_is_relocated_as_scikit_learn(kind: str) -> None:
    """A centre far from every row empties at once; the farthest row moves to it with its
    weight, and its old cluster's weighted mean loses that row's weight."""
    w = np.random.default_rng(5).uniform(0.5, 4.0, N)
    init = np.vstack([X[[0, 100]], [[40.0, 40.0, 40.0]]])
    sk = SkKMeans(3, init=init, n_init=1, max_iter=1, algorithm="lloyd").fit(X, sample_weight=w)
    assert len(np.unique(sk.labels_)) == 3  # the empty cluster did take a row
    # After the relocating iteration itself (later ones can wash the difference out)...
    _kmeans_vs_sklearn(X, w, init, kind, max_iter=1)
    # ...and at convergence.
    _kmeans_vs_sklearn(X, w, init, kind)


def test_kmeans_plusplus_never_seeds_from_a_row_of_weight_zero() -> None:
    w = np.zeros(N)
    keep = np.random.default_rng(3).choice(N, 12, replace=False)
    w[keep] = 1.0
    model = emdist.KMeans(3)
    for seed in range(8):
        spec = model._setup_fit(X)
        assert spec.scan is not None
        data = spec.scan.open(X, per_row={"weights": w})
        for init in ("k-means++", "random"):
            for row in initial_centers(data, 3, init, seed):
                assert any(np.array_equal(row, X[i]) for i in keep)


MIXTURES = [
    pytest.param(emdist.GaussianMixture, {}, id="GMM"),
    pytest.param(emdist.BayesianGaussianMixture, {"prefit_on_sample": False}, id="BGMM"),
]


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize(("model", "extra"), MIXTURES)
def test_mixtures_with_integer_weights_fit_as_repeated_rows(
    model: Any, extra: dict[str, Any], covariance_type: str
) -> None:
    """Default priors included: the variational mixture's mean and covariance priors are
    the weighted data's, as those of the repeated rows."""
    w = np.random.default_rng(6).integers(0, 4, N)
    repeated_X = np.repeat(X, w, axis=0)
    if model is emdist.BayesianGaussianMixture:
        init: dict[str, Any] = {"init_params": "random_from_data", "random_state": 0}
    else:
        init = gmm_init(X, 3, covariance_type, seed=3)
    make = lambda: model(  # noqa: E731
        3, covariance_type=covariance_type, max_iter=30, tol=1e-8, **init, **extra
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        if model is emdist.BayesianGaussianMixture:
            # Same start for both: the repeated fit's scan sample differs from the weighted
            # one's, so the weighted model's start is handed over as a warm start.
            first = make().set_params(max_iter=1).fit(X, sample_weight=w.astype(float))
            weighted = make().set_params(warm_start=True)
            weighted.__dict__.update(_fitted_state(first))
            repeated = make().set_params(warm_start=True)
            repeated.__dict__.update(_fitted_state(first))
            weighted.fit(X, sample_weight=w.astype(float))
            repeated.fit(repeated_X)
        else:
            weighted = make().fit(X, sample_weight=w.astype(float))
            repeated = make().fit(repeated_X)
    assert weighted.n_iter_ == repeated.n_iter_
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(
            getattr(weighted, name), getattr(repeated, name), rtol=1e-8, atol=1e-12
        )
    assert weighted.lower_bound_ == pytest.approx(repeated.lower_bound_, rel=1e-9)
    assert weighted.score(X, sample_weight=w) == pytest.approx(
        repeated.score(repeated_X), rel=1e-10
    )


def _fitted_state(model: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(model).items() if k.endswith("_") and not k.startswith("_")}


def _zarr_weights(path: Path, w: np.ndarray, chunk: int) -> str:
    zarr.create_array(str(path), data=w, chunks=(chunk,), zarr_format=3)
    return str(path)


@pytest.mark.parametrize(
    "model", [emdist.KMeans, emdist.GaussianMixture, emdist.BayesianGaussianMixture]
)
def test_zarr_weights_and_any_chunking_give_the_in_memory_fit(model: Any, tmp_path: Path) -> None:
    w = np.random.default_rng(7).uniform(0.0, 2.0, N)
    Xz = write_zarr(tmp_path / "x.zarr", X, 64)
    wz = _zarr_weights(tmp_path / "w.zarr", w, 50)  # chunked unlike X: rechunked to its blocks
    # Plain EM for the mixtures: at tol=0 the iteration count is compared, and an accelerated
    # fit's accept/stop decisions at tol=0 may differ with the rounding of another chunking.
    plain = {} if model is emdist.KMeans else {"acceleration": None}
    make = lambda: model(3, random_state=0, max_iter=20, tol=0.0, **plain)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        reference = make().fit(da.from_array(X, chunks=64), sample_weight=w)
        from_store = make().fit(Xz, sample_weight=wz)
        from_array = make().fit(Xz, sample_weight=zarr.open_array(wz))
        uneven = make().fit(
            da.from_array(X, chunks=((37, 100, 63, 100), (3,))), sample_weight=da.from_array(w, 90)
        )
    name = "cluster_centers_" if model is emdist.KMeans else "means_"
    assert np.array_equal(getattr(from_store, name), getattr(reference, name))
    assert np.array_equal(getattr(from_array, name), getattr(reference, name))
    np.testing.assert_allclose(getattr(uneven, name), getattr(reference, name), rtol=1e-10)
    assert uneven.n_iter_ == reference.n_iter_


def test_a_weights_store_of_another_length_is_one_line(tmp_path: Path) -> None:
    wz = _zarr_weights(tmp_path / "w.zarr", np.ones(N + 5), 50)
    with pytest.raises(InvalidParameterError, match=r"sample_weight has shape \(305,\)") as err:
        emdist.KMeans(3).fit(_unreadable(), sample_weight=wz)
    assert "\n" not in str(err.value)
    with pytest.raises(InvalidParameterError, match=r"^sample_weight: .*missing\.zarr") as err:
        emdist.KMeans(3).fit(_unreadable(), sample_weight=tmp_path / "missing.zarr")
    assert "\n" not in str(err.value)


class _Crash(Exception):
    pass


def _crash_at(iteration: int) -> Any:
    def observer(it: Any) -> None:
        if it.iteration == iteration:
            raise _Crash

    return observer


@pytest.mark.parametrize("updates", ["batch", "incremental"])
@pytest.mark.parametrize("model", [emdist.KMeans, emdist.GaussianMixture])
def test_weighted_fit_resumes_bit_for_bit_and_refuses_other_weights(
    model: Any, updates: str, tmp_path: Path
) -> None:
    from tests.io.test_checkpoint import assert_same_fit, fitted

    w = np.random.default_rng(8).uniform(0.1, 2.0, N)
    Xz = write_zarr(tmp_path / "x.zarr", X, 64)
    ckpt = tmp_path / "ckpt"
    make = lambda **kw: model(  # noqa: E731
        3, n_init=2, random_state=1, max_iter=8, tol=0.0, updates=updates, n_shards=3, **kw
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        reference = fitted(make().fit(Xz, sample_weight=w))
        with pytest.raises(_Crash):
            make(checkpoint=ckpt, observer=_crash_at(3)).fit(Xz, sample_weight=w)
        other = w.copy()
        other[17] += 1.0
        with pytest.raises(CheckpointMismatchError, match="sample_weight") as err:
            make(checkpoint=ckpt).fit(Xz, sample_weight=other)
        with pytest.raises(CheckpointMismatchError, match="sample_weight"):
            make(checkpoint=ckpt).fit(Xz)
        assert "data.sample_weight" in str(err.value)
        resumed = fitted(make(checkpoint=ckpt).fit(Xz, sample_weight=da.from_array(w, 64)))
    assert_same_fit(resumed, reference)


@pytest.mark.parametrize("model", [emdist.KMeans, emdist.GaussianMixture])
def test_criteria_of_weighted_rows_are_those_of_repeated_rows(model: Any) -> None:
    w = np.random.default_rng(9).integers(0, 4, N)
    repeated_X = np.repeat(X, w, axis=0)
    fitted_model = model(3, random_state=0).fit(X, sample_weight=w)
    weighted = fitted_model.information_criteria(da.from_array(X, chunks=70), sample_weight=w)
    if model is emdist.KMeans:
        # inertia_ is the weighted inertia: that of the repeated rows.
        km = model(3, init=fitted_model.cluster_centers_, n_init=1, max_iter=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", emdist.ConvergenceWarning)
            km.fit(repeated_X)
        km.cluster_centers_ = fitted_model.cluster_centers_
        km.inertia_ = fitted_model.inertia_
        repeated = km.information_criteria(repeated_X)
    else:
        repeated = fitted_model.information_criteria(repeated_X)
        assert fitted_model.bic(X, sample_weight=w) == pytest.approx(repeated["bic"], rel=1e-10)
        assert fitted_model.aic(X, sample_weight=w) == pytest.approx(repeated["aic"], rel=1e-10)
    for key in ("score", "bic", "aic"):
        assert weighted[key] == pytest.approx(repeated[key], rel=1e-10)


def test_a_weighted_k_sweep_equals_weighted_fits_one_by_one() -> None:
    w = np.random.default_rng(10).uniform(0.0, 3.0, N)
    Xd = da.from_array(X, chunks=70)
    sweep = emdist.select_n_components(
        Xd, emdist.GaussianMixture(random_state=4), [2, 3], sample_weight=w
    )
    for k, est, row in zip(sweep.n_components, sweep.estimators, sweep.criteria, strict=True):
        alone = emdist.GaussianMixture(k, random_state=4).fit(Xd, sample_weight=w)
        assert np.array_equal(est.means_, alone.means_)
        assert row["bic"] == alone.information_criteria(Xd, sample_weight=w)["bic"]
    unweighted = emdist.select_n_components(Xd, emdist.GaussianMixture(random_state=4), [2, 3])
    assert not np.array_equal(unweighted.estimators[0].means_, sweep.estimators[0].means_)
