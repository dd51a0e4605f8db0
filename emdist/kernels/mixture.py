"""Gaussian-mixture E-step on one block, its summable statistics, and the M-step.

Second moments are accumulated about a per-component *shift* (the means of the parameters
the pass runs under), ``Σ r (x - s)(x - s)ᵀ``, and corrected exactly in the M-step. Raw
moments about the origin would cancel catastrophically for data far from the origin
(docs/design.md, "Numerics"); about the previous means the correction is tiny.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from emdist._typing import AnyArray, CovarianceType, FloatArray
from emdist.exceptions import FitError
from emdist.kernels._blocks import (
    as_row_major,
    feature_block_rows,
    iter_sub_blocks_t,
    logsumexp_rows,
)
from emdist.kernels.covariance import covariance_shape
from emdist.kernels.fused_estep import (
    group_by_nearest,
    grouped_estep_full32,
    grouped_estep_tied32,
    log_densities_run,
    moments_run,
)
from emdist.kernels.gaussian import ComponentBlocks, compute_precision_cholesky, log_det_cholesky
from emdist.kernels.kmeans import kmeans_labels_chunk
from emdist.kernels.recent_maps import RecentMaps, recent_maps
from emdist.kernels.rows import RowBlock
from emdist.kernels.scan import row_uniforms

__all__ = [
    "MixtureParams",
    "MixtureStats",
    "empirical_moments",
    "fused_estep",
    "labels_from_log_prob",
    "mixture_estep_chunk",
    "mixture_hard_resp_stats_chunk",
    "mixture_log_prob_chunk",
    "mixture_mstep",
    "mixture_random_resp_stats_chunk",
    "mixture_stats_from_resp",
    "proba_from_log_prob",
    "score_samples_from_log_prob",
]

# scikit-learn adds 10 machine epsilons to every component's weight so that an empty
# component divides by a tiny number instead of zero; we do the same so that our numbers
# agree with it to the last digits.
_NK_EPS = 10 * np.finfo(np.float64).eps

# Shifted log-densities below this are dropped (responsibility 0) in float32: e^-50 is far
# below float32's precision and keeps exp and the moment GEMM off subnormal numbers.
_FLOAT32_LOG_FLOOR = -50.0

# Shifted log-densities below log(tiny) are dropped in float64 (responsibility 0): their
# exp is subnormal (or 0), never more than 2.2e-308 of the row's largest, and subnormal
# responsibilities ran the moment GEMM at half its rate and numpy's exp at a third
# (benchmarks/README.md, "float64 E-step in runs of sub-blocks"). The statistics they fed are
# the same to the last bit unless a component's whole weight is below 1e-290.
_FLOAT64_LOG_FLOOR = float(np.log(np.finfo(np.float64).tiny))

# Features of a run of sub-blocks (float64 elements, ~1 MB, half of one core's L2): the rows
# the float64 E-step runs through per pair of compiled calls (log_densities_run,
# moments_run). Longer runs leave L2; shorter ones pass the GIL more often.
_RUN_FEATURE_ELEMENTS = 1 << 17

# Rows per GEMM of float32 rows by the means' offsets, to find each row's nearest mean.
_ASSIGN_ROWS = 4096

# Rows per sub-block of the float32 tied E-step: its (rows, d + K) GEMM output and the
# (rows, d) differences stay in L1/L2 (benchmarks/README.md, "float32 E-step in one
# compiled call").
_TIED32_ROWS = 256


@dataclass(frozen=True, eq=False)
class MixtureParams:
    """Parameters of a Gaussian mixture.

    Attributes
    ----------
    weights : ndarray of shape (n_components,)
    means : ndarray of shape (n_components, n_features)
    covariances : ndarray
        full (K, d, d), tied (d, d), diag (K, d), spherical (K,).
    precisions_cholesky : ndarray
        Shaped like ``covariances``.
    """

    weights: FloatArray
    means: FloatArray
    covariances: FloatArray
    precisions_cholesky: FloatArray

    @property
    def n_components(self) -> int:
        """Number of components."""
        return int(self.means.shape[0])

    def arrays(self) -> dict[str, FloatArray]:
        """The parameters as a name -> array mapping (for checkpoints and comparisons)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, eq=False)
class MixtureStats:
    """Sufficient statistics of a Gaussian mixture for one E-step, summed over rows.

    Attributes
    ----------
    n : float
        Number of rows.
    log_lik : float
        ``Σ_i log p(x_i)`` under the parameters of the pass (0 for statistics built
        from given responsibilities).
    nk : ndarray of shape (n_components,)
        ``Σ_i r_ik``.
    sx : ndarray of shape (n_components, n_features)
        ``Σ_i r_ik (x_i - s_k)``.
    sxx : ndarray
        Second moments about the shift: full (K, d, d) ``Σ r (x-s)(x-s)ᵀ``; tied (d, d)
        the same summed over components; diag (K, d) ``Σ r (x-s)²``; spherical (K,)
        ``Σ r ‖x-s‖²``.
    shift : ndarray of shape (n_components, n_features)
        The shift ``s_k``; statistics only add when their shifts agree.
    """

    n: float
    log_lik: float
    nk: FloatArray
    sx: FloatArray
    sxx: FloatArray
    shift: FloatArray

    def __add__(self, other: MixtureStats) -> MixtureStats:
        if not isinstance(other, MixtureStats):
            return NotImplemented
        if self.shift is not other.shift and not np.array_equal(self.shift, other.shift):
            raise ValueError("cannot add mixture statistics taken about different shifts")
        return MixtureStats(
            self.n + other.n,
            self.log_lik + other.log_lik,
            self.nk + other.nk,
            self.sx + other.sx,
            self.sxx + other.sxx,
            self.shift,
        )

    @classmethod
    def zero(cls, shift: FloatArray, covariance_type: CovarianceType) -> MixtureStats:
        """The additive identity for statistics about ``shift``."""
        K, d = shift.shape
        sxx = np.zeros(covariance_shape(covariance_type, K, d))
        return cls(0.0, 0.0, np.zeros(K), np.zeros((K, d)), sxx, shift)


def _accumulate(
    blocks: ComponentBlocks,
    resp: FloatArray,
    nk: FloatArray,
    sx: FloatArray,
    sxx: FloatArray,
) -> None:
    """Add one sub-block's contribution to ``nk``, ``sx`` and ``sxx`` in place.

    ``blocks`` holds the sub-block's differences ``Z[k] = x - s_k`` (feature-major) and
    ``resp`` its responsibilities, component-major ``(K, m)``.
    """
    nk += resp.sum(axis=1)
    Z = blocks.Z
    r_col = resp[:, :, None]
    ct = blocks.covariance_type
    if ct == "diag":
        # Σ r (x-s) and Σ r (x-s)² in one batched product over the stacked [Z; Z²].
        both = np.matmul(blocks.ZZ, r_col)[:, :, 0]
        d = sx.shape[1]
        sx += both[:, :d]
        sxx += both[:, d:]
        return
    sx += np.matmul(Z, r_col)[:, :, 0]
    if ct == "spherical":
        sxx += np.einsum("km,km->k", resp, blocks.D)
        return
    # Σ r (x-s)(x-s)ᵀ per component: (Z ⊙ r) Zᵀ, one (d, m) @ (m, d) GEMM each. (syrk on
    # √r ⊙ Z would halve the flops, but OpenBLAS runs this shape at a third of the GEMM rate.)
    W = blocks.Y
    np.multiply(Z, resp[:, None, :], out=W)
    moments = np.matmul(W, Z.transpose(0, 2, 1), out=blocks.moments)
    if ct == "full":
        sxx += moments
    else:
        sxx += moments.sum(axis=0)


def _symmetrise(sxx: FloatArray, covariance_type: CovarianceType) -> FloatArray:
    """Average the GEMM's two triangles, so the second moments are exactly symmetric."""
    if covariance_type == "full":
        return 0.5 * (sxx + sxx.transpose(0, 2, 1))
    if covariance_type == "tied":
        return 0.5 * (sxx + sxx.T)
    return sxx


def mixture_log_prob_chunk(
    X: AnyArray, params: MixtureParams, covariance_type: CovarianceType
) -> FloatArray:
    """Weighted log-densities ``log π_k + log N(x | μ_k, Σ_k)`` of a block, (n, K)."""
    out = np.empty((X.shape[0], params.n_components))
    blocks = ComponentBlocks(params.means, params.precisions_cholesky, covariance_type)
    log_w = np.log(params.weights)[:, None]
    for start, Xt in iter_sub_blocks_t(X, blocks.rows):
        blocks.centre(Xt)
        lp = blocks.log_prob()
        lp += log_w
        out[start : start + Xt.shape[1]] = lp.T
    return out


def mixture_estep_chunk(
    block: RowBlock, params: MixtureParams, covariance_type: CovarianceType
) -> MixtureStats:
    """E-step on one block, reduced at once to sufficient statistics.

    Parameters
    ----------
    block : RowBlock
        The rows (any real dtype and layout), their global offset and per-row inputs.
    params : MixtureParams
        Current parameters; their means are the shift of the statistics.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    MixtureStats
    """
    X = block.x
    shift = params.means
    w = block.weights
    nk, sx, sxx, log_lik, _ = fused_estep(
        X, shift, params.precisions_cholesky, covariance_type, np.log(params.weights), w
    )
    # With weights every sum weighs its row: the statistics of the rows repeated w times
    # (integer weights), so the M-step is unchanged; n counts the total weight.
    n = float(X.shape[0]) if w is None else float(np.sum(w, dtype=np.float64))
    return MixtureStats(n, log_lik, nk, sx, sxx, shift)


def fused_estep(
    X: AnyArray,
    shift: FloatArray,
    precisions_cholesky: FloatArray,
    covariance_type: CovarianceType,
    log_offsets: FloatArray,
    weights: AnyArray | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray, float, float]:
    """The E-step of a Gaussian mixture (EM or variational) on one block, as moments.

    Log-responsibilities ``log ρ_ik = log_offsets_k + log N(x_i | s_k, Σ_k)``, normalised
    over the components, and the moments about ``s_k`` (the means). Every covariance type
    runs, per sub-block that fits in L2, two GEMMs across all components on the rows'
    quadratic features (:mod:`emdist.kernels.quadratic`): the log-densities, then the
    moments under the responsibilities; the features and the log-sum-exp between them are
    compiled (:mod:`emdist.kernels.fused_estep`) and nothing of size ``(n, K)`` is written
    beyond a run of a few sub-blocks: float64 runs the GEMMs of a run's sub-blocks in two
    GIL-free calls (:func:`~emdist.kernels.fused_estep.log_densities_run`, then numpy's
    ``exp`` over the run, :func:`~emdist.kernels.fused_estep.moments_run`), and drops
    responsibilities below ``2.2e-308`` of the row's largest (subnormal numbers, which
    slowed the moment GEMM twofold). float32 data with ``full``/``tied`` runs in float32,
    each row's features about its nearest mean (:func:`_estep_float32_by_nearest_mean`); every other
    dtype and type in float64, as here.
    The numpy reference is :func:`emdist.kernels.mixture_reference.mixture_estep_reference`.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)
        Any real dtype and layout.
    shift : ndarray of shape (n_components, n_features)
        The means.
    precisions_cholesky : ndarray
        Shaped by ``covariance_type``.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    log_offsets : ndarray of shape (n_components,)
        Added to every component's log-density (``log π_k`` for EM).
    weights : ndarray of shape (n_rows,), optional
        Row weights (``sample_weight``): every sum weighs its row, in the same compiled
        loops.

    Returns
    -------
    nk : ndarray of shape (n_components,)
    sx : ndarray of shape (n_components, n_features)
    sxx : ndarray
        As :class:`MixtureStats` (symmetric for ``full`` and ``tied``).
    log_norm : float
        ``Σ_i log Σ_k ρ_ik``.
    r_log_r : float
        ``Σ_i Σ_k r_ik log r_ik``.
    """
    K, d = shift.shape
    X = as_row_major(X)
    n = X.shape[0]
    w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    log_det = np.broadcast_to(log_det_cholesky(precisions_cholesky, covariance_type, d), (K,))
    const = np.ascontiguousarray(log_offsets + log_det - 0.5 * d * np.log(2 * np.pi))
    # Every block of a pass has the same parameters: their maps are built once.
    recent = recent_maps(shift, precisions_cholesky, covariance_type)
    maps = recent.maps
    if X.dtype == np.float32 and covariance_type in ("full", "tied"):
        return _estep_float32_by_nearest_mean(X, recent, const, w)
    coefficients = maps.coefficients
    p = maps.n_columns
    rows = max(1, min(n, feature_block_rows(p, K)))
    run = max(rows, min(n, rows * max(1, _RUN_FEATURE_ELEMENTS // (rows * p))))
    A = np.empty((run, p))
    L = np.empty((run, K))
    S = np.empty((run, K))
    R = np.empty((run, K))
    amax = np.empty(run)
    G = np.zeros((K, p))
    G_sub = np.empty((K, p))
    nk = np.zeros(K)
    weights_or_none = np.empty(0) if w is None else w
    log_norm = r_log_r = 0.0
    for start in range(0, n, run):
        m = min(run, n - start)
        log_densities_run(
            X, start, rows, maps.centre, maps.kind, coefficients, const, _FLOAT64_LOG_FLOOR,
            A[:m], L[:m], S[:m], amax[:m],
        )  # fmt: skip
        np.exp(S[:m], out=R[:m])
        log_norm, r_log_r = moments_run(
            S[:m], R[:m], amax[:m], A[:m], rows, weights_or_none, start, nk, G, G_sub,
            log_norm, r_log_r,
        )  # fmt: skip
    sx, sxx = maps.moments(G, nk)
    return nk, sx, sxx, float(log_norm), float(r_log_r)


def _estep_float32_by_nearest_mean(
    X: AnyArray, recent: RecentMaps, const: FloatArray, w: FloatArray | None
) -> tuple[FloatArray, FloatArray, FloatArray, float, float]:
    """:func:`fused_estep` of float32 rows (``full``/``tied``): every product in float32.

    The rows are grouped by their nearest mean ``μ_g`` and each group's differences are
    taken about ``μ_g``, not about one shared centre: a row is never farther from its
    centre than from any mean, so the float32 log-densities and moment sums carry errors
    of float32's precision relative to the spread of the components the row weighs in,
    whatever their distance from each other or from the origin (the shared centre cost
    ``eps (|μ_k - c| / σ_k)²``, 3e-4 of a covariance at 5 standard deviations in float32).
    The whole block then runs in one compiled call, GEMMs included
    (:func:`~emdist.kernels.fused_estep.grouped_estep_full32`: the quadratic features;
    :func:`~emdist.kernels.fused_estep.grouped_estep_tied32`: the shared precision's
    whitening, no features); every sub-block's sums are added in float64 and moved from
    the group's centre to each mean in float64. docs/design.md, "Numerics".
    """
    maps = recent.maps
    K, d = maps.shift.shape
    n = X.shape[0]
    # The nearest mean in float32: a GEMM of the rows less the means' centre (exact for
    # rows far from the origin, where x and c agree in their leading bits) by -2 δᵀ. Its
    # rounding only makes a row's group a near-nearest mean, which costs nothing. The kernel
    # reads the rows through ``order`` (no gathered copy).
    centre32 = maps.centre.astype(np.float32)
    directions = np.ascontiguousarray(-2.0 * (maps.shift - centre32).T, dtype=np.float32)
    offsets = np.einsum("ki,ki->k", maps.shift - centre32, maps.shift - centre32)
    order = np.empty(n, dtype=np.int64)
    bounds = np.empty(K + 1, dtype=np.int64)
    group_by_nearest(X, centre32, directions, offsets, _ASSIGN_ROWS, order, bounds)
    groups = np.flatnonzero(bounds[1:] > bounds[:-1])
    group_bounds = np.append(bounds[groups], bounds[-1])
    centres = np.ascontiguousarray(maps.shift[groups])
    weights = np.empty(0) if w is None else w
    srx = np.zeros((len(groups), K, d))
    nk = np.zeros((len(groups), K))
    q = maps.n_quadratic
    quad = np.zeros((K, q))
    if maps.covariance_type == "full":
        coefficients = recent.coefficients32_about(groups)
        rows = max(1, min(n, feature_block_rows(maps.n_columns, K)))
        log_norm, r_log_r = grouped_estep_full32(
            X, order, group_bounds, centres, coefficients, const, weights, rows,
            _FLOAT32_LOG_FLOOR, quad, srx, nk,
        )  # fmt: skip
    else:
        whitening, offsets_g = recent.whitening32_about(groups)
        second = np.zeros((d, d))
        log_norm, r_log_r = grouped_estep_tied32(
            X, order, group_bounds, centres, whitening, offsets_g, const,
            weights, _TIED32_ROWS, _FLOAT32_LOG_FLOOR, second, srx, nk,
        )  # fmt: skip
        # The tied move sums over the components: the whole second moment rides on one.
        quad[0] = second[np.triu_indices(d)]
    sx, sxx = maps.moments_about_centres(quad, srx, nk, centres)
    return nk.sum(axis=0), sx, sxx, float(log_norm), float(r_log_r)


def mixture_stats_from_resp(
    X: AnyArray, resp: FloatArray, shift: FloatArray, covariance_type: CovarianceType
) -> MixtureStats:
    """Statistics of one block under given responsibilities (used for initialisation).

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)
    resp : ndarray of shape (n_rows, n_components)
    shift : ndarray of shape (n_components, n_features)
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    MixtureStats
        With ``log_lik = 0``.
    """
    stats = MixtureStats.zero(shift, covariance_type)
    blocks = ComponentBlocks(shift, None, covariance_type)
    for start, Xt in iter_sub_blocks_t(X, blocks.rows):
        blocks.centre(Xt)
        resp_t = np.ascontiguousarray(resp[start : start + Xt.shape[1]].T, dtype=np.float64)
        _accumulate(blocks, resp_t, stats.nk, stats.sx, stats.sxx)
    return MixtureStats(
        float(X.shape[0]),
        0.0,
        stats.nk,
        stats.sx,
        _symmetrise(stats.sxx, covariance_type),
        shift,
    )


def empirical_moments(
    stats: MixtureStats, covariance_type: CovarianceType, reg_covar: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Weighted counts, means and covariances from moments about a shift.

    The M-step of every mixture starts here (Bishop eq. 10.51-10.53 for the variational
    one): as scikit-learn's ``_estimate_gaussian_parameters``, the counts carry 10 machine
    epsilons, the covariances ``reg_covar`` on their diagonal, tied is pooled over the
    components and spherical is the mean of the diagonal. The moments about the shift
    ``s_k`` are centred exactly: ``Σ r (x - x̄)(x - x̄)ᵀ = Σ r (x - s)(x - s)ᵀ - N_k δδᵀ``
    with ``δ = x̄ - s`` (never ``E[xxᵀ] - x̄x̄ᵀ`` from raw moments, which cancels).

    Parameters
    ----------
    stats : MixtureStats
        Statistics summed over the whole dataset.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    reg_covar : float

    Returns
    -------
    nk : ndarray of shape (n_components,)
    means : ndarray of shape (n_components, n_features)
    covariances : ndarray
        Shaped by ``covariance_type``.
    """
    nk_raw = stats.nk
    nk = nk_raw + _NK_EPS
    # Offset of the new mean from the shift; the exact weighted mean centres the moments.
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = np.where(nk_raw[:, None] > 0, stats.sx / nk_raw[:, None], 0.0)
    means = stats.shift + stats.sx / nk[:, None]
    d = means.shape[1]
    diag = np.arange(d)
    if covariance_type == "full":
        centred = stats.sxx - nk_raw[:, None, None] * delta[:, :, None] * delta[:, None, :]
        covariances = centred / nk[:, None, None]
        covariances[:, diag, diag] += reg_covar
    elif covariance_type == "tied":
        centred = stats.sxx - np.einsum("k,ki,kj->ij", nk_raw, delta, delta)
        covariances = centred / nk.sum()
        covariances[diag, diag] += reg_covar
    elif covariance_type == "diag":
        covariances = (stats.sxx - nk_raw[:, None] * delta**2) / nk[:, None] + reg_covar
    else:
        sq = np.sum(delta**2, axis=1)
        covariances = (stats.sxx - nk_raw * sq) / nk / d + reg_covar
    return nk, means, covariances


def mixture_mstep(
    stats: MixtureStats, covariance_type: CovarianceType, reg_covar: float
) -> MixtureParams:
    """M-step: new weights, means and covariances from reduced statistics.

    Parameters
    ----------
    stats : MixtureStats
        Statistics summed over the whole dataset.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    reg_covar : float
        Added to the diagonal of every covariance.

    Returns
    -------
    MixtureParams

    Raises
    ------
    FitError
        If a covariance is not positive definite or a parameter is not finite.
    """
    nk, means, covariances = empirical_moments(stats, covariance_type, reg_covar)
    weights = nk / nk.sum()
    if not (np.all(np.isfinite(means)) and np.all(np.isfinite(covariances))):
        raise FitError(
            "The M-step produced non-finite parameters. Try to decrease the number of "
            "components, increase reg_covar, or scale the input data."
        )
    precisions_cholesky = compute_precision_cholesky(covariances, covariance_type)
    return MixtureParams(weights, means, covariances, precisions_cholesky)


def labels_from_log_prob(X: AnyArray, log_prob: Callable[..., FloatArray], *args: Any) -> AnyArray:
    """Most probable component of every row of a block, from ``log_prob(X, *args)``."""
    return np.asarray(np.argmax(log_prob(X, *args), axis=1))


def proba_from_log_prob(X: AnyArray, log_prob: Callable[..., FloatArray], *args: Any) -> FloatArray:
    """Responsibilities of every row of a block, (n, K), from ``log_prob(X, *args)``."""
    lp = log_prob(X, *args)
    lp -= logsumexp_rows(lp)[:, None]
    return np.exp(lp)


def score_samples_from_log_prob(
    X: AnyArray, log_prob: Callable[..., FloatArray], *args: Any
) -> FloatArray:
    """``log Σ_k exp(log_prob)`` of every row of a block (``log p(x)`` for a GMM)."""
    return logsumexp_rows(log_prob(X, *args))


def mixture_random_resp_stats_chunk(
    block: RowBlock,
    seed: int,
    shift: FloatArray,
    covariance_type: CovarianceType,
    fill: FloatArray | None = None,
) -> MixtureStats:
    """Statistics under random responsibilities (``init_params='random'``).

    Row ``i`` draws its responsibilities from a stream positioned at ``i``, so the
    initialisation does not depend on the chunking. ``fill``: per-feature values that
    replace NaN (missing values, imputed for the start only).
    """
    X, row_offset = block.x, block.row_offset
    if fill is not None:
        X = np.where(np.isnan(X), fill[None, :], X)
    resp = row_uniforms(seed, row_offset, X.shape[0], shift.shape[0])
    resp /= resp.sum(axis=1, keepdims=True)
    if block.weights is not None:
        resp *= np.asarray(block.weights, dtype=np.float64)[:, None]
    return mixture_stats_from_resp(X, resp, shift, covariance_type)


def mixture_hard_resp_stats_chunk(
    block: RowBlock,
    centers: FloatArray,
    shift: FloatArray,
    covariance_type: CovarianceType,
) -> MixtureStats:
    """Statistics under hard assignments to the nearest centre (``init_params='kmeans'``)."""
    X = block.x
    labels = kmeans_labels_chunk(X, centers)
    resp = np.zeros((X.shape[0], centers.shape[0]))
    resp[np.arange(X.shape[0]), labels] = (
        1.0 if block.weights is None else np.asarray(block.weights, dtype=np.float64)
    )
    return mixture_stats_from_resp(X, resp, shift, covariance_type)
