"""Variational Bayesian Gaussian mixture: E-step on one block, summable statistics, M-step, ELBO.

The model (Bishop 2006, §10.2; Blei & Jordan 2006 for the Dirichlet process) puts a
Dirichlet (or truncated stick-breaking) prior on the weights and a Gaussian-Wishart prior
on every component's mean and precision, ``p(μ_k, Λ_k) = N(μ_k | m_0, (β_0 Λ_k)⁻¹)
W(Λ_k | W_0, ν_0)``. Mean-field variational inference alternates

* the **E-step** (Bishop eq. 10.46-10.49): ``log ρ_nk = E[log π_k] + ½ E[log|Λ_k|]
  - d/2 log 2π - ½ E[(x_n - μ_k)ᵀ Λ_k (x_n - μ_k)]``, normalised to responsibilities
  ``r_nk``; per block these reduce to the same summable moments as the EM mixture
  (:class:`~emdist.kernels.mixture.MixtureStats`, about a shift) plus ``Σ r log r``,
  which the bound needs;
* the **M-step** (Bishop eq. 10.58, 10.60-10.63): the posterior's ``α_k`` (or the Beta
  parameters of the stick-breaking weights), ``β_k``, ``m_k``, ``ν_k`` and ``W_k``, from
  the reduced statistics alone.

Parametrisation and numbers follow scikit-learn's ``BayesianGaussianMixture``: the
``covariances`` are ``W_k⁻¹ / ν_k`` (so ``precisions_cholesky`` factors ``ν_k W_k``, the
expected precision), the empirical moments include ``reg_covar`` on the diagonal, the tied
type has one Wishart with ``ν = ν_0 + N/K``, and the lower bound is scikit-learn's
simplified ELBO (constant terms dropped), evaluated with the responsibilities of an E-step
and the posterior that the following M-step computes from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal, TypeAlias

import numpy as np
from scipy.special import betaln, digamma, gammaln

from emdist._typing import AnyArray, CovarianceType, FloatArray
from emdist.exceptions import FitError
from emdist.kernels._blocks import iter_sub_blocks, sub_block_rows
from emdist.kernels.gaussian import (
    compute_precision_cholesky,
    estimate_log_gaussian_prob,
    log_det_cholesky,
)
from emdist.kernels.missing import (
    estep_with_missing,
    incomplete_stats,
    log_prob_with_missing,
)
from emdist.kernels.mixture import (
    MixtureStats,
    empirical_moments,
    fused_estep,
    mixture_stats_from_resp,
)
from emdist.kernels.rows import RowBlock

__all__ = [
    "VariationalParams",
    "VariationalPriors",
    "VariationalStats",
    "WEIGHT_PRIOR_TYPES",
    "WeightPriorType",
    "expected_log_weights",
    "scatter_stats_chunk",
    "variational_estep_chunk",
    "variational_estep_missing_chunk",
    "variational_log_prob_missing_chunk",
    "pairwise_scatter_chunk",
    "variational_log_prob_chunk",
    "variational_lower_bound",
    "variational_mstep",
    "variational_weights",
]

WeightPriorType: TypeAlias = Literal["dirichlet_process", "dirichlet_distribution"]
WEIGHT_PRIOR_TYPES: tuple[WeightPriorType, ...] = ("dirichlet_process", "dirichlet_distribution")


@dataclass(frozen=True, eq=False)
class VariationalPriors:
    """Resolved hyper-parameters of the prior (scikit-learn's ``*_prior_`` attributes).

    Attributes
    ----------
    weight_concentration_prior_type : {'dirichlet_process', 'dirichlet_distribution'}
    weight_concentration : float
        ``α_0`` (Dirichlet concentration, or the stick-breaking Beta(1, α_0) parameter).
    mean_precision : float
        ``β_0``.
    mean : ndarray of shape (n_features,)
        ``m_0``.
    degrees_of_freedom : float
        ``ν_0`` (greater than ``n_features - 1``).
    covariance : ndarray or float
        ``W_0⁻¹``: full and tied (n_features, n_features), diag (n_features,), spherical a
        float.
    """

    weight_concentration_prior_type: WeightPriorType
    weight_concentration: float
    mean_precision: float
    mean: FloatArray
    degrees_of_freedom: float
    covariance: FloatArray | float


@dataclass(frozen=True, eq=False)
class VariationalParams:
    """Parameters of the variational posterior ``q(π) Π_k q(μ_k, Λ_k)``.

    Attributes
    ----------
    weight_concentration : ndarray
        ``dirichlet_process``: shape (2, n_components), the Beta parameters ``(a_k, b_k)``
        of the stick-breaking fractions; ``dirichlet_distribution``: shape
        (n_components,), the Dirichlet ``α_k``.
    mean_precision : ndarray of shape (n_components,)
        ``β_k``.
    means : ndarray of shape (n_components, n_features)
        ``m_k``.
    degrees_of_freedom : ndarray
        ``ν_k``, shape (n_components,); shape () for ``tied`` (one Wishart).
    covariances : ndarray
        ``W_k⁻¹ / ν_k``: full (K, d, d), tied (d, d), diag (K, d), spherical (K,).
    precisions_cholesky : ndarray
        Cholesky factors of ``ν_k W_k`` (the expected precisions), shaped like
        ``covariances``.
    """

    weight_concentration: FloatArray
    mean_precision: FloatArray
    means: FloatArray
    degrees_of_freedom: FloatArray
    covariances: FloatArray
    precisions_cholesky: FloatArray

    @property
    def n_components(self) -> int:
        """Number of components."""
        return int(self.means.shape[0])

    @property
    def weight_prior_type(self) -> WeightPriorType:
        """The weight prior these parameters belong to (from the concentration's shape)."""
        return (
            "dirichlet_process" if self.weight_concentration.ndim == 2 else "dirichlet_distribution"
        )

    @property
    def weights(self) -> FloatArray:
        """Expected mixing weights ``E[π_k]`` (see :func:`variational_weights`)."""
        return variational_weights(self.weight_concentration)

    def arrays(self) -> dict[str, FloatArray]:
        """The parameters as a name -> array mapping (for checkpoints and comparisons)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, eq=False)
class VariationalStats:
    """Statistics of one variational E-step, summed over rows.

    Attributes
    ----------
    moments : MixtureStats
        ``n``, ``Σ_i r_ik`` and the first and second moments about the shift, exactly as
        for the EM mixture; its ``log_lik`` holds ``Σ_i log Σ_k ρ_ik`` (the E-step's
        normaliser, which is not a likelihood and does not enter the bound).
    resp_log_resp : float
        ``Σ_i Σ_k r_ik log r_ik`` (minus the entropy of ``q(Z)``, Bishop eq. 10.75); with
        missing values also minus ``Σ_i Σ_k r_ik H[q(x_m | z = k)]``.
    """

    moments: MixtureStats
    resp_log_resp: float

    @property
    def n(self) -> float:
        """Number of rows."""
        return self.moments.n

    def __add__(self, other: VariationalStats) -> VariationalStats:
        if not isinstance(other, VariationalStats):
            return NotImplemented
        return VariationalStats(
            self.moments + other.moments, self.resp_log_resp + other.resp_log_resp
        )

    @classmethod
    def zero(cls, shift: FloatArray, covariance_type: CovarianceType) -> VariationalStats:
        """The additive identity for statistics about ``shift``."""
        return cls(MixtureStats.zero(shift, covariance_type), 0.0)


# --------------------------------------------------------------------------- expectations


def expected_log_weights(weight_concentration: FloatArray) -> FloatArray:
    """``E[log π_k]`` under ``q(π)``.

    Parameters
    ----------
    weight_concentration : ndarray of shape (2, n_components) or (n_components,)
        Beta parameters of the stick-breaking fractions (Dirichlet process) or Dirichlet
        concentrations.

    Returns
    -------
    ndarray of shape (n_components,)

    Notes
    -----
    Dirichlet (Bishop eq. 10.66): ``ψ(α_k) - ψ(Σ_j α_j)``. Stick-breaking (Blei & Jordan
    2006, eq. 20 ff.): ``π_k = v_k Π_{j<k} (1 - v_j)`` with ``v_k ~ Beta(a_k, b_k)``, so
    ``E[log π_k] = E[log v_k] + Σ_{j<k} E[log(1 - v_j)]``.
    """
    if weight_concentration.ndim == 2:
        a, b = weight_concentration
        digamma_sum = digamma(a + b)
        log_v = digamma(a) - digamma_sum
        log_1mv = digamma(b) - digamma_sum
        return np.asarray(log_v + np.concatenate(([0.0], np.cumsum(log_1mv)[:-1])))
    return np.asarray(digamma(weight_concentration) - digamma(np.sum(weight_concentration)))


def variational_weights(weight_concentration: FloatArray) -> FloatArray:
    """Expected mixing weights ``E[π_k]``, normalised to sum to one (as scikit-learn).

    Parameters
    ----------
    weight_concentration : ndarray of shape (2, n_components) or (n_components,)

    Returns
    -------
    ndarray of shape (n_components,)
    """
    if weight_concentration.ndim == 2:
        a, b = weight_concentration
        # E[v_k] Π_{j<k} E[1 - v_j] for independent Beta fractions.
        total = a + b
        weights = a / total * np.concatenate(([1.0], np.cumprod(b[:-1] / total[:-1])))
    else:
        weights = weight_concentration.copy()
    return np.asarray(weights / np.sum(weights))


def _log_offsets(params: VariationalParams, n_features: int) -> FloatArray:
    """Per-component constants of ``log ρ`` beside ``log N(x | m_k, (ν_k W_k)⁻¹)``.

    ``E[log π_k] + ½ (E[log|Λ_k|] - d log ν_k - d / β_k)``, where (Bishop eq. 10.65)
    ``E[log|Λ_k|] = Σ_{i<d} ψ((ν_k - i)/2) + d log 2 + log|W_k|``. The Gaussian term
    evaluated under the expected precision ``ν_k W_k`` already holds ``½ log|ν_k W_k|`` and
    ``ν_k (x - m_k)ᵀ W_k (x - m_k)``; the offset turns it into Bishop eq. 10.46 (the
    ``d / β_k`` is the mean's posterior variance, eq. 10.64).
    """
    d = n_features
    nu = params.degrees_of_freedom
    expected_log_det = d * math.log(2.0) + np.sum(
        digamma(0.5 * (nu - np.arange(d)[:, None])), axis=0
    )
    gauss_correction = -0.5 * d * np.log(nu) + 0.5 * (expected_log_det - d / params.mean_precision)
    return np.asarray(expected_log_weights(params.weight_concentration) + gauss_correction)


# ------------------------------------------------------------------------------- E-step


def variational_log_prob_chunk(
    X: AnyArray, params: VariationalParams, covariance_type: CovarianceType
) -> FloatArray:
    """Unnormalised log-responsibilities ``log ρ_nk`` of a block (Bishop eq. 10.46).

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)
    params : VariationalParams
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    ndarray of shape (n_rows, n_components)
    """
    out = np.empty((X.shape[0], params.n_components))
    offsets = _log_offsets(params, X.shape[1])
    for start, Xb in iter_sub_blocks(X, sub_block_rows(params.means.size)):
        lp = estimate_log_gaussian_prob(
            Xb, params.means, params.precisions_cholesky, covariance_type
        )
        lp += offsets
        out[start : start + len(Xb)] = lp
    return out


def variational_estep_chunk(
    block: RowBlock, params: VariationalParams, covariance_type: CovarianceType
) -> VariationalStats:
    """Variational E-step on one block, reduced at once to summable statistics.

    Parameters
    ----------
    block : RowBlock
        The rows (any real dtype and layout), their global offset and per-row inputs.
    params : VariationalParams
        Current posterior; its means are the shift of the moments.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    VariationalStats
    """
    X = block.x
    shift = params.means
    w = block.weights
    nk, sx, sxx, log_norm, r_log_r = fused_estep(
        X,
        shift,
        params.precisions_cholesky,
        covariance_type,
        _log_offsets(params, X.shape[1]),
        w,
    )
    # Weights weigh every sum, the entropy term Σ r log r too: the rows repeated w times.
    n = float(X.shape[0]) if w is None else float(np.sum(w, dtype=np.float64))
    moments = MixtureStats(n, log_norm, nk, sx, sxx, shift)
    return VariationalStats(moments, r_log_r)


def variational_estep_missing_chunk(
    block: RowBlock, params: VariationalParams, covariance_type: CovarianceType
) -> VariationalStats:
    """:func:`variational_estep_chunk` of rows that may hold NaN (``missing='marginalize'``).

    ``q(x_m | z = k)`` is optimal jointly with ``q(Z)`` (mean field over ``θ`` only): the
    conditional of ``N(m_k, (ν_k W_k)⁻¹)`` given ``x_o``, whose log-normaliser makes
    ``log ρ_ik`` the same offsets as complete rows plus ``log N(x_o | m_ko, S_k,oo)`` with
    ``S_k = (ν_k W_k)⁻¹`` (the ``covariances``). The moments take the conditional means
    and covariances as the EM mixture's do; ``resp_log_resp`` also subtracts the
    conditionals' entropy, which the ELBO counts (docs/design.md, "Missing values"). A
    block without NaN is :func:`variational_estep_chunk` itself.
    """

    def incomplete(mask: AnyArray) -> VariationalStats:
        offsets = _log_offsets(params, block.x.shape[1])
        moments, r_log_r, entropy = incomplete_stats(
            block.x, mask, block.weights, params.means, params.covariances, covariance_type, offsets
        )
        return VariationalStats(moments, r_log_r - entropy)

    return estep_with_missing(
        block, lambda rows: variational_estep_chunk(rows, params, covariance_type), incomplete
    )


def variational_log_prob_missing_chunk(
    X: AnyArray, params: VariationalParams, covariance_type: CovarianceType
) -> FloatArray:
    """``log ρ_nk`` of a block with NaN: incomplete rows on their observed coordinates."""
    return log_prob_with_missing(
        X,
        params,
        covariance_type,
        variational_log_prob_chunk,
        lambda: _log_offsets(params, X.shape[1]),
    )


def pairwise_scatter_chunk(block: RowBlock, center: FloatArray) -> FloatArray:
    """Pairwise moments about ``center`` of rows with missing values, shape (2, d, d + 1).

    ``[0][j, l] = Σ w (x_j - c_j)(x_l - c_l)`` and ``[1][j, l] = Σ w`` over the rows
    observing both ``j`` and ``l``; column ``d`` holds ``Σ w (x_j - c_j)`` and ``Σ w`` over
    the rows observing ``j``. The default priors of data with missing values.
    """
    X = np.asarray(block.x, dtype=np.float64)
    observed = (~np.isnan(X)).astype(np.float64)
    Z = np.where(observed > 0, X - center[None, :], 0.0)
    ones = np.ones((X.shape[0], 1))
    w = (
        np.ones((X.shape[0], 1))
        if block.weights is None
        else np.asarray(block.weights, dtype=np.float64)[:, None]
    )
    return np.stack(
        [(Z * w).T @ np.hstack([Z, ones]), (observed * w).T @ np.hstack([observed, ones])]
    )


def scatter_stats_chunk(block: RowBlock, center: FloatArray) -> MixtureStats:
    """One-component ``full`` moments of a block about ``center`` (for the covariance prior).

    Parameters
    ----------
    block : RowBlock
        The rows (any real dtype and layout), their global offset and per-row inputs.
    center : ndarray of shape (n_features,)
        A fixed centre near the data mean (the scan pass's mean), so that the scatter is
        accumulated without cancellation.

    Returns
    -------
    MixtureStats
        ``sx = Σ (x - c)``, ``sxx = Σ (x - c)(x - c)ᵀ`` with one component (each row
        weighted by ``block.weights``, when given; ``nk`` the total weight).
    """
    X = block.x
    if block.weights is not None:
        resp = np.asarray(block.weights, dtype=np.float64).reshape(-1, 1)
    else:
        resp = np.ones((X.shape[0], 1))
    return mixture_stats_from_resp(X, resp, center[None, :], "full")


# ------------------------------------------------------------------------------- M-step


def variational_mstep(
    moments: MixtureStats,
    priors: VariationalPriors,
    covariance_type: CovarianceType,
    reg_covar: float,
) -> VariationalParams:
    """Variational M-step: the posterior ``q(π) Π q(μ_k, Λ_k)`` from reduced statistics.

    Parameters
    ----------
    moments : MixtureStats
        Moments summed over the whole dataset (those of a :class:`VariationalStats`, or
        of initial responsibilities).
    priors : VariationalPriors
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    reg_covar : float
        Added to the diagonal of the empirical covariances ``S_k``.

    Returns
    -------
    VariationalParams

    Raises
    ------
    FitError
        If a parameter is not finite or a scale matrix is not positive definite.
    """
    nk, xk, sk = empirical_moments(moments, covariance_type, reg_covar)
    K = nk.shape[0]

    # Weights. Dirichlet (Bishop eq. 10.58): α_k = α_0 + N_k. Stick-breaking (Blei &
    # Jordan 2006, eq. 18-19): a_k = 1 + N_k, b_k = α_0 + Σ_{j>k} N_j.
    alpha0 = priors.weight_concentration
    if priors.weight_concentration_prior_type == "dirichlet_process":
        tail = np.concatenate((np.cumsum(nk[::-1])[-2::-1], [0.0]))
        weight_concentration = np.stack((1.0 + nk, alpha0 + tail))
    else:
        weight_concentration = alpha0 + nk

    # Means (Bishop eq. 10.60-10.61): β_k = β_0 + N_k, m_k = (β_0 m_0 + N_k x̄_k) / β_k.
    beta0, m0 = priors.mean_precision, priors.mean
    mean_precision = beta0 + nk
    means = (beta0 * m0 + nk[:, None] * xk) / mean_precision[:, None]

    # Precisions (Bishop eq. 10.62-10.63, with ν_k = ν_0 + N_k, not the book's typo):
    # W_k⁻¹ = W_0⁻¹ + N_k S_k + β_0 N_k / β_k (x̄_k - m_0)(x̄_k - m_0)ᵀ; scikit-learn stores
    # covariances = W_k⁻¹ / ν_k. Tied: one Wishart fed by the average component.
    nu0 = priors.degrees_of_freedom
    diff = xk - m0
    shrink = beta0 / mean_precision
    if covariance_type == "full":
        degrees_of_freedom = nu0 + nk
        covariances = (
            priors.covariance
            + nk[:, None, None] * sk
            + (nk * shrink)[:, None, None] * diff[:, :, None] * diff[:, None, :]
        )
        covariances /= degrees_of_freedom[:, None, None]
    elif covariance_type == "tied":
        degrees_of_freedom = np.asarray(nu0 + nk.sum() / K)
        covariances = (
            priors.covariance
            + sk * (nk.sum() / K)
            + (beta0 / K) * ((nk / mean_precision) * diff.T) @ diff
        )
        covariances /= degrees_of_freedom
    elif covariance_type == "diag":
        degrees_of_freedom = nu0 + nk
        covariances = priors.covariance + nk[:, None] * (sk + shrink[:, None] * diff**2)
        covariances /= degrees_of_freedom[:, None]
    else:
        degrees_of_freedom = nu0 + nk
        covariances = priors.covariance + nk * (sk + shrink * np.mean(diff**2, axis=1))
        covariances /= degrees_of_freedom
    covariances = np.asarray(covariances, dtype=np.float64)
    if not (np.all(np.isfinite(means)) and np.all(np.isfinite(covariances))):
        raise FitError(
            "The variational M-step produced non-finite parameters. Try to decrease the "
            "number of components, increase reg_covar, or scale the input data."
        )
    precisions_cholesky = compute_precision_cholesky(covariances, covariance_type)
    return VariationalParams(
        np.asarray(weight_concentration, dtype=np.float64),
        np.asarray(mean_precision, dtype=np.float64),
        np.asarray(means, dtype=np.float64),
        np.asarray(degrees_of_freedom, dtype=np.float64),
        covariances,
        precisions_cholesky,
    )


# -------------------------------------------------------------------------------- bound


def _log_wishart_norm(
    degrees_of_freedom: FloatArray, log_det_half_w: FloatArray | float, n_features: int
) -> FloatArray:
    """``log B(W, ν)`` of the Wishart (Bishop eq. B.79) without its ``log π`` term.

    ``log_det_half_w`` is ``½ log|W|``; ``-(ν ½ log|W| + ν d/2 log 2 + Σ_{i<d} log Γ((ν-i)/2))``.
    """
    nu = np.atleast_1d(degrees_of_freedom)
    return np.asarray(
        -(
            nu * log_det_half_w
            + nu * n_features * 0.5 * math.log(2.0)
            + np.sum(gammaln(0.5 * (nu - np.arange(n_features)[:, None])), axis=0)
        )
    )


def variational_lower_bound(
    stats: VariationalStats, params: VariationalParams, covariance_type: CovarianceType
) -> float:
    """Total evidence lower bound, in scikit-learn's simplified form.

    Parameters
    ----------
    stats : VariationalStats
        Statistics of an E-step (its ``Σ r log r``).
    params : VariationalParams
        The posterior the M-step computed *from those statistics*: with ``q(θ)`` optimal
        for ``q(Z)``, the expectations of ``log p(X, Z, θ) - log q(θ)`` collapse into the
        normalisers of ``q(θ)`` (Bishop eq. 10.70-10.77), leaving
        ``-Σ r log r - Σ_k log B(W_k, ν_k) - log C(α) - d/2 Σ_k log β_k`` plus terms that
        depend only on the priors and the data size.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    float
        The bound summed over samples, equal to scikit-learn's
        ``BayesianGaussianMixture._compute_lower_bound``; divide by ``stats.n`` for the
        per-sample bound the engine reports.
    """
    d = params.means.shape[1]
    K = params.n_components
    # ½ log|W_k| = log|U_k| - d/2 log ν_k, as U_k factors the expected precision ν_k W_k.
    log_det_half_w = log_det_cholesky(
        params.precisions_cholesky, covariance_type, d
    ) - 0.5 * d * np.log(params.degrees_of_freedom)
    if covariance_type == "tied":
        log_wishart = K * float(_log_wishart_norm(params.degrees_of_freedom, log_det_half_w, d)[0])
    else:
        log_wishart = float(np.sum(_log_wishart_norm(params.degrees_of_freedom, log_det_half_w, d)))
    wc = params.weight_concentration
    if wc.ndim == 2:
        # Beta normalisers of the stick-breaking fractions.
        log_norm_weight = -float(np.sum(betaln(wc[0], wc[1])))
    else:
        # Dirichlet normaliser log C(α) (Bishop eq. B.23).
        log_norm_weight = float(gammaln(np.sum(wc)) - np.sum(gammaln(wc)))
    return float(
        -stats.resp_log_resp
        - log_wishart
        - log_norm_weight
        - 0.5 * d * np.sum(np.log(params.mean_precision))
    )
