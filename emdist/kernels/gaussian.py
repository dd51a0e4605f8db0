"""Gaussian log-densities through the Cholesky factor of the precision.

For a component with covariance ``Σ = L Lᵀ`` the precision Cholesky factor is
``U = L⁻ᵀ`` (upper triangular), so ``(x - μ)ᵀ Σ⁻¹ (x - μ) = ‖xU - μU‖²`` and
``log|Σ|^{-1/2} = Σ log diag(U)``. No inverse or determinant is ever formed.

Shapes of ``precisions_cholesky`` by covariance type (as scikit-learn):
``full`` (K, d, d), ``tied`` (d, d), ``diag`` (K, d), ``spherical`` (K,).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from emdist._typing import CovarianceType, FloatArray
from emdist.exceptions import FitError

__all__ = [
    "compute_precision_cholesky",
    "covariances_from_precisions",
    "estimate_log_gaussian_prob",
    "log_det_cholesky",
    "precision_cholesky_from_precisions",
    "precisions_from_cholesky",
]

_COLLAPSE_ADVICE = (
    "Try to decrease the number of components, increase reg_covar, or scale the input data."
)


def compute_precision_cholesky(
    covariances: FloatArray, covariance_type: CovarianceType
) -> FloatArray:
    """Cholesky factors of the precision matrices, from the covariances.

    Parameters
    ----------
    covariances : ndarray
        Covariances, shaped by ``covariance_type`` (full (K, d, d), tied (d, d),
        diag (K, d), spherical (K,)).
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    ndarray
        Upper-triangular ``U`` with ``U Uᵀ = Σ⁻¹``, shaped like ``covariances``.

    Raises
    ------
    FitError
        If a covariance is not positive definite; the message names the component.
    """
    if covariance_type in ("full", "tied"):
        covs = covariances[None] if covariance_type == "tied" else covariances
        out = np.empty_like(covs)
        d = covs.shape[-1]
        eye = np.eye(d)
        for k, cov in enumerate(covs):
            try:
                chol = scipy.linalg.cholesky(cov, lower=True)
            except scipy.linalg.LinAlgError:
                who = "the tied covariance" if covariance_type == "tied" else f"component {k}"
                raise FitError(
                    f"The covariance of {who} is not positive definite (a collapsed or "
                    f"singular component). {_COLLAPSE_ADVICE}"
                ) from None
            out[k] = scipy.linalg.solve_triangular(chol, eye, lower=True).T
        return out[0] if covariance_type == "tied" else out
    bad = np.flatnonzero(np.any(np.reshape(covariances <= 0.0, (len(covariances), -1)), axis=1))
    if bad.size or not np.all(np.isfinite(covariances)):
        who = f"component {int(bad[0])}" if bad.size else "a component"
        raise FitError(f"The variance of {who} is not positive (collapsed). {_COLLAPSE_ADVICE}")
    return np.asarray(1.0 / np.sqrt(covariances), dtype=np.float64)


def precisions_from_cholesky(
    precisions_cholesky: FloatArray, covariance_type: CovarianceType
) -> FloatArray:
    """Precision matrices ``U Uᵀ`` from their Cholesky factors."""
    if covariance_type == "full":
        return np.einsum("kij,klj->kil", precisions_cholesky, precisions_cholesky)
    if covariance_type == "tied":
        return precisions_cholesky @ precisions_cholesky.T
    return precisions_cholesky**2


def covariances_from_precisions(
    precisions: FloatArray, covariance_type: CovarianceType
) -> FloatArray:
    """Covariances from user-given precisions (used for ``precisions_init``)."""
    if covariance_type == "full":
        return np.stack([np.linalg.inv(p) for p in precisions])
    if covariance_type == "tied":
        return np.asarray(np.linalg.inv(precisions), dtype=np.float64)
    return 1.0 / precisions


def precision_cholesky_from_precisions(
    precisions: FloatArray, covariance_type: CovarianceType
) -> FloatArray:
    """Triangular factors ``U`` with ``U Uᵀ = P`` of user-given precision matrices.

    As scikit-learn, the lower Cholesky factor of ``P`` is used; any factor with
    ``U Uᵀ = P`` gives the same densities.
    """
    if covariance_type == "full":
        return np.stack([scipy.linalg.cholesky(p, lower=True) for p in precisions])
    if covariance_type == "tied":
        return np.asarray(scipy.linalg.cholesky(precisions, lower=True), dtype=np.float64)
    return np.sqrt(precisions)


def log_det_cholesky(
    precisions_cholesky: FloatArray, covariance_type: CovarianceType, n_features: int
) -> FloatArray | float:
    """``log det U`` per component (a scalar for ``tied``)."""
    if covariance_type == "full":
        diag = np.diagonal(precisions_cholesky, axis1=1, axis2=2)
        return np.asarray(np.sum(np.log(diag), axis=1))
    if covariance_type == "tied":
        return float(np.sum(np.log(np.diag(precisions_cholesky))))
    if covariance_type == "diag":
        return np.asarray(np.sum(np.log(precisions_cholesky), axis=1))
    return np.asarray(n_features * np.log(precisions_cholesky))


def estimate_log_gaussian_prob(
    X: FloatArray,
    means: FloatArray,
    precisions_cholesky: FloatArray,
    covariance_type: CovarianceType,
) -> FloatArray:
    """Log-density of every row under every component.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features), float64
    means : ndarray of shape (n_components, n_features)
    precisions_cholesky : ndarray
        Shaped by ``covariance_type`` (see the module docstring).
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    ndarray of shape (n_samples, n_components)
        ``log N(x_i | μ_k, Σ_k)``.

    Notes
    -----
    Squared distances are formed from differences, never by expanding
    ``‖x‖² - 2x·μ + ‖μ‖²``, so data far from the origin loses no precision.
    """
    n, d = X.shape
    K = means.shape[0]
    log_det = log_det_cholesky(precisions_cholesky, covariance_type, d)
    if covariance_type == "full":
        # One wide GEMM over all components: (n, d) @ (d, K*d).
        U_all = precisions_cholesky.transpose(1, 0, 2).reshape(d, K * d)
        mu_U = np.einsum("kd,kde->ke", means, precisions_cholesky).reshape(K * d)
        Y = X @ U_all
        Y -= mu_U
        np.square(Y, out=Y)
        maha = Y.reshape(n, K, d).sum(axis=2)
    elif covariance_type == "tied":
        XU = X @ precisions_cholesky
        mu_U = means @ precisions_cholesky
        diff = XU[:, None, :] - mu_U[None, :, :]
        maha = np.einsum("nkd,nkd->nk", diff, diff)
    elif covariance_type == "diag":
        diff = (X[:, None, :] - means[None, :, :]) * precisions_cholesky[None, :, :]
        maha = np.einsum("nkd,nkd->nk", diff, diff)
    else:
        diff = X[:, None, :] - means[None, :, :]
        maha = np.einsum("nkd,nkd->nk", diff, diff) * precisions_cholesky**2
    return np.asarray(-0.5 * (d * np.log(2 * np.pi) + maha) + log_det)
