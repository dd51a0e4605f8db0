"""Gaussian-mixture E-step on one block, its summable statistics, and the M-step.

Second moments are accumulated about a per-component *shift* (the means of the parameters
the pass runs under), ``Σ r (x - s)(x - s)ᵀ``, and corrected exactly in the M-step. Raw
moments about the origin would cancel catastrophically for data far from the origin
(DESIGN.md §3); about the previous means the correction is tiny.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from emdist._typing import AnyArray, CovarianceType, FloatArray
from emdist.exceptions import FitError
from emdist.kernels._blocks import iter_sub_blocks, logsumexp_rows, sub_block_rows
from emdist.kernels.gaussian import compute_precision_cholesky, estimate_log_gaussian_prob

__all__ = [
    "MixtureParams",
    "MixtureStats",
    "mixture_estep_chunk",
    "mixture_labels_chunk",
    "mixture_log_prob_chunk",
    "mixture_mstep",
    "mixture_proba_chunk",
    "mixture_score_samples_chunk",
    "mixture_stats_from_resp",
]

# scikit-learn adds 10 machine epsilons to every component's weight so that an empty
# component divides by a tiny number instead of zero; we do the same so that our numbers
# agree with it to the last digits.
_NK_EPS = 10 * np.finfo(np.float64).eps


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
        sxx_shape = {"full": (K, d, d), "tied": (d, d), "diag": (K, d), "spherical": (K,)}
        return cls(0.0, 0.0, np.zeros(K), np.zeros((K, d)), np.zeros(sxx_shape[covariance_type]), shift)


def _accumulate(
    Xb: FloatArray,
    resp: FloatArray,
    shift: FloatArray,
    covariance_type: CovarianceType,
    nk: FloatArray,
    sx: FloatArray,
    sxx: FloatArray,
) -> None:
    """Add one sub-block's contribution to ``nk``, ``sx`` and ``sxx`` in place."""
    nk += resp.sum(axis=0)
    for k in range(shift.shape[0]):
        Z = Xb - shift[k]
        r = resp[:, k]
        sx[k] += r @ Z
        if covariance_type == "full" or covariance_type == "tied":
            # (W.T @ W) with W = sqrt(r) Z lets numpy call syrk: half the flops of a GEMM.
            W = Z * np.sqrt(r)[:, None]
            if covariance_type == "full":
                sxx[k] += W.T @ W
            else:
                sxx += W.T @ W
        elif covariance_type == "diag":
            np.square(Z, out=Z)
            sxx[k] += r @ Z
        else:
            np.square(Z, out=Z)
            sxx[k] += r @ Z.sum(axis=1)


def mixture_log_prob_chunk(
    X: AnyArray, params: MixtureParams, covariance_type: CovarianceType
) -> FloatArray:
    """Weighted log-densities ``log π_k + log N(x | μ_k, Σ_k)`` of a block, (n, K)."""
    out = np.empty((X.shape[0], params.n_components))
    rows = sub_block_rows(params.means.size)
    log_w = np.log(params.weights)
    for start, Xb in iter_sub_blocks(X, rows):
        lp = estimate_log_gaussian_prob(
            Xb, params.means, params.precisions_cholesky, covariance_type
        )
        out[start : start + len(Xb)] = lp + log_w
    return out


def mixture_estep_chunk(
    X: AnyArray, params: MixtureParams, covariance_type: CovarianceType
) -> MixtureStats:
    """E-step on one block, reduced at once to sufficient statistics.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)
        The block (any real dtype; computed in float64).
    params : MixtureParams
        Current parameters; their means are the shift of the statistics.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    MixtureStats
    """
    shift = params.means
    stats = MixtureStats.zero(shift, covariance_type)
    nk, sx, sxx = stats.nk, stats.sx, stats.sxx
    log_lik = 0.0
    log_w = np.log(params.weights)
    rows = sub_block_rows(params.means.size)
    for _, Xb in iter_sub_blocks(X, rows):
        lp = estimate_log_gaussian_prob(
            Xb, params.means, params.precisions_cholesky, covariance_type
        )
        lp += log_w
        log_norm = logsumexp_rows(lp)
        log_lik += float(log_norm.sum())
        lp -= log_norm[:, None]
        resp = np.exp(lp)
        _accumulate(Xb, resp, shift, covariance_type, nk, sx, sxx)
    return MixtureStats(float(X.shape[0]), log_lik, nk, sx, sxx, shift)


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
    rows = sub_block_rows(shift.size)
    for start, Xb in iter_sub_blocks(X, rows):
        _accumulate(
            Xb, resp[start : start + len(Xb)], shift, covariance_type, stats.nk, stats.sx, stats.sxx
        )
    return MixtureStats(float(X.shape[0]), 0.0, stats.nk, stats.sx, stats.sxx, shift)


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
    nk_raw = stats.nk
    nk = nk_raw + _NK_EPS
    # Offset of the new mean from the shift; the exact weighted mean centres the moments.
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = np.where(nk_raw[:, None] > 0, stats.sx / nk_raw[:, None], 0.0)
    means = stats.shift + stats.sx / nk[:, None]
    K, d = means.shape
    if covariance_type == "full":
        centred = stats.sxx - nk_raw[:, None, None] * delta[:, :, None] * delta[:, None, :]
        covariances = centred / nk[:, None, None]
        covariances[:, np.arange(d), np.arange(d)] += reg_covar
    elif covariance_type == "tied":
        centred = stats.sxx - np.einsum("k,ki,kj->ij", nk_raw, delta, delta)
        covariances = centred / nk.sum()
        covariances[np.arange(d), np.arange(d)] += reg_covar
    elif covariance_type == "diag":
        covariances = (stats.sxx - nk_raw[:, None] * delta**2) / nk[:, None] + reg_covar
    else:
        sq = np.sum(delta**2, axis=1)
        covariances = (stats.sxx - nk_raw * sq) / nk / d + reg_covar
    weights = nk / nk.sum()
    if not (np.all(np.isfinite(means)) and np.all(np.isfinite(covariances))):
        raise FitError(
            "The M-step produced non-finite parameters. Try to decrease the number of "
            "components, increase reg_covar, or scale the input data."
        )
    precisions_cholesky = compute_precision_cholesky(covariances, covariance_type)
    return MixtureParams(weights, means, covariances, precisions_cholesky)


def mixture_labels_chunk(
    X: AnyArray, params: MixtureParams, covariance_type: CovarianceType
) -> AnyArray:
    """Most probable component of every row of a block."""
    return np.argmax(mixture_log_prob_chunk(X, params, covariance_type), axis=1)


def mixture_proba_chunk(
    X: AnyArray, params: MixtureParams, covariance_type: CovarianceType
) -> FloatArray:
    """Responsibilities of every row of a block, (n, K)."""
    lp = mixture_log_prob_chunk(X, params, covariance_type)
    lp -= logsumexp_rows(lp)[:, None]
    return np.exp(lp)


def mixture_score_samples_chunk(
    X: AnyArray, params: MixtureParams, covariance_type: CovarianceType
) -> FloatArray:
    """``log p(x)`` of every row of a block."""
    return logsumexp_rows(mixture_log_prob_chunk(X, params, covariance_type))


def mixture_random_resp_stats_chunk(
    X: AnyArray,
    row_offset: int,
    seed: int,
    shift: FloatArray,
    covariance_type: CovarianceType,
) -> MixtureStats:
    """Statistics under random responsibilities (``init_params='random'``).

    Row ``i`` draws its responsibilities from a stream positioned at ``i``, so the
    initialisation does not depend on the chunking.
    """
    from emdist.kernels.scan import row_uniforms

    resp = row_uniforms(seed, row_offset, X.shape[0], shift.shape[0])
    resp /= resp.sum(axis=1, keepdims=True)
    return mixture_stats_from_resp(X, resp, shift, covariance_type)


def mixture_hard_resp_stats_chunk(
    X: AnyArray, centers: FloatArray, shift: FloatArray, covariance_type: CovarianceType
) -> MixtureStats:
    """Statistics under hard assignments to the nearest centre (``init_params='kmeans'``)."""
    from emdist.kernels.kmeans import kmeans_labels_chunk

    labels = kmeans_labels_chunk(X, centers)
    resp = np.zeros((X.shape[0], centers.shape[0]))
    resp[np.arange(X.shape[0]), labels] = 1.0
    return mixture_stats_from_resp(X, resp, shift, covariance_type)
