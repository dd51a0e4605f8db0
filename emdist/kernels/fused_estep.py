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

float64 data runs these a few sub-blocks per call (:func:`log_densities_run`, numpy's
``exp``, :func:`moments_run`), GEMMs included, each GEMM on one sub-block as before.
float32 ``full``/``tied`` data runs instead as one call per block, GEMMs included
(:func:`group_by_nearest`, then :func:`grouped_estep_full32` or
:func:`grouped_estep_tied32`; :func:`emdist.kernels.mixture.fused_estep`).

Every loop runs in a fixed order (no ``fastmath``), so the results do not depend on the
chunking beyond the rounding of the sums. The numpy references these kernels are tested
against are in :mod:`emdist.kernels.mixture_reference`.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from typing import Any

import numpy as np

# numba's np.dot calls scipy's BLAS, a library apart from numpy's: loaded here, at import,
# so that threadpoolctl sees it and the one-BLAS-thread-per-Dask-thread policy
# (emdist.engine.threads) limits it too.
import scipy.linalg.cython_blas  # noqa: F401
from llvmlite import ir  # type: ignore[import-untyped]
from numba import types
from numba.extending import intrinsic

from emdist._typing import AnyArray, FloatArray
from emdist.kernels._jit import jit
from emdist.kernels._prefetch import prefetch_row
from emdist.kernels._simd import LANES, store_scaled8

__all__ = [
    "FULL_FEATURES",
    "DIAG_FEATURES",
    "exp_float32",
    "grouped_estep_full32",
    "group_by_nearest",
    "grouped_estep_tied32",
    "log_densities_run",
    "moments_run",
    "SPHERICAL_FEATURES",
    "quadratic_features",
    "responsibilities",
    "shift_log_densities",
]

# --- float32 exp, vectorisable --------------------------------------------------------------
#
# The float32 E-steps exponentiate every shifted log-density above the floor. numba's
# scalar exp is a call to libm's expf per value (1.1-1.6 M per 100 000 rows while the
# components overlap); the same arithmetic written out below, as glibc's expf
# computes it (the algorithm and constants of Arm's optimized-routines expf, MIT licence:
# x N / ln 2 split into an integer k and r, 2^(k/N) from a table of N = 32 powers and the
# exponent bits, 2^(r/N) as a cubic, all in float64; as glibc's FMA build on x86-64, the
# reduction fused), has no call, so LLVM vectorises it across the components of a row.
# It returns glibc 2.36's expf bit for bit for every float32 in [-88, 88] (checked
# exhaustively; tests/kernels/test_compiled_kernels.py checks a sample against numba's
# math.exp), and the same bits on any machine.


def _fma_typing(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
    """``a * b + c`` rounded once (LLVM's ``fma``: one instruction on x86-64 with FMA)."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        f64 = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f64], ir.FunctionType(f64, [f64] * 3))
        return builder.call(fn, args)

    return sig, codegen


def _float64_bits_typing(typingctx: Any, x: Any) -> Any:
    """The bits of a float64 as an int64."""
    sig = types.int64(types.float64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


def _float64_from_bits_typing(typingctx: Any, i: Any) -> Any:
    """The float64 of the given int64 bits."""
    sig = types.float64(types.int64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


_fma: Any = intrinsic(_fma_typing)
_float64_bits: Any = intrinsic(_float64_bits_typing)
_float64_from_bits: Any = intrinsic(_float64_from_bits_typing)

_EXP_TABLE_BITS = 5
_EXP_N = 1 << _EXP_TABLE_BITS


def _exp2_table() -> np.ndarray[Any, np.dtype[np.int64]]:
    """``bits(2^(i/N)) - (i << 47)``: entry ``k % N`` plus ``k << 47`` is ``2^(k/N)``."""
    out = np.empty(_EXP_N, dtype=np.int64)
    with localcontext() as ctx:
        ctx.prec = 60
        for i in range(_EXP_N):
            value = float(Decimal(2) ** (Decimal(i) / _EXP_N))  # correctly rounded
            out[i] = int(np.float64(value).view(np.int64)) - (i << (52 - _EXP_TABLE_BITS))
    return out


_EXP2_TABLE = _exp2_table()
_EXP_SHIFT = float.fromhex("0x1.8p+52")  # rounds k/N ... to an integer in the low bits
_EXP_INV_LN2_N = float.fromhex("0x1.71547652b82fep+0") * _EXP_N
_EXP_C0 = float.fromhex("0x1.c6af84b912394p-5") / _EXP_N**3
_EXP_C1 = float.fromhex("0x1.ebfce50fac4f3p-3") / _EXP_N**2
_EXP_C2 = float.fromhex("0x1.62e42ff0c52d6p-1") / _EXP_N


@jit
def exp_float32(x: float | np.float32) -> np.float32:
    """``exp`` of a float32 ``x`` with ``|x| < 88``, rounded to float32, as libm's ``expf``.

    No call and no branch, so that loops over it vectorise. Outside ``|x| < 88`` (overflow,
    underflow to subnormals, NaN) the caller must use ``math.exp``.
    """
    xd = np.float64(np.float32(x))
    kd = _fma(_EXP_INV_LN2_N, xd, _EXP_SHIFT)
    ki = _float64_bits(kd)
    kd -= _EXP_SHIFT
    r = _fma(_EXP_INV_LN2_N, xd, -kd)
    scale = _float64_from_bits(_EXP2_TABLE[ki & (_EXP_N - 1)] + (ki << (52 - _EXP_TABLE_BITS)))
    y = _fma(_fma(_EXP_C0, r, _EXP_C1), r * r, _fma(_EXP_C2, r, 1.0)) * scale
    return np.float32(y)


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
def _gather_differences(
    X: AnyArray, order: AnyArray, start: int, m: int, centre: FloatArray, D: AnyArray
) -> None:
    """Rows ``order[start : start + m]`` of ``X`` less ``centre``, into ``D[:m]``.

    The differences are formed in float64 and rounded to ``D``'s dtype once, as
    :func:`quadratic_features` forms them. A sub-block's rows first, in a loop that does
    nothing else: its loads miss the cache (the rows are spread over the block) and run in
    parallel here; read one by one within the features they stalled (5.9 against 4.1 ms
    per 50 000 rows, d = 32).
    """
    d = X.shape[1]
    for t in range(m):
        src = X[order[start + t]]
        dst = D[t]
        for j in range(d):
            dst[j] = np.float64(src[j]) - centre[j]


@jit
def group_by_nearest(
    X: AnyArray,
    centre: AnyArray,
    directions: AnyArray,
    offsets: FloatArray,
    rows: int,
    order: AnyArray,
    bounds: AnyArray,
) -> None:
    """The rows of ``X`` grouped by their nearest mean: a stable counting sort of the labels.

    Row ``i``'s label is ``argmin_k (x_i - c) · directions[:, k] + offsets[k]`` (the first on
    ties): with ``directions = -2 δᵀ`` and ``offsets = ‖δ_k‖²``, ``δ_k = μ_k - c``, its
    nearest mean (Euclidean), from one GEMM per ``rows`` rows in ``X``'s dtype.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32
    centre : ndarray of shape (d,), float32
    directions : ndarray of shape (d, K), float32
    offsets : ndarray of shape (K,), float64
    rows : int
        Rows per GEMM.
    order : ndarray of shape (n,), int64
        Output: the row indices, group by group, in row order within each group.
    bounds : ndarray of shape (K + 1,), int64
        Output: group ``k`` is ``order[bounds[k]:bounds[k + 1]]``.
    """
    n, d = X.shape
    K = offsets.shape[0]
    labels = np.empty(n, dtype=np.int32)
    diff = np.empty((min(rows, n), d), dtype=X.dtype)
    scores = np.empty((min(rows, n), K), dtype=X.dtype)
    bounds[:] = 0
    for start in range(0, n, rows):
        m = min(rows, n - start)
        for i in range(m):
            for j in range(d):
                diff[i, j] = X[start + i, j] - centre[j]
        np.dot(diff[:m], directions, scores[:m])
        for i in range(m):
            row = scores[i]
            best = 0
            top = row[0] + offsets[0]
            for k in range(1, K):
                # Selects, not a branch: which component wins is data-dependent, and
                # mispredicted branches doubled the call's time once components separate.
                v = row[k] + offsets[k]
                lower = v < top
                best = k if lower else best
                top = v if lower else top
            labels[start + i] = best
            bounds[best + 1] += 1
    for k in range(K):
        bounds[k + 1] += bounds[k]
    fill = bounds[:K].copy()
    for i in range(n):
        k = labels[i]
        order[fill[k]] = i
        fill[k] += 1


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


# --- float64 E-step: a run of sub-blocks per call ------------------------------------------
#
# The float64 E-step keeps numpy's SIMD exp (its values are scikit-learn's to the last bit;
# numba's scalar exp differs by one ulp on ~5% of arguments and is ~7x slower) and runs
# everything else in two compiled calls per *run* of sub-blocks: the features, the
# log-density GEMM and the shift of every sub-block of the run, then one numpy exp over
# the run, then the responsibilities and the moment GEMM of every sub-block. Each GEMM
# keeps its sub-block's shape (OpenBLAS's small-matrix path), so the results are those of
# one sub-block at a time, bit for bit; three GIL hand-overs per run instead of seven per
# sub-block.


@jit
def log_densities_run(
    X: AnyArray,
    start: int,
    rows: int,
    centre: FloatArray,
    kind: int,
    coefficients: FloatArray,
    const: FloatArray,
    floor: float,
    A: FloatArray,
    L: FloatArray,
    S: FloatArray,
    amax: FloatArray,
) -> None:
    """Features, log-densities and their shift for rows ``start : start + len(A)`` of ``X``.

    Sub-block by sub-block of ``rows`` rows: :func:`quadratic_features` into ``A``, the GEMM
    ``A @ coefficients`` into ``L``, :func:`shift_log_densities` into ``S`` and ``amax``.

    Parameters
    ----------
    X : ndarray of shape (n, d), float64, C-contiguous
    start : int
        First row of the run.
    rows : int
        Rows per sub-block (per GEMM).
    centre, kind
        As :func:`quadratic_features`.
    coefficients : ndarray of shape (p, K), float64
        ``B`` (:attr:`~emdist.kernels.quadratic.QuadraticMaps.coefficients`).
    const, floor
        As :func:`shift_log_densities`.
    A : ndarray of shape (m, p), float64
        Output: the run's features (kept for :func:`moments_run`).
    L, S : ndarray of shape (m, K), float64
        Output: log-densities less ``const``; shifted log-densities.
    amax : ndarray of shape (m,), float64
        Output: the row maxima.
    """
    m, p = A.shape
    no_copy = np.empty((0, p), dtype=np.float32)
    for o in range(0, m, rows):
        e = min(o + rows, m)
        quadratic_features(X, start + o, centre, kind, A[o:e], no_copy)
        np.dot(A[o:e], coefficients, L[o:e])
        shift_log_densities(L[o:e], const, S[o:e], amax[o:e], floor)


@jit
def moments_run(
    S: FloatArray,
    E: FloatArray,
    amax: FloatArray,
    A: FloatArray,
    rows: int,
    weights: FloatArray,
    start: int,
    nk: FloatArray,
    G: FloatArray,
    G_sub: FloatArray,
    log_norm: float,
    r_log_r: float,
) -> tuple[float, float]:
    """Responsibilities and moments ``G += Rᵀ A`` of a run, sub-block by sub-block.

    Parameters
    ----------
    S, E, amax
        As :func:`responsibilities` (``E = exp(S)`` on entry, the responsibilities on
        return), for the whole run.
    A : ndarray of shape (m, p), float64
        The run's features (:func:`log_densities_run`).
    rows : int
        Rows per sub-block (per GEMM), as in :func:`log_densities_run`.
    weights : ndarray of shape (n,) or (0,), float64
        Row weights of the whole block, or none.
    start : int
        Index of the run's first row in the block.
    nk : ndarray of shape (K,), float64
        ``Σ r``, added in place.
    G : ndarray of shape (K, p), float64
        ``Σ r a(x)``, added in place, one sub-block's GEMM at a time.
    G_sub : ndarray of shape (K, p), float64
        Scratch.
    log_norm, r_log_r : float
        The sums so far: every sub-block's is added to them in turn, so the totals do not
        depend on how the sub-blocks are grouped into runs.

    Returns
    -------
    log_norm, r_log_r : float
        As :func:`responsibilities`, with the run's sub-blocks added.
    """
    m, p = A.shape
    K = nk.shape[0]
    for o in range(0, m, rows):
        e = min(o + rows, m)
        if weights.shape[0] == 0:
            norm, rlr = responsibilities(S[o:e], E[o:e], amax[o:e], nk, None, start + o)
        else:
            norm, rlr = responsibilities(S[o:e], E[o:e], amax[o:e], nk, weights, start + o)
        log_norm += norm
        r_log_r += rlr
        np.dot(E[o:e].T, A[o:e], G_sub)
        for k in range(K):
            row = G[k]
            part = G_sub[k]
            for j in range(p):
                row[j] += part[j]
    return log_norm, r_log_r


# --- float32 E-steps of rows grouped by their nearest mean (full and tied) ------------------
#
# One call runs a whole block's E-step (every group, every sub-block), both GEMMs included:
# numba's np.dot calls scipy's BLAS without the GIL. The float64 E-step above hands the GIL
# over about seven times per 100-row sub-block; in float32, whose calls are shorter, two Dask
# threads spent as long waiting for it as computing (two blocks on two threads took as long
# as on one). benchmarks/README.md, "float32 E-step in one compiled call".


@jit
def _normalise(
    L: AnyArray,
    const: FloatArray,
    R: AnyArray,
    floor: float,
    nk: FloatArray,
    weights: FloatArray | None,
    start: int,
    active: AnyArray,
) -> tuple[int, float, float]:
    """Responsibilities of a sub-block from its log-densities less ``const``, into ``R``.

    The arithmetic of :func:`shift_log_densities`, ``exp`` and :func:`responsibilities`,
    as the float64 E-step runs them: the shifted log-density is rounded to float32 and
    exponentiated in float32 as there (:func:`exp_float32`, libm's ``expf`` bit for bit),
    and below ``floor`` the responsibility is 0. Every component's ``exp`` is computed in
    one loop without calls or branches, which vectorises (with numba's scalar ``exp``, a
    libm call per value above the floor, the normalisation took 9.3-9.9 ms per 100 000 rows
    while the components overlap, now 5.7-7.4); the sums run in component order as before
    (adding the zeros below the floor changes none of them). Each step runs over every
    row of the sub-block before the next: the row maximum and the two sums are chains of
    dependent additions, and rows' chains overlap only when nothing else sits between
    them.

    Returns
    -------
    n_active : int
        The components with a responsibility in the sub-block, ascending in
        ``active[:n_active]``.
    log_norm, r_log_r : float
        As :func:`responsibilities`.
    """
    m, K = L.shape
    top = np.empty(m)
    total = np.empty(m)
    e_log_e = np.empty(m)
    E = np.empty((m, K))
    S = np.empty((m, K))
    kept = np.empty(K, dtype=np.bool_)
    for t in range(m):
        src = L[t]
        row_top = -np.inf
        for k in range(K):
            v = np.float64(src[k]) + const[k]
            if v > row_top:
                row_top = v
        top[t] = row_top if np.isfinite(row_top) else 0.0
    for t in range(m):
        src = L[t]
        row_top = top[t]
        e = E[t]
        shifted = S[t]
        outside = False
        for k in range(K):
            v = (np.float64(src[k]) + const[k]) - row_top
            s32 = np.float32(v)
            keep = not v < floor
            kept[k] = keep
            # exp_float32 holds for |s| < 88; a kept value beyond (a floor below -88, or
            # NaN) is redone by libm below.
            outside |= keep and not np.float64(s32) > -88.0
            e[k] = np.float64(exp_float32(s32)) if keep else 0.0
            shifted[k] = np.float64(s32)
        if outside:
            for k in range(K):
                if kept[k] and not shifted[k] > -88.0:
                    e[k] = np.float64(math.exp(np.float32(shifted[k])))
    for t in range(m):
        e = E[t]
        shifted = S[t]
        row_total = 0.0
        row_e_log_e = 0.0
        for k in range(K):
            ek = e[k]
            row_total += ek
            if ek > 0.0:
                row_e_log_e += ek * shifted[k]
        total[t] = row_total
        e_log_e[t] = row_e_log_e
    log_norm = 0.0
    r_log_r = 0.0
    for t in range(m):
        row_total = total[t]
        row_norm = math.log(row_total)
        if weights is None:
            log_norm += row_norm + top[t]
            r_log_r += e_log_e[t] / row_total - row_norm
        else:
            wt = weights[start + t]
            log_norm += wt * (row_norm + top[t])
            r_log_r += wt * (e_log_e[t] / row_total - row_norm)
            total[t] = row_total / wt  # r = w e / total: the row's weight in every moment
    hit = np.zeros(K, dtype=np.bool_)
    for t in range(m):
        row_total = total[t]
        row = R[t]
        e = E[t]
        for k in range(K):
            r = np.float64(np.float32(e[k] / row_total))
            row[k] = r
            # The responsibility as stored (float32): Σ r matches the moments.
            nk[k] += r
            hit[k] |= r != 0.0
    n_active = 0
    for k in range(K):
        if hit[k]:
            active[n_active] = k
            n_active += 1
    return n_active, log_norm, r_log_r


@jit
def grouped_estep_full32(
    X: AnyArray,
    order: AnyArray,
    bounds: AnyArray,
    centres: FloatArray,
    coefficients: AnyArray,
    const: FloatArray,
    weights: FloatArray,
    rows: int,
    floor: float,
    quad: FloatArray,
    srx: FloatArray,
    nk: FloatArray,
) -> tuple[float, float]:
    """The float32 ``full`` E-step of a block whose rows are grouped by their nearest mean.

    Group ``g`` holds rows ``order[bounds[g]:bounds[g + 1]]``; their features
    ``[φ(x - c_g), x - c_g, 1]`` (:func:`quadratic_features`, float32) are taken about
    ``centres[g]``, the log-densities are one float32 GEMM by ``coefficients[g]``, the
    moments another under the float32 responsibilities, and every sub-block's moments are
    added in float64.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32, C-contiguous
    order : ndarray of shape (n,), int
        Row indices, group by group (rows are read through it; nothing is gathered).
    bounds : ndarray of shape (n_groups + 1,), int
    centres : ndarray of shape (n_groups, d), float64
    coefficients : ndarray of shape (n_groups, p, K), float32
        ``B`` about each group's centre (:meth:`~emdist.kernels.quadratic.QuadraticMaps.\
coefficients_about`).
    const : ndarray of shape (K,), float64
        Added to every log-density (:func:`shift_log_densities`).
    weights : ndarray of shape (n,) or (0,), float64
        Row weights, or none.
    rows : int
        Rows per sub-block.
    floor : float
        As :func:`shift_log_densities`.
    quad : ndarray of shape (K, q), float64
        ``Σ r φ(x - c_g)`` over every group, added in place.
    srx : ndarray of shape (n_groups, K, d), float64
        ``Σ r (x - c_g)`` per group, written.
    nk : ndarray of shape (n_groups, K), float64
        ``Σ r`` per group, added in place.

    Returns
    -------
    log_norm, r_log_r : float
        As :func:`responsibilities`.
    """
    d = X.shape[1]
    K = const.shape[0]
    p = coefficients.shape[1]
    q = p - d - 1
    # A triangle row's last run of 8 products reads up to 7 values past the differences
    # (zeros here) and writes as far past the triangle: into the linear features, and for
    # d < 7 past the row (the last row's, into the 8 values past A).
    A = np.empty(rows * p + LANES, dtype=np.float32)[: rows * p].reshape((rows, p))
    Xs = np.zeros((rows, d + LANES), dtype=np.float32)
    L = np.empty((rows, K), dtype=np.float32)
    R = np.empty((rows, K), dtype=np.float32)
    G_sub = np.empty((K, p), dtype=np.float32)
    G = np.empty((K, p))
    active = np.empty(K, dtype=np.int64)
    R_active = np.empty(K * rows, dtype=np.float32)
    ws = None if weights.shape[0] == 0 else weights[order]
    n = order.shape[0]
    log_norm = 0.0
    r_log_r = 0.0
    for g in range(bounds.shape[0] - 1):
        G[:] = 0.0
        c = centres[g]
        for start in range(bounds[g], bounds[g + 1], rows):
            m = min(rows, bounds[g + 1] - start)
            _gather_differences(X, order, start, m, c, Xs)
            # The next sub-block's rows (of this group or the next), asked for now: they
            # are spread over the block and their loads stalled the gather above.
            ahead = start + m
            n_ahead = min(rows, n - ahead)
            for t in range(m):
                if t < n_ahead:
                    prefetch_row(X, order[ahead + t])
                # Row i of the upper triangle (x_i x_j for j >= i) as runs of 8 products,
                # one 8-lane store each (_simd), from the first row down: a row's last run
                # reaches past its d - i products into the next row's place (or the linear
                # features'), written after it. 640 products per row for 528 (d = 32); a
                # loop of fixed length d per row wrote 1 024 (overlapping), and loops of
                # width d - i do not vectorise. The same products (benchmarks/README.md,
                # "float32 features in 8-lane runs").
                a = A[t]
                xc = Xs[t]  # x - c_g, float32, then zeros
                a_at = A.ctypes.data + t * A.strides[0]
                x_at = Xs.ctypes.data + t * Xs.strides[0]
                o = 0
                for i in range(d):
                    xi = xc[i]
                    for b in range(0, d - i, LANES):
                        store_scaled8(a_at + (o + b) * 4, x_at + (i + b) * 4, xi)
                    o += d - i
                lin = a[q : q + d]
                for j in range(d):
                    lin[j] = xc[j]
                a[q + d] = 1.0
            np.dot(A[:m], coefficients[g], L[:m])
            n_active, norm, rlr = _normalise(L[:m], const, R[:m], floor, nk[g], ws, start, active)
            log_norm += norm
            r_log_r += rlr
            # Once the components separate, most have no responsibility (below the floor)
            # for any row of a group's sub-block: the moment GEMM runs on the others only.
            if n_active == K:
                np.dot(R[:m].T, A[:m], G_sub)
            else:
                Ra = R_active[: n_active * m].reshape((n_active, m))
                for a in range(n_active):
                    k = active[a]
                    for t in range(m):
                        Ra[a, t] = R[t, k]
                np.dot(Ra, A[:m], G_sub[:n_active])
            for a in range(n_active):
                k = active[a]
                row = G[k]
                part = G_sub[a]
                for j in range(p):
                    row[j] += np.float64(part[j])
        for k in range(K):
            for j in range(q):
                quad[k, j] += G[k, j]
            for j in range(d):
                srx[g, k, j] = G[k, q + j]
    return log_norm, r_log_r


@jit
def grouped_estep_tied32(
    X: AnyArray,
    order: AnyArray,
    bounds: AnyArray,
    centres: FloatArray,
    maps: AnyArray,
    offsets: FloatArray,
    const: FloatArray,
    weights: FloatArray,
    rows: int,
    floor: float,
    second: FloatArray,
    srx: FloatArray,
    nk: FloatArray,
) -> tuple[float, float]:
    """The float32 ``tied`` E-step of a block whose rows are grouped by their nearest mean.

    With one precision ``P = U Uᵀ`` for all components, ``(x - μ_k)ᵀ P (x - μ_k) =
    ‖(x - c) U‖² - 2 (x - c)ᵀ P δ_k + δ_kᵀ P δ_k`` (``δ_k = μ_k - c``): the rows' differences
    to their group's centre times ``[U | P δᵀ]`` give every component's log-density, one
    ``(m, d) @ (d, d + K)`` GEMM. The tied second moment sums over the components, and the
    responsibilities of a row sum to its weight, so it needs no responsibilities:
    ``Σ_k Σ_i r_ik (x - c)(x - c)ᵀ = Σ_i w_i (x - c)(x - c)ᵀ``, one ``(d, m) @ (m, d)`` GEMM;
    the first moments ``Rᵀ (X - c)`` another. ~6 k flops a row against ~36 k for the
    quadratic features.

    Parameters
    ----------
    X, order, bounds, centres, const, weights, rows, floor
        As :func:`grouped_estep_full32`.
    maps : ndarray of shape (n_groups, d, d + K), float32
        ``[U | P δ_gᵀ]`` per group, ``δ_g = μ - centres[g]``.
    offsets : ndarray of shape (n_groups, K), float64
        ``δ_gkᵀ P δ_gk``.
    second : ndarray of shape (d, d), float64
        ``Σ_i w_i (x - c_g)(x - c_g)ᵀ`` over every group, added in place.
    srx : ndarray of shape (n_groups, K, d), float64
        ``Σ r (x - c_g)`` per group, written.
    nk : ndarray of shape (n_groups, K), float64
        ``Σ r`` per group, added in place.

    Returns
    -------
    log_norm, r_log_r : float
    """
    d = X.shape[1]
    K = const.shape[0]
    Z = np.empty((rows, d), dtype=np.float32)
    Zw = np.empty((rows, d), dtype=np.float32)
    Y = np.empty((rows, d + K), dtype=np.float32)
    R = np.empty((rows, K), dtype=np.float32)
    Q_sub = np.empty((d, d), dtype=np.float32)
    F_sub = np.empty((K, d), dtype=np.float32)
    F = np.empty((K, d))
    L = np.empty((rows, K))
    active = np.empty(K, dtype=np.int64)
    ws = None if weights.shape[0] == 0 else weights[order]
    log_norm = 0.0
    r_log_r = 0.0
    for g in range(bounds.shape[0] - 1):
        F[:] = 0.0
        c = centres[g]
        off = offsets[g]
        for start in range(bounds[g], bounds[g + 1], rows):
            m = min(rows, bounds[g + 1] - start)
            _gather_differences(X, order, start, m, c, Z)
            np.dot(Z[:m], maps[g], Y[:m])
            for t in range(m):
                y = Y[t]
                y2 = 0.0
                for j in range(d):
                    y2 += np.float64(y[j]) * np.float64(y[j])
                for k in range(K):
                    L[t, k] = -0.5 * (y2 - 2.0 * np.float64(y[d + k]) + off[k])
            _, norm, rlr = _normalise(L[:m], const, R[:m], floor, nk[g], ws, start, active)
            log_norm += norm
            r_log_r += rlr
            if ws is not None:
                for t in range(m):
                    w32 = np.float32(ws[start + t])
                    for j in range(d):
                        Zw[t, j] = Z[t, j] * w32
                np.dot(Zw[:m].T, Z[:m], Q_sub)
            else:
                np.dot(Z[:m].T, Z[:m], Q_sub)
            np.dot(R[:m].T, Z[:m], F_sub)
            for i in range(d):
                for j in range(d):
                    second[i, j] += np.float64(Q_sub[i, j])
            for k in range(K):
                for j in range(d):
                    F[k, j] += np.float64(F_sub[k, j])
        for k in range(K):
            for j in range(d):
                srx[g, k, j] = F[k, j]
    return log_norm, r_log_r
