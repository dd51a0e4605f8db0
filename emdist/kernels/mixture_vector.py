"""Gaussian-mixture parameters as one vector, and a vector back onto the parameter space.

Accelerated EM (:mod:`emdist.engine.acceleration`) extrapolates parameters along EM steps;
it needs them as one real vector in which a straight line stays meaningful, and a way back
that lands on valid parameters whatever the extrapolation proposed:

- **weights** as their logarithms (back through a softmax: positive and summing to one);
- **means** as they are;
- **covariances** as they are (the M-step is linear in them), back onto the symmetric
  matrices whose eigenvalues are at least ``reg_covar`` (the least any M-step gives), or
  onto variances at least ``reg_covar`` for ``diag`` and ``spherical``.

Plain numpy on parameters only: no data, no Dask.
"""

from __future__ import annotations

import numpy as np

from emdist._typing import CovarianceType, FloatArray
from emdist.exceptions import FitError
from emdist.kernels.gaussian import compute_precision_cholesky
from emdist.kernels.mixture import MixtureParams

__all__ = ["mixture_from_vector", "mixture_to_vector"]

# Least eigenvalue of a projected covariance relative to its largest, when reg_covar is 0:
# keeps the Cholesky factor of the precision finite.
_RELATIVE_FLOOR = 1e-12


def mixture_to_vector(params: MixtureParams) -> FloatArray:
    """``[log weights, means, covariances]`` flattened into one float64 vector."""
    return np.concatenate(
        [
            np.log(np.asarray(params.weights, dtype=np.float64)),
            np.asarray(params.means, dtype=np.float64).ravel(),
            np.asarray(params.covariances, dtype=np.float64).ravel(),
        ]
    )


def _floor_eigenvalues(covs: FloatArray, reg_covar: float) -> FloatArray:
    """Symmetric matrices (..., d, d) with eigenvalues at least the floor."""
    sym = 0.5 * (covs + np.swapaxes(covs, -1, -2))
    values, vectors = np.linalg.eigh(sym)
    top = np.max(np.abs(values), axis=-1, keepdims=True)
    floor = np.maximum(reg_covar, _RELATIVE_FLOOR * top)
    values = np.maximum(values, floor)
    out: FloatArray = np.einsum("...ij,...j,...kj->...ik", vectors, values, vectors)
    return out


def mixture_from_vector(
    vector: FloatArray, like: MixtureParams, covariance_type: CovarianceType, reg_covar: float
) -> MixtureParams | None:
    """Parameters from :func:`mixture_to_vector`'s layout, projected onto the parameter space.

    Parameters
    ----------
    vector : ndarray of shape (n,)
    like : MixtureParams
        Parameters of the same shapes (the layout's sizes).
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    reg_covar : float
        Least eigenvalue (variance) of a covariance.

    Returns
    -------
    MixtureParams or None
        ``None`` when no valid parameters are near ``vector`` (a non-finite entry, or a
        covariance whose precision has no finite Cholesky factor).
    """
    if not np.all(np.isfinite(vector)):
        return None
    K, d = like.means.shape
    log_w = vector[:K]
    means = vector[K : K + K * d].reshape(K, d).copy()
    covs = vector[K + K * d :].reshape(like.covariances.shape).copy()
    w = np.exp(log_w - log_w.max())
    # The least weight an M-step gives is about 10 eps of a row: keep every component alive.
    w = np.maximum(w / w.sum(), 10 * np.finfo(np.float64).eps)
    weights = w / w.sum()
    if covariance_type in ("full", "tied"):
        covs = _floor_eigenvalues(covs, reg_covar)
    else:
        floor = np.maximum(reg_covar, _RELATIVE_FLOOR * np.max(np.abs(covs)))
        covs = np.maximum(covs, floor)
    try:
        prec_chol = compute_precision_cholesky(covs, covariance_type)
    except FitError:
        return None
    if not np.all(np.isfinite(prec_chol)):
        return None
    return MixtureParams(weights, means, covs, prec_chol)
