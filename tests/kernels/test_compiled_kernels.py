"""The compiled mixture E-steps against their numpy references, on random blocks.

The kernels the estimators run (:mod:`emdist.kernels.fused_estep`, dispatched by
``mixture_estep_chunk`` and ``variational_estep_chunk``) must give the statistics of the
plain numpy E-steps in :mod:`emdist.kernels.mixture_reference` (float64, one numpy call per step)
for every shape and input the engine can hand them: one component, one feature, one row,
Fortran-ordered and strided blocks, integer and float32 data, components whose weight
underflows, data far from the origin.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import pytest
from numpy.testing import assert_allclose

from emdist.kernels import MixtureParams, compute_precision_cholesky, mixture_estep_chunk
from emdist.kernels._simd import store_scaled8
from emdist.kernels.fused_estep import (
    _normalise,
    exp_float32,
    group_by_nearest,
    grouped_estep_full32,
    responsibilities,
    shift_log_densities,
)
from emdist.kernels.mixture import MixtureStats
from emdist.kernels.mixture_reference import mixture_estep_reference, variational_estep_reference
from emdist.kernels.rows import RowBlock
from emdist.kernels.variational import VariationalParams, variational_estep_chunk
from tests.conftest import COVARIANCE_TYPES


def _covariances(covariance_type: str, K: int, d: int, rng: np.random.Generator) -> np.ndarray:
    if covariance_type == "full":
        A = rng.standard_normal((K, d, d)) * 0.4
        return np.asarray(A @ A.transpose(0, 2, 1) + 0.5 * np.eye(d))
    if covariance_type == "tied":
        A = rng.standard_normal((d, d)) * 0.4
        return np.asarray(A @ A.T + 0.5 * np.eye(d))
    if covariance_type == "diag":
        return rng.uniform(0.3, 2.0, (K, d))
    return rng.uniform(0.3, 2.0, K)


def _gmm(
    covariance_type: str, K: int, d: int, seed: int = 0, weights: Any = None, offset: float = 0.0
) -> MixtureParams:
    rng = np.random.default_rng(seed)
    covariances = _covariances(covariance_type, K, d, rng)
    if weights is None:
        weights = rng.dirichlet(np.ones(K))
    return MixtureParams(
        np.asarray(weights, dtype=np.float64),
        rng.standard_normal((K, d)) * 1.5 + offset,
        covariances,
        compute_precision_cholesky(covariances, covariance_type),
    )


def _variational(covariance_type: str, K: int, d: int, seed: int = 0) -> VariationalParams:
    rng = np.random.default_rng(seed)
    covariances = _covariances(covariance_type, K, d, rng)
    dof = np.asarray(d + rng.uniform(1.0, 50.0)) if covariance_type == "tied" else None
    return VariationalParams(
        np.stack((1.0 + rng.uniform(0, 30, K), 1.0 + rng.uniform(0, 30, K))),
        rng.uniform(1.0, 40.0, K),
        rng.standard_normal((K, d)) * 1.5,
        dof if dof is not None else d + rng.uniform(1.0, 50.0, K),
        covariances,
        compute_precision_cholesky(covariances, covariance_type),
    )


def _data(n: int, d: int, seed: int = 1, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * 2.0 + offset


def _assert_stats_close(got: MixtureStats, want: MixtureStats, rtol: float) -> None:
    assert got.n == want.n
    for name in ("nk", "sx", "sxx"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == np.float64
        assert a.shape == b.shape
        # Sums of signed terms: compare to the scale of the largest entry.
        assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.max(np.abs(b)))))
    assert_allclose(got.log_lik, want.log_lik, rtol=rtol)


SHAPES = [
    pytest.param(500, 4, 3, id="n500-K4-d3"),
    pytest.param(700, 16, 32, id="n700-K16-d32"),
    pytest.param(300, 1, 5, id="K1"),
    pytest.param(300, 5, 1, id="d1"),
    pytest.param(1, 3, 4, id="one-row"),
    pytest.param(4099, 3, 2, id="sub-blocks-and-a-tail"),
]


@pytest.mark.parametrize(("n", "K", "d"), SHAPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gmm_estep_matches_numpy_reference(covariance_type: str, n: int, K: int, d: int) -> None:
    X = _data(n, d)
    params = _gmm(covariance_type, K, d)
    got = mixture_estep_chunk(RowBlock(X, 0), params, covariance_type)
    want = mixture_estep_reference(RowBlock(X, 0), params, covariance_type)
    _assert_stats_close(got, want, rtol=1e-10)
    assert got.shift is params.means
    # nk sums the responsibilities: exactly one per row.
    assert_allclose(got.nk.sum(), n, rtol=1e-12)


@pytest.mark.parametrize(("n", "K", "d"), SHAPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_variational_estep_matches_numpy_reference(
    covariance_type: str, n: int, K: int, d: int
) -> None:
    X = _data(n, d, seed=2)
    params = _variational(covariance_type, K, d)
    got = variational_estep_chunk(RowBlock(X, 0), params, covariance_type)
    want = variational_estep_reference(RowBlock(X, 0), params, covariance_type)
    _assert_stats_close(got.moments, want.moments, rtol=1e-10)
    assert_allclose(got.resp_log_resp, want.resp_log_resp, rtol=1e-9, atol=1e-9 * n)
    assert got.resp_log_resp <= 0.0  # -entropy


LAYOUTS = {
    "fortran": lambda X: np.asfortranarray(X),
    "strided-rows": lambda X: np.repeat(X, 2, axis=0)[::2],
    "strided-columns": lambda X: np.repeat(X, 2, axis=1)[:, ::2],
    "int64": lambda X: np.round(X * 4).astype(np.int64),
    "int32": lambda X: np.round(X * 4).astype(np.int32),
    "float32": lambda X: X.astype(np.float32),
    "float32-fortran": lambda X: np.asfortranarray(X.astype(np.float32)),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_any_layout_and_dtype_gives_the_reference_statistics(
    covariance_type: str, layout: str
) -> None:
    X = LAYOUTS[layout](_data(600, 6, seed=3))
    params = _gmm(covariance_type, 5, 6, seed=4)
    got = mixture_estep_chunk(RowBlock(X, 0), params, covariance_type)
    # The reference computes everything in float64 from the same values.
    want = mixture_estep_reference(
        RowBlock(np.asarray(X, dtype=np.float64), 0), params, covariance_type
    )
    float32_products = X.dtype == np.float32 and covariance_type in ("full", "tied")
    _assert_stats_close(got, want, rtol=2e-5 if float32_products else 1e-10)
    v = _variational(covariance_type, 5, 6, seed=5)
    got_v = variational_estep_chunk(RowBlock(X, 0), v, covariance_type)
    want_v = variational_estep_reference(
        RowBlock(np.asarray(X, dtype=np.float64), 0), v, covariance_type
    )
    _assert_stats_close(got_v.moments, want_v.moments, rtol=2e-5 if float32_products else 1e-10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("tiny", [1e-12, 1e-250, 0.0])
def test_components_of_tiny_weight(covariance_type: str, tiny: float) -> None:
    K, d = 4, 3
    weights = np.array([0.5, tiny, 0.5 - tiny, tiny])
    weights /= weights.sum()
    X = _data(400, d, seed=6)
    params = _gmm(covariance_type, K, d, seed=7, weights=weights)
    with np.errstate(divide="ignore"):  # log(0) for a weight of exactly zero
        got = mixture_estep_chunk(RowBlock(X, 0), params, covariance_type)
        want = mixture_estep_reference(RowBlock(X, 0), params, covariance_type)
    assert np.all(np.isfinite(got.nk)) and np.all(np.isfinite(got.sxx))
    _assert_stats_close(got, want, rtol=1e-10)
    if tiny == 0.0:
        assert got.nk[1] == 0.0 and got.nk[3] == 0.0


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_far_from_the_origin(covariance_type: str, dtype: Any) -> None:
    # Data and means translated by 1e6: the kernels work on differences to the means, so the
    # statistics (about those means) are those of the untranslated problem.
    step = 2.0**-3 if dtype == np.float32 else 2.0**-10
    X = np.round(_data(500, 4, seed=8) / step) * step  # data + 1e6 exact in the dtype
    params = _gmm(covariance_type, 3, 4, seed=9)
    moved = MixtureParams(
        params.weights, params.means + 1e6, params.covariances, params.precisions_cholesky
    )
    Xt = (X + 1e6).astype(dtype)
    near = mixture_estep_reference(RowBlock(X, 0), params, covariance_type)
    far = mixture_estep_chunk(RowBlock(Xt, 0), moved, covariance_type)
    float32_products = dtype == np.float32 and covariance_type in ("full", "tied")
    # float64: the means at 1e6 keep ~1e-10 of their fraction (ulp(1e6) = 1.2e-10).
    _assert_stats_close(far, near, rtol=2e-5 if float32_products else 1e-8)
    assert far.shift is moved.means


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_components_far_apart_relative_to_their_spread(covariance_type: str, dtype: Any) -> None:
    # The moments are summed about one centre (the mean of the means) and moved to each
    # mean, which costs ~eps (|μ_k - c| / σ_k)² of a component's own moments: components
    # ~300 standard deviations from the centre (and 1e3 from the origin) keep ~1e-9 in
    # float64, far inside what each component's statistics are compared at here.
    rng = np.random.default_rng(10)
    K, d, n = 4, 5, 2000
    centres = rng.standard_normal((K, d)) * 100.0 + 1e3
    X = (centres[rng.integers(0, K, n)] + rng.standard_normal((n, d))).astype(dtype)
    covariances = _covariances(covariance_type, K, d, rng)
    params = MixtureParams(
        np.full(K, 1.0 / K),
        centres + 0.1,
        covariances,
        compute_precision_cholesky(covariances, covariance_type),
    )
    got = mixture_estep_chunk(RowBlock(X, 0), params, covariance_type)
    want = mixture_estep_reference(
        RowBlock(np.asarray(X, dtype=np.float64), 0), params, covariance_type
    )
    float32_products = dtype == np.float32 and covariance_type in ("full", "tied")
    rtol = 2e-5 if float32_products else 1e-7
    assert_allclose(got.nk, want.nk, rtol=rtol, atol=rtol)
    # float32 log-densities about each row's nearest mean: ~1e-6 nats a row (about one
    # shared centre they lost ~eps32 (|x - c| / σ)², 3e-4 a row here).
    assert_allclose(got.log_lik, want.log_lik, rtol=1e-6 if float32_products else rtol)
    # Each component against its own scale (a component's moments are ~nk σ², not ~nk |μ|²).
    per_component = covariance_type != "tied"
    sxx_got = got.sxx.reshape(K, -1) if per_component else got.sxx[None]
    sxx_want = want.sxx.reshape(K, -1) if per_component else want.sxx[None]
    for a, b in zip(sxx_got, sxx_want, strict=True):
        assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.max(np.abs(b))))
    spread = np.sqrt(np.maximum(want.nk, 1.0))[:, None]
    assert_allclose(got.sx / spread, want.sx / spread, atol=rtol * 10)


def _far_mixture(
    covariance_type: str, distance: float, offset: float, K: int = 4, d: int = 16, n: int = 6000
) -> tuple[np.ndarray, MixtureParams]:
    # Components of spread ~1, each `distance` from the data's centre, the whole translated
    # by `offset`; the parameters are near the truth (means off by ~0.1).
    rng = np.random.default_rng(12)
    directions = rng.standard_normal((K, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    centres = distance * directions
    A = rng.standard_normal((K, d, d)) * 0.15 + np.eye(d)
    covariances = A @ A.transpose(0, 2, 1)
    if covariance_type == "tied":
        covariances = covariances.mean(axis=0)
    labels = rng.integers(0, K, n)
    X = centres[labels] + rng.standard_normal((n, d))
    params = MixtureParams(
        np.full(K, 1.0 / K),
        centres + offset + 0.1 * rng.standard_normal((K, d)),
        covariances,
        compute_precision_cholesky(covariances, covariance_type),
    )
    return (X + offset).astype(np.float32), params


def _assert_float32_precision(got: MixtureStats, want: MixtureStats, K: int) -> None:
    # What a fit takes from the statistics, in the units of the components (spread ~1):
    # weights, the means' move (Σ r (x - μ) / Σ r), second moments per row, the bound.
    assert_allclose(got.nk, want.nk, rtol=1e-6, atol=1e-6)
    nk = np.maximum(want.nk, 1.0)
    assert_allclose(got.sx / nk[:, None], want.sx / nk[:, None], rtol=0, atol=2e-6)
    if got.sxx.ndim == 3:
        assert_allclose(got.sxx / nk[:, None, None], want.sxx / nk[:, None, None], atol=1e-5)
    else:
        assert_allclose(got.sxx / nk.sum(), want.sxx / nk.sum(), atol=1e-5)
    assert abs(got.log_lik - want.log_lik) <= 2e-6 * got.n  # nats per row


@pytest.mark.parametrize("offset", [0.0, 1e6], ids=["at-origin", "translated-1e6"])
@pytest.mark.parametrize("distance", [5.0, 50.0, 300.0])
@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_float32_statistics_keep_their_precision_far_from_the_centre(
    covariance_type: str, distance: float, offset: float
) -> None:
    # float32 full/tied run both GEMMs in float32 on features about each row's nearest mean:
    # against float64 on the same float32 values, every statistic keeps float32's precision
    # relative to the component's own spread, whatever the distance of the components from
    # the data's centre or the origin (docs/design.md, "Numerics"). Features about one
    # shared centre lost ~6e-8 (distance / σ)² nats per row: 4e-4 at 50 σ.
    X, params = _far_mixture(covariance_type, distance, offset)
    got = mixture_estep_chunk(RowBlock(X, 0), params, covariance_type)
    want = mixture_estep_reference(RowBlock(X.astype(np.float64), 0), params, covariance_type)
    _assert_float32_precision(got, want, params.n_components)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_float32_statistics_do_not_depend_on_the_blocks(covariance_type: str) -> None:
    # Every block groups its own rows by nearest mean and sums in float64; only the
    # float32 sums within a sub-block depend on which rows share it.
    X, params = _far_mixture(covariance_type, 50.0, 1e6)
    whole = mixture_estep_chunk(RowBlock(X, 0), params, covariance_type)
    parts = [
        mixture_estep_chunk(RowBlock(X[a:b], a), params, covariance_type)
        for a, b in ((0, 1000), (1000, 1001), (1001, 4500), (4500, len(X)))
    ]
    total = parts[0] + parts[1] + parts[2] + parts[3]
    _assert_float32_precision(total, whole, params.n_components)


@pytest.mark.parametrize("offset", [0.0, 1e6], ids=["at-origin", "translated-1e6"])
@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_float32_weighted_statistics_are_those_of_repeated_rows(
    covariance_type: str, offset: float
) -> None:
    # Integer weights: the statistics of the rows repeated that many times (0 drops a row).
    # The float32 tied E-step takes its second moment from the weights alone (a row's
    # responsibilities sum to its weight), full from the weighted responsibilities.
    X, params = _far_mixture(covariance_type, 50.0, offset)
    weights = np.random.default_rng(13).integers(0, 4, len(X)).astype(np.float64)
    got = mixture_estep_chunk(RowBlock(X, 0, weights=weights), params, covariance_type)
    repeated = np.repeat(X.astype(np.float64), weights.astype(np.int64), axis=0)
    want = mixture_estep_reference(RowBlock(repeated, 0), params, covariance_type)
    assert got.n == len(repeated)
    _assert_float32_precision(got, want, params.n_components)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_float32_blocks_smaller_than_the_components(covariance_type: str) -> None:
    # Three rows and six components: most means are no row's nearest (empty groups).
    X, params = _far_mixture(covariance_type, 5.0, 1e6, K=6, n=3)
    got = mixture_estep_chunk(RowBlock(X, 0), params, covariance_type)
    want = mixture_estep_reference(RowBlock(X.astype(np.float64), 0), params, covariance_type)
    _assert_float32_precision(got, want, params.n_components)


def test_float32_rows_are_grouped_by_their_nearest_mean_in_row_order() -> None:
    # The compiled grouping is a stable sort of the rows by their nearest mean: every row's
    # group is its nearest mean (clear of ties here), rows keep their order within a group,
    # and a mean nearest to no row has an empty group.
    rng = np.random.default_rng(14)
    K, d, n = 7, 5, 3000
    means = rng.standard_normal((K, d)) * 10.0 + 1e5
    X = (means[rng.integers(0, K - 1, n)] + rng.standard_normal((n, d))).astype(np.float32)
    centre = means.mean(axis=0)
    centre32 = centre.astype(np.float32)
    directions = np.ascontiguousarray(-2.0 * (means - centre32).T, dtype=np.float32)
    offsets = np.einsum("ki,ki->k", means - centre32, means - centre32)
    order = np.empty(n, dtype=np.int64)
    bounds = np.empty(K + 1, dtype=np.int64)
    group_by_nearest(X, centre32, directions, offsets, 256, order, bounds)
    nearest = np.argmin(((X[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)
    np.testing.assert_array_equal(order, np.argsort(nearest, kind="stable"))
    np.testing.assert_array_equal(bounds, np.searchsorted(np.sort(nearest), np.arange(K + 1)))
    assert bounds[K] - bounds[K - 1] == 0


@numba.njit
def _exp_each(S: np.ndarray, E: np.ndarray) -> None:
    # numba's scalar exp on each float32 value, as the grouped E-steps take it.
    for t in range(S.shape[0]):
        for k in range(S.shape[1]):
            E[t, k] = math.exp(S[t, k])


@pytest.mark.parametrize("floor", [-50.0, -np.inf])
@pytest.mark.parametrize("weighted", [False, True])
def test_float32_one_pass_normalisation_is_the_three_steps_bit_for_bit(
    weighted: bool, floor: float
) -> None:
    # The grouped E-steps normalise each row in one pass and skip exp below the floor: the
    # responsibilities, Σ r, the bound's sums and the components holding a responsibility
    # must be exactly those of shift_log_densities, exp and responsibilities run apart.
    # Without a floor, shifted values below -88 are kept (libm computes their exp, 0 or
    # subnormal).
    rng = np.random.default_rng(15)
    m, K = 97, 9
    L = (rng.standard_normal((m, K)) * 40.0).astype(np.float32)
    L[:, 3] = -1e4  # below the floor in every row: no responsibility anywhere
    const = rng.standard_normal(K)
    weights = rng.uniform(0.1, 3.0, m + 4) if weighted else None

    S = np.empty((m, K), dtype=np.float32)
    amax = np.empty(m)
    shift_log_densities(L, const, S, amax, floor)
    want_r = np.empty((m, K), dtype=np.float32)
    _exp_each(S, want_r)
    want_nk = np.zeros(K)
    want_sums = responsibilities(S, want_r, amax, want_nk, weights, 4)

    got_r = np.empty((m, K), dtype=np.float32)
    got_nk = np.zeros(K)
    active = np.empty(K, dtype=np.int64)
    n_active, *got_sums = _normalise(L, const, got_r, floor, got_nk, weights, 4, active)

    np.testing.assert_array_equal(got_r, want_r)
    np.testing.assert_array_equal(got_nk, want_nk)
    assert tuple(got_sums) == want_sums
    held = np.flatnonzero((want_r != 0).any(axis=0))
    np.testing.assert_array_equal(active[:n_active], held)
    assert 3 not in held


@numba.njit
def _exp_pairs(bits: np.ndarray, libm: np.ndarray, ours: np.ndarray) -> None:
    for i in range(bits.shape[0]):
        x = bits[i : i + 1].view(np.float32)[0]
        libm[i] = math.exp(x)
        ours[i] = exp_float32(x)


def test_float32_exp_is_libm_expf_bit_for_bit() -> None:
    # The grouped E-steps' vectorisable exp must return what numba's math.exp (libm's expf)
    # returns, bit for bit, on every float32 it is used on (|x| < 88): a stride through
    # every float32 bit pattern of [-88, 88], the ends and the values near 0 included.
    top = int(np.float32(88.0).view(np.uint32))
    sample = np.concatenate(
        [np.arange(0, top, 997, dtype=np.uint32), np.arange(0, 4096, dtype=np.uint32), [top - 1]]
    ).astype(np.uint32)
    bits = np.concatenate([sample, sample | np.uint32(0x80000000)])
    values = bits.view(np.float32)
    assert np.abs(values).max() < 88.0 and (values < -87.9).any() and (values > 87.9).any()
    libm = np.empty(len(bits), dtype=np.float32)
    ours = np.empty(len(bits), dtype=np.float32)
    _exp_pairs(bits, libm, ours)
    np.testing.assert_array_equal(ours.view(np.uint32), libm.view(np.uint32))


@numba.njit
def _scaled8_each(src: np.ndarray, scale: np.ndarray, dst: np.ndarray) -> None:
    for i in range(scale.shape[0]):
        store_scaled8(dst.ctypes.data + 8 * i * 4, src.ctypes.data + i * 4, scale[i])


def test_scaled8_stores_the_scalar_float32_products() -> None:
    # The 8-lane store of the float32 full features: the products x_i x_j, bit for bit as
    # float32 multiplies, from an unaligned source to an unaligned place, 8 and no more.
    rng = np.random.default_rng(21)
    src = (rng.standard_normal(300) * np.logspace(-30, 30, 300)).astype(np.float32)
    src[:4] = [np.inf, -0.0, 1e-45, 3e38]
    scale = src[:-8][::-1].copy()
    dst = np.full(8 * len(scale) + 8, 7.0, dtype=np.float32)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        want = (src[np.arange(len(scale))[:, None] + np.arange(8)] * scale[:, None]).ravel()
    _scaled8_each(src, scale, dst)
    np.testing.assert_array_equal(dst[:-8].view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(dst[-8:], 7.0)  # nothing past the last run
    code = next(iter(_scaled8_each.inspect_asm().values()))
    assert "vmulps" in code and "ymm" in code


def _full32_reference(
    X: np.ndarray, order: np.ndarray, bounds: np.ndarray, centres: np.ndarray,
    coefficients: np.ndarray, const: np.ndarray, floor: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:  # fmt: skip
    # What grouped_estep_full32 computes, in float64 numpy: the float32 differences, their
    # features [φ, x - c, 1], the log-densities, the responsibilities above the floor.
    d = X.shape[1]
    K = const.shape[0]
    iu = np.triu_indices(d)
    quad = np.zeros((K, len(iu[0])))
    srx = np.zeros((len(centres), K, d))
    nk = np.zeros((len(centres), K))
    log_norm = r_log_r = 0.0
    for g in range(len(centres)):
        rows = order[bounds[g] : bounds[g + 1]]
        xc = (X[rows].astype(np.float64) - centres[g]).astype(np.float32).astype(np.float64)
        products = (xc[:, :, None] * xc[:, None, :])[:, iu[0], iu[1]]
        A = np.hstack([products, xc, np.ones((len(xc), 1))])
        V = A @ coefficients[g].astype(np.float64) + const
        top = V.max(axis=1, keepdims=True)
        S = V - top
        E = np.where(S < floor, 0.0, np.exp(S))
        total = E.sum(axis=1)
        R = E / total[:, None]
        log_norm += float(np.sum(np.log(total) + top[:, 0]))
        r_log_r += float(np.sum((E * np.where(E > 0, S, 0.0)).sum(axis=1) / total - np.log(total)))
        G = R.T @ A
        quad += G[:, : len(iu[0])]
        srx[g] = G[:, len(iu[0]) : len(iu[0]) + d]
        nk[g] = R.sum(axis=0)
    return quad, srx, nk, log_norm, r_log_r


@pytest.mark.parametrize("rows", [1, 7, 96])
@pytest.mark.parametrize("d", [1, 2, 3, 5, 6, 7, 8, 9, 15, 16, 17, 33])
def test_float32_full_kernel_features_for_any_width(d: int, rows: int) -> None:
    # The float32 full features are written as runs of 8 products that reach up to 7
    # values past each triangle row (into the next row's place, the linear features, or
    # for d < 7 past the sub-block's last row): every width and sub-block height must give
    # the statistics of the same E-step computed in float64, to float32's precision.
    rng = np.random.default_rng(100 + d)
    n, K = 203, 4
    p = d * (d + 1) // 2 + d + 1
    X = (rng.standard_normal((n, d)) * 2.0 + 0.5).astype(np.float32)
    order = rng.permutation(n).astype(np.int64)
    bounds = np.array([0, 60, 61, n], dtype=np.int64)
    centres = rng.standard_normal((3, d)) * 0.3
    coefficients = (rng.standard_normal((3, p, K)) * 0.3).astype(np.float32)
    const = rng.standard_normal(K)
    quad, srx, nk = np.zeros((K, p - d - 1)), np.zeros((3, K, d)), np.zeros((3, K))
    log_norm, r_log_r = grouped_estep_full32(
        X, order, bounds, centres, coefficients, const, np.empty(0), rows, -50.0, quad, srx, nk
    )
    want = _full32_reference(X, order, bounds, centres, coefficients, const, -50.0)
    for got, expected in zip((quad, srx, nk), want[:3], strict=True):
        assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())
    assert_allclose([log_norm, r_log_r], want[3:], rtol=2e-5)
