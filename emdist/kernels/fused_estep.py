"""Compiled (numba) loops of the mixture E-steps: what surrounds its two GEMMs.

Every covariance type runs its E-step on a sub-block of ``m`` rows as two GEMMs across all
components (:mod:`emdist.kernels.quadratic`): the log-densities ``A @ B`` of the quadratic
features ``A = [φ(x - c), x - c, 1]``, and the moments ``Rᵀ @ A`` under the
responsibilities ``R``. The steps around them are compiled here, both GIL-free
(:func:`emdist.kernels._jit.jit`) and writing nothing larger than the sub-block:

* :func:`quadratic_features` — the rows minus the centre and their products, one row of
  ``A`` at a time (the inner loops run along contiguous slices, so they vectorise).
* :func:`shift_log_densities` and :func:`responsibilities` — log-sum-exp over the
  components of each row of log-densities (numpy's SIMD ``exp`` in between), the
  responsibilities (times the row's weight with ``sample_weight``), ``Σ r`` per component,
  ``Σ log p(x)`` and ``Σ r log r``.

Every loop runs in a fixed order (no ``fastmath``), so the results do not depend on the
chunking beyond the rounding of the sums. The numpy references these kernels are tested
against are in :mod:`emdist.kernels.mixture_reference`.
"""

from __future__ import annotations

import math

import numpy as np

from emdist._typing import AnyArray, FloatArray
from emdist.kernels._jit import jit

__all__ = [
    "FULL_FEATURES",
    "DIAG_FEATURES",
    "add_float32",
    "nearest_labels",
    "SPHERICAL_FEATURES",
    "quadratic_features",
    "responsibilities",
    "shift_log_densities",
]

# Which quadratic features a covariance type needs (the ``kind`` of quadratic_features).
FULL_FEATURES = 0  # the upper triangle of (x - c)(x - c)ᵀ, row by row: d (d + 1) / 2
DIAG_FEATURES = 1  # (x - c)², d
SPHERICAL_FEATURES = 2  # ‖x - c‖², 1


@jit
def quadratic_features(
    X: AnyArray, start: int, centre: FloatArray, kind: int, A: FloatArray, A32: AnyArray
) -> None:
    """Rows ``start : start + len(A)`` of ``X`` as ``[φ(x - c), x - c, 1]``, into ``A``.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32 or float64
    start : int
        First row.
    centre : ndarray of shape (d,)
        ``c``, float64: the differences ``x - c`` are formed in float64 (exact for float32
        data) and every product from them.
    kind : int
        :data:`FULL_FEATURES`, :data:`DIAG_FEATURES` or :data:`SPHERICAL_FEATURES`.
    A : ndarray of shape (m, q + d + 1), float64 or float32
        Output; ``q`` is the number of quadratic features of ``kind``. float32 (``full``
        features of float32 rows): the differences are rounded to float32 once and
        multiplied in float32, which rounds each product as the float64 product would be
        (a product of two float32 values is exact in float64).
    A32 : ndarray of shape (m, q + d + 1) or (0, q + d + 1), float32
        A float32 copy of ``A`` when it has rows (for float32 log-density GEMMs).
    """
    m, p = A.shape
    d = centre.shape[0]
    xc = np.empty(d, dtype=A.dtype)
    copy = A32.shape[0] > 0
    for t in range(m):
        a = A[t]
        for j in range(d):
            xc[j] = np.float64(X[start + t, j]) - centre[j]
        if kind == 0:
            o = 0
            for i in range(d):
                xi = xc[i]
                width = d - i
                dst = a[o : o + width]
                src = xc[i:]
                for j in range(width):
                    dst[j] = xi * src[j]
                o += width
        elif kind == 1:
            o = d
            for j in range(d):
                a[j] = xc[j] * xc[j]
        else:
            o = 1
            s = 0.0
            for j in range(d):
                s += xc[j] * xc[j]
            a[0] = s
        lin = a[o : o + d]
        for j in range(d):
            lin[j] = xc[j]
        a[o + d] = 1.0
        if copy:
            b = A32[t]
            for j in range(p):
                b[j] = a[j]


@jit
def add_float32(total: FloatArray, part: AnyArray) -> None:
    """``total += part`` for a float64 ``total`` and a float32 ``part``.

    numpy's mixed-dtype ``+=`` casts through a buffer: ~4x slower on a sub-block's moments.
    """
    a = total.ravel()
    b = part.ravel()
    for i in range(a.shape[0]):
        a[i] += np.float64(b[i])


@jit
def nearest_labels(scores: AnyArray, offsets: AnyArray, labels: AnyArray, start: int) -> None:
    """``labels[start + i] = argmin_k scores[i, k] + offsets[k]`` (the first on ties).

    With ``scores = (x - c) @ (-2 δᵀ)`` and ``offsets = ‖δ_k‖²``, ``δ_k = μ_k - c``, the
    nearest mean of every row (Euclidean).
    """
    m, K = scores.shape
    for i in range(m):
        row = scores[i]
        best = 0
        top = row[0] + offsets[0]
        for k in range(1, K):
            v = row[k] + offsets[k]
            if v < top:
                top = v
                best = k
        labels[start + i] = best


@jit
def shift_log_densities(
    L: AnyArray, const: FloatArray, S: AnyArray, amax: FloatArray, floor: float
) -> None:
    """``S = L + const - max_k(L + const)`` per row, the maxima into ``amax``.

    Parameters
    ----------
    L : ndarray of shape (m, K), float32 or float64
        ``-½ maha(x)`` of every row under every component (the GEMM's output).
    const : ndarray of shape (K,)
        ``log π_k + log det U_k - d/2 log 2π`` (plus the variational offsets): the
        log-density is ``L + const``.
    S : ndarray of shape (m, K), float64 or float32
        Output: the log-densities shifted by their row's maximum (0 where every component's
        log-density is ``-inf``), each difference formed in float64 and rounded once.
    amax : ndarray of shape (m,), float64
        Output: the row maxima (0 where not finite).
    floor : float
        Shifted log-densities below it are written as ``-inf`` (their responsibility 0);
        ``-inf`` keeps every value. float32 responsibilities use ``-50``: values below
        ``e⁻⁵⁰`` of the row's largest are far below float32's precision, and would make
        ``exp`` and the moment GEMM run on subnormal numbers (measured 3x slower per
        iteration).
    """
    m, K = L.shape
    for t in range(m):
        src = L[t]
        row = S[t]
        top = -np.inf
        for k in range(K):
            v = np.float64(src[k]) + const[k]
            if v > top:
                top = v
        if not np.isfinite(top):
            top = 0.0
        amax[t] = top
        for k in range(K):
            v = (np.float64(src[k]) + const[k]) - top
            row[k] = v if not v < floor else -np.inf


@jit
def responsibilities(
    S: FloatArray,
    E: FloatArray,
    amax: FloatArray,
    nk: FloatArray,
    weights: FloatArray | None,
    start: int,
) -> tuple[float, float]:
    """Responsibilities from shifted log-densities and their exponentials, in ``E``.

    ``exp`` itself runs in numpy between :func:`shift_log_densities` and this (its SIMD
    ``exp`` is ~10x numba's scalar one, which took half of a ``diag`` E-step).

    Parameters
    ----------
    S : ndarray of shape (m, K), float64 or float32
        Log-densities shifted by their row's maximum (:func:`shift_log_densities`).
    E : ndarray of shape (m, K), float64 or float32
        ``exp(S)`` on entry; the responsibilities on return (times the row's weight with
        ``weights``). Every sum is taken in float64 whatever the dtype.
    amax : ndarray of shape (m,)
        The row maxima the log-densities were shifted by.
    nk : ndarray of shape (K,), float64
        ``Σ r`` added in place.
    weights : ndarray of shape (n,), optional
        Row weights (``sample_weight``) of the whole block; row ``t`` weighs
        ``weights[start + t]``.
    start : int
        Index of the sub-block's first row in ``weights``.

    Returns
    -------
    log_norm : float
        ``Σ_i log Σ_k exp(lp_ik)``.
    r_log_r : float
        ``Σ_i Σ_k r_ik log r_ik``.
    """
    m, K = S.shape
    log_norm = 0.0
    r_log_r = 0.0
    for t in range(m):
        shifted = S[t]
        row = E[t]
        total = 0.0
        e_log_e = 0.0
        for k in range(K):
            e = np.float64(row[k])
            total += e
            if e > 0.0:
                e_log_e += e * np.float64(shifted[k])
        row_norm = math.log(total)
        # Σ_k r log r = Σ_k e (lp_k - amax) / total - log total (the responsibilities sum to 1).
        if weights is None:
            log_norm += row_norm + amax[t]
            r_log_r += e_log_e / total - row_norm
        else:
            wt = weights[start + t]
            log_norm += wt * (row_norm + amax[t])
            r_log_r += wt * (e_log_e / total - row_norm)
            total /= wt  # r = w e / total: the row's weight in every moment
        for k in range(K):
            row[k] = np.float64(row[k]) / total
            # The responsibility as stored (float32 rows round it): Σ r matches the moments.
            nk[k] += np.float64(row[k])
    return log_norm, r_log_r
