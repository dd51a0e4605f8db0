"""Invariants (docs/design.md): what must not change the result, and what must hold always.

- chunking (one block vs many uneven blocks, numpy vs Zarr on disk);
- scheduler (synchronous, threaded, a real two-process LocalCluster);
- the lower bound never decreases;
- statistics add associatively and commutatively (hypothesis);
- translating the data moves only the means (shifted second moments, float32 too);
- the initialisation sample depends on the seed and the data, not the chunking.
"""

from __future__ import annotations

import functools
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import emdist
from emdist.engine.seeding import scan_data
from emdist.io import as_dask_array
from emdist.kernels import (
    KMeansParams,
    KMeansStats,
    MixtureParams,
    MixtureStats,
    RowBlock,
    ScanStats,
    compute_precision_cholesky,
    kmeans_estep_chunk,
    mixture_estep_chunk,
    scan_chunk,
)
from tests.conftest import COVARIANCE_TYPES, gmm_init, overlapping_data

MODELS = [*(f"gmm-{ct}" for ct in COVARIANCE_TYPES), "kmeans"]
N_ROWS = 600  # overlapping_data(n_per_cluster=200) has 3 * 200 rows
UNEVEN = (37, 500, 13, 1, 49)


def _estimator(model: str, *, quick: bool = False) -> emdist.GaussianMixture | emdist.KMeans:
    """A seeded estimator; ``quick`` seeds from the scan sample and stops early (cluster tests)."""
    if model == "kmeans":
        return emdist.KMeans(n_clusters=3, random_state=0)
    ct = model.removeprefix("gmm-")
    if quick:
        # Few passes: whether the fit converged is beside the point of a scheduler test.
        return emdist.GaussianMixture(
            n_components=3,
            covariance_type=ct,
            init_params="k-means++",
            tol=0.0,
            max_iter=5,
            random_state=0,
        )
    return emdist.GaussianMixture(n_components=3, covariance_type=ct, tol=1e-6, random_state=0)


def _summary(est: emdist.GaussianMixture | emdist.KMeans) -> dict[str, np.ndarray]:
    if isinstance(est, emdist.KMeans):
        names = ["cluster_centers_", "inertia_", "n_iter_", "lower_bounds_"]
        out = {n: np.asarray(getattr(est, n)) for n in names}
        out["labels_"] = np.asarray(est.labels_)
        return out
    names = [
        "weights_",
        "means_",
        "covariances_",
        "precisions_cholesky_",
        "lower_bound_",
        "lower_bounds_",
        "n_iter_",
    ]
    return {n: np.asarray(getattr(est, n)) for n in names}


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rtol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if name in ("n_iter_", "labels_"):
            assert_array_equal(a[name], b[name], err_msg=name)
        elif rtol == 0:
            assert_array_equal(a[name], b[name], err_msg=name)
        else:
            assert_allclose(a[name], b[name], rtol=rtol, atol=rtol, err_msg=name)


@functools.cache
def _data() -> np.ndarray:
    X = overlapping_data(seed=0)
    assert X.shape[0] == N_ROWS == sum(UNEVEN)
    return X


# --- chunking -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zarr_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    import zarr

    path = tmp_path_factory.mktemp("invariants") / "x.zarr"
    # 128-row chunks: the last one is partial (600 = 4 * 128 + 88).
    zarr.create_array(str(path), data=_data(), chunks=(128, 3), zarr_format=3)
    return str(path)


@pytest.mark.parametrize("chunking", ["uneven", "zarr", "columns"])
@pytest.mark.parametrize("model", MODELS)
def test_chunking_does_not_change_the_fit(model: str, chunking: str, zarr_path: str) -> None:
    X = _data()
    one = _estimator(model).fit(da.from_array(X, chunks=(N_ROWS, 3)))
    if chunking == "uneven":
        many_input: Any = da.from_array(X, chunks=(UNEVEN, 3))
    elif chunking == "columns":
        many_input = da.from_array(X, chunks=(150, 1))  # chunked along features as well
    else:
        many_input = zarr_path
    many = _estimator(model).fit(many_input)
    assert as_dask_array(many_input).numblocks[0] > 1
    # Not bitwise: the per-block sums are added in another order when the block boundaries
    # move, and floating-point addition is not associative; the difference is roundoff.
    _assert_same(_summary(one), _summary(many), rtol=1e-12)


# --- schedulers ---------------------------------------------------------------------------


def _scheduler_input(kind: str, zarr_path: str) -> Any:
    if kind == "numpy":
        return _data()  # on a cluster, persisted to the workers once
    if kind == "dask-one-block":
        return da.from_array(_data(), chunks=_data().shape)
    return da.from_array(_data(), chunks=(100, 3)) if kind == "dask" else zarr_path


@functools.cache
def _sync_reference(model: str, kind: str, zarr_path: str) -> dict[str, np.ndarray]:
    with dask.config.set(scheduler="synchronous"):
        return _summary(_estimator(model, quick=True).fit(_scheduler_input(kind, zarr_path)))


# Every covariance type and K-means once, over every kind of input.
SCHEDULER_CASES = [
    ("gmm-full", "dask"),
    ("gmm-tied", "zarr"),
    ("gmm-diag", "numpy"),
    ("gmm-spherical", "dask"),
    ("kmeans", "zarr"),
    ("kmeans", "numpy"),
]


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")  # max_iter=5
@pytest.mark.parametrize(("model", "kind"), SCHEDULER_CASES)
def test_threaded_scheduler_gives_bitwise_the_same_fit(
    model: str, kind: str, zarr_path: str
) -> None:
    reference = _sync_reference(model, kind, zarr_path)
    with dask.config.set(scheduler="threads"):
        got = _summary(_estimator(model, quick=True).fit(_scheduler_input(kind, zarr_path)))
    # A fixed reduction tree makes the same data, chunking and seed give
    # bitwise-identical results whatever the scheduler.
    _assert_same(reference, got, rtol=0)


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")  # max_iter=5
@pytest.mark.parametrize(("model", "kind"), SCHEDULER_CASES)
def test_two_process_local_cluster_gives_bitwise_the_same_fit(
    model: str, kind: str, zarr_path: str, dask_client: Any
) -> None:
    reference = _sync_reference(model, kind, zarr_path)
    got = _summary(_estimator(model, quick=True).fit(_scheduler_input(kind, zarr_path)))
    # The work really ran on the two worker processes.
    assert len(dask_client.scheduler_info()["workers"]) == 2
    if model == "kmeans" and kind == "numpy":
        # Without a cluster, in-memory K-means runs with no passes (Hamerly's bounds,
        # centres summed about a fixed point): the same labels, centres to roundoff. On a
        # cluster the data are persisted and fitted by passes, exactly as the same block
        # given as a Dask array is on one machine.
        _assert_same(reference, got, rtol=1e-12)
        reference = _sync_reference(model, "dask-one-block", zarr_path)
    _assert_same(reference, got, rtol=0)


# --- monotone lower bound -----------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gmm_log_likelihood_never_decreases(covariance_type: str, seed: int) -> None:
    X = overlapping_data(seed=seed)
    gm = emdist.GaussianMixture(
        n_components=4,
        covariance_type=covariance_type,
        init_params="random",
        tol=0.0,
        max_iter=25,
        random_state=seed,
    )
    with pytest.warns(emdist.ConvergenceWarning):
        gm.fit(X)
    bounds = np.asarray(gm.lower_bounds_)
    assert len(bounds) == 25
    # EM never decreases the likelihood; allow roundoff relative to its size.
    assert np.all(np.diff(bounds) >= -1e-12 * np.abs(bounds[1:])), np.diff(bounds)
    assert bounds[-1] > bounds[0]  # and it did climb
    assert gm.lower_bound_ == bounds[-1]


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_inertia_never_increases(seed: int) -> None:
    X = overlapping_data(seed=seed)
    km = emdist.KMeans(n_clusters=6, init="random", n_init=1, tol=0.0, random_state=seed)
    km.fit(X)
    bounds = np.asarray(km.lower_bounds_)  # -inertia / n per iteration
    assert len(bounds) >= 3
    assert np.all(np.diff(bounds) >= -1e-12 * np.abs(bounds[1:])), np.diff(bounds)
    assert km.inertia_ <= -bounds[-1] * len(X) * (1 + 1e-12)


# --- statistics are a commutative monoid ----------------------------------------------------

_HX = overlapping_data(seed=11, n_per_cluster=40)  # 120 rows
_HN = len(_HX)
_H_COV = COVARIANCE_TYPES
_H_PARAMS = {}
for _ct in _H_COV:
    _init = gmm_init(_HX, 3, _ct, seed=12)
    _prec = _init["precisions_init"]
    _cov = 1.0 / _prec if _ct in ("diag", "spherical") else np.linalg.inv(_prec)
    _H_PARAMS[_ct] = MixtureParams(
        _init["weights_init"], _init["means_init"], _cov, compute_precision_cholesky(_cov, _ct)
    )
_H_CENTERS = _HX[[0, 1, 2, 3]].copy()


@st.composite
def _split(draw: st.DrawFn) -> tuple[list[int], list[int], list[int]]:
    """Random chunk boundaries, a random order of the chunks and a random grouping."""
    cuts = draw(st.lists(st.integers(1, _HN - 1), unique=True, max_size=9))
    bounds = [0, *sorted(cuts), _HN]
    n_chunks = len(bounds) - 1
    order = draw(st.permutations(range(n_chunks)))
    groups = draw(st.lists(st.integers(1, max(1, n_chunks)), min_size=1, max_size=4))
    return bounds, list(order), groups


def _chunk_stats(kind: str, bounds: list[int], X: np.ndarray = _HX) -> list[Any]:
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        block = X[lo:hi]
        if kind == "kmeans":
            out.append(kmeans_estep_chunk(RowBlock(block, lo), KMeansParams(_H_CENTERS)))
        elif kind == "scan":
            out.append(scan_chunk(RowBlock(block, lo), 5, 16))
        else:
            out.append(mixture_estep_chunk(RowBlock(block, lo), _H_PARAMS[kind], kind))
    return out


def _fold(values: list[Any]) -> Any:
    return functools.reduce(lambda a, b: a + b, values)


def _regroup(values: list[Any], sizes: list[int]) -> Any:
    """Sum consecutive runs of the given sizes first, then the partial sums right to left."""
    partials, i, j = [], 0, 0
    while i < len(values):
        step = sizes[j % len(sizes)]
        partials.append(_fold(values[i : i + step]))
        i += step
        j += 1
    return functools.reduce(lambda a, b: b + a, reversed(partials))


def _assert_stats_close(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    assert a.n == b.n
    if isinstance(a, MixtureStats):
        for name in ("nk", "sx", "sxx"):
            assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-11)
        assert_allclose(a.log_lik, b.log_lik, rtol=1e-12)
        assert_array_equal(a.shift, b.shift)
    elif isinstance(a, KMeansStats):
        assert_array_equal(a.counts, b.counts)
        assert_allclose(a.sx, b.sx, rtol=1e-12, atol=1e-11)
        assert_allclose(a.inertia, b.inertia, rtol=1e-12)
        # The far-point candidates are a set chosen by a total order: exactly the same.
        assert_array_equal(a.far_row, b.far_row)
        assert_array_equal(a.far_label, b.far_label)
        assert_array_equal(a.far_x, b.far_x)
        assert_allclose(a.far_dist, b.far_dist, rtol=1e-13)
    else:
        assert isinstance(a, ScanStats)
        assert_allclose(a.mean, b.mean, rtol=1e-13)
        assert_allclose(a.m2, b.m2, rtol=1e-11)
        assert (a.bad_row, a.bad_col) == (b.bad_row, b.bad_col)
        assert_array_equal(a.sample_rows, b.sample_rows)
        assert_array_equal(a.sample_keys, b.sample_keys)
        assert_array_equal(a.sample, b.sample)


@settings(max_examples=25, deadline=None)
@given(split=_split(), kind=st.sampled_from([*_H_COV, "kmeans", "scan"]))
def test_statistics_add_associatively_and_commutatively(
    split: tuple[list[int], list[int], list[int]], kind: str
) -> None:
    bounds, order, groups = split
    parts = _chunk_stats(kind, bounds)
    whole = _chunk_stats(kind, [0, _HN])[0]
    in_order = _fold(parts)
    shuffled = [parts[i] for i in order]
    _assert_stats_close(in_order, whole)
    _assert_stats_close(_fold(shuffled), whole)
    _assert_stats_close(_regroup(shuffled, groups), whole)
    _assert_stats_close(functools.reduce(lambda a, b: b + a, shuffled), whole)


@settings(max_examples=25, deadline=None)
@given(cut=st.integers(1, _HN - 1), kind=st.sampled_from([*_H_COV, "kmeans", "scan"]))
def test_statistics_addition_commutes(cut: int, kind: str) -> None:
    a, b = _chunk_stats(kind, [0, cut, _HN])
    ab, ba = a + b, b + a
    _assert_stats_close(ab, ba)
    if kind != "scan":
        # Sums of two terms: IEEE addition is commutative, so bitwise the same.
        for name in ("sx", "nk", "counts", "inertia", "log_lik"):
            if hasattr(ab, name):
                assert_array_equal(getattr(ab, name), getattr(ba, name))


@settings(max_examples=15, deadline=None)
@given(
    bad=st.lists(
        st.tuples(st.integers(0, _HN - 1), st.integers(0, 2), st.sampled_from([np.nan, np.inf])),
        min_size=1,
        max_size=4,
    ),
    cuts=st.lists(st.integers(1, _HN - 1), unique=True, max_size=6),
)
def test_scan_reports_the_first_non_finite_value_whatever_the_chunking(
    bad: list[tuple[int, int, float]], cuts: list[int]
) -> None:
    X = _HX.copy()
    for r, c, v in bad:
        X[r, c] = v
    first = tuple(int(i) for i in np.argwhere(~np.isfinite(X))[0])
    total = _fold(_chunk_stats("scan", [0, *sorted(cuts), _HN], X))
    assert (total.bad_row, total.bad_col) == first


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_mixture_zero_is_the_identity(covariance_type: str) -> None:
    (a,) = _chunk_stats(covariance_type, [0, _HN])
    zero = MixtureStats.zero(a.shift, covariance_type)
    for total in (zero + a, a + zero):
        for name in ("n", "log_lik", "nk", "sx", "sxx"):
            assert_array_equal(getattr(total, name), getattr(a, name))


def test_statistics_about_different_shifts_do_not_add() -> None:
    params = _H_PARAMS["full"]
    a = mixture_estep_chunk(RowBlock(_HX[:50], 0), params, "full")
    moved = MixtureParams(
        params.weights, params.means + 1.0, params.covariances, params.precisions_cholesky
    )
    b = mixture_estep_chunk(RowBlock(_HX[50:], 50), moved, "full")
    with pytest.raises(ValueError, match="different shifts"):
        _ = a + b


# --- translation --------------------------------------------------------------------------

# (offset, dtype, grid step): the data is put on a grid so that data + offset is exactly
# representable in the dtype; both fits then see exactly the same points, translated.
# float32 has a 24-bit significand: at 1e6 (< 2^20) a grid of 1/8 is exact.
TRANSLATIONS = [
    pytest.param(1e6, np.float64, 2.0**-10, id="1e6-float64"),
    pytest.param(1e9, np.float64, 2.0**-10, id="1e9-float64"),
    pytest.param(1e6, np.float32, 2.0**-3, id="1e6-float32"),
]
_SCALE = 10.0


def _translation_pair(offset: float, dtype: Any, step: float) -> tuple[np.ndarray, np.ndarray]:
    X = np.round(overlapping_data(seed=21) * _SCALE / step) * step
    Xt = (X + offset).astype(dtype)
    assert_array_equal(Xt.astype(np.float64) - offset, X)  # exactly the same points
    return X, Xt


def _translation_tol(offset: float, float32_products: bool = False) -> float:
    # The arithmetic keeps ~1e-16 relative to the magnitude of the data (offset), and results
    # are of the data's scale: a few hundred ulps of the offset, relative to the scale. A
    # raw-moment covariance would be off by ~eps * offset² / scale², orders of magnitude more.
    tol = max(1e-12, 300 * np.finfo(np.float64).eps * offset / _SCALE)
    if float32_products:
        # float32 data runs the full/tied GEMMs in float32 on differences formed in float64
        # (README, "Precision"): a few hundred float32 ulps relative to the scale, whatever
        # the offset (raw moments would still be off by ~1e3 here).
        tol = max(tol, 300 * float(np.finfo(np.float32).eps))
    return tol


@pytest.mark.parametrize(("offset", "dtype", "step"), TRANSLATIONS)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_translating_the_data_moves_only_the_gmm_means(
    covariance_type: str, offset: float, dtype: Any, step: float
) -> None:
    X, Xt = _translation_pair(offset, dtype, step)
    init = gmm_init(X, 3, covariance_type, seed=22)
    moved = dict(init, means_init=init["means_init"] + offset)
    kw = dict(n_components=3, covariance_type=covariance_type, tol=0.0, max_iter=10)
    float32_products = dtype == np.float32 and covariance_type in ("full", "tied")
    if float32_products:
        # float32 data computes in float32: the same points untranslated, in float32. (Against
        # float64, float32's rounding after 10 accelerated iterations is a matter of which
        # extrapolations it happens to shift: ~1e-5 relative, and 1e-3 for one start in 10.)
        X = X.astype(np.float32)
    with pytest.warns(emdist.ConvergenceWarning):
        near = emdist.GaussianMixture(**kw, **init).fit(X)
    with pytest.warns(emdist.ConvergenceWarning):
        far = emdist.GaussianMixture(**kw, **moved).fit(Xt)
    tol = _translation_tol(offset, float32_products)
    assert_allclose(far.means_ - offset, near.means_, rtol=0, atol=tol * _SCALE)
    assert_allclose(far.weights_, near.weights_, rtol=tol)
    assert_allclose(far.covariances_, near.covariances_, rtol=tol, atol=tol * _SCALE**2)
    assert_allclose(
        far.precisions_cholesky_, near.precisions_cholesky_, rtol=tol, atol=tol / _SCALE
    )
    assert_allclose(far.lower_bounds_, near.lower_bounds_, rtol=tol)
    assert_array_equal(far.predict(Xt), near.predict(X))


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")  # n_iter_ is compared instead
@pytest.mark.parametrize("tol", [1e-4, 0.0])
@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize(("offset", "dtype", "step"), TRANSLATIONS)
def test_translating_the_data_moves_only_the_kmeans_centres(
    offset: float, dtype: Any, step: float, kind: str, tol: float
) -> None:
    # numpy runs the in-memory bounds, a Dask array the passes (sums about each cluster's
    # starting centre); tol=0 runs both to strict convergence, where no label changes.
    X, Xt = _translation_pair(offset, dtype, step)
    init = X[[0, 1, 2]].copy()

    def data(A: np.ndarray) -> Any:
        return A if kind == "numpy" else da.from_array(A, chunks=(UNEVEN, A.shape[1]))

    near = emdist.KMeans(n_clusters=3, init=init, tol=tol).fit(data(X))
    far = emdist.KMeans(n_clusters=3, init=init + offset, tol=tol).fit(data(Xt))
    rtol = _translation_tol(offset)
    assert near.converged_ and far.converged_
    assert_array_equal(np.asarray(far.labels_), np.asarray(near.labels_))
    assert far.n_iter_ == near.n_iter_
    assert_allclose(far.cluster_centers_ - offset, near.cluster_centers_, atol=rtol * _SCALE)
    assert_allclose(far.inertia_, near.inertia_, rtol=rtol)


# --- the initialisation sample ------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks", [(N_ROWS,), UNEVEN, (1,) * 20 + (N_ROWS - 20,), (7,) * 85 + (5,)]
)
def test_init_sample_does_not_depend_on_the_chunking(chunks: tuple[int, ...]) -> None:
    X = _data()
    reference = scan_data(da.from_array(X, chunks=(N_ROWS, 3)), seed=123, sample_size=40)
    got = scan_data(da.from_array(X, chunks=(chunks, 3)), seed=123, sample_size=40)
    assert_array_equal(got.sample_rows, reference.sample_rows)
    assert_array_equal(got.sample, reference.sample)
    assert_array_equal(got.sample, X[got.sample_rows])
    assert len(np.unique(got.sample_rows)) == 40
    assert_allclose(got.mean, X.mean(axis=0), rtol=1e-13)
    assert_allclose(got.variance, X.var(axis=0), rtol=1e-12)
    assert got.n_samples == N_ROWS


def test_init_sample_from_zarr_matches_numpy(zarr_path: str) -> None:
    a = scan_data(as_dask_array(zarr_path), seed=9, sample_size=25)
    b = scan_data(as_dask_array(_data()), seed=9, sample_size=25)
    assert_array_equal(a.sample_rows, b.sample_rows)
    assert_array_equal(a.sample, b.sample)
    # Another seed draws another sample.
    c = scan_data(as_dask_array(_data()), seed=10, sample_size=25)
    assert not np.array_equal(np.sort(c.sample_rows), np.sort(b.sample_rows))


def test_default_seeding_does_not_depend_on_the_chunking() -> None:
    # k-means++ runs on the scan sample, which is the same for every chunking: the same
    # starting centres, hence the same lower bounds from the first iteration on (up to the
    # summation order of each pass).
    X = _data()
    seen: list[list[float]] = []
    for chunks in [(N_ROWS,), UNEVEN]:
        km = emdist.KMeans(n_clusters=3, random_state=4, max_iter=300)
        km.fit(da.from_array(X, chunks=(chunks, 3)))
        seen.append(km.lower_bounds_)
    assert_allclose(seen[0], seen[1], rtol=1e-12)
