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
from emdist.kernels.variational import VariationalParams

__all__ = [
    "mixture_from_vector",
    "mixture_to_vector",
    "variational_from_vector",
    "variational_to_vector",
]

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
    projected = _project_covariances(covs, covariance_type, reg_covar)
    if projected is None:
        return None
    return MixtureParams(weights, means, *projected)


def _project_covariances(
    covs: FloatArray, covariance_type: CovarianceType, reg_covar: float
) -> tuple[FloatArray, FloatArray] | None:
    """Covariances with eigenvalues (variances) >= the floor, and their precision factors."""
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
    return covs, prec_chol


def variational_to_vector(params: VariationalParams) -> FloatArray:
    """The variational posterior as one vector.

    ``[log concentrations, log β, means, log(ν - d + 1), covariances]``: the positive
    parameters by their logarithms (``ν > d - 1`` for the Wishart's expectations).
    """
    d = params.means.shape[1]
    return np.concatenate(
        [
            np.log(params.weight_concentration).ravel(),
            np.log(params.mean_precision),
            params.means.ravel(),
            np.log(np.atleast_1d(params.degrees_of_freedom) - (d - 1)),
            params.covariances.ravel(),
        ]
    )


def variational_from_vector(
    vector: FloatArray, like: VariationalParams, covariance_type: CovarianceType, reg_covar: float
) -> VariationalParams | None:
    """A posterior from :func:`variational_to_vector`'s layout, projected onto valid ones.

    ``None`` when the vector has a non-finite entry or a covariance cannot be made positive
    definite with a finite precision factor.
    """
    if not np.all(np.isfinite(vector)):
        return None
    K, d = like.means.shape
    sizes = [
        like.weight_concentration.size,
        K,
        K * d,
        np.atleast_1d(like.degrees_of_freedom).size,
        like.covariances.size,
    ]
    parts = np.split(vector, np.cumsum(sizes)[:-1])
    with np.errstate(over="ignore"):
        concentration = np.exp(parts[0]).reshape(like.weight_concentration.shape)
        precision = np.exp(parts[1])
        dof = (np.exp(parts[3]) + (d - 1)).reshape(np.shape(like.degrees_of_freedom))
    if not (
        np.all(np.isfinite(concentration) & (concentration > 0))
        and np.all(np.isfinite(precision) & (precision > 0))
        and np.all(np.isfinite(dof) & (dof > d - 1))
    ):
        return None
    covs = parts[4].reshape(like.covariances.shape).copy()
    projected = _project_covariances(covs, covariance_type, reg_covar)
    if projected is None:
        return None
    return VariationalParams(
        concentration, precision, parts[2].reshape(K, d).copy(), np.asarray(dof), *projected
    )
