"""numpy references of the mixture E-steps: readable, and the oracle of the compiled ones.

The E-steps the estimators run (:func:`emdist.kernels.mixture.mixture_estep_chunk`,
:func:`emdist.kernels.variational.variational_estep_chunk`) run two GEMMs across all
components on quadratic features of the rows (:mod:`emdist.kernels.quadratic`) with compiled
loops between them (:mod:`emdist.kernels.fused_estep`). These are the same statistics
computed plainly with numpy from differences to every mean, as they ran before the compiled
kernels (benchmarks/README.md, "Compiled mixture kernels", compares the two): every block is
computed in float64, the differences to the means are feature-major ``(K, d, m)`` arrays
(:class:`~emdist.kernels.gaussian.ComponentBlocks`), and each step is one numpy call. The
tests in ``tests/kernels/test_compiled_kernels.py`` hold the compiled kernels to them.
"""

from __future__ import annotations

import math

import numpy as np

from emdist._typing import AnyArray, CovarianceType, FloatArray
from emdist.kernels._blocks import (
    iter_sub_blocks,
    iter_sub_blocks_t,
    logsumexp_rows,
    sub_block_rows,
)
from emdist.kernels.gaussian import ComponentBlocks, estimate_log_gaussian_prob, log_det_cholesky
from emdist.kernels.mixture import (
    MixtureParams,
    MixtureStats,
    _accumulate,
    _symmetrise,
    mixture_stats_from_resp,
)
from emdist.kernels.rows import RowBlock
from emdist.kernels.variational import VariationalParams, VariationalStats, _log_offsets

__all__ = ["mixture_estep_reference", "variational_estep_reference"]


def _normalise(lp: FloatArray, resp: FloatArray) -> float:
    """Responsibilities from weighted log-densities ``lp`` (K, m) into ``resp``.

    Log-sum-exp over the components, stably (max-shifted); returns ``Σ_i log p(x_i)``.
    """
    amax = np.max(lp, axis=0)
    amax[~np.isfinite(amax)] = 0.0
    np.subtract(lp, amax, out=resp)
    np.exp(resp, out=resp)
    total = np.sum(resp, axis=0)
    resp /= total
    log_norm = np.log(total)
    log_norm += amax
    return float(log_norm.sum())


def mixture_estep_reference(
    block: RowBlock, params: MixtureParams, covariance_type: CovarianceType
) -> MixtureStats:
    """E-step on one block, reduced at once to sufficient statistics (numpy reference).

    Parameters
    ----------
    block : RowBlock
        The rows (any real dtype and layout), their global offset and per-row inputs.
    params : MixtureParams
        Current parameters; their means are the shift of the statistics.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    MixtureStats
    """
    X = block.x
    shift = params.means
    stats = MixtureStats.zero(shift, covariance_type)
    nk, sx, sxx = stats.nk, stats.sx, stats.sxx
    log_lik = 0.0
    log_w = np.log(params.weights)[:, None]
    # The differences to the means serve twice: log-densities, then moments about the shift.
    blocks = ComponentBlocks(shift, params.precisions_cholesky, covariance_type)
    resp = np.empty(0)
    for _, Xt in iter_sub_blocks_t(X, blocks.rows):
        blocks.centre(Xt)
        lp = blocks.log_prob()
        lp += log_w
        if resp.shape != lp.shape:
            resp = np.empty_like(lp)
        log_lik += _normalise(lp, resp)
        _accumulate(blocks, resp, nk, sx, sxx)
    return MixtureStats(
        float(X.shape[0]), log_lik, nk, sx, _symmetrise(sxx, covariance_type), shift
    )


def variational_estep_reference(
    block: RowBlock, params: VariationalParams, covariance_type: CovarianceType
) -> VariationalStats:
    """Variational E-step on one block, reduced at once to summable statistics (numpy reference).

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
    if covariance_type in ("diag", "spherical"):
        return _estep_axis_aligned(X, params, covariance_type)
    shift = params.means
    offsets = _log_offsets(params, X.shape[1])
    total = VariationalStats.zero(shift, covariance_type)
    log_norm_sum = 0.0
    r_log_r = 0.0
    for _, Xb in iter_sub_blocks(X, sub_block_rows(params.means.size)):
        log_resp = estimate_log_gaussian_prob(
            Xb, params.means, params.precisions_cholesky, covariance_type
        )
        log_resp += offsets
        log_norm = logsumexp_rows(log_resp)
        log_norm_sum += float(log_norm.sum())
        log_resp -= log_norm[:, None]
        resp = np.exp(log_resp)
        # r log r with log r finite: an underflowed r = 0 contributes 0, as it should.
        r_log_r += float(np.einsum("ij,ij->", resp, log_resp))
        total = total + VariationalStats(
            mixture_stats_from_resp(Xb, resp, shift, covariance_type), 0.0
        )
    m = total.moments
    moments = MixtureStats(float(X.shape[0]), log_norm_sum, m.nk, m.sx, m.sxx, shift)
    return VariationalStats(moments, r_log_r)


def _estep_axis_aligned(
    X: AnyArray, params: VariationalParams, covariance_type: CovarianceType
) -> VariationalStats:
    """Fused E-step for ``diag`` and ``spherical``: differences formed once, used twice.

    The squared differences ``D²_k = (x - m_k)²`` give both the Mahalanobis terms and,
    since the shift is ``m_k``, the second moments ``Σ r (x - m_k)²``; composing the generic
    log-density and moment kernels forms them twice (measured ~2.5x slower here). Still
    differences, never the ``x² - 2xm + m²`` expansion (docs/design.md, "Numerics").
    """
    shift = params.means
    K, d = shift.shape
    prec = params.precisions_cholesky**2  # (K, d) diag, (K,) spherical
    const = (
        _log_offsets(params, d)
        - 0.5 * d * math.log(2 * math.pi)
        + log_det_cholesky(params.precisions_cholesky, covariance_type, d)
    )
    nk = np.zeros(K)
    sx = np.zeros((K, d))
    sxx = np.zeros((K, d)) if covariance_type == "diag" else np.zeros(K)
    log_norm_sum = 0.0
    r_log_r = 0.0
    diag = covariance_type == "diag"
    rows = sub_block_rows(2 * shift.size)
    diff = np.empty((K, rows, d))
    sq = np.empty((K, rows, d)) if diag else diff
    for _, Xb in iter_sub_blocks(X, rows):
        b = len(Xb)
        D, D2 = diff[:, :b], sq[:, :b]
        np.subtract(Xb[None, :, :], shift[:, None, :], out=D)
        if diag:
            np.square(D, out=D2)
            maha = np.matmul(D2, prec[:, :, None])[:, :, 0]  # (K, b)
        else:
            # Spherical needs only ‖x - m_k‖²: no (K, b, d) array of squares.
            row_sq = np.einsum("kbd,kbd->kb", D, D)
            maha = row_sq * prec[:, None]
        log_resp = np.ascontiguousarray(maha.T)
        log_resp *= -0.5
        log_resp += const
        log_norm = logsumexp_rows(log_resp)
        log_norm_sum += float(log_norm.sum())
        log_resp -= log_norm[:, None]
        resp = np.exp(log_resp)
        r_log_r += float(np.einsum("ij,ij->", resp, log_resp))
        nk += resp.sum(axis=0)
        resp_k = np.ascontiguousarray(resp.T)[:, None, :]  # (K, 1, b)
        sx += np.matmul(resp_k, D)[:, 0, :]
        if diag:
            sxx += np.matmul(resp_k, D2)[:, 0, :]
        else:
            sxx += np.einsum("kb,kb->k", resp_k[:, 0, :], row_sq)
    moments = MixtureStats(float(X.shape[0]), log_norm_sum, nk, sx, sxx, shift)
    return VariationalStats(moments, r_log_r)
