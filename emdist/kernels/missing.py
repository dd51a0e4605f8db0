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

from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

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
    "estep_with_missing",
    "incomplete_stats",
    "log_prob_with_missing",
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
    codes = _pattern_codes(mask[incomplete])
    patterns, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(patterns) + 1))
    for p in range(len(patterns)):
        yield ~mask[incomplete[first[p]]], incomplete[order[bounds[p] : bounds[p + 1]]]


def _pattern_codes(mask: AnyArray) -> AnyArray:
    """One integer per row naming its pattern (up to 62 features), else the rows themselves."""
    d = mask.shape[1]
    if d <= 62:
        return np.asarray(mask.astype(np.int64) @ (np.int64(1) << np.arange(d, dtype=np.int64)))
    return mask


#: Rows a missing pattern must average for full/tied rows to be grouped by pattern (below,
#: the per-pattern factorisations cost more than batching rows by missing count: measured
#: break-even about 110 rows, 16 features, K = 8; benchmarks/README.md, "Missing values").
ROWS_PER_PATTERN = 128


class _Conditionals(Protocol):
    """Every component's marginal and conditionals on a group of incomplete rows."""

    #: ``log N(x_o | μ_ko, Σ_k,oo)`` of the group's rows, (n_rows, K).
    log_prob: FloatArray

    def add(self, k: int, r: FloatArray, sx: FloatArray, sxx: FloatArray) -> float:
        """Add component ``k``'s moments of the rows weighted by ``r``; ``Σ r H`` returned."""
        ...


class _AxisRows:
    """``diag``/``spherical`` components on incomplete rows, all patterns at once.

    The marginal drops the missing coordinates; a missing coordinate's conditional mean is
    the component mean (a zero difference) and its conditional variance the component's.
    """

    def __init__(
        self,
        X: AnyArray,
        mask: AnyArray,
        means: FloatArray,
        cov: FloatArray,
        covariance_type: CovarianceType,
    ) -> None:
        K, d = means.shape
        self.covariance_type = covariance_type
        self.var = cov if covariance_type == "diag" else np.repeat(cov[:, None], d, axis=1)
        self.observed = ~mask
        self.missing = mask.astype(np.float64)
        observed = self.observed.astype(np.float64)
        Xf = np.asarray(X, dtype=np.float64)
        self.Z = np.where(self.observed[None], Xf[None] - means[:, None, :], 0.0)
        self.Z2 = self.Z**2
        p = observed.sum(axis=1)
        maha = np.einsum("knd,kd->kn", self.Z2, 1.0 / self.var)
        log_det = np.log(self.var) @ observed.T
        self.log_prob = (-0.5 * (p * _LOG_2PI + maha + log_det)).T

    def add(self, k: int, r: FloatArray, sx: FloatArray, sxx: FloatArray) -> float:
        """Add component ``k``'s moments of the rows weighted by ``r``; ``Σ r H`` returned."""
        sx[k] += r @ self.Z[k]
        if self.covariance_type == "diag":
            sxx[k] += r @ self.Z2[k] + (r @ self.missing) * self.var[k]
        else:
            sxx[k] += r @ self.Z2[k].sum(axis=1) + r @ (self.missing @ self.var[k])
        per_row = self.missing @ (1.0 + _LOG_2PI + np.log(self.var[k]))
        return float(0.5 * (r @ per_row))


def _precisions(covs: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Inverses and log-determinants of the (K or 1, d, d) covariances."""
    inverse = np.asarray(np.linalg.inv(covs), dtype=np.float64)
    return inverse, np.asarray(np.linalg.slogdet(covs)[1], dtype=np.float64)


class _FullRows:
    """``full``/``tied`` components on incomplete rows with ``c`` missing values each.

    Through the precision ``P = Σ⁻¹``: with ``z = x - μ`` (0 where missing) and
    ``u = P z``, the conditional mean is ``E[x_m | x_o] - μ_m = -P_mm⁻¹ u_m``, the
    conditional covariance ``P_mm⁻¹``, the observed marginal's Mahalanobis distance
    ``zᵀ u - u_mᵀ P_mm⁻¹ u_m`` and ``log |Σ_oo| = log |Σ| + log |P_mm|`` (Schur
    complements). So a row costs one ``c x c`` factorisation beside products of length
    ``d``, batched over the group's rows whatever their patterns.
    """

    def __init__(
        self,
        X: FloatArray,
        mask: AnyArray,
        means: FloatArray,
        cov: FloatArray,
        covariance_type: CovarianceType,
        conditional: bool,
    ) -> None:
        K, d = means.shape
        n = X.shape[0]
        self.covariance_type = covariance_type
        covs = cov[None] if covariance_type == "tied" else cov
        self.observed = ~mask
        c = int(mask[0].sum())
        self.c = c
        # Missing coordinates of every row, (n, c), in increasing order.
        self.M = np.nonzero(mask)[1].reshape(n, c)
        rows = np.arange(n)[:, None]
        self.precisions, log_det_cov = _precisions(covs)
        self.C: list[FloatArray] = []
        self.log_det_c: list[FloatArray] = []
        for P in self.precisions:
            Pmm = P[self.M[:, :, None], self.M[:, None, :]]
            if c == 1:
                # One missing value: its conditional variance is 1 / P_mm, no factorisation.
                self.log_det_c.append(-np.log(Pmm[:, 0, 0]))
                self.C.append(1.0 / Pmm)
                continue
            try:
                L = np.linalg.cholesky(Pmm)
            except np.linalg.LinAlgError:
                raise FitError(
                    "A conditional covariance of a row's missing values is not positive "
                    "definite; increase reg_covar or scale the input data."
                ) from None
            self.log_det_c.append(-2.0 * np.sum(np.log(np.diagonal(L, axis1=1, axis2=2)), axis=1))
            self.C.append(np.linalg.inv(Pmm))
        self.Z = np.where(self.observed[None], X[None] - means[:, None, :], 0.0)
        self.V = np.empty((K, n, c))
        self.log_prob = np.empty((n, K))
        p = d - c
        for k in range(K):
            j = 0 if covariance_type == "tied" else k
            U = self.Z[k] @ self.precisions[j]
            Um = U[rows, self.M]
            V = np.einsum("nab,nb->na", self.C[j], Um)
            self.V[k] = V
            maha = np.einsum("ni,ni->n", self.Z[k], U) - np.einsum("na,na->n", Um, V)
            # log |Σ_oo| = log |Σ| - log |Cov[x_m | x_o]|.
            log_det_oo = log_det_cov[j] - self.log_det_c[j]
            self.log_prob[:, k] = -0.5 * (p * _LOG_2PI + maha + log_det_oo)

    def add(self, k: int, r: FloatArray, sx: FloatArray, sxx: FloatArray) -> float:
        """Add component ``k``'s moments of the rows weighted by ``r``; ``Σ r H`` returned."""
        j = 0 if self.covariance_type == "tied" else k
        n = r.shape[0]
        D = self.Z[k].copy()
        D[np.arange(n)[:, None], self.M] = -self.V[k]
        sx[k] += r @ D
        moment = (D * r[:, None]).T @ D
        d = moment.shape[0]
        # Σ_i r_i Cov_i scattered onto each row's (m, m) block: one bincount.
        cells = (self.M[:, :, None] * d + self.M[:, None, :]).ravel()
        weighted = (r[:, None, None] * self.C[j]).ravel()
        moment += np.bincount(cells, weights=weighted, minlength=d * d).reshape(d, d)
        if self.covariance_type == "full":
            sxx[k] += moment
        else:
            sxx += moment
        return float(0.5 * (r @ (self.c * (1.0 + _LOG_2PI) + self.log_det_c[j])))


class _Marginal:
    """``full``/``tied`` components' marginals on one pattern's observed coordinates.

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
        """``E[x | x_o, k] - μ_k`` of the pattern's rows, (n, d)."""
        Zk = self.Z[k]
        out = np.empty((Zk.shape[0], self.observed.shape[0]))
        out[:, self.observed] = Zk
        out[:, ~self.observed] = Zk @ self.A[0 if self.covariance_type == "tied" else k].T
        return out

    def conditional_cov(self, k: int) -> FloatArray:
        """``Cov[x_m | x_o, k]``, (m, m)."""
        return np.asarray(self.C[0 if self.covariance_type == "tied" else k])

    def add(self, k: int, r: FloatArray, sx: FloatArray, sxx: FloatArray) -> float:
        """Add component ``k``'s moments of the rows weighted by ``r``; ``Σ r H`` returned."""
        miss = np.flatnonzero(~self.observed)
        D = self.filled_differences(k)
        rk = float(r.sum())
        sx[k] += r @ D
        C = self.conditional_cov(k)
        ct = self.covariance_type
        moment = (D * r[:, None]).T @ D
        moment[np.ix_(miss, miss)] += rk * C
        if ct == "full":
            sxx[k] += moment
        else:
            sxx += moment
        return rk * 0.5 * (len(miss) * (1.0 + _LOG_2PI) + self.conditional_log_det(k))

    def conditional_log_det(self, k: int) -> float:
        """``log |Cov[x_m | x_o, k]|`` (the entropy of the missing values needs it)."""
        sign, log_det = np.linalg.slogdet(self.conditional_cov(k))
        return float(log_det) if sign > 0 else -np.inf


def _groups(
    X: AnyArray,
    mask: AnyArray,
    means: FloatArray,
    covariances: FloatArray,
    covariance_type: CovarianceType,
    conditional: bool,
    grouping: str = "auto",
) -> Iterator[tuple[AnyArray, _Conditionals]]:
    """The incomplete rows of a block in groups, each with its components' conditionals.

    ``diag``/``spherical``: one vectorised group (dropping coordinates needs no
    factorisation). ``full``/``tied``: one group per missing pattern when the patterns are
    few (``grouping='pattern'``, or ``'auto'`` when they average at least
    :data:`ROWS_PER_PATTERN` rows: a Cholesky factor per pattern and component), else
    rows grouped by their number of missing values, each row's small factorisation
    batched (``'row'``, :class:`_FullRows`; missing completely at random over many
    features makes nearly every row its own pattern).
    """
    incomplete = np.flatnonzero(mask.any(axis=1))
    if incomplete.size == 0:
        return
    if covariance_type in ("diag", "spherical"):
        yield (
            incomplete,
            _AxisRows(X[incomplete], mask[incomplete], means, covariances, covariance_type),
        )
        return
    n_patterns = len(np.unique(_pattern_codes(mask[incomplete]), axis=0))
    by_row = grouping == "row" or (
        grouping == "auto" and n_patterns * ROWS_PER_PATTERN > incomplete.size
    )
    if by_row:
        counts = mask[incomplete].sum(axis=1)
        for c in np.unique(counts):
            rows = incomplete[counts == c]
            yield (
                rows,
                _FullRows(
                    np.asarray(X[rows], dtype=np.float64),
                    mask[rows],
                    means,
                    covariances,
                    covariance_type,
                    conditional,
                ),
            )
        return
    for observed, rows in missing_patterns(mask):
        Xo = np.asarray(X[np.ix_(rows, np.flatnonzero(observed))], dtype=np.float64)
        yield rows, _Marginal(Xo, observed, means, covariances, covariance_type, conditional)


def incomplete_stats(
    X: AnyArray,
    mask: AnyArray,
    weights: AnyArray | None,
    means: FloatArray,
    covariances: FloatArray,
    covariance_type: CovarianceType,
    log_offsets: FloatArray,
    grouping: str = "auto",
) -> tuple[MixtureStats, float, float]:
    """Moments of the rows of ``X`` with a missing value (the others are skipped).

    Responsibilities ``∝ exp(log_offsets_k) N(x_o | μ_ko, Σ_k,oo)``; the moments are about
    ``means`` with the conditional expectations of the missing values filled in.
    ``grouping``: how full/tied rows are batched (:func:`_groups`; the same numbers up to
    rounding).

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
    groups = _groups(X, mask, means, covariances, covariance_type, True, grouping)
    for rows, group in groups:
        w = None if weights is None else np.asarray(weights, dtype=np.float64)[rows]
        lp = group.log_prob + log_offsets
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
        for k in range(shift.shape[0]):
            entropy += group.add(k, resp[:, k], sx, sxx)
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
    for rows, group in _groups(X, mask, means, covariances, covariance_type, False):
        out[rows] = group.log_prob


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

    def incomplete(mask: AnyArray) -> MixtureStats:
        stats, _, _ = incomplete_stats(
            block.x,
            mask,
            block.weights,
            params.means,
            params.covariances,
            covariance_type,
            np.log(params.weights),
        )
        return stats

    return estep_with_missing(
        block, lambda rows: mixture_estep_chunk(rows, params, covariance_type), incomplete
    )


def estep_with_missing(
    block: RowBlock, complete: Callable[[RowBlock], S], incomplete: Callable[[AnyArray], S]
) -> S:
    """An E-step of a block whose rows may hold NaN, from the complete rows' and the rest's.

    ``complete(rows)``: the model's E-step of rows without NaN (of the whole block when it
    has none, bit for bit); ``incomplete(mask)``: the statistics of the block's incomplete
    rows, given the block's mask. The complete rows are taken with
    :meth:`RowBlock.select`, after every row was checked on the whole block (its row
    numbers).

    Raises
    ------
    InvalidDataError
        A row with every value missing, or an infinite value (naming the row).
    """
    mask = missing_mask(block)
    if not mask.any():
        return complete(block)
    check_missing_rows(block.x, block.row_offset)
    stats = incomplete(mask)
    rows = ~mask.any(axis=1)
    if rows.any():
        stats = complete(block.select(rows)) + stats
    return stats


def mixture_log_prob_missing_chunk(
    X: AnyArray, params: MixtureParams, covariance_type: CovarianceType
) -> FloatArray:
    """Weighted log-densities of a block with NaN: each row's marginal on its observed values.

    Complete rows are :func:`~emdist.kernels.mixture.mixture_log_prob_chunk`'s; a row with
    every value missing must have been refused before (:func:`check_missing_rows`).
    """
    return log_prob_with_missing(
        X, params, covariance_type, mixture_log_prob_chunk, lambda: np.log(params.weights)
    )


class _Components(Protocol):
    """Parameters with a Gaussian per component: what a row's marginal needs."""

    @property
    def n_components(self) -> int: ...

    @property
    def means(self) -> FloatArray: ...

    @property
    def covariances(self) -> FloatArray: ...


P = TypeVar("P", bound=_Components)
S = TypeVar("S", bound="_Summable")


class _Summable(Protocol):
    def __add__(self: S, other: S, /) -> S: ...


def log_prob_with_missing(
    X: AnyArray,
    params: P,
    covariance_type: CovarianceType,
    complete: Callable[[AnyArray, P, CovarianceType], FloatArray],
    offsets: Callable[[], FloatArray],
) -> FloatArray:
    """Per-component log-scores of rows that may hold NaN, shape (n_rows, K).

    Complete rows are ``complete(rows, params, covariance_type)``'s (all of ``X`` when it
    has no NaN, bit for bit); an incomplete row's are its marginal log-density on its
    observed values (:func:`marginal_log_prob`, from ``params.means`` and
    ``params.covariances``) plus ``offsets()``, the per-component terms of the model
    (log-weights, or the variational mixture's expectations).
    """
    mask = np.isnan(X)
    if not mask.any():
        return complete(X, params, covariance_type)
    out = np.empty((X.shape[0], params.n_components))
    incomplete = mask.any(axis=1)
    if not incomplete.all():
        out[~incomplete] = complete(np.asarray(X)[~incomplete], params, covariance_type)
    marginal_log_prob(X, mask, params.means, params.covariances, covariance_type, out)
    out[incomplete] += offsets()
    return out
