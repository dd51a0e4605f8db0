"""Gaussian-mixture E-step and log-densities on rows with missing values (NaN).

EM for incomplete data (Ghahramani & Jordan 1994): a row with observed coordinates ``o``
and missing ``m`` is scored by the marginal of every component on ``o``,
``N(x_o | μ_o, Σ_oo)``, and contributes to the M-step's statistics the conditional
expectations of what is missing,

- ``E[x_m | x_o, k] = μ_m + Σ_mo Σ_oo⁻¹ (x_o - μ_o)`` (the conditional mean), and
- ``Cov[x_m | x_o, k] = Σ_mm - Σ_mo Σ_oo⁻¹ Σ_om`` (the Schur complement), added to the
  second moment on the ``(m, m)`` block.

For ``diag`` and ``spherical`` covariances the marginal is the observed coordinates alone,
the conditional mean of a missing coordinate is the component's mean and its conditional
variance the component's variance.

Rows with no missing value never come here: the block's complete rows go through the
compiled kernels of :mod:`emdist.kernels.mixture` unchanged, and a block without NaN is
exactly today's E-step. The incomplete rows are grouped by missing pattern
(``np.unique`` over the mask rows), so each pattern costs one Cholesky factor per
component and batched products over its rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.linalg

from emdist._typing import AnyArray, CovarianceType, FloatArray
from emdist.exceptions import FitError, InvalidDataError
from emdist.kernels._blocks import logsumexp_rows
from emdist.kernels.mixture import (
    MixtureParams,
    MixtureStats,
    mixture_estep_chunk,
    mixture_log_prob_chunk,
)
from emdist.kernels.rows import RowBlock

__all__ = [
    "MISSING",
    "check_missing_rows",
    "incomplete_stats",
    "marginal_log_prob",
    "missing_mask",
    "mixture_estep_missing_chunk",
    "mixture_log_prob_missing_chunk",
    "missing_patterns",
]

#: What an estimator's ``missing`` parameter accepts.
MISSING = ("error", "marginalize")

_LOG_2PI = float(np.log(2 * np.pi))


def missing_mask(block: RowBlock) -> AnyArray:
    """The block's mask (``True`` where a value is missing): given, or its NaN."""
    if block.mask is not None:
        return np.asarray(block.mask, dtype=bool)
    return np.isnan(block.x)


def check_missing_rows(X: AnyArray, row_offset: int) -> None:
    """Refuse infinity anywhere and rows with every value missing, naming the first.

    Raises
    ------
    InvalidDataError
        One line naming the global row (and column for infinity).
    """
    Xa = np.asarray(X)
    inf = np.isinf(Xa)
    if inf.any():
        r, c = np.argwhere(inf)[0]
        raise InvalidDataError(
            f"X contains infinity at row {int(r) + row_offset}, column {int(c)}; infinite "
            f"values are refused also with missing='marginalize' (only NaN marks a missing "
            f"value)."
        )
    if Xa.shape[1] == 0:
        return
    empty = np.flatnonzero(np.isnan(Xa).all(axis=1))
    if empty.size:
        raise InvalidDataError(
            f"X row {int(empty[0]) + row_offset} has every value missing (NaN); a row needs "
            f"at least one observed value: drop it."
        )


def missing_patterns(mask: AnyArray) -> Iterator[tuple[AnyArray, AnyArray]]:
    """``(observed, rows)`` for every missing pattern of the incomplete rows of ``mask``.

    ``observed`` is the boolean pattern of observed coordinates, ``rows`` the indices (into
    ``mask``) of the rows that have it, in increasing order; patterns come in the order of
    ``np.unique`` (deterministic, whatever the row order), so the sums add alike for every
    chunking of the same rows within a block.
    """
    incomplete = np.flatnonzero(mask.any(axis=1))
    if incomplete.size == 0:
        return
    patterns, inverse = np.unique(mask[incomplete], axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(patterns) + 1))
    for p, pattern in enumerate(patterns):
        yield ~pattern, incomplete[order[bounds[p] : bounds[p + 1]]]


class _Marginal:
    """Every component's marginal on one pattern's observed coordinates.

    Attributes
    ----------
    log_prob : ndarray of shape (n_rows, K)
        ``log N(x_o | μ_ko, Σ_k,oo)`` of the pattern's rows.
    """

    def __init__(
        self,
        Xo: FloatArray,
        observed: AnyArray,
        means: FloatArray,
        cov: FloatArray,
        covariance_type: CovarianceType,
        conditional: bool,
    ) -> None:
        K = means.shape[0]
        n, p = Xo.shape
        self.covariances = cov
        self.observed = observed
        self.covariance_type = covariance_type
        self.log_prob = np.empty((n, K))
        # Differences to every component on the observed coordinates, (K, n, p).
        self.Z = Xo[None, :, :] - means[:, observed][:, None, :]
        m = int((~observed).sum())
        if covariance_type in ("diag", "spherical"):
            var = cov[:, observed] if covariance_type == "diag" else cov[:, None]
            maha = np.einsum("knp,kp->kn", self.Z**2, 1.0 / np.broadcast_to(var, (K, p)))
            log_det = np.sum(np.log(np.broadcast_to(var, (K, p))), axis=1)
            self.log_prob[:] = (-0.5 * (p * _LOG_2PI + maha + log_det[:, None])).T
            return
        covs = cov[None] if covariance_type == "tied" else cov
        miss = ~observed
        # Conditional means' coefficients A_k = Σ_mo Σ_oo⁻¹ (m, p) and covariances C_k.
        self.A = np.empty((len(covs), m, p))
        self.C = np.empty((len(covs), m, m))
        chols = []
        for j, S in enumerate(covs):
            Soo = S[np.ix_(observed, observed)]
            try:
                L = scipy.linalg.cholesky(Soo, lower=True)
            except scipy.linalg.LinAlgError:
                raise FitError(
                    "A marginal covariance on the observed coordinates of a row is not "
                    "positive definite; increase reg_covar or scale the input data."
                ) from None
            chols.append(L)
            if conditional and m:
                Som = S[np.ix_(observed, miss)]
                A_t = scipy.linalg.cho_solve((L, True), Som)
                self.A[j] = A_t.T
                self.C[j] = S[np.ix_(miss, miss)] - Som.T @ A_t
        for k in range(K):
            L = chols[0 if covariance_type == "tied" else k]
            Y = scipy.linalg.solve_triangular(L, self.Z[k].T, lower=True)
            maha = np.einsum("pn,pn->n", Y, Y)
            log_det = 2.0 * np.sum(np.log(np.diag(L)))
            self.log_prob[:, k] = -0.5 * (p * _LOG_2PI + maha + log_det)

    def filled_differences(self, k: int) -> FloatArray:
        """``E[x | x_o, k] - μ_k`` of the pattern's rows, (n, d): 0 missing for axis-aligned."""
        Zk = self.Z[k]
        n = Zk.shape[0]
        d = self.observed.shape[0]
        out = np.zeros((n, d))
        out[:, self.observed] = Zk
        if self.covariance_type in ("full", "tied"):
            j = 0 if self.covariance_type == "tied" else k
            out[:, ~self.observed] = Zk @ self.A[j].T
        return out

    def conditional_cov(self, k: int) -> FloatArray:
        """``Cov[x_m | x_o, k]``: (m, m) for full/tied, the (m,) variances otherwise."""
        miss = ~self.observed
        ct = self.covariance_type
        if ct == "full" or ct == "tied":
            return np.asarray(self.C[0 if ct == "tied" else k])
        if ct == "diag":
            return np.asarray(self.covariances[k, miss])
        return np.full(int(miss.sum()), float(self.covariances[k]))

    def conditional_log_det(self, k: int) -> float:
        """``log |Cov[x_m | x_o, k]|`` (the entropy of the missing values needs it)."""
        C = self.conditional_cov(k)
        if C.ndim == 1:
            return float(np.sum(np.log(C)))
        sign, log_det = np.linalg.slogdet(C)
        return float(log_det) if sign > 0 else -np.inf


def incomplete_stats(
    X: AnyArray,
    mask: AnyArray,
    weights: AnyArray | None,
    means: FloatArray,
    covariances: FloatArray,
    covariance_type: CovarianceType,
    log_offsets: FloatArray,
) -> tuple[MixtureStats, float, float]:
    """Moments of the rows of ``X`` with a missing value (the others are skipped).

    Responsibilities ``∝ exp(log_offsets_k) N(x_o | μ_ko, Σ_k,oo)``; the moments are about
    ``means`` with the conditional expectations of the missing values filled in.

    Returns
    -------
    stats : MixtureStats
        ``log_lik`` is ``Σ_i w_i log Σ_k ρ_ik``.
    r_log_r : float
        ``Σ_i w_i Σ_k r_ik log r_ik``.
    entropy : float
        ``Σ_i w_i Σ_k r_ik H[x_m | x_o, k]``, the entropy of the missing values'
        conditionals (the variational bound counts it).
    """
    shift = means
    zero = MixtureStats.zero(shift, covariance_type)
    nk, sx, sxx = zero.nk, zero.sx, zero.sxx
    log_lik = r_log_r = entropy = 0.0
    n_total = 0.0
    for observed, rows in missing_patterns(mask):
        Xo = np.asarray(X[np.ix_(rows, np.flatnonzero(observed))], dtype=np.float64)
        w = None if weights is None else np.asarray(weights, dtype=np.float64)[rows]
        marginal = _Marginal(Xo, observed, means, covariances, covariance_type, True)
        lp = marginal.log_prob + log_offsets
        norm = logsumexp_rows(lp)
        log_resp = lp - norm[:, None]
        resp = np.exp(log_resp)
        rlr = np.sum(resp * log_resp, axis=1)
        if w is not None:
            resp *= w[:, None]
            log_lik += float(w @ norm)
            r_log_r += float(w @ rlr)
            n_total += float(np.sum(w))
        else:
            log_lik += float(np.sum(norm))
            r_log_r += float(np.sum(rlr))
            n_total += float(len(rows))
        nk += resp.sum(axis=0)
        miss = np.flatnonzero(~observed)
        for k in range(shift.shape[0]):
            D = marginal.filled_differences(k)
            r = resp[:, k]
            rk = float(r.sum())
            sx[k] += r @ D
            C = marginal.conditional_cov(k)
            entropy += rk * 0.5 * (len(miss) * (1.0 + _LOG_2PI) + marginal.conditional_log_det(k))
            if covariance_type == "full" or covariance_type == "tied":
                moment = (D * r[:, None]).T @ D
                moment[np.ix_(miss, miss)] += rk * C
                if covariance_type == "full":
                    sxx[k] += moment
                else:
                    sxx += moment
            elif covariance_type == "diag":
                sxx[k] += r @ D**2
                sxx[k, miss] += rk * C
            else:
                sxx[k] += r @ np.einsum("nd,nd->n", D, D) + rk * float(np.sum(C))
    if covariance_type == "full":
        sxx = 0.5 * (sxx + sxx.transpose(0, 2, 1))
    elif covariance_type == "tied":
        sxx = 0.5 * (sxx + sxx.T)
    return MixtureStats(n_total, log_lik, nk, sx, sxx, shift), r_log_r, entropy


def marginal_log_prob(
    X: AnyArray,
    mask: AnyArray,
    means: FloatArray,
    covariances: FloatArray,
    covariance_type: CovarianceType,
    out: FloatArray,
) -> None:
    """``log N(x_o | μ_ko, Σ_k,oo)`` of every incomplete row of ``X`` into ``out[row]``."""
    for observed, rows in missing_patterns(mask):
        Xo = np.asarray(X[np.ix_(rows, np.flatnonzero(observed))], dtype=np.float64)
        marginal = _Marginal(Xo, observed, means, covariances, covariance_type, False)
        out[rows] = marginal.log_prob


def mixture_estep_missing_chunk(
    block: RowBlock, params: MixtureParams, covariance_type: CovarianceType
) -> MixtureStats:
    """E-step of one block whose rows may hold NaN (``missing='marginalize'``).

    A block without a missing value is :func:`~emdist.kernels.mixture.mixture_estep_chunk`
    itself (bit for bit); otherwise its complete rows go through it and the incomplete ones
    through the pattern-grouped marginal E-step. ``log_lik`` is the observed-data
    log-likelihood ``Σ_i log Σ_k π_k N(x_io | μ_ko, Σ_k,oo)``.

    Raises
    ------
    InvalidDataError
        A row with every value missing, or an infinite value (naming the row).
    """
    mask = missing_mask(block)
    if not mask.any():
        return mixture_estep_chunk(block, params, covariance_type)
    check_missing_rows(block.x, block.row_offset)
    complete = ~mask.any(axis=1)
    w = block.weights
    stats, _, _ = incomplete_stats(
        block.x,
        mask,
        w,
        params.means,
        params.covariances,
        covariance_type,
        np.log(params.weights),
    )
    if complete.any():
        part = RowBlock(
            np.asarray(block.x)[complete],
            block.row_offset,
            None if w is None else np.asarray(w)[complete],
        )
        stats = mixture_estep_chunk(part, params, covariance_type) + stats
    return stats


def mixture_log_prob_missing_chunk(
    X: AnyArray, params: MixtureParams, covariance_type: CovarianceType
) -> FloatArray:
    """Weighted log-densities of a block with NaN: each row's marginal on its observed values.

    Complete rows are :func:`~emdist.kernels.mixture.mixture_log_prob_chunk`'s; a row with
    every value missing must have been refused before (:func:`check_missing_rows`).
    """
    mask = np.isnan(X)
    if not mask.any():
        return mixture_log_prob_chunk(X, params, covariance_type)
    out = np.empty((X.shape[0], params.n_components))
    incomplete = mask.any(axis=1)
    if not incomplete.all():
        out[~incomplete] = mixture_log_prob_chunk(
            np.asarray(X)[~incomplete], params, covariance_type
        )
    marginal_log_prob(X, mask, params.means, params.covariances, covariance_type, out)
    out[incomplete] += np.log(params.weights)
    return out
