"""Gaussian log-densities through the Cholesky factor of the precision.

For a component with covariance ``Σ = L Lᵀ`` the precision Cholesky factor is
``U = L⁻ᵀ`` (upper triangular), so ``(x - μ)ᵀ Σ⁻¹ (x - μ) = ‖xU - μU‖²`` and
``log|Σ|^{-1/2} = Σ log diag(U)``. No inverse or determinant is ever formed.

Shapes of ``precisions_cholesky`` by covariance type (as scikit-learn):
``full`` (K, d, d), ``tied`` (d, d), ``diag`` (K, d), ``spherical`` (K,).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

from emdist._typing import AnyArray, CovarianceType, FloatArray
from emdist.exceptions import FitError
from emdist.kernels._blocks import component_block_rows, iter_sub_blocks_t

__all__ = [
    "ComponentBlocks",
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
        return np.asarray(
            np.einsum("kij,klj->kil", precisions_cholesky, precisions_cholesky), dtype=np.float64
        )
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


class ComponentBlocks:
    """Differences of a sub-block to every component, and their log-densities.

    Works feature-major: a sub-block arrives transposed, ``Xt`` of shape ``(d, m)``, and
    :meth:`centre` fills ``Z[k] = Xt - s_k`` for every component, ``Z`` of shape
    ``(K, d, m)``. Every elementwise step then runs along the ``m`` rows (long contiguous
    loops instead of one short loop per row of ``d`` values), and the per-component products
    are GEMMs on ``(d, d) @ (d, m)`` blocks. All temporaries are allocated once per chunk.

    The differences are formed before anything is multiplied, so the log-densities keep
    their precision far from the origin, and the same ``Z`` (when the shift is the means)
    gives the second moments of the E-step without being formed again.

    Parameters
    ----------
    shift : ndarray of shape (n_components, n_features)
        The ``s_k``: the means for log-densities, any shift for moments only.
    precisions_cholesky : ndarray or None
        Shaped by ``covariance_type``; ``None`` when no log-density is needed.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    rows : int, optional
        Rows per sub-block; by default :func:`~emdist.kernels._blocks.component_block_rows`.
    dtype : {numpy.float64, numpy.float32}, optional
        Dtype of ``Z``, ``Y`` and ``moments`` and of the GEMMs on them (float32 for float32
        data; see :func:`~emdist.kernels._blocks.compute_dtype`). The differences are
        formed in float64 and rounded once, so data far from the origin loses nothing to
        the shift.

    Attributes
    ----------
    Z : ndarray of shape (n_components, n_features, m)
        Differences of the current sub-block.
    Z2 : ndarray of shape (n_components, n_features, m)
        ``Z²`` (``diag`` only): the diagonal second moments and the log-densities use it.
    ZZ : ndarray of shape (n_components, 2 n_features, m)
        ``Z`` and ``Z2`` stacked (``diag`` only), so one product reduces both.
    D : ndarray of shape (n_components, m)
        ``‖Z_k‖²`` per row (``spherical`` only).
    Y : ndarray of shape (n_components, n_features, m)
        Scratch of ``Z``'s shape (``full``/``tied``: whitened differences, then the
        responsibility-weighted differences).
    moments : ndarray of shape (n_components, n_features, n_features)
        Scratch for one sub-block's second moments (``full``/``tied``).
    """

    def __init__(
        self,
        shift: FloatArray,
        precisions_cholesky: FloatArray | None,
        covariance_type: CovarianceType,
        rows: int | None = None,
        dtype: Any = np.float64,
    ) -> None:
        K, d = shift.shape
        self.shift = shift
        self.dtype = np.dtype(dtype)
        self.covariance_type = covariance_type
        if rows is None:
            rows = component_block_rows(K, d, covariance_type)
        self.rows = int(rows)
        self._shift_col = shift[:, :, None]
        self._m = -1
        if precisions_cholesky is not None:
            self._log_det = np.broadcast_to(
                log_det_cholesky(precisions_cholesky, covariance_type, d), (K,)
            )[:, None]
            self._const = d * np.log(2 * np.pi)
            if covariance_type == "full":
                self._ut = np.ascontiguousarray(
                    precisions_cholesky.transpose(0, 2, 1), dtype=self.dtype
                )
            elif covariance_type == "tied":
                self._ut = np.ascontiguousarray(precisions_cholesky.T, dtype=self.dtype)
            elif covariance_type == "diag":
                self._p2 = (precisions_cholesky**2)[:, None, :]
            else:
                self._p2 = (precisions_cholesky**2)[:, None]

    def _allocate(self, m: int) -> None:
        K, d = self.shift.shape
        self._m = m
        if self.covariance_type == "diag":
            self.ZZ = np.empty((K, 2 * d, m))
            self.Z = self.ZZ[:, :d]
            self.Z2 = self.ZZ[:, d:]
        else:
            self.Z = np.empty((K, d, m), dtype=self.dtype)
        if self.covariance_type in ("full", "tied"):
            self.Y = np.empty((K, d, m), dtype=self.dtype)
            self.moments = np.empty((K, d, d), dtype=self.dtype)
        if self.covariance_type == "spherical":
            self.D = np.empty((K, m))
        self.log_prob_out = np.empty((K, m))

    def centre(self, Xt: FloatArray) -> None:
        """Form the differences of the sub-block ``Xt`` (shape ``(d, m)``) to every shift."""
        m = Xt.shape[1]
        if m != self._m:
            self._allocate(m)
        np.subtract(Xt[None], self._shift_col, out=self.Z)
        if self.covariance_type == "diag":
            np.square(self.Z, out=self.Z2)
        elif self.covariance_type == "spherical":
            np.einsum("kdm,kdm->km", self.Z, self.Z, out=self.D)

    def whiten(self) -> AnyArray:
        """``Y[k] = U_kᵀ (x - μ_k)`` of the centred sub-block (``full``/``tied``), in ``Y``.

        One ``(d, d) @ (d, m)`` GEMM per component; valid when the shift is the means.
        """
        return np.matmul(self._ut, self.Z, out=self.Y)

    def log_prob(self) -> FloatArray:
        """``log N(x | μ_k, Σ_k)`` of the centred sub-block, shape ``(K, m)``.

        Valid when the shift is the means. The result lives in a buffer that the next
        call overwrites.
        """
        out = self.log_prob_out
        ct = self.covariance_type
        if ct == "full" or ct == "tied":
            # ‖U_kᵀ (x - μ_k)‖² with one (d, d) @ (d, m) GEMM per component.
            np.matmul(self._ut, self.Z, out=self.Y)
            np.einsum("kdm,kdm->km", self.Y, self.Y, out=out)
        elif ct == "diag":
            np.matmul(self._p2, self.Z2, out=out[:, None, :])
        else:
            np.multiply(self.D, self._p2, out=out)
        # As scikit-learn: -½ (d log 2π + maha) + log det U.
        out += self._const
        out *= -0.5
        out += self._log_det
        return out


def estimate_log_gaussian_prob(
    X: AnyArray,
    means: FloatArray,
    precisions_cholesky: FloatArray,
    covariance_type: CovarianceType,
) -> FloatArray:
    """Log-density of every row under every component.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Any real dtype (computed in float64).
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
    Squared distances are formed from differences ``x - μ_k``, never by expanding
    ``‖x‖² - 2x·μ + ‖μ‖²``, so data far from the origin loses no precision.
    """
    out = np.empty((X.shape[0], means.shape[0]))
    blocks = ComponentBlocks(means, precisions_cholesky, covariance_type)
    for start, Xt in iter_sub_blocks_t(X, blocks.rows):
        blocks.centre(Xt)
        out[start : start + Xt.shape[1]] = blocks.log_prob().T
    return out
