"""Per-chunk kernels against independent oracles: scipy, numpy linear algebra, brute force.

The kernels are plain numpy on one block, so they are tested without Dask.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import scipy.stats
from numpy.testing import assert_allclose, assert_array_equal
from scipy.spatial.distance import cdist

import emdist
from emdist.engine.seeding import kmeans_plusplus
from emdist.kernels import (
    KMeansParams,
    MixtureParams,
    RowBlock,
    compute_precision_cholesky,
    estimate_log_gaussian_prob,
    kmeans_estep_chunk,
    kmeans_mstep,
    log_det_cholesky,
    mixture_estep_chunk,
    mixture_mstep,
    mixture_stats_from_resp,
    scan_chunk,
)
from emdist.kernels._blocks import logsumexp_rows
from emdist.kernels.gaussian import (
    covariances_from_precisions,
    precision_cholesky_from_precisions,
    precisions_from_cholesky,
)
from emdist.kernels.scan import row_uniforms
from tests.conftest import COVARIANCE_TYPES

K, D = 4, 3


def _random_covariances(covariance_type: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if covariance_type == "full":
        covs = []
        for _ in range(K):
            A = rng.standard_normal((D, D))
            covs.append(A @ A.T + 0.5 * np.eye(D))
        return np.stack(covs)
    if covariance_type == "tied":
        A = rng.standard_normal((D, D))
        return A @ A.T + 0.5 * np.eye(D)
    if covariance_type == "diag":
        return rng.uniform(0.2, 3.0, (K, D))
    return rng.uniform(0.2, 3.0, K)


def _full_cov(covariances: np.ndarray, covariance_type: str, k: int) -> np.ndarray:
    """Component ``k``'s covariance as a dense (D, D) matrix."""
    if covariance_type == "full":
        return covariances[k]
    if covariance_type == "tied":
        return covariances
    if covariance_type == "diag":
        return np.diag(covariances[k])
    return np.eye(D) * covariances[k]


def _data(n: int = 300, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, D)) * 2.0 + 1.0


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_estimate_log_gaussian_prob_matches_scipy(covariance_type: str) -> None:
    rng = np.random.default_rng(3)
    X = _data()
    means = rng.standard_normal((K, D)) * 3
    covariances = _random_covariances(covariance_type)
    prec_chol = compute_precision_cholesky(covariances, covariance_type)
    ours = estimate_log_gaussian_prob(X, means, prec_chol, covariance_type)
    expected = np.column_stack(
        [
            scipy.stats.multivariate_normal(
                means[k], _full_cov(covariances, covariance_type, k)
            ).logpdf(X)
            for k in range(K)
        ]
    )
    assert ours.shape == (len(X), K)
    assert_allclose(ours, expected, rtol=1e-10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_gaussian_prob_far_from_origin(covariance_type: str) -> None:
    # Differences, not the expansion ‖x‖² - 2x·μ + ‖μ‖²: translating data and means by 1e7
    # must not change the densities beyond the data's own representation error.
    rng = np.random.default_rng(4)
    X = np.round(_data() * 1024) / 1024  # exactly representable after the shift
    means = np.round(rng.standard_normal((K, D)) * 1024) / 1024
    covariances = _random_covariances(covariance_type)
    prec_chol = compute_precision_cholesky(covariances, covariance_type)
    near = estimate_log_gaussian_prob(X, means, prec_chol, covariance_type)
    far = estimate_log_gaussian_prob(X + 1e7, means + 1e7, prec_chol, covariance_type)
    assert_allclose(far, near, rtol=1e-6)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_compute_precision_cholesky_matches_numpy_inverse(covariance_type: str) -> None:
    covariances = _random_covariances(covariance_type, seed=5)
    U = compute_precision_cholesky(covariances, covariance_type)
    assert U.shape == covariances.shape
    if covariance_type in ("full", "tied"):
        Us = U if covariance_type == "full" else U[None]
        covs = covariances if covariance_type == "full" else covariances[None]
        for u, cov in zip(Us, covs, strict=True):
            assert_array_equal(np.tril(u, -1), 0.0)  # upper triangular
            assert np.all(np.diag(u) > 0)
            assert_allclose(u @ u.T, np.linalg.inv(cov), rtol=1e-10, atol=1e-12)
        assert_allclose(
            precisions_from_cholesky(U, covariance_type), np.linalg.inv(covariances), rtol=1e-10
        )
    else:
        assert_allclose(U**2, 1.0 / covariances, rtol=1e-12)
        assert_allclose(precisions_from_cholesky(U, covariance_type), 1.0 / covariances)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_det_cholesky_is_minus_half_log_det_covariance(covariance_type: str) -> None:
    covariances = _random_covariances(covariance_type, seed=6)
    U = compute_precision_cholesky(covariances, covariance_type)
    ours = np.broadcast_to(log_det_cholesky(U, covariance_type, D), (K,))
    expected = [
        -0.5 * np.linalg.slogdet(_full_cov(covariances, covariance_type, k))[1] for k in range(K)
    ]
    assert_allclose(ours, expected, rtol=1e-10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_precisions_round_trip(covariance_type: str) -> None:
    covariances = _random_covariances(covariance_type, seed=7)
    precisions = precisions_from_cholesky(
        compute_precision_cholesky(covariances, covariance_type), covariance_type
    )
    assert_allclose(
        covariances_from_precisions(precisions, covariance_type), covariances, rtol=1e-9
    )
    chol = precision_cholesky_from_precisions(precisions, covariance_type)
    assert_allclose(precisions_from_cholesky(chol, covariance_type), precisions, rtol=1e-10)


@pytest.mark.parametrize(
    ("covariance_type", "covariances", "match"),
    [
        ("full", np.stack([np.eye(2), np.eye(2), -np.eye(2)]), "component 2"),
        ("tied", np.array([[1.0, 2.0], [2.0, 1.0]]), "tied"),
        ("diag", np.array([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]), "component 1"),
        ("spherical", np.array([1.0, 1.0, -1.0]), "component 2"),
    ],
)
def test_compute_precision_cholesky_rejects_non_positive_definite(
    covariance_type: str, covariances: np.ndarray, match: str
) -> None:
    with pytest.raises(emdist.FitError, match=match) as info:
        compute_precision_cholesky(covariances, covariance_type)
    assert "reg_covar" in str(info.value)


def test_logsumexp_rows_matches_scipy() -> None:
    rng = np.random.default_rng(8)
    a = rng.standard_normal((50, 5)) * 300
    a[3] = -np.inf  # a row with no mass: log 0 = -inf, not NaN
    a[4, 2] = -np.inf
    with np.errstate(divide="ignore"):  # log(0) for the empty row is the point
        ours = logsumexp_rows(a.copy())
    expected = scipy.special.logsumexp(a, axis=1)
    assert_array_equal(np.isneginf(ours), np.isneginf(expected))
    finite = np.isfinite(expected)
    assert_allclose(ours[finite], expected[finite], rtol=1e-13)


def _brute_mixture_stats(X, params, covariance_type):
    """Responsibilities from scipy densities, then textbook weighted moments."""
    covs = [_full_cov(params.covariances, covariance_type, k) for k in range(K)]
    log_p = np.column_stack(
        [
            np.log(params.weights[k])
            + scipy.stats.multivariate_normal(params.means[k], covs[k]).logpdf(X)
            for k in range(K)
        ]
    )
    log_norm = scipy.special.logsumexp(log_p, axis=1)
    resp = np.exp(log_p - log_norm[:, None])
    return resp, float(log_norm.sum())


def _mixture_params(covariance_type: str, seed: int = 9) -> MixtureParams:
    rng = np.random.default_rng(seed)
    covariances = _random_covariances(covariance_type, seed)
    weights = rng.uniform(0.5, 1.5, K)
    return MixtureParams(
        weights / weights.sum(),
        rng.standard_normal((K, D)) * 2 + 1,
        covariances,
        compute_precision_cholesky(covariances, covariance_type),
    )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_mixture_estep_chunk_matches_brute_force(covariance_type: str) -> None:
    X = _data(n=500)
    params = _mixture_params(covariance_type)
    stats = mixture_estep_chunk(RowBlock(X, 0), params, covariance_type)
    resp, log_lik = _brute_mixture_stats(X, params, covariance_type)
    s = params.means  # the statistics are taken about the current means

    assert stats.n == len(X)
    assert_allclose(stats.log_lik, log_lik, rtol=1e-11)
    assert_allclose(stats.nk, resp.sum(axis=0), rtol=1e-11)
    assert_allclose(stats.sx, resp.T @ X - resp.sum(axis=0)[:, None] * s, rtol=1e-9, atol=1e-9)
    Z = X[:, None, :] - s[None, :, :]  # (n, K, D)
    full = np.einsum("nk,nki,nkj->kij", resp, Z, Z)
    expected_sxx = {
        "full": full,
        "tied": full.sum(axis=0),
        "diag": np.einsum("kii->ki", full),
        "spherical": np.einsum("kii->k", full),
    }[covariance_type]
    assert_allclose(stats.sxx, expected_sxx, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_mixture_mstep_matches_weighted_moments(covariance_type: str) -> None:
    rng = np.random.default_rng(10)
    X = _data(n=400) + 50.0  # away from the origin and from the shift
    resp = rng.dirichlet(np.ones(K), size=len(X))
    shift = rng.standard_normal((K, D))
    reg = 1e-3
    params = mixture_mstep(
        mixture_stats_from_resp(X, resp, shift, covariance_type), covariance_type, reg
    )
    nk = resp.sum(axis=0)
    means = resp.T @ X / nk[:, None]
    covs = np.stack([((X - means[k]).T * resp[:, k]) @ (X - means[k]) / nk[k] for k in range(K)])
    expected = {
        "full": covs + reg * np.eye(D),
        "tied": np.einsum("k,kij->ij", nk, covs) / nk.sum() + reg * np.eye(D),
        "diag": np.einsum("kii->ki", covs) + reg,
        "spherical": np.einsum("kii->k", covs) / D + reg,
    }[covariance_type]
    assert_allclose(params.weights, nk / len(X), rtol=1e-12)
    assert_allclose(params.means, means, rtol=1e-12)
    assert_allclose(params.covariances, expected, rtol=1e-9, atol=1e-12)
    assert_allclose(
        params.precisions_cholesky,
        compute_precision_cholesky(expected, covariance_type),
        rtol=1e-8,
        atol=1e-12,
    )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_mixture_estep_accumulates_float32_in_float64(covariance_type: str) -> None:
    X64 = np.round(_data(n=300) * 64) / 64  # exactly representable in float32
    X32 = X64.astype(np.float32)
    params = _mixture_params(covariance_type)
    a = mixture_estep_chunk(RowBlock(X32, 0), params, covariance_type)
    b = mixture_estep_chunk(RowBlock(X64, 0), params, covariance_type)
    # full/tied run their GEMMs in float32 for float32 data (README, "Precision"): float32's
    # digits; diag/spherical compute in float64 whatever the input, so the same numbers.
    rtol = 1e-5 if covariance_type in ("full", "tied") else 1e-12
    for name in ("nk", "sx", "sxx"):
        assert getattr(a, name).dtype == np.float64
        scale = np.max(np.abs(getattr(b, name)))
        assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=rtol * scale)
    assert_allclose(a.log_lik, b.log_lik, rtol=rtol)


def test_kmeans_estep_chunk_matches_brute_force() -> None:
    rng = np.random.default_rng(11)
    X = rng.standard_normal((257, D)) * 3
    centers = rng.standard_normal((K, D)) * 3
    stats = kmeans_estep_chunk(RowBlock(X, 1000), KMeansParams(centers))
    dist = cdist(X, centers, "sqeuclidean")
    labels = dist.argmin(axis=1)
    d_min = dist[np.arange(len(X)), labels]
    assert stats.n == len(X)
    assert_array_equal(stats.counts, np.bincount(labels, minlength=K))
    expected_sx = np.stack([(X[labels == k] - centers[k]).sum(axis=0) for k in range(K)])
    assert_allclose(stats.sx, expected_sx, rtol=1e-12, atol=1e-12)
    assert_allclose(stats.inertia, d_min.sum(), rtol=1e-12)
    # The K farthest rows from their centres, farthest first, with global row numbers.
    far = np.argsort(-d_min, kind="stable")[:K]
    assert_array_equal(stats.far_row, far + 1000)
    assert_allclose(stats.far_dist, d_min[far], rtol=1e-12)
    assert_array_equal(stats.far_label, labels[far])
    assert_array_equal(stats.far_x, X[far])


def test_kmeans_hand_solved_four_points() -> None:
    # Two obvious clusters; the new centres are the means, the inertia is by hand 4 * (1² + 1²).
    X = np.array([[0.0, 1.0], [0.0, -1.0], [10.0, 1.0], [10.0, -1.0]])
    stats = kmeans_estep_chunk(RowBlock(X, 0), KMeansParams(np.array([[1.0, 0.0], [9.0, 0.0]])))
    assert stats.inertia == pytest.approx(4 * 2.0)
    params, relocated = kmeans_mstep(stats)
    assert relocated == 0
    assert_allclose(params.centers, [[0.0, 0.0], [10.0, 0.0]])


def test_kmeans_mstep_reseeds_empty_cluster_from_farthest_point() -> None:
    X = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 0.0], [11.0, 0.0], [30.0, 0.0]])
    X = X + 100.0  # nowhere near the origin
    centers = np.array([[101.0, 100.0], [110.5, 100.0], [-500.0, -500.0]])
    stats = kmeans_estep_chunk(RowBlock(X, 0), KMeansParams(centers))
    assert stats.counts[2] == 0
    params, relocated = kmeans_mstep(stats)
    assert relocated == 1
    # Row 5 (130, 100) is farthest from its centre (cluster 1): it becomes cluster 2's centre
    # and leaves cluster 1, whose centre is the mean of the two rows left.
    assert_allclose(params.centers[2], [130.0, 100.0])
    assert_allclose(params.centers[1], [110.5, 100.0])
    assert_allclose(params.centers[0], [101.0, 100.0])
    # The re-seeded cluster's sums are taken about its new centre from now on; the others
    # keep their reference points (the centres of the step, as none was given).
    assert_array_equal(params.reference[2], X[5])
    assert_array_equal(params.reference[:2], centers[:2])


def test_kmeans_estep_sums_about_the_reference_and_measures_from_the_centres() -> None:
    rng = np.random.default_rng(12)
    X = rng.standard_normal((300, D)) * 3 + 40.0
    centers = X[:K] + 0.25
    reference = X[10 : 10 + K].copy()
    stats = kmeans_estep_chunk(RowBlock(X, 0), KMeansParams(centers, reference))
    labels = cdist(X, centers, "sqeuclidean").argmin(axis=1)
    expected_sx = np.stack([(X[labels == k] - reference[k]).sum(axis=0) for k in range(K)])
    assert_allclose(stats.sx, expected_sx, rtol=1e-12, atol=1e-11)
    assert_allclose(stats.inertia, float(((X - centers[labels]) ** 2).sum()), rtol=1e-12)
    assert stats.shift is centers and stats.reference is reference
    params, _ = kmeans_mstep(stats)
    means = np.stack([X[labels == k].mean(axis=0) for k in range(K)])
    assert_allclose(params.centers, means, rtol=1e-13)
    assert params.reference is not None
    assert_array_equal(params.reference, reference)


def test_kmeans_same_labels_give_the_same_centres_bit_for_bit() -> None:
    # Two steps under different centres that assign every row alike: about a fixed reference
    # the sums and so the centres are equal bit for bit, whatever the centres of the step
    # (about the step's own centres they may differ in the last digits).
    rng = np.random.default_rng(13)
    X = rng.standard_normal((4000, D)) + np.repeat(np.eye(K, D) * 20.0, 1000, axis=0) + 1e3
    start = X[[0, 1000, 2000, 3000]].copy()
    labels = cdist(X, start, "sqeuclidean").argmin(axis=1)
    means = np.stack([X[labels == k].mean(axis=0) for k in range(K)])
    a, b = means + 1e-3, means - 1e-3
    assert_array_equal(cdist(X, a, "sqeuclidean").argmin(1), labels)
    assert_array_equal(cdist(X, b, "sqeuclidean").argmin(1), labels)
    step_a = kmeans_mstep(kmeans_estep_chunk(RowBlock(X, 0), KMeansParams(a, start)))[0]
    step_b = kmeans_mstep(kmeans_estep_chunk(RowBlock(X, 0), KMeansParams(b, start)))[0]
    assert_array_equal(step_a.centers, step_b.centers)
    assert_allclose(step_a.centers, means, rtol=1e-14)


def test_kmeans_reference_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="reference points have shape"):
        KMeansParams(np.zeros((K, D)), np.zeros((K + 1, D)))


def test_scan_chunk_moments_and_sample() -> None:
    X = _data(n=200) + 1e6
    s = scan_chunk(RowBlock(X, 40), seed=3, sample_size=17)
    assert s.n == 200
    assert_allclose(s.mean, X.mean(axis=0), rtol=1e-14)
    assert_allclose(s.variance, X.var(axis=0), rtol=1e-10)
    assert (s.bad_row, s.bad_col) == (-1, -1)
    assert len(s.sample_rows) == 17 == len(np.unique(s.sample_rows))
    assert_array_equal(s.sample, X[s.sample_rows - 40])
    # The sample is the rows with the smallest keys of the global stream.
    keys = row_uniforms(3, 40, 200)[:, 0]
    assert_array_equal(np.sort(s.sample_rows - 40), np.sort(np.argsort(keys)[:17]))


def test_scan_chunk_finds_first_non_finite_value() -> None:
    X = _data(n=50)
    X[31, 2] = np.inf
    X[12, 1] = np.nan
    s = scan_chunk(RowBlock(X, 100), seed=0, sample_size=5)
    assert (s.bad_row, s.bad_col) == (112, 1)


@pytest.mark.parametrize(("start", "n", "per_row"), [(0, 9, 1), (3, 5, 1), (5, 7, 3), (1, 1, 4)])
def test_row_uniforms_depend_only_on_the_row(start: int, n: int, per_row: int) -> None:
    whole = row_uniforms(42, 0, 20, per_row)
    assert_array_equal(row_uniforms(42, start, n, per_row), whole[start : start + n])
    assert np.all((whole >= 0) & (whole < 1))


def test_kmeans_plusplus_picks_distinct_rows_and_survives_duplicates() -> None:
    X = np.array([[0.0, 0.0]] * 5 + [[5.0, 5.0]] * 5 + [[9.0, 0.0]] * 5) + 3.0
    idx = kmeans_plusplus(X, 3, np.random.default_rng(0))
    assert len({tuple(r) for r in X[idx]}) == 3  # one seed per distinct point
    # More clusters than distinct rows: still valid row indices, no centre invented.
    idx = kmeans_plusplus(X, 4, np.random.default_rng(0))
    assert len(np.unique(idx)) == 4
    assert np.all((idx >= 0) & (idx < len(X)))
