"""Incremental EM: the pieces and the engine's promises.

- statistics re-expressed about another shift equal those taken about it (every type);
- the free energy of a pass's own responsibilities is the pass's bound;
- the shards cover every block once, in row order, with global row offsets;
- statistics round-trip through arrays bit for bit;
- the free energy never decreases, sweep by sweep (GMM, K-means, variational);
- one shard is batch EM, bit for bit;
- scheduler (threads, a two-process LocalCluster) and Zarr vs Dask: bit for bit;
- a fit killed mid-way resumes from its checkpoint and ends bit for bit as an uninterrupted one.
"""

from __future__ import annotations

import functools
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal

import emdist
from emdist.engine.incremental import ShardStatistics
from emdist.engine.shards import make_shards, shard_pass, stats_from_arrays, stats_to_arrays
from emdist.exceptions import InvalidParameterError
from emdist.io.checkpoint import CheckpointError, CheckpointStore, FitState, RestartState
from emdist.io.integrity import UnsafeNameError
from emdist.kernels import (
    KMeansParams,
    KMeansStats,
    MixtureParams,
    MixtureStats,
    RowBlock,
    compute_precision_cholesky,
    kmeans_estep_chunk,
    mixture_estep_chunk,
    mixture_stats_from_resp,
)
from emdist.kernels.rebase import rebase_kmeans_stats, rebase_mixture_stats
from emdist.kernels.variational import VariationalStats
from emdist.models.gaussian_mixture import GaussianMixtureFamily
from tests.conftest import COVARIANCE_TYPES, overlapping_data

N_ROWS = 600
CHUNK = 50  # 12 blocks


@functools.cache
def _data() -> np.ndarray:
    return overlapping_data(seed=0)


def _dask() -> da.Array:
    return da.from_array(_data(), chunks=(CHUNK, 3))


def _params(X: np.ndarray, K: int, ct: str, seed: int) -> MixtureParams:
    rng = np.random.default_rng(seed)
    means = X[rng.choice(len(X), K, replace=False)] + rng.normal(0, 0.1, (K, X.shape[1]))
    d = X.shape[1]
    cov: np.ndarray
    if ct == "full":
        cov = np.stack([np.eye(d) * (1 + k) for k in range(K)])
    elif ct == "tied":
        cov = np.eye(d) * 1.5
    elif ct == "diag":
        cov = rng.uniform(0.5, 2.0, (K, d))
    else:
        cov = rng.uniform(0.5, 2.0, K)
    weights = np.full(K, 1 / K)
    return MixtureParams(weights, means, cov, compute_precision_cholesky(cov, ct))


# --- the pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_rebased_mixture_statistics_equal_those_taken_about_the_new_shift(
    covariance_type: str,
) -> None:
    # Far from the origin, as the design's numerics demand; K == d makes tied and diag the
    # same shape, so the covariance type must decide.
    X = _data()[:200] + 1e4
    rng = np.random.default_rng(1)
    resp = rng.dirichlet(np.ones(3), len(X))
    old = X[:3] + rng.normal(0, 0.5, (3, 3))
    new = X[3:6]
    moved = rebase_mixture_stats(
        mixture_stats_from_resp(X, resp, old, covariance_type), new, covariance_type
    )
    direct = mixture_stats_from_resp(X, resp, new, covariance_type)
    assert moved.shift is new
    assert_allclose(moved.nk, direct.nk, rtol=1e-14)
    assert_allclose(moved.sx, direct.sx, rtol=1e-9, atol=1e-9)
    assert_allclose(moved.sxx, direct.sxx, rtol=1e-10)
    if covariance_type in ("full", "tied"):
        assert_array_equal(moved.sxx, np.swapaxes(moved.sxx, -1, -2))  # exactly symmetric
    # The same shift is the same value, not a copy with roundoff.
    assert rebase_mixture_stats(direct, new.copy(), covariance_type) is direct


def test_rebased_kmeans_statistics_measure_the_same_assignments_from_new_centres() -> None:
    X = _data()
    old = KMeansParams(X[:4].copy())
    stats = kmeans_estep_chunk(RowBlock(X, 0), old)
    centers = X[10:14].copy()
    moved = rebase_kmeans_stats(stats, centers)
    # The assignments of the old step, measured from the new centres, directly.
    d2 = ((X[:, None, :] - old.centers[None]) ** 2).sum(-1)
    labels = d2.argmin(1)
    diff = X - centers[labels]
    assert_allclose(moved.inertia, float((diff**2).sum()), rtol=1e-12)
    sums = np.stack([diff[labels == k].sum(0) for k in range(4)])
    assert_allclose(moved.sx, sums, atol=1e-9)
    assert_array_equal(moved.counts, stats.counts)
    far = ((moved.far_x - centers[moved.far_label]) ** 2).sum(1)
    assert_allclose(moved.far_dist, far)
    assert np.all(np.diff(moved.far_dist) <= 0)  # re-ordered, farthest first


def test_rebased_kmeans_statistics_keep_their_sums_about_an_unchanged_reference() -> None:
    # Incremental K-means adds the shards' sums about the restart's fixed reference points:
    # new centres leave them bit for bit as they are; a moved reference moves them exactly.
    X = _data()
    start = X[:4].copy()
    stats = kmeans_estep_chunk(RowBlock(X, 0), KMeansParams(X[20:24].copy(), start))
    centers = X[10:14].copy()
    moved = rebase_kmeans_stats(stats, centers, start)
    assert_array_equal(moved.sx, stats.sx)
    assert moved.shift is centers and moved.reference is start
    d2 = ((X[:, None, :] - stats.shift[None]) ** 2).sum(-1)
    labels = d2.argmin(1)
    assert_allclose(moved.inertia, float(((X - centers[labels]) ** 2).sum()), rtol=1e-12)
    other = X[30:34].copy()
    about_other = rebase_kmeans_stats(stats, centers, other)
    sums = np.stack([(X[labels == k] - other[k]).sum(0) for k in range(4)])
    assert_allclose(about_other.sx, sums, atol=1e-9)
    assert about_other.inertia == moved.inertia
    assert rebase_kmeans_stats(stats, stats.shift.copy(), start.copy()) is stats


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_free_energy_of_a_pass_is_its_log_likelihood(covariance_type: str) -> None:
    # F(q, θ) = log p(X | θ) when q is the posterior under θ: the entropy and the expected
    # complete-data log-likelihood must add up exactly to the pass's bound.
    X = _data()
    family = GaussianMixtureFamily(covariance_type, 1e-6)  # type: ignore[arg-type]
    params = _params(X, 3, covariance_type, 0)
    stats = mixture_estep_chunk(RowBlock(X, 0), params, covariance_type)  # type: ignore[arg-type]
    entropy = family.entropy(stats, params)
    assert entropy > 0
    assert_allclose(family.free_energy(stats, entropy, params), stats.log_lik / stats.n, rtol=1e-12)
    # Under other parameters (the M-step's) the free energy of the same q is higher, and
    # below the new parameters' own log-likelihood.
    new = family.mstep(stats, params)
    f_new = family.free_energy(stats, entropy, new)
    assert f_new > stats.log_lik / stats.n
    assert f_new <= mixture_estep_chunk(RowBlock(X, 0), new, covariance_type).log_lik / stats.n  # type: ignore[arg-type]


@pytest.mark.parametrize("chunks", [(CHUNK,), (37, 500, 13, 1, 0, 49)])
def test_shards_cover_every_block_once_in_row_order(chunks: tuple[int, ...]) -> None:
    X = _dask() if chunks == (CHUNK,) else da.from_array(_data(), chunks=(chunks, 3))
    shards = make_shards(X, 5, seed=3)
    n_blocks = X.numblocks[0]
    assert len(shards) == min(5, n_blocks)
    flat = sorted(b for idx in shards.blocks for b in idx)
    assert flat == list(range(n_blocks))
    assert all(list(idx) == sorted(idx) for idx in shards.blocks)
    assert make_shards(X, 5, seed=3) == shards  # seeded
    assert make_shards(X, 5, seed=4) != shards or n_blocks <= 2
    assert_array_equal(np.sort(shards.assignment(n_blocks)), np.sort(shards.assignment(n_blocks)))
    # Kernels see global row offsets: the far-point rows are rows of X.
    centers = KMeansParams(_data()[:3].copy())
    for s in range(len(shards)):
        st: KMeansStats = shard_pass(X, shards, s, kmeans_estep_chunk, centers)
        rows = X.compute()[st.far_row]
        assert_array_equal(rows, st.far_x)


def test_more_shards_than_blocks_gives_one_shard_per_block() -> None:
    X = da.from_array(_data(), chunks=(200, 3))
    assert len(make_shards(X, 8, seed=0)) == 3
    assert len(make_shards(_data(), 8, seed=0)) == 1  # in memory: one block


def test_statistics_round_trip_through_arrays_bit_for_bit() -> None:
    X = _data()
    params = _params(X, 3, "full", 0)
    mix = mixture_estep_chunk(RowBlock(X, 0), params, "full")
    km = kmeans_estep_chunk(RowBlock(X, 7), KMeansParams(X[:3].copy()))
    var = VariationalStats(mix, -12.5)
    for value in (mix, km, var):
        back = stats_from_arrays(type(value), stats_to_arrays(value))
        assert type(back) is type(value)
        for name, arr in stats_to_arrays(value).items():
            assert_array_equal(stats_to_arrays(back)[name], arr)
            assert stats_to_arrays(back)[name].dtype == arr.dtype
    assert isinstance(stats_from_arrays(KMeansStats, stats_to_arrays(km)).n, int)
    kept = ShardStatistics([mix, mix], [1.0, 2.0])
    again = ShardStatistics.from_arrays(kept.to_arrays(), MixtureStats, 2)
    assert again.entropy == [1.0, 2.0]


# --- the free energy never decreases --------------------------------------------------------


def _sweep_bounds(est: Any, X: Any) -> np.ndarray:
    seen: list[float] = []
    est.set_params(observer=lambda state: seen.append(state.lower_bound))
    est.fit(X)
    assert seen == list(est.lower_bounds_)
    return np.asarray(est.lower_bounds_)


def _assert_monotone(bounds: np.ndarray) -> None:
    assert len(bounds) >= 5
    scale = max(1.0, float(np.max(np.abs(bounds))))
    assert np.all(np.diff(bounds) >= -1e-12 * scale), np.diff(bounds).min()


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gmm_free_energy_never_decreases(covariance_type: str, seed: int) -> None:
    gm = emdist.GaussianMixture(
        4,
        covariance_type=covariance_type,
        init_params="random",
        tol=0.0,
        max_iter=20,
        random_state=seed,
        updates="incremental",
        n_shards=4,
    )
    _assert_monotone(_sweep_bounds(gm, da.from_array(overlapping_data(seed), chunks=(CHUNK, 3))))


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_free_energy_never_decreases(seed: int) -> None:
    km = emdist.KMeans(
        6, init="random", n_init=1, tol=0.0, max_iter=15, random_state=seed, updates="incremental"
    )
    _assert_monotone(_sweep_bounds(km, da.from_array(overlapping_data(seed), chunks=(CHUNK, 3))))


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_variational_free_energy_never_decreases(covariance_type: str) -> None:
    vb = emdist.BayesianGaussianMixture(
        6,
        covariance_type=covariance_type,
        tol=0.0,
        max_iter=20,
        random_state=0,
        updates="incremental",
        n_shards=6,
    )
    _assert_monotone(_sweep_bounds(vb, _dask()))


# --- invariances ----------------------------------------------------------------------------


def _gmm(**kw: Any) -> emdist.GaussianMixture:
    base: dict[str, Any] = {
        "n_components": 3,
        "init_params": "k-means++",
        "tol": 0.0,
        "max_iter": 8,
        "random_state": 0,
        "updates": "incremental",
        "n_shards": 4,
    }
    return emdist.GaussianMixture(**{**base, **kw})


def _fitted(est: Any) -> dict[str, np.ndarray]:
    if isinstance(est, emdist.KMeans):
        names = ["cluster_centers_", "inertia_", "lower_bounds_", "n_iter_"]
    else:
        names = ["weights_", "means_", "covariances_", "lower_bound_", "lower_bounds_", "n_iter_"]
    return {n: np.asarray(getattr(est, n)) for n in names}


def _assert_bitwise(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for name in a:
        assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
@pytest.mark.parametrize("model", ["gmm", "kmeans", "bayesian"])
def test_one_shard_is_batch_em_bit_for_bit(model: str) -> None:
    # One shard: every sweep is one batch iteration and the final pass another, so
    # `max_iter` passes give batch EM's parameters and bound after `max_iter` iterations.
    X = _dask()
    if model == "gmm":
        make: Any = functools.partial(_gmm, max_iter=6)
    elif model == "kmeans":
        # Random rows as the start: from the default start Lloyd converges in 2 iterations.
        make = functools.partial(
            emdist.KMeans, 4, tol=0.0, max_iter=6, init="random", random_state=0
        )
    else:
        make = functools.partial(
            emdist.BayesianGaussianMixture, 4, tol=0.0, max_iter=6, random_state=0
        )
    # Plain batch EM (the mixtures' default accelerates it).
    plain = {} if model == "kmeans" else {"acceleration": None}
    batch = _fitted(make(updates="batch", **plain).fit(X))
    one = _fitted(make(updates="incremental", n_shards=1).fit(X))
    for name in batch:
        if name == "lower_bounds_":
            # Sweep bounds are free energies after the M-step; the final pass's is batch's.
            assert one[name][-1] == batch[name][-1]
            assert np.all(one[name][:-1] >= batch[name][:-1])
        else:
            assert_array_equal(one[name], batch[name], err_msg=name)


@pytest.fixture(scope="module")
def zarr_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    import zarr

    path = tmp_path_factory.mktemp("incremental") / "x.zarr"
    zarr.create_array(str(path), data=_data(), chunks=(CHUNK, 3), zarr_format=3)
    return str(path)


@functools.cache
def _sync_reference(model: str) -> dict[str, np.ndarray]:
    with dask.config.set(scheduler="synchronous"):
        return _fitted(_make(model).fit(_dask()))


def _make(model: str) -> Any:
    if model == "kmeans":
        return emdist.KMeans(3, tol=0.0, max_iter=5, random_state=0, updates="incremental")
    return _gmm(covariance_type=model.removeprefix("gmm-"), max_iter=5)


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
@pytest.mark.parametrize("model", ["gmm-full", "gmm-diag", "kmeans"])
def test_threads_and_zarr_give_bitwise_the_same_incremental_fit(model: str, zarr_path: str) -> None:
    reference = _sync_reference(model)
    with dask.config.set(scheduler="threads"):
        _assert_bitwise(reference, _fitted(_make(model).fit(_dask())))
        _assert_bitwise(reference, _fitted(_make(model).fit(zarr_path)))


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
@pytest.mark.parametrize("model", ["gmm-full", "kmeans"])
def test_local_cluster_gives_bitwise_the_same_incremental_fit(
    model: str, zarr_path: str, dask_client: Any
) -> None:
    reference = _sync_reference(model)
    _assert_bitwise(reference, _fitted(_make(model).fit(zarr_path)))
    assert len(dask_client.scheduler_info()["workers"]) == 2


# --- resume ---------------------------------------------------------------------------------


class Stop(Exception):
    """The observer's stand-in for a kill."""


RESUME_MODELS = {
    "gmm": lambda **kw: _gmm(covariance_type="full", max_iter=7, n_init=2, **kw),
    "kmeans": lambda **kw: emdist.KMeans(
        3,
        init="random",
        n_init=2,
        tol=0.0,
        max_iter=7,
        random_state=0,
        updates="incremental",
        n_shards=3,
        **kw,
    ),
    "bayesian": lambda **kw: emdist.BayesianGaussianMixture(
        5,
        covariance_type="diag",
        n_init=2,
        tol=0.0,
        max_iter=7,
        random_state=0,
        init_params="k-means++",
        updates="incremental",
        n_shards=5,
        **kw,
    ),
}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
@pytest.mark.parametrize(
    ("model", "stop_at"),
    [("gmm", (0, 1)), ("gmm", (1, 3)), ("gmm", (1, 6)), ("kmeans", (1, 3)), ("bayesian", (1, 6))],
)
def test_killed_incremental_fit_resumes_bit_for_bit(
    model: str, stop_at: tuple[int, int], tmp_path: Any
) -> None:
    # (restart, sweep): after the first sweep, mid-way, and after the last sweep (only the
    # final batch pass left). The checkpoint is committed before the observer runs.
    make = RESUME_MODELS[model]
    X = _dask()
    reference = make().fit(X)

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
    assert seen[0] == (stop_at[0], stop_at[1] + 1), "the fit did not resume from the checkpoint"
    _assert_bitwise(_fitted(reference), _fitted(resumed))


def test_checkpoint_of_an_incremental_fit_holds_shard_statistics(tmp_path: Any) -> None:
    ckpt = CheckpointStore(tmp_path / "ckpt")

    def stop(state: emdist.IterationState) -> None:
        if state.iteration == 2:
            raise Stop

    with pytest.raises(Stop):
        _gmm(checkpoint=ckpt, observer=stop).fit(_dask())
    ckpt.close()
    state = CheckpointStore(tmp_path / "ckpt").load()
    assert state is not None
    assert state.iteration == 2
    # One running restart (they run one after another); its carry holds S copies of the
    # statistics (and the block -> shard map), nothing per row.
    assert len(state.running) == 1
    carry = state.running[0].carry
    assert carry["shards/nk"].shape == (4, 3)
    assert carry["shards/sxx"].shape == (4, 3, 3, 3)
    assert carry["entropy"].shape == (4,)
    assert carry["assignment"].shape == (N_ROWS // CHUNK,)
    assert max(v.size for v in carry.values()) < N_ROWS


# --- the carry in the version-2 checkpoint ---------------------------------------------------


def _carry_state(carry: dict[str, Any]) -> FitState:
    params = {"means": np.arange(6.0).reshape(2, 3)}
    return FitState(running=(RestartState(0, params, np.array([-3.0]), False, carry),))


def test_carry_of_a_running_restart_round_trips_bit_for_bit(tmp_path: Any) -> None:
    carry = {
        "assignment": np.array([2, 0, 1, 1], dtype=np.int64),
        "shards/nk": np.random.default_rng(0).random((4, 3)),
        "entropy": np.array([0.1, 0.2, 0.3, 0.4]),
    }
    store = CheckpointStore(tmp_path / "ckpt")
    store.open({"n_init": 1}, {"data": 1})
    store.save(_carry_state(carry))
    state = store.load()
    assert state is not None
    got = state.running[0].carry
    assert sorted(got) == sorted(carry)
    for key, value in carry.items():
        assert got[key].dtype == value.dtype
        assert_array_equal(got[key], value)


def test_a_carry_array_gone_with_its_checksum_is_refused(tmp_path: Any) -> None:
    # Deleting an array and its checksum entry passes the digests; the listed names do not.
    store = CheckpointStore(tmp_path / "ckpt", keep=1)
    store.open({"n_init": 1}, {"data": 1})
    store.save(_carry_state({"entropy": np.ones(4), "shards/nk": np.ones((4, 3))}))
    (name,) = [p for p in (tmp_path / "ckpt").iterdir() if p.is_dir()]
    group = zarr.open_group(str(name), mode="r+", use_consolidated=False)
    checksums = dict(group.attrs["checksums"])
    del checksums["r0/carry/shards/nk"]
    group.attrs["checksums"] = checksums
    with pytest.raises(CheckpointError, match="carry"):
        store.load()


def test_an_unsafe_carry_name_is_not_committed(tmp_path: Any) -> None:
    store = CheckpointStore(tmp_path / "ckpt")
    store.open({"n_init": 1}, {"data": 1})
    with pytest.raises(UnsafeNameError):
        store.save(_carry_state({"../outside": np.ones(2)}))
    assert not (tmp_path / "outside").exists()


def test_fit_shared_refuses_incremental_fits() -> None:
    with pytest.raises(InvalidParameterError, match="incremental"):
        emdist.fit_shared([_gmm(), _gmm(updates="batch")], _dask())
