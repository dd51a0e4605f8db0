"""What each covariance type means for shapes, parameter counts and full matrices.

The one table a new covariance type is added to (besides its Gaussian kernels in
:mod:`emdist.kernels.gaussian`): how its covariance (and precision) array is shaped, how
many free parameters it has, and how it expands to one full ``(d, d)`` matrix per
component, which sampling and plotting need.
"""

from __future__ import annotations

import numpy as np

from emdist._typing import CovarianceType, FloatArray

__all__ = ["covariance_shape", "full_covariances", "n_covariance_parameters"]


def covariance_shape(
    covariance_type: CovarianceType, n_components: int, n_features: int
) -> tuple[int, ...]:
    """Shape of a covariance (or precision) array of ``covariance_type``.

    full ``(K, d, d)``; tied ``(d, d)``; diag ``(K, d)``; spherical ``(K,)``.
    """
    K, d = n_components, n_features
    return {"full": (K, d, d), "tied": (d, d), "diag": (K, d), "spherical": (K,)}[covariance_type]


def n_covariance_parameters(
    covariance_type: CovarianceType, n_components: int, n_features: int
) -> float:
    """Free parameters of the covariances (symmetric matrices count their upper triangle)."""
    K, d = n_components, n_features
    return {
        "full": K * d * (d + 1) / 2.0,
        "tied": d * (d + 1) / 2.0,
        "diag": float(K * d),
        "spherical": float(K),
    }[covariance_type]


def full_covariances(
    covariances: FloatArray, covariance_type: CovarianceType, n_components: int, n_features: int
) -> FloatArray:
    """Every component's covariance as a ``(n_components, n_features, n_features)`` array.

    Parameters
    ----------
    covariances : ndarray
        Shaped by ``covariance_type`` as :func:`covariance_shape` says.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    n_components, n_features : int
        The tied matrix is shared by all components; a spherical variance names no ``d``.

    Returns
    -------
    ndarray of shape (n_components, n_features, n_features)
        A new array (never a view of ``covariances``).
    """
    cov = np.asarray(covariances, dtype=np.float64)
    if covariance_type == "full":
        return cov.copy()
    if covariance_type == "tied":
        return np.repeat(cov[None], n_components, axis=0)
    if covariance_type == "diag":
        return cov[:, :, None] * np.eye(n_features)[None]
    return cov[:, None, None] * np.eye(n_features)[None]
