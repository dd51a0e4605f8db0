"""Gaussian log-densities and moments as linear maps of quadratic features of the rows.

For every covariance type, the Mahalanobis distance of a row to component ``k`` is linear
in the row's *quadratic features* ``a(x) = [φ(x - c), x - c, 1]`` about one centre ``c``
shared by all components::

    (x - μ_k)ᵀ P_k (x - μ_k) = (x - c)ᵀ P_k (x - c) - 2 (x - c)ᵀ P_k δ_k + δ_kᵀ P_k δ_k,

``δ_k = μ_k - c``, where ``φ`` is the upper triangle of ``(x - c)(x - c)ᵀ`` (``full``,
``tied``), ``(x - c)²`` (``diag``) or ``‖x - c‖²`` (``spherical``). So the log-densities of
a sub-block under *all* components are one GEMM ``A @ B`` (``A`` the sub-block's features,
``B`` one column per component), and so are the statistics: ``Rᵀ @ A`` holds ``Σ r φ``,
``Σ r (x - c)`` and ``Σ r`` for every component at once. For ``full`` this is
``2 K (d(d+1)/2 + d + 1)`` flops per row and GEMM, about half the ``2 K d²`` of whitening
``(x - μ_k) U_k`` and of the per-component moment products it replaces, in two GEMMs of
good shapes instead of ``2K`` small ones (benchmarks/README.md, "Mixture E-step as two
GEMMs").

Numerics: the moments about ``c`` are moved to the shift ``μ_k`` exactly in algebra
(:meth:`QuadraticMaps.moments`); in floating point the move costs about
``eps · (|μ_k - c| / σ_k)²`` relative to the covariance of component ``k``, ``σ_k`` its
spread. ``c`` is the mean of the means, so data far from the origin costs nothing (the
rows and means are differenced from ``c`` first, in float64): components 300 of their own
standard deviations from ``c`` keep ~1e-9 in float64, 5 of them ~1e-12. float32 data
(``full``/``tied``) takes its differences about each row's nearest mean instead
(:meth:`QuadraticMaps.coefficients_about`, :meth:`QuadraticMaps.whitening_about`,
:meth:`QuadraticMaps.moments_about_centres`), where float32 loses nothing to the distance
between the components.
"""

from __future__ import annotations

import numpy as np

from emdist._typing import CovarianceType, FloatArray
from emdist.kernels.fused_estep import DIAG_FEATURES, FULL_FEATURES, SPHERICAL_FEATURES
from emdist.kernels.gaussian import precisions_from_cholesky

__all__ = ["QuadraticMaps"]


class QuadraticMaps:
    """The log-density coefficients of a mixture's parameters, and the move of its moments.

    Parameters
    ----------
    shift : ndarray of shape (n_components, n_features)
        The means ``μ_k``, also the shift the moments are returned about.
    precisions_cholesky : ndarray
        Shaped by ``covariance_type``.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    centre : ndarray of shape (n_features,), optional
        ``c``, the point the features are taken about; the mean of the means by default.

    Attributes
    ----------
    centre : ndarray of shape (n_features,)
        ``c``, float64.
    kind : int
        Which quadratic features (:func:`emdist.kernels.fused_estep.quadratic_features`).
    n_quadratic : int
        ``q``, the number of quadratic features; the features have ``q + d + 1`` columns.
    coefficients : ndarray of shape (q + d + 1, n_components)
        ``B`` with ``a(x) @ B = -½ (x - μ_k)ᵀ P_k (x - μ_k)``.
    """

    def __init__(
        self,
        shift: FloatArray,
        precisions_cholesky: FloatArray,
        covariance_type: CovarianceType,
        centre: FloatArray | None = None,
    ) -> None:
        K, d = shift.shape
        self.covariance_type = covariance_type
        self.shift = shift
        if covariance_type in ("full", "tied"):
            P = precisions_from_cholesky(precisions_cholesky, covariance_type)
            P = np.broadcast_to(P, (K, d, d))
            rows, cols = np.triu_indices(d)
            # Off-diagonal products appear once in the triangle and twice in the form.
            quad = P[:, rows, cols] * np.where(rows == cols, 1.0, 2.0)
            self._precision = P
            self.kind = FULL_FEATURES
            self.n_quadratic = d * (d + 1) // 2
        elif covariance_type == "diag":
            P2 = precisions_cholesky**2
            quad = P2
            self._precision = P2
            self.kind = DIAG_FEATURES
            self.n_quadratic = d
        else:
            p2 = precisions_cholesky**2
            quad = p2[:, None]
            self._precision = p2[:, None]
            self.kind = SPHERICAL_FEATURES
            self.n_quadratic = 1
        self._quad = quad
        self._set_centre(np.mean(shift, axis=0) if centre is None else centre)

    def _set_centre(self, centre: FloatArray) -> None:
        """Take the features about ``centre``: ``δ_k`` and the coefficients ``B``."""
        self.centre = np.ascontiguousarray(centre, dtype=np.float64)
        self.delta = self.shift - self.centre
        delta = self.delta
        if self.kind == FULL_FEATURES:
            p_delta = np.einsum("kij,kj->ki", self._precision, delta)
        else:
            p_delta = self._precision * delta
        offset = np.einsum("ki,ki->k", delta, p_delta)
        B = np.concatenate([self._quad, -2.0 * p_delta, offset[:, None]], axis=1)
        self.coefficients: FloatArray = np.ascontiguousarray(-0.5 * B.T)

    def coefficients_about(self, centres: FloatArray) -> FloatArray:
        """:attr:`coefficients` with the features about each of ``centres``, (g, q + d + 1, K).

        As :meth:`about` for every centre at once (``full``/``tied``).
        """
        delta = self.shift[None, :, :] - centres[:, None, :]  # (g, K, d)
        # P_k δ_gk as K batched (g, d) @ (d, d) products (P_k is symmetric).
        p_delta = np.matmul(delta.transpose(1, 0, 2), self._precision).transpose(1, 0, 2)
        offset = np.einsum("gki,gki->gk", delta, p_delta)
        quad = np.broadcast_to(self._quad, (len(centres), *self._quad.shape))
        B = np.concatenate([quad, -2.0 * p_delta, offset[:, :, None]], axis=2)
        return np.ascontiguousarray(-0.5 * B.transpose(0, 2, 1))

    def whitening_about(
        self, precision_cholesky: FloatArray, centres: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """``tied``: ``[U | P δ_gᵀ]`` per centre, (g, d, d + K), and ``δ_gkᵀ P δ_gk``, (g, K).

        ``δ_gk = μ_k - centres[g]``, ``P = U Uᵀ`` (``U`` the precision's Cholesky factor):
        ``(x - μ_k)ᵀ P (x - μ_k) = ‖(x - c_g) U‖² - 2 (x - c_g)ᵀ P δ_gk + δ_gkᵀ P δ_gk``.
        """
        delta = self.shift[None, :, :] - centres[:, None, :]  # (g, K, d)
        p_delta = delta @ self._precision[0]  # P is symmetric
        offset = np.einsum("gki,gki->gk", delta, p_delta)
        U = np.broadcast_to(precision_cholesky, (len(centres), *precision_cholesky.shape))
        maps = np.concatenate([U, p_delta.transpose(0, 2, 1)], axis=2)
        return np.ascontiguousarray(maps), np.ascontiguousarray(offset)

    @property
    def n_columns(self) -> int:
        """Columns of the features, ``q + d + 1``."""
        return int(self.n_quadratic + self.shift.shape[1] + 1)

    def moments(self, G: FloatArray, nk: FloatArray) -> tuple[FloatArray, FloatArray]:
        """First and second moments about the shift from the feature sums ``G = Rᵀ A``.

        Parameters
        ----------
        G : ndarray of shape (n_components, q + d + 1)
            ``Σ_i r_ik a(x_i)``.
        nk : ndarray of shape (n_components,)
            ``Σ_i r_ik``.

        Returns
        -------
        sx : ndarray of shape (n_components, n_features)
            ``Σ r (x - μ_k)``.
        sxx : ndarray
            ``Σ r (x - μ_k)(x - μ_k)ᵀ`` (``full``; ``tied`` summed over the components;
            exactly symmetric), ``Σ r (x - μ_k)²`` (``diag``) or ``Σ r ‖x - μ_k‖²``
            (``spherical``), as :class:`~emdist.kernels.mixture.MixtureStats` holds them.
        """
        K, d = self.shift.shape
        q = self.n_quadratic
        delta = self.delta
        srx = G[:, q : q + d]  # Σ r (x - c)
        sx = srx - nk[:, None] * delta
        # Σ r (x - c - δ)(...)ᵀ = Σ r (x - c)(x - c)ᵀ - δ srxᵀ - srx δᵀ + n δ δᵀ
        if self.kind == FULL_FEATURES:
            S = np.empty((K, d, d))
            rows, cols = np.triu_indices(d)
            S[:, rows, cols] = G[:, :q]
            S[:, cols, rows] = G[:, :q]
            cross = delta[:, :, None] * srx[:, None, :]
            sxx = S - cross - cross.transpose(0, 2, 1)
            sxx += nk[:, None, None] * delta[:, :, None] * delta[:, None, :]
            if self.covariance_type == "tied":
                sxx = sxx.sum(axis=0)
        elif self.kind == DIAG_FEATURES:
            sxx = G[:, :q] - 2.0 * delta * srx + nk[:, None] * delta**2
        else:
            sxx = G[:, 0] - 2.0 * np.einsum("ki,ki->k", delta, srx)
            sxx += nk * np.einsum("ki,ki->k", delta, delta)
        return np.ascontiguousarray(sx), np.ascontiguousarray(sxx)

    def moments_about_centres(
        self, quad: FloatArray, srx: FloatArray, nk: FloatArray, centres: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """:meth:`moments` of rows taken in groups, each group's features about its centre.

        ``full``/``tied`` only.

        Parameters
        ----------
        quad : ndarray of shape (n_components, q)
            The quadratic columns of ``Σ_i r_ik a_g(x_i)`` summed over every group (the
            features of group ``g``'s rows about ``centres[g]``): a group's move changes
            only the linear and constant terms, so one sum serves all groups and memory
            does not grow with the number of groups.
        srx : ndarray of shape (n_groups, n_components, n_features)
            The linear columns of ``Σ_i r_ik a_g(x_i)``, group by group.
        nk : ndarray of shape (n_groups, n_components)
            ``Σ_i r_ik`` over the rows of each group.
        centres : ndarray of shape (n_groups, n_features)

        Returns
        -------
        sx, sxx
            As :meth:`moments`, summed over the groups.
        """
        K, d = self.shift.shape
        delta = self.shift[None, :, :] - centres[:, None, :]  # (g, K, d)
        sx = np.sum(srx - nk[:, :, None] * delta, axis=0)
        S = np.empty((K, d, d))
        rows, cols = np.triu_indices(d)
        S[:, rows, cols] = quad
        S[:, cols, rows] = quad
        # Every group's move is linear in its sums, so the moves are summed over the groups.
        # As K batched (d, g) @ (g, d) products.
        delta_t = delta.transpose(1, 2, 0)  # (K, d, g)
        cross = np.matmul(delta_t, srx.transpose(1, 0, 2))
        sxx = S - cross - cross.transpose(0, 2, 1)
        sxx += np.matmul(delta_t * nk.T[:, None, :], delta.transpose(1, 0, 2))
        if self.covariance_type == "tied":
            sxx = sxx.sum(axis=0)
        return np.ascontiguousarray(sx), np.ascontiguousarray(sxx)
