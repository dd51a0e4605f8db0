"""Statistics taken under other parameters, made to add: re-shifting and expected log-likelihoods.

Incremental EM (docs/design.md, "Incremental EM") keeps one statistics value per shard of
the data, each computed under the parameters of the step that visited the shard. Moments
are sums about a shift (the means of those parameters), and two values only add when their
shifts agree, so before they are summed every value is re-expressed about one common shift.
With ``δ = s - t`` (old shift minus new), ``x - t = (x - s) + δ`` gives, exactly,

    Σ r (x - t)          = Σ r (x - s) + N δ
    Σ r (x - t)(x - t)ᵀ  = Σ r (x - s)(x - s)ᵀ + Σ r (x - s) δᵀ + δ Σ r (x - s)ᵀ + N δδᵀ

``δ`` is a change of the means between two steps of one fit, small beside the data's
spread, so this adds no cancellation to speak of (unlike moments about the origin).

The free energy of incremental EM (Neal & Hinton 1998) needs the *expected complete-data
log-likelihood* of stored responsibilities under the current parameters; it is linear in
the statistics, so :func:`mixture_expected_log_lik` computes it from them alone.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from emdist._typing import CovarianceType, FloatArray
from emdist.kernels.gaussian import log_det_cholesky, precisions_from_cholesky
from emdist.kernels.kmeans import KMeansStats
from emdist.kernels.mixture import MixtureParams, MixtureStats

__all__ = ["mixture_expected_log_lik", "rebase_kmeans_stats", "rebase_mixture_stats"]


def rebase_mixture_stats(
    stats: MixtureStats, shift: FloatArray, covariance_type: CovarianceType
) -> MixtureStats:
    """The same statistics about another shift.

    Parameters
    ----------
    stats : MixtureStats
    shift : ndarray of shape (n_components, n_features)
        The new shift.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
        How ``stats.sxx`` is shaped (tied and diag have the same shape when
        ``n_components == n_features``).

    Returns
    -------
    MixtureStats
        ``stats`` itself when the shifts are equal (bit for bit), else a new value about
        ``shift``; ``n`` and ``log_lik`` are carried over unchanged.
    """
    if stats.shift is shift or np.array_equal(stats.shift, shift):
        return stats
    delta = stats.shift - shift
    nk, sx = stats.nk, stats.sx
    new_sx = sx + nk[:, None] * delta
    # Every term is built symmetric (a_i b_j + b_i a_j; N (δ_i δ_j)), so the moments stay
    # exactly symmetric, as the E-step leaves them.
    if covariance_type == "full":
        cross = np.einsum("ki,kj->kij", sx, delta)
        outer = np.einsum("ki,kj->kij", delta, delta)
        sxx = stats.sxx + (cross + cross.transpose(0, 2, 1)) + nk[:, None, None] * outer
    elif covariance_type == "tied":
        cross = np.einsum("ki,kj->kij", sx, delta)
        outer = np.einsum("ki,kj->kij", delta, delta)
        per_k = (cross + cross.transpose(0, 2, 1)) + nk[:, None, None] * outer
        sxx = stats.sxx + per_k.sum(axis=0)
    elif covariance_type == "diag":
        sxx = stats.sxx + 2.0 * sx * delta + nk[:, None] * delta**2
    else:
        sxx = stats.sxx + 2.0 * np.einsum("kd,kd->k", sx, delta) + nk * np.sum(delta**2, axis=1)
    return MixtureStats(stats.n, stats.log_lik, nk, new_sx, sxx, shift)


def mixture_expected_log_lik(
    stats: MixtureStats, params: MixtureParams, covariance_type: CovarianceType
) -> float:
    """``Σ_i Σ_k r_ik log(π_k N(x_i | μ_k, Σ_k))`` for the responsibilities behind ``stats``.

    Parameters
    ----------
    stats : MixtureStats
        Moments of some responsibilities ``r`` (about any shift).
    params : MixtureParams
        The parameters the complete-data log-likelihood is evaluated under.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    float
        A total over rows. For responsibilities computed under ``params`` themselves,
        ``stats.log_lik`` minus this is their entropy.
    """
    about = rebase_mixture_stats(stats, params.means, covariance_type)
    nk = about.nk
    d = params.means.shape[1]
    # log N = log|U| - d/2 log 2π - ½ (x - μ)ᵀ U Uᵀ (x - μ); the quadratic form summed with
    # weights r is Σ_ab M_ab P_ab, M the second moments about μ.
    precisions = precisions_from_cholesky(params.precisions_cholesky, covariance_type)
    if covariance_type == "full":
        quad = np.einsum("kab,kab->k", about.sxx, precisions)
    elif covariance_type == "tied":
        quad = np.asarray(np.sum(about.sxx * precisions))
    elif covariance_type == "diag":
        quad = np.einsum("ka,ka->k", about.sxx, precisions)
    else:
        quad = about.sxx * precisions
    log_det = log_det_cholesky(params.precisions_cholesky, covariance_type, d)
    with np.errstate(divide="ignore"):
        log_w = np.log(params.weights)
    weighted_log_w = np.where(nk > 0, nk * log_w, 0.0)
    total = (
        float(np.sum(weighted_log_w))
        + float(np.sum(nk * (np.asarray(log_det) - 0.5 * d * math.log(2 * math.pi))))
        - 0.5 * float(np.sum(quad))
    )
    return total


def rebase_kmeans_stats(
    stats: KMeansStats, centers: FloatArray, reference: FloatArray | None = None
) -> KMeansStats:
    """K-means statistics of the same assignments, measured from other centres.

    The assignments stay those of the step that made ``stats``. Their sums move to the
    reference points ``reference`` (``Σ (x - r') = Σ (x - r) + n (r - r')``; nothing moves,
    bit for bit, where the reference is the same) and the inertia becomes
    ``Σ ‖x - c_label‖²`` for the new centres (exactly:
    ``‖x - c‖² = ‖x - s‖² + 2 (x - s)·δ + ‖δ‖²`` summed per cluster, ``s`` the old centres,
    ``δ = s - c``). The far-point candidates are measured again from their rows, which they
    carry, and re-ordered.

    Parameters
    ----------
    stats : KMeansStats
    centers : ndarray of shape (n_clusters, n_features)
    reference : ndarray of shape (n_clusters, n_features), optional
        The points the sums are to be about; ``centers`` by default.

    Returns
    -------
    KMeansStats
        ``stats`` itself when the centres and the reference points are equal.
    """
    about = centers if reference is None else reference
    same_centers = stats.shift is centers or np.array_equal(stats.shift, centers)
    same_about = stats.reference is about or np.array_equal(stats.reference, about)
    if same_centers and same_about:
        return stats
    counts = stats.counts
    sx = stats.sx if same_about else stats.sx + counts[:, None] * (stats.reference - about)
    if same_centers:
        return dataclasses.replace(stats, sx=sx, shift=centers, reference=about)
    delta = stats.shift - centers
    # Σ (x - s): the sums about the old centres, from those about the old reference.
    about_shift = stats.sx + counts[:, None] * (stats.reference - stats.shift)
    inertia = (
        stats.inertia
        + 2.0 * float(np.einsum("kd,kd->", about_shift, delta))
        + float(np.sum(counts * np.sum(delta**2, axis=1)))
    )
    diff = stats.far_x - centers[stats.far_label]
    far_dist = np.einsum("nd,nd->n", diff, diff)
    order = np.lexsort((stats.far_row, -far_dist))
    return KMeansStats(
        n=stats.n,
        counts=counts,
        sx=sx,
        inertia=max(inertia, 0.0),
        far_dist=far_dist[order],
        far_row=stats.far_row[order],
        far_label=stats.far_label[order],
        far_x=stats.far_x[order],
        shift=centers,
        reference=about,
        far_w=None if stats.far_w is None else stats.far_w[order],
    )
