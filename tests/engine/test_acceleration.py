"""Accelerated EM (``acceleration='squarem'``, ``'secant'``, ``'overrelax'``, ``'daarem'``).

The engine's promises.

GaussianMixture throughout, BayesianGaussianMixture for the bound, optimum and resume.

- a proposal lands on valid parameters whatever the vector (simplex, covariances >= reg);
- the bound history never decreases, for every covariance type, and the reported bound is
  the best evaluated one;
- it converges to plain EM's optimum in fewer passes where plain EM needs 50+;
- DAAREM's Anderson mixing: exact on a linear map, damped towards the EM step, its window
  checkpointed as Zarr arrays;
- numpy vs unevenly chunked Dask: the same fit;
- a fit killed mid-way resumes from its checkpoint bit for bit;
- restarts side by side equal the restarts run one by one, bit for bit;
- ``acceleration`` is validated before any read.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import dask.array as da
import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal

import emdist
from emdist.engine.acceleration import anderson_step
from emdist.engine.data import compute_context
from emdist.engine.em import run_restarts
from emdist.exceptions import InvalidParameterError
from emdist.kernels import MixtureParams, compute_precision_cholesky
from emdist.kernels.mixture_vector import (
    mixture_from_vector,
    mixture_to_vector,
    variational_from_vector,
    variational_to_vector,
)
from tests.conftest import COVARIANCE_TYPES, overlapping_data

METHODS = ("squarem", "secant", "overrelax", "daarem")
# The extrapolations that take 0.6x plain EM's passes or fewer on the tests' mixtures; DAAREM
# takes fewer than plain on the diag one, not that few (benchmarks/README.md).
EXTRAPOLATIONS = ("squarem", "secant", "overrelax")


@functools.cache
def _data() -> np.ndarray:
    return overlapping_data(seed=0)


def _gmm(**kw: Any) -> emdist.GaussianMixture:
    base: dict[str, Any] = {
        "n_components": 4,
        "init_params": "k-means++",
        "tol": 0.0,
        "max_iter": 40,
        "random_state": 0,
        "acceleration": "squarem",
    }
    return emdist.GaussianMixture(**{**base, **kw})


def _fitted(est: emdist.GaussianMixture) -> dict[str, np.ndarray]:
    names = ["weights_", "means_", "covariances_", "lower_bound_", "lower_bounds_", "n_iter_"]
    return {n: np.asarray(getattr(est, n)) for n in names}


def _assert_bitwise(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for name in a:
        assert_array_equal(a[name], b[name], err_msg=name)


# --- the projection -------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_a_wild_vector_lands_on_valid_parameters(covariance_type: str) -> None:
    K, d, reg = 3, 3, 1e-4
    rng = np.random.default_rng(0)
    shape = {"full": (K, d, d), "tied": (d, d), "diag": (K, d), "spherical": (K,)}
    cov = rng.normal(size=shape[covariance_type])  # indefinite, negative entries
    like = MixtureParams(np.full(K, 1 / K), rng.normal(size=(K, d)), cov, np.empty(0))
    vector = np.concatenate([rng.normal(scale=50, size=K), like.means.ravel(), cov.ravel()])
    params = mixture_from_vector(vector, like, covariance_type, reg)  # type: ignore[arg-type]
    assert params is not None
    assert np.all(params.weights > 0) and abs(params.weights.sum() - 1) < 1e-12
    assert_array_equal(params.means, like.means)
    if covariance_type in ("full", "tied"):
        eig = np.linalg.eigvalsh(params.covariances)
        assert np.all(eig >= reg * (1 - 1e-9))
    else:
        assert np.all(params.covariances >= reg)
    assert_allclose(
        params.precisions_cholesky,
        compute_precision_cholesky(params.covariances, covariance_type),  # type: ignore[arg-type]
    )
    assert mixture_from_vector(vector * np.nan, like, covariance_type, reg) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_a_wild_vector_lands_on_a_valid_variational_posterior(covariance_type: str) -> None:
    est = emdist.BayesianGaussianMixture(
        3, covariance_type=covariance_type, max_iter=3, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(_data())
    like = est._params()
    rng = np.random.default_rng(1)
    vector = variational_to_vector(like) + rng.normal(
        scale=30, size=variational_to_vector(like).size
    )
    params = variational_from_vector(vector, like, covariance_type, 1e-6)  # type: ignore[arg-type]
    assert params is not None
    d = like.means.shape[1]
    assert np.all(params.weight_concentration > 0) and np.all(params.mean_precision > 0)
    assert np.all(params.degrees_of_freedom > d - 1)
    assert_allclose(
        params.precisions_cholesky,
        compute_precision_cholesky(params.covariances, covariance_type),  # type: ignore[arg-type]
    )
    back = variational_from_vector(variational_to_vector(like), like, covariance_type, 1e-6)  # type: ignore[arg-type]
    assert back is not None
    assert_allclose(back.degrees_of_freedom, like.degrees_of_freedom, rtol=1e-12)
    assert_allclose(back.covariances, like.covariances, rtol=1e-9)


def test_valid_parameters_round_trip_through_the_vector() -> None:
    est = emdist.GaussianMixture(3, random_state=0, max_iter=100).fit(_data())
    params = est._params()
    back = mixture_from_vector(mixture_to_vector(params), params, "full", 1e-6)
    assert back is not None
    assert_allclose(back.weights, params.weights, rtol=1e-12)
    assert_allclose(back.covariances, params.covariances, rtol=1e-10)


# --- the bound ------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bound_history_never_decreases(covariance_type: str, method: str) -> None:
    est = _gmm(covariance_type=covariance_type, acceleration=method).fit(_data())
    bounds = np.asarray(est.lower_bounds_)
    plain = np.asarray(
        _gmm(covariance_type=covariance_type, acceleration=None).fit(_data()).lower_bounds_
    )
    # One bound per pass; with tol=0 a fit stops early only when an EM step cannot raise
    # the bound any more (at the optimum up to rounding).
    assert len(bounds) == est.n_iter_ <= 40
    assert est.n_iter_ == 40 or est.converged_
    assert np.all(np.diff(bounds) >= 0), np.diff(bounds).min()
    assert est.lower_bound_ == bounds.max() == bounds[-1]
    # The acceleration did something: not plain EM's sequence.
    assert not np.array_equal(bounds, plain)


@pytest.mark.parametrize("method", EXTRAPOLATIONS)
def test_converges_to_plain_optimum_in_fewer_passes(method: str) -> None:
    # diag, K=3 on the overlapping clusters: plain EM needs 60+ iterations at tol=1e-8.
    make = functools.partial(
        emdist.GaussianMixture,
        3,
        covariance_type="diag",
        init_params="k-means++",
        tol=1e-8,
        max_iter=500,
        random_state=0,
    )
    plain = make(acceleration=None).fit(_data())
    fast = make(acceleration=method).fit(_data())
    assert plain.converged_ and fast.converged_
    assert plain.n_iter_ >= 50
    assert fast.n_iter_ <= 0.6 * plain.n_iter_, (fast.n_iter_, plain.n_iter_)
    assert abs(fast.lower_bound_ - plain.lower_bound_) < 1e-6
    order = np.argsort(plain.means_[:, 0])
    fast_order = np.argsort(fast.means_[:, 0])
    assert_allclose(fast.means_[fast_order], plain.means_[order], atol=1e-3)
    assert_allclose(fast.weights_[fast_order], plain.weights_[order], atol=1e-3)


def test_default_converges_to_plain_optimum_in_at_most_half_the_passes() -> None:
    # The diag K=3 mixture above, the default acceleration (SQUAREM): 30 passes against
    # plain EM's 67 at tol=1e-8, within the benchmark's target ratio of 0.5.
    make = functools.partial(
        emdist.GaussianMixture,
        3,
        covariance_type="diag",
        init_params="k-means++",
        tol=1e-8,
        max_iter=500,
        random_state=0,
    )
    plain = make(acceleration=None).fit(_data())
    fast = make().fit(_data())
    assert fast.acceleration == "auto" and plain.converged_ and fast.converged_
    assert fast.n_iter_ <= 0.5 * plain.n_iter_, (fast.n_iter_, plain.n_iter_)
    assert fast.lower_bound_ >= plain.lower_bound_ - 1e-9


def test_daarem_converges_to_plain_optimum_in_fewer_passes() -> None:
    # The diag K=3 mixture above: plain EM 67 passes at tol=1e-8, DAAREM 53 (a rejected
    # proposal costs its pass; squarem 30).
    make = functools.partial(
        emdist.GaussianMixture,
        3,
        covariance_type="diag",
        init_params="k-means++",
        tol=1e-8,
        max_iter=500,
        random_state=0,
    )
    plain = make(acceleration=None).fit(_data())
    fast = make(acceleration="daarem").fit(_data())
    assert plain.converged_ and fast.converged_
    assert fast.n_iter_ < plain.n_iter_, (fast.n_iter_, plain.n_iter_)
    assert abs(fast.lower_bound_ - plain.lower_bound_) < 1e-6


def test_anderson_step_is_exact_on_a_linear_map_and_damped_towards_the_em_step() -> None:
    # For M(x) = A x + b, undamped Anderson mixing over p consecutive differences lands on
    # the fixed point (it is GMRES); the damping shrinks the coefficients towards M(x).
    rng = np.random.default_rng(0)
    p = 4
    A = rng.normal(size=(p, p)) * 0.3
    b = rng.normal(size=p)
    xs = [np.zeros(p)]
    for _ in range(p):
        xs.append(A @ xs[-1] + b)
    fs = [A @ x + b - x for x in xs]
    dx = np.diff(np.array(xs), axis=0)
    df = np.diff(np.array(fs), axis=0)
    fixed = np.linalg.solve(np.eye(p) - A, b)
    undamped = anderson_step(xs[-1], fs[-1], dx, df, shrink=1000.0)
    assert_allclose(undamped, fixed, atol=1e-12)
    em = xs[-1] + fs[-1]
    assert np.linalg.norm(em - fixed) > 1e-3
    # shrink = 0: ||γ||² is 1 / (1 + 1.2^25) of the least squares' (~0.1 of its norm); the
    # fewer accepted proposals (the lower shrink), the closer the proposal to the EM step.
    dist = [
        float(np.linalg.norm(anderson_step(xs[-1], fs[-1], dx, df, shrink=s) - em))
        for s in (-20.0, 0.0, 10.0)
    ]
    assert 0 < dist[0] < dist[1] < dist[2] < float(np.linalg.norm(undamped - em))
    assert dist[1] < 0.3 * float(np.linalg.norm(undamped - em))


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
def test_daarem_window_is_checkpointed_as_zarr_arrays(tmp_path: Any) -> None:
    ckpt = tmp_path / "ckpt"

    def stop(state: emdist.IterationState) -> None:
        if state.iteration == 5:
            raise Stop

    with pytest.raises(Stop):
        _gmm(acceleration="daarem", checkpoint=str(ckpt), observer=stop).fit(_data())
    arrays = {str(p.parent.relative_to(ckpt)) for p in ckpt.rglob("zarr.json")}
    window = sorted(a for a in arrays if "/carry/window/" in a)
    # Five passes: the start, its EM step, then three accepted points or rejections; the
    # window holds a difference per accepted point after the first.
    assert {w.rsplit("/", 1)[1] for w in window} == {"df", "dx"}, arrays
    for name in window:
        stored = zarr.open_array(str(ckpt / name), mode="r")
        assert stored.dtype == np.float64 and stored.ndim == 2 and stored.shape[0] >= 1
    assert not list(ckpt.rglob("*.pkl")) and not list(ckpt.rglob("*.pickle"))


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
def test_default_is_squarem_with_batch_and_plain_em_with_incremental() -> None:
    # acceleration=None, plain EM, is what the scikit-learn oracle tests exercise.
    X = _data()
    kw: dict[str, Any] = {"init_params": "k-means++", "tol": 0.0, "random_state": 0}
    default = emdist.GaussianMixture(4, max_iter=10, **kw)
    assert default.acceleration == "auto"
    got = _fitted(default.fit(X))
    _assert_bitwise(got, _fitted(_gmm(max_iter=10, acceleration="squarem").fit(X)))
    plain = _fitted(_gmm(acceleration=None, max_iter=10).fit(X))
    assert not np.array_equal(got["lower_bounds_"], plain["lower_bounds_"])
    # Incremental EM: 'auto' leaves it plain (no error), as acceleration=None.
    for cls in (emdist.GaussianMixture, emdist.BayesianGaussianMixture):
        inc = {"updates": "incremental", "n_shards": 3, "max_iter": 4, **kw}
        _assert_bitwise(
            _fitted(cls(3, **inc).fit(X)), _fitted(cls(3, acceleration=None, **inc).fit(X))
        )


# --- invariances ----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
@pytest.mark.parametrize("method", METHODS)
def test_numpy_and_uneven_dask_chunks_give_the_same_fit(method: str) -> None:
    X = _data()
    ref = _fitted(_gmm(acceleration=method, max_iter=25).fit(X))
    got = _fitted(
        _gmm(acceleration=method, max_iter=25).fit(da.from_array(X, chunks=((70, 130, 1, 399), 3)))
    )
    # One pass differs between the chunkings by the rounding of its sums, ~1e-15 relative
    # (the moments are summed about the mean of the means, kernels.quadratic); 25 accelerated
    # iterations amplify that to ~2e-11.
    for name in ref:
        assert_allclose(got[name], ref[name], rtol=1e-10, atol=1e-12, err_msg=name)


class Stop(Exception):
    """The observer's stand-in for a kill."""


def _killable_gmm(method: str, **kw: Any) -> emdist.GaussianMixture:
    return _gmm(covariance_type="full", n_init=2, max_iter=14, acceleration=method, **kw)


@functools.cache
def _uninterrupted_fit(method: str) -> dict[str, np.ndarray]:
    # The fit the killed ones must reproduce: one per method, shared by the cases that stop
    # it at different passes (read-only arrays, so no case can change another's reference).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        fitted = _fitted(_killable_gmm(method).fit(da.from_array(_data(), chunks=(100, 3))))
    for array in fitted.values():
        array.flags.writeable = False
    return fitted


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
@pytest.mark.parametrize(
    ("method", "stop_at"),
    [
        ("squarem", (0, 3)),
        ("squarem", (1, 8)),
        ("squarem", (1, 9)),
        ("overrelax", (1, 6)),
        ("secant", (0, 3)),
        ("secant", (1, 8)),
        # DAAREM: a full window (restarted empty), a part-full one, and the first proposal.
        ("daarem", (0, 3)),
        ("daarem", (1, 7)),
        ("daarem", (1, 11)),
    ],
)
def test_killed_accelerated_fit_resumes_bit_for_bit(
    method: str, stop_at: tuple[int, int], tmp_path: Any
) -> None:
    # (restart, pass): a proposal pass and an EM pass; the checkpoint is committed before
    # the observer runs.
    make = functools.partial(_killable_gmm, method)
    X = da.from_array(_data(), chunks=(100, 3))
    reference = _uninterrupted_fit(method)

    def stop(state: emdist.IterationState) -> None:
        if (state.restart, state.iteration) == stop_at:
            raise Stop

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Stop):
        make(checkpoint=str(ckpt), observer=stop).fit(X)
    seen: list[tuple[int, int]] = []
    resumed = make(
        checkpoint=str(ckpt), observer=lambda s: seen.append((s.restart, s.iteration))
    ).fit(X)
    assert (stop_at[0], stop_at[1] + 1) in seen and (stop_at[0], stop_at[1]) not in seen
    _assert_bitwise(reference, _fitted(resumed))


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
@pytest.mark.parametrize("method", METHODS)
def test_restarts_side_by_side_equal_restarts_one_by_one(method: str) -> None:
    X = da.from_array(_data(), chunks=(100, 3))
    histories: dict[int, tuple[float, ...]] = {}
    last: dict[int, Any] = {}

    def record(state: emdist.IterationState) -> None:
        histories[state.restart] = state.lower_bounds
        last[state.restart] = state.params

    est = _gmm(n_init=3, tol=1e-6, max_iter=60, acceleration=method, observer=record)
    est.fit(X)
    shared = dict(histories), dict(last)
    spec = est._setup_fit(X)
    assert spec.scan is not None
    for restart, seed in enumerate(spec.seeds):
        histories.clear()
        last.clear()
        one = dataclasses.replace(spec, seeds=(seed,))
        with compute_context():
            data = spec.scan.open(X)
            run_restarts(data, one.planned(est._plan(data, False)))
        assert histories[0] == shared[0][restart]
        for name, value in last[0].arrays().items():
            assert_array_equal(value, shared[1][restart].arrays()[name], err_msg=name)


# --- validation -----------------------------------------------------------------------------


def test_unknown_acceleration_is_refused_before_any_read(tmp_path: Any) -> None:
    missing = tmp_path / "nothing.zarr"
    with pytest.raises(InvalidParameterError, match="acceleration"):
        emdist.GaussianMixture(2, acceleration="anderson").fit(str(missing))


def test_acceleration_with_incremental_updates_is_refused_before_any_read(tmp_path: Any) -> None:
    missing = tmp_path / "nothing.zarr"
    with pytest.raises(InvalidParameterError, match="acceleration='squarem' needs updates"):
        emdist.GaussianMixture(2, acceleration="squarem", updates="incremental").fit(str(missing))


# --- the variational mixture ----------------------------------------------------------------


def _bgmm(**kw: Any) -> emdist.BayesianGaussianMixture:
    base: dict[str, Any] = {
        "n_components": 5,
        "init_params": "k-means++",
        "tol": 1e-7,
        "max_iter": 300,
        "random_state": 0,
        "prefit_on_sample": False,
    }
    return emdist.BayesianGaussianMixture(**{**base, **kw})


@pytest.mark.parametrize("method", EXTRAPOLATIONS)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_variational_bound_never_decreases_and_reaches_plain_optimum(
    covariance_type: str, method: str
) -> None:
    plain = _bgmm(covariance_type=covariance_type, acceleration=None).fit(_data())
    fast = _bgmm(covariance_type=covariance_type, acceleration=method).fit(_data())
    bounds = np.asarray(fast.lower_bounds_)
    assert fast.converged_ and len(bounds) == fast.n_iter_
    assert np.all(np.diff(bounds) >= 0), np.diff(bounds).min()
    assert fast.lower_bound_ == bounds.max()
    assert fast.n_iter_ < plain.n_iter_, (fast.n_iter_, plain.n_iter_)
    assert fast.lower_bound_ > plain.lower_bound_ - 1e-6


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_variational_daarem_bound_never_decreases_and_reaches_plain_optimum(
    covariance_type: str,
) -> None:
    # Not faster than plain EM on every type here (full: 49 passes against 29).
    plain = _bgmm(covariance_type=covariance_type, acceleration=None).fit(_data())
    fast = _bgmm(covariance_type=covariance_type, acceleration="daarem").fit(_data())
    bounds = np.asarray(fast.lower_bounds_)
    assert fast.converged_ and len(bounds) == fast.n_iter_
    assert np.all(np.diff(bounds) >= 0), np.diff(bounds).min()
    assert fast.lower_bound_ == bounds.max()
    assert not np.array_equal(bounds, np.asarray(plain.lower_bounds_))
    assert fast.lower_bound_ > plain.lower_bound_ - 1e-6


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
@pytest.mark.parametrize("method", ["squarem", "daarem"])
def test_killed_accelerated_variational_fit_resumes_bit_for_bit(method: str, tmp_path: Any) -> None:
    make = functools.partial(
        _bgmm, covariance_type="diag", n_init=2, tol=0.0, max_iter=12, acceleration=method
    )
    X = da.from_array(_data(), chunks=(100, 3))
    reference = make().fit(X)

    def stop(state: emdist.IterationState) -> None:
        if (state.restart, state.iteration) == (1, 5):
            raise Stop

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Stop):
        make(checkpoint=str(ckpt), observer=stop).fit(X)
    seen: list[tuple[int, int]] = []
    resumed = make(
        checkpoint=str(ckpt), observer=lambda s: seen.append((s.restart, s.iteration))
    ).fit(X)
    assert (1, 6) in seen and (1, 5) not in seen
    _assert_bitwise(_fitted(reference), _fitted(resumed))  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
def test_a_k_sweep_of_accelerated_fits_shares_passes_and_equals_fits_alone() -> None:
    X = da.from_array(_data(), chunks=(100, 3))
    make = functools.partial(_gmm, tol=1e-6, max_iter=50, n_init=2)
    members = ((2, "squarem"), (3, "overrelax"), (4, "daarem"), (3, "secant"))
    sweep = [make(n_components=k, acceleration=m) for k, m in members]
    sweep.append(_bgmm(n_components=4, acceleration="squarem", max_iter=50))
    sweep.append(_bgmm(n_components=3, acceleration="daarem", max_iter=50))
    emdist.fit_shared(sweep, X)
    alone = [make(n_components=k, acceleration=m) for k, m in members]
    alone.append(_bgmm(n_components=4, acceleration="squarem", max_iter=50))
    alone.append(_bgmm(n_components=3, acceleration="daarem", max_iter=50))
    for shared, single in zip(sweep, alone, strict=True):
        _assert_bitwise(_fitted(shared), _fitted(single.fit(X)))  # type: ignore[arg-type]
