"""Compiled (numba) loops of the mixture E-steps: what follows or replaces the BLAS products.

Two kinds of kernel, both GIL-free (:func:`emdist.kernels._jit.jit`) and both writing no
temporary larger than one row or one sub-block:

* :func:`axis_aligned_estep` — the whole ``diag``/``spherical`` E-step of a row block in
  one pass over its rows: differences to every mean, log-densities, log-sum-exp,
  responsibilities, the moments about the means and ``Σ r log r``. numpy needs a dozen
  calls and ``(K, d, m)`` temporaries for the same (benchmarks/README.md, "Compiled mixture
  kernels").
* :func:`normalise_whitened` and :func:`weight_differences` — for ``full``/``tied`` the
  Mahalanobis products and the second moments stay BLAS GEMMs; these fuse the cheap steps
  between them: ``‖Y_k‖²`` of the whitened differences, log-sum-exp and responsibilities,
  then ``r ⊙ Z`` with ``Σ r`` and ``Σ r Z``.

Every loop runs in a fixed order along arrays laid out so that the innermost loop carries
no reduction (components for the log-densities, features or rows for the moments): LLVM
vectorises them without ``fastmath``, and the results do not depend on the chunking beyond
the rounding of the sums. Inputs may be float32 or float64; everything is accumulated in
float64. The numpy references these kernels are tested against are in
:mod:`emdist.kernels.mixture_reference`.
"""

from __future__ import annotations

import math

import numpy as np

from emdist._typing import AnyArray, FloatArray
from emdist.kernels._jit import jit

__all__ = ["axis_aligned_estep", "normalise_whitened", "weight_differences"]


@jit
def axis_aligned_estep(
    X: AnyArray,
    means: FloatArray,
    means_t: FloatArray,
    scale_t: FloatArray,
    const: FloatArray,
    spherical: bool,
    nk: FloatArray,
    sx: FloatArray,
    sxx: FloatArray,
    weights: FloatArray | None = None,
) -> tuple[float, float]:
    """E-step of a ``diag`` or ``spherical`` mixture on the rows of ``X``, accumulated in place.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32 or float64, C-contiguous
    means : ndarray of shape (K, d)
        The means, which are also the shift of the moments.
    means_t : ndarray of shape (d, K)
        ``means.T``, C-contiguous (the log-density loop runs along the components).
    scale_t : ndarray of shape (d, K) or (1, K)
        Squared precision factors ``U²`` (``diag``, transposed) or ``U²`` per component
        (``spherical``).
    const : ndarray of shape (K,)
        ``log π_k + log det U_k - d/2 log 2π`` (plus the variational offsets).
    spherical : bool
    nk, sx, sxx : ndarrays of shape (K,), (K, d) and (K, d) or (K, 1)
        Accumulators, float64 (``sxx`` of ``spherical`` as a column).
    weights : ndarray of shape (n,), optional
        Row weights (``sample_weight``): every sum below weighs its row.

    Returns
    -------
    log_norm : float
        ``Σ_i log Σ_k exp(lp_ik)``.
    r_log_r : float
        ``Σ_i Σ_k r_ik log r_ik``.
    """
    n, d = X.shape
    K = means.shape[0]
    acc = np.empty(K)
    resp = np.empty(K)
    log_norm = 0.0
    r_log_r = 0.0
    for i in range(n):
        for k in range(K):
            acc[k] = 0.0
        # Σ_j (x_j - μ_kj)² U_kj² for all k at once: the inner loop runs over components.
        for j in range(d):
            xj = np.float64(X[i, j])
            if spherical:
                for k in range(K):
                    z = xj - means_t[j, k]
                    acc[k] += z * z
            else:
                for k in range(K):
                    z = xj - means_t[j, k]
                    acc[k] += z * z * scale_t[j, k]
        amax = -np.inf
        for k in range(K):
            scaled = acc[k] * scale_t[0, k] if spherical else acc[k]
            resp[k] = const[k] - 0.5 * scaled
            if resp[k] > amax:
                amax = resp[k]
        if not np.isfinite(amax):
            amax = 0.0
        total = 0.0
        e_log_e = 0.0
        for k in range(K):
            shifted = resp[k] - amax
            e = math.exp(shifted)
            resp[k] = e
            total += e
            if e > 0.0:
                e_log_e += e * shifted
        row_norm = math.log(total)
        # Σ_k r log r = Σ_k r (lp_k - amax - row_norm) = Σ_k e (lp_k - amax) / total - row_norm.
        if weights is None:
            log_norm += row_norm + amax
            r_log_r += e_log_e / total - row_norm
        else:
            wi = weights[i]
            log_norm += wi * (row_norm + amax)
            r_log_r += wi * (e_log_e / total - row_norm)
            total /= wi  # r = w e / total: the row's weight in every moment below
        for k in range(K):
            r = resp[k] / total
            nk[k] += r
            if r == 0.0:
                continue
            # Moments about the means: the inner loop runs over features.
            if spherical:
                sxx[k, 0] += r * acc[k]
                for j in range(d):
                    sx[k, j] += r * (np.float64(X[i, j]) - means[k, j])
            else:
                for j in range(d):
                    z = np.float64(X[i, j]) - means[k, j]
                    w = r * z
                    sx[k, j] += w
                    sxx[k, j] += w * z
    return log_norm, r_log_r


@jit
def normalise_whitened(
    Y: AnyArray, const: FloatArray, resp: FloatArray, weights: FloatArray | None = None
) -> tuple[float, float]:
    """Responsibilities from whitened differences ``Y[k] = U_kᵀ (x - μ_k)``.

    Parameters
    ----------
    Y : ndarray of shape (K, d, m), float32 or float64
        Output of the Mahalanobis GEMMs, feature-major.
    const : ndarray of shape (K,)
        ``log π_k + log det U_k - d/2 log 2π`` (plus the variational offsets).
    resp : ndarray of shape (K, m), float64
        Filled with the responsibilities (times the row's weight with ``weights``).
    weights : ndarray of shape (m,), optional
        Row weights (``sample_weight``): the sums and responsibilities weigh their row.

    Returns
    -------
    log_norm : float
        ``Σ_i log Σ_k exp(lp_ik)``.
    r_log_r : float
        ``Σ_i Σ_k r_ik log r_ik``.
    """
    K, d, m = Y.shape
    amax = np.full(m, -np.inf)
    total = np.zeros(m)
    for k in range(K):
        row = resp[k]
        for t in range(m):
            row[t] = 0.0
        # ‖Y_k‖² accumulated in float64 along the rows (no reduction in the inner loop).
        for j in range(d):
            y = Y[k, j]
            for t in range(m):
                v = np.float64(y[t])
                row[t] += v * v
        c = const[k]
        for t in range(m):
            lp = c - 0.5 * row[t]
            row[t] = lp
            if lp > amax[t]:
                amax[t] = lp
    e_log_e = np.zeros(m)
    for t in range(m):
        if not np.isfinite(amax[t]):
            amax[t] = 0.0
    for k in range(K):
        row = resp[k]
        for t in range(m):
            shifted = row[t] - amax[t]
            e = math.exp(shifted)
            row[t] = e
            total[t] += e
            if e > 0.0:
                e_log_e[t] += e * shifted
    log_norm = 0.0
    r_log_r = 0.0
    for t in range(m):
        row_norm = math.log(total[t])
        # Σ_k r log r = Σ_k e (lp_k - amax) / total - log total (the responsibilities sum to 1).
        if weights is None:
            log_norm += row_norm + amax[t]
            r_log_r += e_log_e[t] / total[t] - row_norm
        else:
            wt = weights[t]
            log_norm += wt * (row_norm + amax[t])
            r_log_r += wt * (e_log_e[t] / total[t] - row_norm)
            total[t] /= wt  # r = w e / total
    for k in range(K):
        row = resp[k]
        for t in range(m):
            row[t] /= total[t]
    return log_norm, r_log_r


@jit
def weight_differences(
    Z: AnyArray, resp: FloatArray, W: AnyArray, nk: FloatArray, sx: FloatArray
) -> None:
    """``W = r ⊙ Z`` for the moment GEMM, with ``Σ r`` and ``Σ r Z`` added to ``nk``, ``sx``.

    Parameters
    ----------
    Z : ndarray of shape (K, d, m), float32 or float64
        Differences to the shift, feature-major.
    resp : ndarray of shape (K, m), float64
    W : ndarray shaped and typed like ``Z``
        Output.
    nk : ndarray of shape (K,), float64
    sx : ndarray of shape (K, d), float64
    """
    K, d, m = Z.shape
    # Eight interleaved partial sums per (k, j): independent chains the compiler can put in
    # one vector register, in a fixed order (no fastmath).
    part = np.zeros(8)
    for k in range(K):
        r = resp[k]
        s = 0.0
        for t in range(m):
            s += r[t]
        nk[k] += s
        m8 = m - m % 8
        for j in range(d):
            z = Z[k, j]
            w = W[k, j]
            for q in range(8):
                part[q] = 0.0
            for t0 in range(0, m8, 8):
                for q in range(8):
                    v = z[t0 + q] * r[t0 + q]
                    w[t0 + q] = v
                    part[q] += np.float64(v)
            tail = 0.0
            for t in range(m8, m):
                v = z[t] * r[t]
                w[t] = v
                tail += np.float64(v)
            sx[k, j] += (
                ((part[0] + part[1]) + (part[2] + part[3]))
                + ((part[4] + part[5]) + (part[6] + part[7]))
                + tail
            )
