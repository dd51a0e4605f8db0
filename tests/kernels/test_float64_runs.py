"""The float64 mixture E-step in runs of sub-blocks against the sub-block-at-a-time loop.

:func:`emdist.kernels.mixture.fused_estep` runs float64 data through
:func:`~emdist.kernels.fused_estep.log_densities_run`, numpy's ``exp`` and
:func:`~emdist.kernels.fused_estep.moments_run`, a few sub-blocks per call, and drops
responsibilities below ``log(tiny)`` (subnormal). The statistics must be those of the loop it
replaced, one sub-block at a time with seven calls each and nothing dropped, bit for bit:
weighted or not, blocks shorter than a sub-block or than the number of components, every
covariance type, near-singular covariances, rows whose responsibilities are subnormal.
"""

from __future__ import annotations

import numpy as np
import pytest

from emdist._typing import CovarianceType
from emdist.kernels import compute_precision_cholesky
from emdist.kernels import mixture as mixture_module
from emdist.kernels._blocks import feature_block_rows
from emdist.kernels.fused_estep import (
    log_densities_run,
    moments_run,
    quadratic_features,
    responsibilities,
    shift_log_densities,
)
from emdist.kernels.gaussian import log_det_cholesky
from emdist.kernels.mixture import fused_estep
from emdist.kernels.quadratic import QuadraticMaps
from tests.conftest import COVARIANCE_TYPES

_TINY_LOG = float(np.log(np.finfo(np.float64).tiny))


def _sub_block_loop(
    X: np.ndarray,
    shift: np.ndarray,
    precisions_cholesky: np.ndarray,
    covariance_type: CovarianceType,
    log_offsets: np.ndarray,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float, np.ndarray]:
    """The float64 E-step one sub-block at a time, nothing dropped (the loop replaced).

    Also returns every responsibility, so that a test can see what was subnormal.
    """
    K, d = shift.shape
    n = X.shape[0]
    log_det = np.broadcast_to(log_det_cholesky(precisions_cholesky, covariance_type, d), (K,))
    const = np.ascontiguousarray(log_offsets + log_det - 0.5 * d * np.log(2 * np.pi))
    maps = QuadraticMaps(shift, precisions_cholesky, covariance_type)
    p = maps.n_columns
    rows = max(1, min(n, feature_block_rows(p, K)))
    A = np.empty((rows, p))
    no_copy = np.empty((0, p), dtype=np.float32)
    L = np.empty((rows, K))
    S = np.empty((rows, K))
    R = np.empty((rows, K))
    amax = np.empty(rows)
    G = np.zeros((K, p))
    G_sub = np.empty((K, p))
    nk = np.zeros(K)
    every_r = np.empty((n, K))
    log_norm = r_log_r = 0.0
    for start in range(0, n, rows):
        m = min(rows, n - start)
        quadratic_features(X, start, maps.centre, maps.kind, A[:m], no_copy)
        np.matmul(A[:m], maps.coefficients, out=L[:m])
        shift_log_densities(L[:m], const, S[:m], amax[:m], -np.inf)
        np.exp(S[:m], out=R[:m])
        norm, rlr = responsibilities(S[:m], R[:m], amax[:m], nk, weights, start)
        log_norm += norm
        r_log_r += rlr
        np.matmul(R[:m].T, A[:m], out=G_sub)
        G += G_sub
        every_r[start : start + m] = R[:m]
    sx, sxx = maps.moments(G, nk)
    return nk, sx, sxx, float(log_norm), float(r_log_r), every_r


def _params(
    covariance_type: CovarianceType, K: int, d: int, rng: np.random.Generator, spread: float = 1.0
) -> np.ndarray:
    """Precision factors of random covariances ``spread`` wide."""
    if covariance_type == "full":
        M = rng.standard_normal((K, d, d)) * 0.4
        cov = spread * (M @ M.transpose(0, 2, 1) + 0.5 * np.eye(d))
    elif covariance_type == "tied":
        M = rng.standard_normal((d, d)) * 0.4
        cov = spread * (M @ M.T + 0.5 * np.eye(d))
    elif covariance_type == "diag":
        cov = spread * rng.uniform(0.3, 2.0, (K, d))
    else:
        cov = spread * rng.uniform(0.3, 2.0, K)
    return compute_precision_cholesky(cov, covariance_type)


def _assert_identical(got: tuple[object, ...], want: tuple[object, ...]) -> None:
    names = ("nk", "sx", "sxx", "log_norm", "r_log_r")
    for name, g, w in zip(names, got, want, strict=False):
        assert np.array_equal(np.asarray(g), np.asarray(w)), name


def _runs_of(sub_blocks: int, n: int, K: int, d: int, covariance_type: CovarianceType) -> int:
    """``_RUN_FEATURE_ELEMENTS`` that makes runs of ``sub_blocks`` sub-blocks."""
    p = QuadraticMaps(
        np.zeros((K, d)), _params(covariance_type, K, d, np.random.default_rng(0)), covariance_type
    ).n_columns
    return sub_blocks * max(1, min(n, feature_block_rows(p, K))) * p


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n", [1, 3, 390, 2345])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_runs_give_the_sub_block_loop_bit_for_bit(
    covariance_type: CovarianceType, n: int, weighted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # K = 10, d = 20, full: 389 rows per sub-block, runs of two. n = 3 < K rows; 390 one
    # sub-block and a row; 2345 three runs, the last of one short sub-block.
    rng = np.random.default_rng(n)
    K, d = 10, 20
    monkeypatch.setattr(
        mixture_module, "_RUN_FEATURE_ELEMENTS", _runs_of(2, n, K, d, covariance_type)
    )
    X = rng.standard_normal((n, d)) * 2.0 + 100.0
    shift = rng.standard_normal((K, d)) * 1.5 + 100.0
    pc = _params(covariance_type, K, d, rng)
    log_w = np.log(rng.dirichlet(np.ones(K)))
    w = rng.uniform(0.0, 3.0, n) if weighted else None
    want = _sub_block_loop(X, shift, pc, covariance_type, log_w, w)
    _assert_identical(fused_estep(X, shift, pc, covariance_type, log_w, w), want)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_subnormal_responsibilities_dropped_change_no_statistic(
    covariance_type: CovarianceType, weighted: bool
) -> None:
    # Two tight clusters of components 38 of their standard deviations apart: the far
    # cluster's shifted log-densities sit around -720, whose exp is subnormal.
    rng = np.random.default_rng(7)
    K, d, n = 4, 3, 3000
    shift = np.zeros((K, d))
    shift[:2, 0] = [0.0, 0.5]
    shift[2:, 0] = [37.9, 38.4]
    X = shift[rng.integers(0, K, n)] + rng.standard_normal((n, d))
    pc = _params(covariance_type, K, d, rng)
    if covariance_type == "full":
        pc = np.broadcast_to(np.eye(d), (K, d, d)).copy()
    elif covariance_type == "tied":
        pc = np.eye(d)
    elif covariance_type == "diag":
        pc = np.ones((K, d))
    else:
        pc = np.ones(K)
    log_w = np.log(np.full(K, 1.0 / K))
    w = rng.uniform(0.0, 3.0, n) if weighted else None
    want = _sub_block_loop(X, shift, pc, covariance_type, log_w, w)
    every_r = want[5]
    subnormal = (every_r > 0) & (every_r < np.finfo(np.float64).tiny)
    assert subnormal.sum() > 100  # the case this test is about
    _assert_identical(fused_estep(X, shift, pc, covariance_type, log_w, w), want)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_near_singular_covariances(covariance_type: CovarianceType) -> None:
    # One direction of every covariance 1e-10 wide (reg_covar's scale and below): most
    # log-densities are far below log(tiny) and the precisions' entries ~1e5.
    rng = np.random.default_rng(3)
    K, d, n = 4, 5, 700
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    scales = np.array([1e-10, 0.5, 1.0, 2.0, 3.0])
    cov = basis @ np.diag(scales) @ basis.T
    cov = 0.5 * (cov + cov.T)
    covs = np.broadcast_to(cov, (K, d, d)).copy() if covariance_type == "full" else cov
    pc = compute_precision_cholesky(covs, covariance_type)
    shift = rng.standard_normal((K, d))
    X = shift[rng.integers(0, K, n)] + rng.standard_normal((n, d)) @ (basis * np.sqrt(scales)).T
    log_w = np.log(np.full(K, 1.0 / K))
    want = _sub_block_loop(X, shift, pc, covariance_type, log_w)
    assert np.all(np.isfinite(want[2]))
    _assert_identical(fused_estep(X, shift, pc, covariance_type, log_w), want)


@pytest.mark.parametrize("sub_blocks", [1, 3, 1000])
def test_the_statistics_do_not_depend_on_the_run_length(
    sub_blocks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs of one sub-block, of three, and the whole block (13 sub-blocks of 389 rows):
    # the same sums in the same order.
    rng = np.random.default_rng(11)
    K, d, n = 10, 20, 5000
    X = rng.standard_normal((n, d))
    shift = rng.standard_normal((K, d))
    pc = _params("full", K, d, rng)
    log_w = np.log(np.full(K, 1.0 / K))
    w = rng.uniform(0.0, 2.0, n)
    want = _sub_block_loop(X, shift, pc, "full", log_w, w)
    elements = _runs_of(sub_blocks, n, K, d, "full")
    monkeypatch.setattr(mixture_module, "_RUN_FEATURE_ELEMENTS", elements)
    _assert_identical(fused_estep(X, shift, pc, "full", log_w, w), want)


def test_run_kernels_leave_no_subnormal_responsibility() -> None:
    # The kernels called directly, as fused_estep calls them, with the float64 floor.
    rng = np.random.default_rng(5)
    K, d, n = 3, 2, 500
    shift = np.array([[0.0, 0.0], [38.0, 0.0], [0.0, 38.2]])
    X = shift[rng.integers(0, K, n)] + rng.standard_normal((n, d))
    pc = np.broadcast_to(np.eye(d), (K, d, d)).copy()
    maps = QuadraticMaps(shift, pc, "full")
    p = maps.n_columns
    const = np.full(K, np.log(1.0 / K) - 0.5 * d * np.log(2 * np.pi))
    A, L, S, R = np.empty((n, p)), np.empty((n, K)), np.empty((n, K)), np.empty((n, K))
    amax = np.empty(n)
    log_densities_run(
        X, 0, 64, maps.centre, maps.kind, maps.coefficients, const, _TINY_LOG, A, L, S, amax
    )
    np.exp(S, out=R)
    nk, G, G_sub = np.zeros(K), np.zeros((K, p)), np.empty((K, p))
    moments_run(S, R, amax, A, 64, np.empty(0), 0, nk, G, G_sub, 0.0, 0.0)
    assert np.all((R == 0) | (R >= np.finfo(np.float64).tiny))
    assert np.count_nonzero(R == 0) > 0
    assert np.allclose(R.sum(axis=1), 1.0)
