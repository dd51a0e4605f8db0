"""K-means (Lloyd) assignment step on one block, its statistics, and the centre update.

The assignment step runs as compiled numba kernels (:mod:`emdist.kernels._jit`: no GIL, so
Dask's threads compute side by side). Per sub-block of rows, one BLAS GEMM scores every
row against every centre with the expansion ``‖c̃‖² - 2x·c̃`` (centres taken about their
mean, so that it holds far from the origin); then one compiled sweep takes the argmin
(lowest index on ties), adds the per-cluster sums ``Σ (x - r_label)`` about each cluster's
fixed reference point (see below), the counts, the inertia ``Σ‖x - c_label‖²`` and keeps
the block's ``K`` rows farthest from their centres (the candidates that re-seed an empty
cluster, so no extra pass is needed when one empties). Several restarts' centres are
scored and swept in the same walk (:func:`kmeans_estep_many`): a sub-block is read from
memory once for all of them, while each restart's arithmetic stays what it is alone.

The inertia: a row's distance to its centre comes from the scores the argmin already has
(``‖x‖² - 2x·m + ‖m‖² + score + bias``) wherever a bound on that expansion's rounding
(from ``‖x‖``, ``‖m‖``, ``‖c - m‖`` and ε) is below ``2^-40`` of the distance, and from
float64 differences elsewhere — rows far from the origin relative to their spread, where
the expansion cancels (data translated by 1e9 takes differences throughout). The far rows
are always ranked by exact distances.

No ``(n, K)`` temporary is made for the whole block. A fused all-numba loop of direct
distances was measured too and lost to the GEMM (benchmarks/README.md, "Compiled K-means
kernel"). :mod:`emdist.kernels.kmeans_reference` is the same step in plain numpy.

Exact centres: a cluster's sums are taken about a reference point ``r_k`` that stays put
from one iteration to the next (the restart's starting centre of that cluster;
``KMeansParams.reference``), and the M-step's centre is ``r_k + Σ (x - r_k) / n_k``. Every
term is a function of the row and ``r_k`` alone, and the sums are added in a fixed order
(row order in a block, the reduction's fixed tree across blocks), so the same rows give
the same centre bit for bit: once no label changes no centre moves, and ``tol=0`` stops
there, as scikit-learn's strict convergence does. Sums about the moving centre
(``c + Σ (x - c) / n``) would move a settled centre by an ulp now and then, for ever.

Precision: float32 data are scored in float32 (rows shifted by a float32 reference point,
which is exact where the data sit far from the origin), everything else in float64; the
sums are float64 differences from float64 reference points whatever the dtype, and float32
data take their inertia from float64 differences (their float32 scores are no exact
expansion).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# numba's np.dot calls scipy's BLAS, a library apart from numpy's: loaded here, at import,
# so that threadpoolctl sees it and the one-BLAS-thread-per-Dask-thread policy
# (emdist.engine.threads) limits it too.
import scipy.linalg.cython_blas  # noqa: F401

from emdist._typing import AnyArray, FloatArray, IntArray
from emdist.kernels._blocks import as_row_major
from emdist.kernels._jit import jit
from emdist.kernels.rows import RowBlock

__all__ = [
    "KMeansParams",
    "KMeansStats",
    "kmeans_estep_chunk",
    "kmeans_estep_many",
    "kmeans_labels_chunk",
    "kmeans_mstep",
    "kmeans_transform_chunk",
]


@dataclass(frozen=True, eq=False)
class KMeansParams:
    """Cluster centres and the fixed points their sums are taken about.

    Attributes
    ----------
    centers : ndarray of shape (n_clusters, n_features)
    reference : ndarray of shape (n_clusters, n_features) or None
        The point each cluster's sums are taken about, the same from one iteration to the
        next so that the same rows give the same centre bit for bit (see the module's
        docstring). ``None`` (starting centres): the centres themselves, which the M-step
        then keeps as the reference of the restart.
    """

    centers: FloatArray
    reference: FloatArray | None = None

    def __post_init__(self) -> None:
        if self.reference is not None and np.shape(self.reference) != np.shape(self.centers):
            raise ValueError(
                f"the reference points have shape {np.shape(self.reference)}; "
                f"the centres {np.shape(self.centers)}"
            )

    @property
    def about(self) -> FloatArray:
        """The points the sums of a step under these parameters are taken about."""
        return self.centers if self.reference is None else self.reference

    def arrays(self) -> dict[str, FloatArray]:
        """The parameters as a name -> array mapping (checkpoints store every one)."""
        if self.reference is None:
            return {"centers": self.centers}
        return {"centers": self.centers, "reference": self.reference}


@dataclass(frozen=True, eq=False)
class KMeansStats:
    """Summable statistics of one Lloyd assignment step.

    Attributes
    ----------
    n : int
        Rows seen.
    counts : ndarray of shape (n_clusters,)
        Rows assigned to each cluster.
    sx : ndarray of shape (n_clusters, n_features)
        ``Σ (x - r_k)`` over the rows assigned to cluster ``k``, about ``reference``.
    inertia : float
        ``Σ ‖x - c_label‖²``.
    far_dist, far_row, far_label, far_x : ndarray
        The rows farthest from their centres (at most ``n_clusters``), ordered by
        decreasing distance then increasing row: candidates to re-seed empty clusters.
    shift : ndarray of shape (n_clusters, n_features)
        The centres the step ran under (the inertia and far distances are measured from
        them).
    reference : ndarray of shape (n_clusters, n_features)
        The points ``sx`` is taken about (:attr:`KMeansParams.about`).
    far_w : ndarray or None, default=None
        Weights of the far rows (``sample_weight``); ``None``: each weighs 1.
    """

    n: int
    counts: FloatArray
    sx: FloatArray
    inertia: float
    far_dist: FloatArray
    far_row: IntArray
    far_label: IntArray
    far_x: FloatArray
    shift: FloatArray
    reference: FloatArray
    far_w: FloatArray | None = None

    def __add__(self, other: KMeansStats) -> KMeansStats:
        if not isinstance(other, KMeansStats):
            return NotImplemented
        if self.shift is not other.shift and not np.array_equal(self.shift, other.shift):
            raise ValueError("cannot add K-means statistics taken under different centres")
        if self.reference is not other.reference and not np.array_equal(
            self.reference, other.reference
        ):
            raise ValueError("cannot add K-means statistics taken about different references")
        dist = np.concatenate([self.far_dist, other.far_dist])
        row = np.concatenate([self.far_row, other.far_row])
        keep = np.lexsort((row, -dist))[: self.shift.shape[0]]
        far_w = None
        if self.far_w is not None or other.far_w is not None:
            far_w = np.concatenate([_far_weights(self), _far_weights(other)])[keep]
        return KMeansStats(
            self.n + other.n,
            self.counts + other.counts,
            self.sx + other.sx,
            self.inertia + other.inertia,
            dist[keep],
            row[keep],
            np.concatenate([self.far_label, other.far_label])[keep],
            np.concatenate([self.far_x, other.far_x])[keep],
            self.shift,
            self.reference,
            far_w,
        )


def _far_weights(stats: KMeansStats) -> FloatArray:
    return np.ones(len(stats.far_dist)) if stats.far_w is None else stats.far_w


# --- compiled kernels -----------------------------------------------------------------------
#
# Each kernel walks its block in sub-blocks of `rows` rows: one GEMM of a (rows, d) slice
# against the (d, K) centre matrix, then a sweep of the (rows, K) scores while the slice is
# still in cache. The GEMM is BLAS called from numba (scipy's cython BLAS): it runs without
# the GIL too.


@jit
def _score_rows(
    X: AnyArray,
    start: int,
    m: int,
    ref: AnyArray,
    neg2_t: AnyArray,
    shift_rows: bool,
    xbuf: AnyArray,
    scores: AnyArray,
) -> None:
    """``scores[:m] = (X[start:start + m] - ref) @ neg2_t`` (without ``- ref`` unless asked)."""
    if shift_rows:
        d = X.shape[1]
        for i in range(m):
            for j in range(d):
                xbuf[i, j] = X[start + i, j] - ref[j]
        np.dot(xbuf[:m], neg2_t, scores[:m])
    else:
        np.dot(X[start : start + m], neg2_t, scores[:m])


@jit
def _argmin_row(scores: AnyArray, i: int, bias: AnyArray) -> int:
    """Index of the smallest ``scores[i, k] + bias[k]``; the lowest index on ties (as numpy)."""
    best = 0
    low = scores[i, 0] + bias[0]
    for k in range(1, scores.shape[1]):
        v = scores[i, k] + bias[k]
        if v < low:
            low = v
            best = k
    return best


@jit
def _labels_kernel(
    X: AnyArray,
    ref: AnyArray,
    neg2_t: AnyArray,
    bias: AnyArray,
    shift_rows: bool,
    rows: int,
    out: IntArray,
) -> None:
    n, d = X.shape
    K = neg2_t.shape[1]
    xbuf = np.empty((rows, d), dtype=neg2_t.dtype)
    scores = np.empty((rows, K), dtype=neg2_t.dtype)
    for start in range(0, n, rows):
        m = min(rows, n - start)
        _score_rows(X, start, m, ref, neg2_t, shift_rows, xbuf, scores)
        for i in range(m):
            out[start + i] = _argmin_row(scores, i, bias)


@jit
def _offer_far(
    dist: float,
    row: int,
    label: int,
    far_dist: FloatArray,
    far_row: IntArray,
    far_label: IntArray,
    n_far: int,
) -> int:
    """Insert a row into the kept farthest rows (sorted by decreasing distance); new count.

    Rows come in increasing order, so a row that only ties the last kept one is not kept:
    the earlier row wins the tie, as the order "decreasing distance, then increasing row"
    wants. Inserting is rare after the first rows (a comparison per row otherwise).
    """
    keep = far_dist.shape[0]
    if n_far < keep:
        p = n_far
        n_far += 1
    elif keep > 0 and dist > far_dist[keep - 1]:
        p = keep - 1
    else:
        return n_far
    while p > 0 and dist > far_dist[p - 1]:
        far_dist[p] = far_dist[p - 1]
        far_row[p] = far_row[p - 1]
        far_label[p] = far_label[p - 1]
        p -= 1
    far_dist[p] = dist
    far_row[p] = row
    far_label[p] = label
    return n_far


@jit
def _add_sums(X: AnyArray, i: int, k: int, about: FloatArray, sx: FloatArray) -> None:
    """Add ``x_i - r_k`` to ``sx[k]`` (float64 whatever the dtype)."""
    for j in range(X.shape[1]):
        sx[k, j] += np.float64(X[i, j]) - about[k, j]


@jit
def _add_sums_weighted(
    X: AnyArray, i: int, k: int, about: FloatArray, sx: FloatArray, wi: float
) -> None:
    """Add ``wi (x_i - r_k)`` to ``sx[k]``."""
    for j in range(X.shape[1]):
        sx[k, j] += wi * (np.float64(X[i, j]) - about[k, j])


@jit
def _sq_dist(X: AnyArray, i: int, k: int, centers: FloatArray) -> float:
    """``‖x_i - c_k‖²`` from float64 differences (exact far from the origin).

    Four running sums of squares: one would be a chain of ``d`` dependent additions (~4
    cycles each).
    """
    d = X.shape[1]
    s0 = s1 = s2 = s3 = 0.0
    j = 0
    while j + 4 <= d:
        t0 = np.float64(X[i, j]) - centers[k, j]
        t1 = np.float64(X[i, j + 1]) - centers[k, j + 1]
        t2 = np.float64(X[i, j + 2]) - centers[k, j + 2]
        t3 = np.float64(X[i, j + 3]) - centers[k, j + 3]
        s0 += t0 * t0
        s1 += t1 * t1
        s2 += t2 * t2
        s3 += t3 * t3
        j += 4
    while j < d:
        t0 = np.float64(X[i, j]) - centers[k, j]
        s0 += t0 * t0
        j += 1
    return (s0 + s1) + (s2 + s3)


@jit
def _walk_kernel(
    X: AnyArray,
    row0: int,
    centers: FloatArray,
    about: FloatArray,
    ref: AnyArray,
    neg2_t: AnyArray,
    bias: AnyArray,
    shift_rows: bool,
    expand: bool,
    means: AnyArray,
    mean_sq: FloatArray,
    radius: FloatArray,
    rows: int,
    counts: FloatArray,
    sx: FloatArray,
    inertia: FloatArray,
    far_dist: FloatArray,
    far_row: IntArray,
    far_label: IntArray,
    n_far: IntArray,
    weights: FloatArray | None = None,
) -> None:
    """Add the rows ``row0, row0 + 1, ...`` of ``X`` to the statistics of ``R`` restarts.

    One walk over the block: per sub-block of ``rows`` rows (in cache), each restart's GEMM
    of scores and its sweep (argmin, sums, inertia, far rows). Arrays are stacked by
    restart: ``centers``/``about`` (R, K, d), ``ref`` (R, d), ``neg2_t`` (R, d, K),
    ``bias``/``counts``/``radius`` (R, K), ``sx`` (R, K, d), ``far_*`` (R, keep);
    ``means``/``mean_sq``: each restart's scoring point ``m`` and ``‖m‖²``. Distances are
    measured from ``centers``, sums taken about ``about``; ``weights``: every row's counts,
    sums and inertia weigh ``weights[i]``, and a row of weight 0 is no far row.

    ``expand`` (float64 scores): a row's squared distance to its centre is taken from the
    expansion ``‖x‖² - 2x·m + ‖m‖² + score + bias`` (``x·m`` one GEMV per sub-block,
    ``‖x‖²`` once per row for every restart) where its rounding error, at most
    ``γ_{d+5} (‖x‖ + ‖m‖ + ‖c - m‖)²`` (``radius = ‖m‖ + ‖c - m‖``), is below ``2^-40``
    (~9e-13) of the distance; elsewhere (rows far from the origin relative to their spread,
    rows on their centre) from float64 differences. Far rows are kept by their exact
    distances: a row whose distance could pass the kept farthest ones is measured exactly
    first.
    """
    n, d = X.shape
    R, K = bias.shape
    keep = far_dist.shape[1]
    xbuf = np.empty((rows, d), dtype=neg2_t.dtype)
    scores = np.empty((rows, K), dtype=neg2_t.dtype)
    norm_sq = np.empty(rows)
    norm = np.empty(rows)
    xm = np.empty(rows, dtype=neg2_t.dtype)
    # The rounding of ‖x‖², x·m, the scores, the bias (dot products of d terms, each off
    # by at most γ_d Σ|a_j b_j| ≤ γ_d ‖a‖ ‖b‖) and the four sums of the expansion:
    # γ_{d+5} = (d + 5) ε / (1 - (d + 5) ε) times (‖x‖ + ‖m‖ + ‖c - m‖)².
    eps = np.finfo(np.float64).eps
    gamma = (d + 5) * eps / (1.0 - (d + 5) * eps)
    close = 2.0**-40
    for start in range(0, n, rows):
        m = min(rows, n - start)
        if expand:
            for i in range(m):
                s = 0.0
                for j in range(d):
                    v = np.float64(X[start + i, j])
                    s += v * v
                norm_sq[i] = s
                norm[i] = np.sqrt(s)
        for r in range(R):
            _score_rows(X, start, m, ref[r], neg2_t[r], shift_rows, xbuf, scores)
            if expand:
                np.dot(X[start : start + m], means[r], xm[:m])
            # Summed per sub-block, then into the total: the error of the inertia stays that
            # of short sums, not of a million-term running sum.
            part = 0.0
            for i in range(m):
                k = _argmin_row(scores, i, bias[r])
                wi = 1.0
                if weights is None:
                    _add_sums(X, start + i, k, about[r], sx[r])
                    counts[r, k] += 1.0
                else:
                    wi = weights[start + i]
                    _add_sums_weighted(X, start + i, k, about[r], sx[r], wi)
                    counts[r, k] += wi
                exact = True
                err = 0.0
                dist = 0.0
                if expand:
                    dist = (norm_sq[i] - 2.0 * np.float64(xm[i]) + mean_sq[r]) + (
                        np.float64(scores[i, k]) + np.float64(bias[r, k])
                    )
                    t = norm[i] + radius[r, k]
                    err = gamma * t * t
                    exact = err > close * dist
                if exact:
                    dist = _sq_dist(X, start + i, k, centers[r])
                    err = 0.0
                part += wi * dist
                if wi <= 0.0:
                    continue
                # A row whose distance by differences (itself within γ of the true one)
                # could pass the last kept far row is measured by differences and offered.
                nf = n_far[r]
                if nf < keep or (
                    keep > 0 and (dist + err) * (1.0 + gamma) >= far_dist[r, keep - 1]
                ):
                    if not exact:
                        dist = _sq_dist(X, start + i, k, centers[r])
                    n_far[r] = _offer_far(
                        dist, row0 + start + i, k, far_dist[r], far_row[r], far_label[r], nf
                    )
            inertia[r] += part


@jit
def _transform_kernel(X: AnyArray, centers_t: FloatArray, out: FloatArray) -> None:
    """``out[i, k] = ‖x_i - c_k‖`` from float64 differences (centres given as (d, K))."""
    n, d = X.shape
    K = centers_t.shape[1]
    acc = np.empty(K)
    for i in range(n):
        acc[:] = 0.0
        # k innermost: K independent sums, which the compiler vectorises without
        # reordering any of them.
        for j in range(d):
            x = np.float64(X[i, j])
            for k in range(K):
                t = x - centers_t[j, k]
                acc[k] += t * t
        for k in range(K):
            out[i, k] = np.sqrt(acc[k])


# --- the kernels' Python side -----------------------------------------------------------------

# A sub-block's rows and scores, (rows, d) and (rows, K) float64, fill ~256 KB: they stay in
# the 512 KB L2 cache between the GEMM and the sweep (benchmarks/README.md, "Compiled K-means
# kernel").
_SUB_BLOCK_BYTES = 1 << 18


def _sub_block_rows(n_clusters: int, n_features: int) -> int:
    return int(min(4096, max(64, _SUB_BLOCK_BYTES // (8 * (n_clusters + n_features)))))


@dataclass(frozen=True)
class _Scoring:
    """The centre terms of ``‖x - c‖² = ‖x - m‖² + ‖c̃‖² - 2 (x - m)·c̃`` in the compute dtype.

    ``c̃ = c - m`` with ``m`` the mean of the centres. float64 scores the rows as they are,
    with ``2 m·c̃`` folded into the bias (``argmin_k`` drops the terms that do not depend on
    ``k``): every product stays at the scale ``|x| · |c - m|``, exact enough at 1e9. float32
    shifts the rows by ``m`` rounded to float32 first: a difference of two nearby float32
    values is exact, so float32 data far from the origin keep their digits.
    """

    dtype: np.dtype[np.floating[Any]]
    ref: AnyArray
    neg2_t: AnyArray
    bias: AnyArray
    shift_rows: bool

    @classmethod
    def of(cls, centers: FloatArray, dtype: np.dtype[Any]) -> _Scoring:
        """The scoring of ``centers`` for data of ``dtype`` (float32, or float64 for others)."""
        mean = centers.mean(axis=0)
        if dtype == np.float32:
            ref32 = mean.astype(np.float32)
            shifted = centers - ref32.astype(np.float64)
            bias = np.einsum("kd,kd->k", shifted, shifted)
            return cls(
                np.dtype(np.float32),
                ref32,
                np.ascontiguousarray(-2.0 * shifted.T, dtype=np.float32),
                bias.astype(np.float32),
                True,
            )
        shifted = centers - mean
        bias = np.einsum("kd,kd->k", shifted, shifted) + 2.0 * (shifted @ mean)
        return cls(np.dtype(np.float64), mean, np.ascontiguousarray(-2.0 * shifted.T), bias, False)


def _centers(centers: AnyArray) -> FloatArray:
    return np.ascontiguousarray(centers, dtype=np.float64)


def kmeans_labels_chunk(X: AnyArray, centers: FloatArray) -> IntArray:
    """Index of the nearest centre of every row of a block (lowest index on ties)."""
    centers = _centers(centers)
    K, d = centers.shape
    out = np.empty(X.shape[0], dtype=np.int64)
    if X.shape[0] == 0:
        return out
    block = as_row_major(X)
    scoring = _Scoring.of(centers, block.dtype)
    rows = _sub_block_rows(K, d)
    _labels_kernel(block, scoring.ref, scoring.neg2_t, scoring.bias, scoring.shift_rows, rows, out)
    return out


def kmeans_transform_chunk(X: AnyArray, centers: FloatArray) -> FloatArray:
    """Euclidean distance of every row of a block to every centre, (n, K), in float64."""
    centers = _centers(centers)
    out = np.empty((X.shape[0], centers.shape[0]))
    centers_t = np.ascontiguousarray(centers.T)
    _transform_kernel(as_row_major(X), centers_t, out)
    return out


def kmeans_estep_chunk(block: RowBlock, params: KMeansParams) -> KMeansStats:
    """Assign the rows of one block and reduce them to statistics.

    Parameters
    ----------
    block : RowBlock
        The rows (any real dtype and layout), their global offset and per-row inputs.
    params : KMeansParams

    Returns
    -------
    KMeansStats
    """
    return kmeans_estep_many(block, (params,))[0]


def kmeans_estep_many(block: RowBlock, params: Sequence[KMeansParams]) -> list[KMeansStats]:
    """The statistics of several restarts on one block, in one walk over its rows.

    Each sub-block of rows is scored and swept for every restart while it is in cache, so
    the block is read from memory once for all of them (restarts of a fit, fits of a K
    sweep). Every restart's arithmetic is the one it runs alone — its own GEMM of the same
    shape on the same rows, the same sweep — so each statistics value equals, bit for bit,
    :func:`kmeans_estep_chunk` under those parameters. (One GEMM against all the restarts'
    centres stacked was measured too: slower at K=16, its (rows, R·K) scores leave the
    cache, and its columns round differently from a lone restart's GEMM.)

    Parameters
    ----------
    block : RowBlock
    params : sequence of KMeansParams
        One per restart; restarts of the same number of clusters share the walk.

    Returns
    -------
    list of KMeansStats
        In the order of ``params``.
    """
    out: list[KMeansStats | None] = [None] * len(params)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(tuple(np.shape(p.centers)), []).append(i)
    for members in groups.values():
        stats = _estep_group(block, [params[i] for i in members])
        for i, s in zip(members, stats, strict=True):
            out[i] = s
    return [s for s in out if s is not None]


def _estep_group(block: RowBlock, group: Sequence[KMeansParams]) -> list[KMeansStats]:
    """:func:`kmeans_estep_many` for restarts of the same shape of centres."""
    X, row_offset = block.x, block.row_offset
    # Weights (scikit-learn's sample_weight) weigh counts, sums and inertia; the far rows
    # that re-seed an empty cluster are, as scikit-learn's, the rows farthest from their
    # centres by plain distance, and carry their weights to the M-step. A row of weight 0
    # is no candidate: its new cluster would be empty again (scikit-learn then sends that
    # centre to the origin).
    weights = None if block.weights is None else np.asarray(block.weights, dtype=np.float64)
    R = len(group)
    centers = np.stack([_centers(p.centers) for p in group])
    about = np.stack([_centers(p.about) for p in group])
    _, K, d = centers.shape
    n = X.shape[0]
    keep = min(K, n)
    counts = np.zeros((R, K))
    sx = np.zeros((R, K, d))
    inertia = np.zeros(R)
    far_dist = np.empty((R, keep))
    far_row = np.empty((R, keep), dtype=np.int64)
    far_label = np.empty((R, keep), dtype=np.int64)
    n_far = np.zeros(R, dtype=np.int64)
    if n:
        Xr = as_row_major(X)
        scorings = [_Scoring.of(c, Xr.dtype) for c in centers]
        first = scorings[0]
        means = np.stack([c.mean(axis=0) for c in centers])
        radius = np.linalg.norm(means, axis=1)[:, None] + np.linalg.norm(
            centers - means[:, None, :], axis=2
        )
        _walk_kernel(
            Xr, 0, centers, about,
            np.stack([s.ref for s in scorings]),
            np.stack([s.neg2_t for s in scorings]),
            np.stack([s.bias for s in scorings]),
            first.shift_rows, not first.shift_rows,
            # (float32 data does not expand: its means only type the unused GEMV)
            means.astype(first.dtype), np.einsum("rd,rd->r", means, means), radius,
            _sub_block_rows(K, d),
            counts, sx, inertia, far_dist, far_row, far_label, n_far, weights,
        )  # fmt: skip
    out = []
    for r, p in enumerate(group):
        # Rows of weight 0 may leave places unfilled.
        kept = int(n_far[r])
        rows = far_row[r, :kept]
        out.append(
            KMeansStats(
                n=int(n),
                counts=counts[r],
                sx=sx[r],
                inertia=float(inertia[r]),
                far_dist=far_dist[r, :kept],
                far_row=rows + row_offset,
                far_label=far_label[r, :kept],
                far_x=np.asarray(X[rows], dtype=np.float64).reshape(kept, d),
                shift=p.centers,
                reference=p.about,
                far_w=None if weights is None else weights[rows],
            )
        )
    return out


def kmeans_mstep(stats: KMeansStats) -> tuple[KMeansParams, int]:
    """New centres from reduced statistics, re-seeding empty clusters from far points.

    A centre is ``r_k + Σ (x - r_k) / n_k`` about its fixed reference point, so the same rows
    give the same centre bit for bit (the module's docstring); the new parameters keep the
    references. An empty cluster takes the row farthest from its own centre (then the next
    farthest, and so on), which leaves its old cluster — as scikit-learn's Lloyd does — and
    that row becomes its reference too (a reference near its rows keeps their differences
    small). No centre is ever sent to the origin. A row that sits exactly on its centre is
    no candidate: moving it lowers nothing, and on data with fewer distinct points than
    clusters it would make the empty cluster chase the same point forever; such a cluster
    keeps its centre.

    Parameters
    ----------
    stats : KMeansStats
        Statistics summed over the whole dataset.

    Returns
    -------
    params : KMeansParams
        The new centres and their reference points.
    n_relocated : int
        Number of empty clusters that were re-seeded.
    """
    counts = stats.counts.copy()
    about = np.asarray(stats.reference, dtype=np.float64)
    sums = stats.sx.copy()  # Σ (x - r_k) per cluster
    empty = np.flatnonzero(counts == 0)
    new_centers = np.array(stats.shift, dtype=np.float64, copy=True)
    reference = about.copy()
    n_candidates = int(np.count_nonzero(stats.far_dist > 0))
    relocated = [int(k) for k in empty[:n_candidates]]
    far_w = _far_weights(stats)
    for j, k in enumerate(relocated):
        x = stats.far_x[j]
        old = int(stats.far_label[j])
        # The row leaves with its weight (scikit-learn's _relocate_empty_clusters_dense).
        sums[old] -= far_w[j] * (x - about[old])
        counts[old] -= far_w[j]
        new_centers[k] = x
        reference[k] = x
    for k in range(len(counts)):
        if counts[k] > 0 and k not in relocated:
            new_centers[k] = about[k] + sums[k] / counts[k]
    return KMeansParams(new_centers, reference), len(relocated)
