"""K-means (Lloyd) assignment step on one block, its statistics, and the centre update.

The assignment step runs as compiled numba kernels (:mod:`emdist.kernels._jit`: no GIL, so
Dask's threads compute side by side). Per sub-block of rows, one BLAS GEMM scores every
row against every centre with the expansion ``‖c̃‖² - 2x·c̃`` (centres taken about their
mean, so that it holds far from the origin); then one compiled sweep takes the argmin
(lowest index on ties), adds the per-cluster sums ``Σ (x - r_label)`` about each cluster's
fixed reference point (see below), the counts and the squared norms ``Σ‖x - r_label‖²``,
and keeps the block's ``K`` rows farthest from their centres (the candidates that re-seed
an empty cluster, so no extra pass is needed when one empties). Several restarts' centres
are scored and swept in the same walk (:func:`kmeans_estep_many`): a sub-block is read
from memory once for all of them, while each restart's arithmetic stays what it is alone.

Segments: the statistics are summed per segment of ~4096 rows (:func:`_segment_rows`), then
segment after segment into the block's. A cluster's statistics in a segment are a function
of its rows there, in row order; a pass that keeps Hamerly's bounds between passes
(:func:`kmeans_estep_bounded`) keeps them too, and sums again, while the segment's rows are
in cache, only those of the clusters whose rows there changed — the same values, bit for
bit, as the plain walk's.

The inertia: per segment and cluster, from the moments about the reference point,
``Σ‖x - c‖² = Q - 2 (c - r)·S + n ‖c - r‖²`` — no walk over rows — where that cannot
cancel by more than a factor ``_MOMENT_REACH`` (its scale ``(√Q + √n ‖c - r‖)²`` against
the result), and from the sum of the rows' float64 differences ``Σ‖x - c‖²`` elsewhere
(centres far from their reference points relative to the cluster's spread). A function of
the segment's statistics and the centres, in both kinds of pass. The far rows are ranked
by exact distances, measured only for the rows that may be among them: the plain walk
bounds a row's distance by ``‖x - r‖ + ‖r - c‖``, the bounded pass by its upper bound.

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
sums, squared norms and distances are float64 differences from float64 points whatever
the dtype.
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
from emdist.kernels._prefetch import PREFETCH_AHEAD, prefetch_row
from emdist.kernels.rows import RowBlock

__all__ = [
    "BOUND_BYTES_PER_ROW",
    "BlockMoments",
    "KMeansBounds",
    "KMeansParams",
    "KMeansStats",
    "kmeans_estep_bounded",
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
def _add_row(X: AnyArray, i: int, k: int, about: FloatArray, sx: FloatArray) -> float:
    """Add ``x_i - r_k`` to ``sx[k]``; return ``‖x_i - r_k‖²``.

    :func:`_add_sums` and :func:`_sq_dist` in one walk over the row: each difference is
    taken once, and the sums and the four running sums of squares are those of the two,
    bit for bit (measured 19 against 26 ns a row, in cache, rows of 32 features).
    """
    d = X.shape[1]
    s0 = s1 = s2 = s3 = 0.0
    j = 0
    while j + 4 <= d:
        t0 = np.float64(X[i, j]) - about[k, j]
        t1 = np.float64(X[i, j + 1]) - about[k, j + 1]
        t2 = np.float64(X[i, j + 2]) - about[k, j + 2]
        t3 = np.float64(X[i, j + 3]) - about[k, j + 3]
        sx[k, j] += t0
        sx[k, j + 1] += t1
        sx[k, j + 2] += t2
        sx[k, j + 3] += t3
        s0 += t0 * t0
        s1 += t1 * t1
        s2 += t2 * t2
        s3 += t3 * t3
        j += 4
    while j < d:
        t0 = np.float64(X[i, j]) - about[k, j]
        sx[k, j] += t0
        s0 += t0 * t0
        j += 1
    return (s0 + s1) + (s2 + s3)


@jit
def _add_row_weighted(
    X: AnyArray, i: int, k: int, about: FloatArray, sx: FloatArray, wi: float
) -> float:
    """:func:`_add_row` adding ``wi (x_i - r_k)`` (:func:`_add_sums_weighted`'s terms)."""
    d = X.shape[1]
    s0 = s1 = s2 = s3 = 0.0
    j = 0
    while j + 4 <= d:
        t0 = np.float64(X[i, j]) - about[k, j]
        t1 = np.float64(X[i, j + 1]) - about[k, j + 1]
        t2 = np.float64(X[i, j + 2]) - about[k, j + 2]
        t3 = np.float64(X[i, j + 3]) - about[k, j + 3]
        sx[k, j] += wi * t0
        sx[k, j + 1] += wi * t1
        sx[k, j + 2] += wi * t2
        sx[k, j + 3] += wi * t3
        s0 += t0 * t0
        s1 += t1 * t1
        s2 += t2 * t2
        s3 += t3 * t3
        j += 4
    while j < d:
        t0 = np.float64(X[i, j]) - about[k, j]
        sx[k, j] += wi * t0
        s0 += t0 * t0
        j += 1
    return (s0 + s1) + (s2 + s3)


@jit
def _norm(X: AnyArray, i: int) -> float:
    """``‖x_i‖`` in float64."""
    s = 0.0
    for j in range(X.shape[1]):
        v = np.float64(X[i, j])
        s += v * v
    out: float = np.sqrt(s)
    return out


@jit
def _pick(
    X: AnyArray,
    i: int,
    scores: AnyArray,
    j: int,
    bias: AnyArray,
    centers: FloatArray,
    band: float,
    want_lower: bool,
    known_k: int,
    known_sq: float,
) -> tuple[int, float, float]:
    """The label of row ``i`` (scores in row ``j``): the argmin of its exact distances.

    ``scores[j, k] + bias[k]`` is ``‖x - c_k‖²`` up to a term common to every ``k``, to
    within ``band``; an exact distance from float64 differences (:func:`_sq_dist`) is within
    ``band`` of the true one too. A centre whose score is more than ``4 band`` above the
    smallest is therefore strictly farther by exact distances as well: only the centres
    within that reach are compared by exact distances (lowest index on ties, as
    ``numpy.argmin``), and almost always there is one. So the label does not depend on
    how the GEMM rounded — a GEMM over other rows, as the bounded walk runs, gives the
    same label. With ``want_lower``: also a lower bound on the squared distance to every
    other centre (else 0), never below 0: far from the origin the band dwarfs the gaps
    between scores, and a bound drawn from them alone is then negative. Centres compared by
    exact distances bound it by those distances, not by their scores. Last, the exact
    squared distance to the label where it was computed (else -1). ``known_sq``: the exact
    squared distance to centre ``known_k`` where the caller has it (``known_k`` -1: none),
    taken instead of computing it again (the same function of the same values).
    """
    K = centers.shape[0]
    low = np.inf
    second = np.inf
    arg = 0
    for k in range(K):
        v = np.float64(scores[j, k]) + np.float64(bias[k])
        if v < low:
            second = low
            low = v
            arg = k
        elif v < second:
            second = v
    reach = low + 4.0 * band
    if second > reach:
        if not want_lower or K == 1:
            return arg, np.inf if K == 1 else 0.0, -1.0
        # ‖x - c_k‖² ≥ ‖x - c_arg‖² + (v_k - v_arg) - 3 band for every other k.
        sq = known_sq if arg == known_k else _sq_dist(X, i, arg, centers)
        return arg, max(sq + (second - low) - 3.0 * band, 0.0), sq
    best = -1
    best_sq = np.inf
    # The second smallest exact distance among the centres compared, and the smallest
    # score of the others (each strictly farther than the label).
    other_sq = np.inf
    other = np.inf
    for k in range(K):
        v = np.float64(scores[j, k]) + np.float64(bias[k])
        if v <= reach:
            sq = known_sq if k == known_k else _sq_dist(X, i, k, centers)
            if sq < best_sq:
                other_sq = best_sq
                best_sq = sq
                best = k
            elif sq < other_sq:
                other_sq = sq
        elif v < other:
            other = v
    if not want_lower:
        return best, 0.0, best_sq
    if other < np.inf:
        v_best = np.float64(scores[j, best]) + np.float64(bias[best])
        other_sq = min(other_sq, max(best_sq + (other - v_best) - 3.0 * band, 0.0))
    return best, other_sq, best_sq


# Outward rounding of float64 bounds to float32: a product by (1 ± 2^-22) moves a value
# further than float32's rounding (2^-24 relative), and 1e-44 further than its smallest
# step (1.4e-45), so a stored upper bound is never below the float64 one, a lower never above.
_UP32 = 1.0 + 2.0**-22
_DOWN32 = 1.0 - 2.0**-22
_TINY32 = 1e-44
_MAX32 = float(np.finfo(np.float32).max)


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
    radius: FloatArray,
    gamma: float,
    rows: int,
    segment: int,
    reach: float,
    reach_ref: FloatArray,
    counts: FloatArray,
    sx: FloatArray,
    inertia: FloatArray,
    far_dist: FloatArray,
    far_row: IntArray,
    far_label: IntArray,
    n_far: IntArray,
    weights: FloatArray,
    weighted: bool,
    delta: float,
    tiny: float,
) -> None:
    """Add the rows ``row0, row0 + 1, ...`` of ``X`` to the statistics of ``R`` restarts.

    One walk over the block: per sub-block of ``rows`` rows (in cache), each restart's
    labels, then its sweep in row order into the statistics of the current segment (every
    ``segment`` rows, a multiple of ``rows``): per cluster the counts, the sums and the
    squared norms of ``x - about``; the far rows, an exact distance measured only for the
    rows that ``‖x - about‖ + reach_ref`` (``‖c - about‖`` rounded up, (R, K)) does not
    place nearer than the last far row. At a segment's end, its inertia
    (:func:`_moment_terms`, :func:`_inertia_of`; the sum of distances ``‖x - c‖²`` from
    float64 differences for the clusters whose moments would cancel) and its counts and
    sums are added to the block's, segment after segment. Arrays are stacked by restart:
    ``centers``/``about`` (R, K, d), ``ref`` (R, d), ``neg2_t`` (R, d, K),
    ``bias``/``counts`` (R, K), ``sx`` (R, K, d), ``inertia`` (R,), ``far_*`` (R, keep);
    ``radius`` (R,): with ``‖x‖`` it bounds the scores' rounding
    (``band = gamma (‖x‖ + radius)²``). ``weighted``: every row's counts, sums and squares
    weigh ``weights[i]``, and a row of weight 0 is no far row.

    Labels are the argmin of exact distances (:func:`_pick`), decided from one GEMM of
    scores. A segment's statistics of a cluster are sums over its rows there, in row
    order: the bounded passes (:func:`_bounded_kernel`) recompute only those whose rows
    changed and get the same values bit for bit.
    """
    n, d = X.shape
    R, K = bias.shape
    n_keep = far_dist.shape[1]
    xbuf = np.empty((rows, d), dtype=neg2_t.dtype)
    scores = np.empty((rows, K), dtype=neg2_t.dtype)
    norm = np.empty(rows)
    lab = np.empty(rows, dtype=np.int64)
    # The exact squared distance of a row to its label where already computed (else -1):
    # the sweep takes it instead of computing it again (the same function, the same value).
    known = np.empty(rows)
    # The current segment's statistics, and its rows' labels and distances (-1: unknown).
    pc = np.zeros((R, K))
    psx = np.zeros((R, K, d))
    psq = np.zeros((R, K))
    pe = np.zeros(K)
    seg_lab = np.empty((R, segment), dtype=np.int64)
    seg_dist = np.empty((R, segment))
    seg_start = 0
    value = np.empty(K)
    ok = np.empty(K, dtype=np.bool_)
    up = 1.0 + delta
    for start in range(0, n, rows):
        m = min(rows, n - start)
        # ‖x‖, for the rounding band of the rows scored (computed when first needed).
        norm[:m] = -1.0
        for r in range(R):
            c = centers[r]
            known[:m] = -1.0
            _score_rows(X, start, m, ref[r], neg2_t[r], shift_rows, xbuf, scores)
            for i in range(m):
                if norm[i] < 0.0:
                    norm[i] = _norm(X, start + i)
                t = norm[i] + radius[r]
                band = gamma * t * t
                # The common case inline: one centre alone within reach of the lowest.
                arg = _argmin_row(scores, i, bias[r])
                near = np.float64(scores[i, arg]) + np.float64(bias[r, arg]) + 4.0 * band
                close = 0
                for k in range(K):
                    close += np.float64(scores[i, k]) + np.float64(bias[r, k]) <= near
                if close == 1:
                    lab[i] = arg
                    continue
                lab[i], _, known[i] = _pick(
                    X, start + i, scores, i, bias[r], c, band, False, -1, -1.0
                )
            # (Views taken once, not per row: measured 15% of a walk.)
            ab = about[r]
            sxr = psx[r]
            for i in range(m):
                g = start + i
                k = lab[i]
                # (Two walks over the row, the sums' vectorised: measured faster than one.)
                if weighted:
                    wi = weights[g]
                    _add_sums_weighted(X, g, k, ab, sxr, wi)
                    pc[r, k] += wi
                else:
                    wi = 1.0
                    _add_sums(X, g, k, ab, sxr)
                    pc[r, k] += 1.0
                q = _sq_dist(X, g, k, ab)
                psq[r, k] += wi * q
                dist = known[i]
                if wi > 0.0 and n_keep > 0:
                    nf = n_far[r]
                    if dist < 0.0:
                        # ‖x - c‖ <= ‖x - r‖ + ‖r - c‖: a row nearer its centre than the
                        # last far row by that bound needs no distance (it would not enter).
                        bound = (np.sqrt(q) + reach_ref[r, k]) * up + tiny
                        if nf < n_keep or bound * bound >= far_dist[r, n_keep - 1]:
                            dist = _sq_dist(X, g, k, c)
                    if dist >= 0.0 and (nf < n_keep or dist > far_dist[r, n_keep - 1]):
                        n_far[r] = _offer_far(
                            dist, row0 + g, k, far_dist[r], far_row[r], far_label[r], nf
                        )
                seg_lab[r, g - seg_start] = k
                seg_dist[r, g - seg_start] = dist
        end = start + m
        if end % segment == 0 or end == n:
            for r in range(R):
                if not _moment_terms(pc[r], psx[r], psq[r], centers[r], about[r], reach, value, ok):
                    # The sums of distances of the clusters whose moments would cancel.
                    pe[:] = 0.0
                    for g in range(seg_start, end):
                        k = seg_lab[r, g - seg_start]
                        if ok[k]:
                            continue
                        dd = seg_dist[r, g - seg_start]
                        if dd < 0.0:
                            dd = _sq_dist(X, g, k, centers[r])
                        wi = weights[g] if weighted else 1.0
                        pe[k] += wi * dd
                inertia[r] += _inertia_of(value, ok, pe)
                for k in range(K):
                    counts[r, k] += pc[r, k]
                    for j in range(d):
                        sx[r, k, j] += psx[r, k, j]
            seg_start = end
            pc[:] = 0.0
            psx[:] = 0.0
            psq[:] = 0.0


@jit
def _lower32(lo: float) -> np.float32:
    """A lower bound (float64, may be inf or negative) as float32 rounded down, at least 0."""
    lo = lo if lo > 0.0 else 0.0
    if _MAX32 < lo < np.inf:
        lo = _MAX32  # beyond float32: rounding would make it inf
    return np.float32(lo * _DOWN32 - _TINY32)


@jit
def _bounded_labels_kernel(
    X: AnyArray,
    row_lo: int,
    row_hi: int,
    centers: FloatArray,
    ref: AnyArray,
    neg2_t: AnyArray,
    bias: AnyArray,
    shift_rows: bool,
    radius: FloatArray,
    gamma: float,
    rows: int,
    src: IntArray,
    old_labels: AnyArray,
    old_upper: AnyArray,
    old_lower: AnyArray,
    drift: FloatArray,
    first: IntArray,
    second: FloatArray,
    half_gap: FloatArray,
    labels: AnyArray,
    upper: AnyArray,
    lower: AnyArray,
    dist: FloatArray,
    changed: AnyArray,
    delta: float,
    tiny: float,
) -> int:
    """The labels of rows ``row_lo:row_hi`` in a bounded pass and their new bounds; no statistics.

    Every restart ``r`` writes its rows' label and bounds (``labels``/``upper``/``lower``,
    (R, n), float32 bounds rounded outward) and, in ``dist`` (R, n), the exact squared
    distance of each row to its label where it was computed (else -1). Where
    ``src[r] >= 0`` the rows' bounds under the previous centres are ``old_*[src[r]]``:
    moved by the centres' drift (``drift`` (R, K), the largest drift's index ``first`` and
    the second largest ``second``), a row whose upper bound stays below
    ``max(lower, half_gap[label])`` keeps its label without a score (the margins
    ``delta``, ``tiny`` are far above the rounding of any distance here, so the exact
    argmin could not differ) and its moved upper bound; only the other rows are gathered
    into the GEMM. ``changed`` (R, K) marks the clusters a row joined or left. Returns the
    rows scored by a GEMM.

    The rows read are a few picked by a test, and a read from memory where the test passes
    would wait on it: the bounds are moved from the bounds alone, listing (and asking for,
    :func:`~emdist.kernels._prefetch.prefetch_row`) the rows whose bounds fail, and those
    are then tightened from the list (benchmarks/README.md, "The bounded pass kernel: rows
    read from lists").
    """
    n, d = X.shape
    R, K = bias.shape
    xbuf = np.empty((rows, d), dtype=neg2_t.dtype)
    scores = np.empty((rows, K), dtype=neg2_t.dtype)
    norm = np.empty(rows)
    lab = np.empty(rows, dtype=np.int64)
    low_sq = np.empty(rows)
    # Rows that kept their label on their bounds (written in full before scoring).
    skipped = np.empty(rows, dtype=np.bool_)
    known = np.empty(rows)
    # The centre ``known`` is the distance to (-1: none): a row's old label once tightened.
    hint = np.empty(rows, dtype=np.int64)
    need = np.empty(rows, dtype=np.int64)
    # The rows whose moved bounds fail, and the bound each must come under once tightened.
    tight = np.empty(rows, dtype=np.int64)
    tight_bound = np.empty(rows)
    up = 1.0 + delta
    scored = 0
    for start in range(row_lo, row_hi, rows):
        m = min(rows, row_hi - start)
        norm[:m] = -1.0
        for r in range(R):
            c = centers[r]
            s_r = src[r]
            m_need = 0
            known[:m] = -1.0
            hint[:m] = -1
            skipped[:m] = True
            if s_r >= 0:
                f = first[r]
                # Every row's moved bounds, written as if it kept its label (the rows that
                # do not are written again below), without reading the rows: a walk over
                # the bounds alone, which asks for the rows whose bounds fail. (Views taken
                # once, not per row.)
                o_lab = old_labels[s_r, start : start + m]
                o_up = old_upper[s_r, start : start + m]
                o_low = old_lower[s_r, start : start + m]
                n_lab = labels[r, start : start + m]
                n_up = upper[r, start : start + m]
                n_low = lower[r, start : start + m]
                dist[r, start : start + m] = -1.0
                d_r = drift[r]
                h_r = half_gap[r]
                beyond_first = second[r]
                to_first = d_r[f]
                n_tight = 0
                for i in range(m):
                    a = int(o_lab[i])
                    u = (np.float64(o_up[i]) + d_r[a]) * up + tiny
                    lo = np.float64(o_low[i]) - (beyond_first if a == f else to_first)
                    if lo != np.inf:
                        lo = lo - abs(lo) * delta - tiny
                    bound = max(lo, h_r[a])
                    n_lab[i] = a
                    n_up[i] = np.float32(u * _UP32 + _TINY32)
                    n_low[i] = _lower32(lo)
                    tight[n_tight] = i
                    tight_bound[n_tight] = bound
                    if u >= bound:
                        # Asked for now, read in the next loop.
                        prefetch_row(X, start + i)
                        n_tight += 1
                # The rows whose bounds failed, tightened to the exact distance to their own
                # centre before scoring: one row after another with no test between them
                # but their own, so their reads from memory overlap.
                for q in range(n_tight):
                    i = tight[q]
                    g = start + i
                    a = int(old_labels[s_r, g])
                    sq = _sq_dist(X, g, a, c)
                    known[i] = sq
                    hint[i] = a
                    u = np.sqrt(sq) * up + tiny
                    if u < tight_bound[q]:
                        # Its label and moved bounds, the upper one now tight.
                        dist[r, g] = sq
                        upper[r, g] = np.float32(u * _UP32 + _TINY32)
                        continue
                    skipped[i] = False
                    need[m_need] = i
                    m_need += 1
            else:
                skipped[:m] = False
                for i in range(m):
                    need[i] = i
                m_need = m
            if m_need == m:
                _score_rows(X, start, m, ref[r], neg2_t[r], shift_rows, xbuf, scores)
                for i in range(m):
                    if norm[i] < 0.0:
                        norm[i] = _norm(X, start + i)
                    t = norm[i] + radius[r]
                    lab[i], low_sq[i], known[i] = _pick(
                        X, start + i, scores, i, bias[r], c, gamma * t * t, True,
                        hint[i], known[i],
                    )  # fmt: skip
            elif m_need > 0:
                # The rows whose bounds failed, gathered into one GEMM.
                for q in range(m_need):
                    g = start + need[q]
                    if shift_rows:
                        for j in range(d):
                            xbuf[q, j] = X[g, j] - ref[r, j]
                    else:
                        for j in range(d):
                            xbuf[q, j] = X[g, j]
                np.dot(xbuf[:m_need], neg2_t[r], scores[:m_need])
                for q in range(m_need):
                    i = need[q]
                    if norm[i] < 0.0:
                        norm[i] = _norm(X, start + i)
                    t = norm[i] + radius[r]
                    lab[i], low_sq[i], known[i] = _pick(
                        X, start + i, scores, q, bias[r], c, gamma * t * t, True,
                        hint[i], known[i],
                    )  # fmt: skip
            scored += m_need
            for i in range(m):
                if skipped[i]:
                    continue
                g = start + i
                k = lab[i]
                labels[r, g] = k
                if s_r >= 0:
                    a = int(old_labels[s_r, g])
                    if a != k:
                        changed[r, a] = True
                        changed[r, k] = True
                sq = known[i]
                if sq < 0.0:
                    sq = _sq_dist(X, g, k, c)  # one centre: nothing else measured it
                dist[r, g] = sq
                u = np.sqrt(sq) * up + tiny
                upper[r, g] = np.float32(u * _UP32 + _TINY32)
                v = low_sq[i]
                if v == np.inf:
                    lo = np.inf
                else:
                    lo = np.sqrt(v) * (1.0 - delta) - tiny if v > 0.0 else 0.0
                if _MAX32 < lo < np.inf:
                    lo = _MAX32  # beyond float32: rounding would make it inf
                lower[r, g] = np.float32(lo * _DOWN32 - _TINY32)
    return scored


@jit
def _bounded_kernel(
    X: AnyArray,
    centers: FloatArray,
    about: FloatArray,
    ref: AnyArray,
    neg2_t: AnyArray,
    bias: AnyArray,
    shift_rows: bool,
    radius: FloatArray,
    gamma: float,
    rows: int,
    segment: int,
    reach: float,
    src: IntArray,
    old_labels: AnyArray,
    old_upper: AnyArray,
    old_lower: AnyArray,
    drift: FloatArray,
    first: IntArray,
    second: FloatArray,
    half_gap: FloatArray,
    labels: AnyArray,
    upper: AnyArray,
    lower: AnyArray,
    dist: FloatArray,
    has_kept: AnyArray,
    moved_ref: AnyArray,
    kept_counts: FloatArray,
    kept_sx: FloatArray,
    kept_sq: FloatArray,
    seg_counts: FloatArray,
    seg_sx: FloatArray,
    seg_sq: FloatArray,
    counts: FloatArray,
    sx: FloatArray,
    inertia: FloatArray,
    weights: FloatArray,
    weighted: bool,
    delta: float,
    tiny: float,
) -> tuple[int, int]:
    """A bounded pass over a block, segment by segment: labels, then what changed.

    Per segment of ``segment`` rows (:func:`_walk_kernel`'s), while its rows are in cache:

    1. the labels and Hamerly bounds of its rows (:func:`_bounded_labels_kernel`), which
       marks the clusters rows joined or left;
    2. per restart, the segment's statistics of every cluster (``seg_*`` (R, S, K, ...)):
       where restart ``r`` has them kept (``has_kept[r]``, ``kept_*``) and none of the
       cluster's rows in the segment changed, nor its reference point (``moved_ref``), the
       kept ones; else summed again from its rows, in row order, as the plain walk sums
       them (bit for bit the same): listed first, then read from the list, each asked for
       ``PREFETCH_AHEAD`` rows ahead (:func:`_add_row`: differences and squares in one
       walk);
    3. the segment's inertia from them, with the sum of distances of the clusters whose
       moments would cancel (measured again: such clusters are rare), and the segment's
       counts and sums added to the block's, as the plain walk adds them.

    Returns the rows scored by a GEMM and the rows summed again (times restarts).
    """
    n, d = X.shape
    R, K = bias.shape
    S = seg_counts.shape[1]
    changed = np.zeros((R, K), dtype=np.bool_)
    dirty = np.empty(K, dtype=np.bool_)
    sweep = np.empty(segment, dtype=np.int64)
    pe = np.zeros(K)
    value = np.empty(K)
    ok = np.empty(K, dtype=np.bool_)
    up = 1.0 + delta
    scored = 0
    swept = 0
    for s in range(S):
        lo = s * segment
        hi = min(n, lo + segment)
        changed[:] = False
        scored += _bounded_labels_kernel(
            X, lo, hi, centers, ref, neg2_t, bias, shift_rows, radius, gamma, rows, src,
            old_labels, old_upper, old_lower, drift, first, second, half_gap, labels, upper,
            lower, dist, changed, delta, tiny,
        )  # fmt: skip
        for r in range(R):
            pc = seg_counts[r, s]
            psx = seg_sx[r, s]
            psq = seg_sq[r, s]
            # (Views taken once, not per row: measured 15% of a walk.)
            ab = about[r]
            c = centers[r]
            any_dirty = False
            for k in range(K):
                dirty[k] = not has_kept[r] or changed[r, k] or moved_ref[r, k]
                if dirty[k]:
                    any_dirty = True
                    pc[k] = 0.0
                    psq[k] = 0.0
                    psx[k, :] = 0.0
                else:
                    pc[k] = kept_counts[r, s, k]
                    psq[k] = kept_sq[r, s, k]
                    psx[k, :] = kept_sx[r, s, k, :]
            if any_dirty:
                # The rows of those clusters first (no branch to mispredict), then their
                # sums over a list: one row after another, their reads from memory overlap.
                n_sweep = 0
                for i in range(lo, hi):
                    sweep[n_sweep] = i
                    n_sweep += dirty[labels[r, i]]
                swept += n_sweep
                for q in range(n_sweep):
                    if q + PREFETCH_AHEAD < n_sweep:
                        prefetch_row(X, sweep[q + PREFETCH_AHEAD])
                    i = sweep[q]
                    k = labels[r, i]
                    if weighted:
                        wi = weights[i]
                        psq[k] += wi * _add_row_weighted(X, i, k, ab, psx, wi)
                        pc[k] += wi
                    else:
                        psq[k] += _add_row(X, i, k, ab, psx)
                        pc[k] += 1.0
            if not _moment_terms(pc, psx, psq, c, ab, reach, value, ok):
                pe[:] = 0.0
                for i in range(lo, hi):
                    k = labels[r, i]
                    if ok[k]:
                        continue
                    dd = dist[r, i]
                    if dd < 0.0:
                        dd = _sq_dist(X, i, k, c)
                        dist[r, i] = dd
                        upper[r, i] = np.float32((np.sqrt(dd) * up + tiny) * _UP32 + _TINY32)
                    wi = weights[i] if weighted else 1.0
                    pe[k] += wi * dd
            inertia[r] += _inertia_of(value, ok, pe)
            for k in range(K):
                counts[r, k] += pc[k]
                for j in range(d):
                    sx[r, k, j] += psx[k, j]
    return scored, swept


@jit
def _offer_far_any(
    dist: float,
    row: int,
    label: int,
    far_dist: FloatArray,
    far_row: IntArray,
    far_label: IntArray,
    n_far: int,
) -> int:
    """:func:`_offer_far` for rows in any order: ties go to the lower row."""
    keep = far_dist.shape[0]
    if n_far < keep:
        p = n_far
        n_far += 1
    elif keep > 0 and (
        dist > far_dist[keep - 1] or (dist == far_dist[keep - 1] and row < far_row[keep - 1])
    ):
        p = keep - 1
    else:
        return n_far
    while p > 0 and (dist > far_dist[p - 1] or (dist == far_dist[p - 1] and row < far_row[p - 1])):
        far_dist[p] = far_dist[p - 1]
        far_row[p] = far_row[p - 1]
        far_label[p] = far_label[p - 1]
        p -= 1
    far_dist[p] = dist
    far_row[p] = row
    far_label[p] = label
    return n_far


@jit
def _far_kernel(
    X: AnyArray,
    row0: int,
    centers: FloatArray,
    labels: AnyArray,
    dist: FloatArray,
    upper: AnyArray,
    weights: FloatArray,
    weighted: bool,
    far_dist: FloatArray,
    far_row: IntArray,
    far_label: IntArray,
    n_far: IntArray,
    delta: float,
    tiny: float,
) -> int:
    """The far rows of a bounded pass: those of the plain pass, from fewer distances.

    The rows whose distance is known (``dist`` >= 0) are offered in row order. Of the others
    (their upper bounds ``upper`` hold, rounded outward), the ``keep`` of largest upper bound
    are measured and offered; then every other row whose upper bound reaches the ``keep``-th
    far distance (less a margin far above the rounding of a distance): a row below it is
    strictly nearer its centre than every kept row, so it is not among them, nor tied. The
    kept rows are therefore the plain pass's, distances and order alike. Returns the rows
    measured here.
    """
    n = X.shape[0]
    R = centers.shape[0]
    n_keep = far_dist.shape[1]
    top_u = np.empty(max(n_keep, 1))
    top_i = np.empty(max(n_keep, 1), dtype=np.int64)
    up = 1.0 + delta
    measured = 0
    for r in range(R):
        nf = 0
        # One scan: the measured rows offered in row order, and the unmeasured rows of
        # largest upper bound (sorted by decreasing bound).
        nt = 0
        # What a row must exceed to enter either list (every row while it is not full):
        # one test a row, without a branch on whether it was measured, passes the rows
        # that enter (rarely, after the first) to the tests below.
        cut_dist = np.inf if n_keep == 0 else -1.0
        cut_u = np.inf if n_keep == 0 else -np.inf
        for i in range(n):
            dd = dist[r, i]
            u = np.float64(upper[r, i])
            if not ((dd > cut_dist) | ((dd < 0.0) & (u > cut_u))):
                continue
            if weighted and not weights[i] > 0.0:
                continue
            if dd >= 0.0:
                if nf < n_keep or (n_keep > 0 and dd > far_dist[r, n_keep - 1]):
                    nf = _offer_far(
                        dd, row0 + i, labels[r, i], far_dist[r], far_row[r], far_label[r], nf
                    )
                    if nf == n_keep:
                        cut_dist = far_dist[r, n_keep - 1]
                continue
            if n_keep == 0:
                continue
            if nt < n_keep:
                p = nt
                nt += 1
            elif u > top_u[n_keep - 1]:
                p = n_keep - 1
            else:
                continue
            while p > 0 and u > top_u[p - 1]:
                top_u[p] = top_u[p - 1]
                top_i[p] = top_i[p - 1]
                p -= 1
            top_u[p] = u
            top_i[p] = i
            if nt == n_keep:
                cut_u = top_u[n_keep - 1]
        for q in range(nt):
            i = top_i[q]
            k = labels[r, i]
            dd = _sq_dist(X, i, k, centers[r])
            dist[r, i] = dd
            upper[r, i] = np.float32((np.sqrt(dd) * up + tiny) * _UP32 + _TINY32)
            nf = _offer_far_any(dd, row0 + i, k, far_dist[r], far_row[r], far_label[r], nf)
        measured += nt
        if nt == n_keep:
            # Rows whose bound is below ``reach`` are nearer than the last kept row.
            reach = -1.0
            if nf == n_keep:
                reach = np.sqrt(far_dist[r, n_keep - 1]) * (1.0 - delta) - tiny
            # Every row left unmeasured has an upper bound at most the last of ``top_u``
            # (the rows measured above): where that is below ``reach``, none can enter,
            # and the walk is spared.
            beyond = n_keep > 0 and reach > top_u[n_keep - 1]
            for i in range(0 if beyond else n):
                if dist[r, i] >= 0.0 or (weighted and not weights[i] > 0.0):
                    continue
                if np.float64(upper[r, i]) < reach:
                    continue
                k = labels[r, i]
                dd = _sq_dist(X, i, k, centers[r])
                dist[r, i] = dd
                upper[r, i] = np.float32((np.sqrt(dd) * up + tiny) * _UP32 + _TINY32)
                nf = _offer_far_any(dd, row0 + i, k, far_dist[r], far_row[r], far_label[r], nf)
                measured += 1
        n_far[r] = nf
    return measured


# Inertia from moments: ``Σ w ‖x - c‖² = Q - 2 (c - r)·S + W ‖c - r‖²`` errs by at most a
# few units of roundoff times ``n (√Q + √W ‖c - r‖)²`` (Cauchy-Schwarz bounds |(c - r)·S|
# by ‖c - r‖ √(W Q)), n the rows summed. The moments give a cluster's inertia where that
# scale is at most this many times the result: measured on 400k x 32 blobs (16 clusters,
# random starts, 8 restarts), those up to 32 erred by at most 3.1e-14 relative (the sum of
# distances: 6.5e-15), so 5 bits of the 52; beyond it the distances' own sum is taken.
_MOMENT_REACH = 32.0


@jit
def _moment_terms(
    counts: FloatArray,
    sx: FloatArray,
    sq: FloatArray,
    centers: FloatArray,
    about: FloatArray,
    reach: float,
    value: FloatArray,
    ok: AnyArray,
) -> bool:
    """Each cluster's inertia from its moments (``value``) and whether it holds (``ok``).

    ``value[k] = sq - 2 δ·sx + W ‖δ‖²`` with ``δ = c_k - r_k``; it holds where
    ``(√sq + √W ‖δ‖)² <= reach`` times it. Returns whether every cluster's holds.
    """
    K, d = centers.shape
    every = True
    for k in range(K):
        dd = 0.0
        ds = 0.0
        for j in range(d):
            t = centers[k, j] - about[k, j]
            dd += t * t
            ds += t * sx[k, j]
        w = counts[k]
        v = sq[k] - 2.0 * ds + w * dd
        scale = np.sqrt(sq[k]) + np.sqrt(w * dd)
        good = scale * scale <= reach * v
        value[k] = v
        ok[k] = good
        every = every and good
    return every


@jit
def _inertia_of(value: FloatArray, ok: AnyArray, exact: FloatArray) -> float:
    """``Σ_k`` of the moments' value where it holds, else of the sum of distances."""
    total = 0.0
    for k in range(value.shape[0]):
        total += value[k] if ok[k] else exact[k]
    return total


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

# Rows of a segment (rounded to sub-blocks): a bounded pass recomputes a cluster's statistics
# segment by segment, while its rows are in cache, and keeps ``K (d + 2)`` floats per
# segment (57 KB per 50 000 rows at K = 16, d = 32: a tenth of the bounds).
_SEGMENT_ROWS = 4096


def _segment_rows(n_clusters: int, n_features: int, rows: int) -> int:
    """Rows of a segment: ~4096, more where its statistics would take over a byte a row.

    (A block's last segment and its reference points add a little: under 2 bytes a row in
    all for blocks of 50 000 rows up to K (d + 2) = 2700.)
    """
    want = max(_SEGMENT_ROWS, 8 * n_clusters * (n_features + 2))
    return int(rows * max(1, -(-want // rows)))


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
    return _estep(block, params, None, None)[0]


@dataclass(frozen=True, eq=False)
class BlockMoments:
    """One restart's per-cluster statistics of one block's segments, kept beside its bounds.

    What the pass that made them summed over each cluster's rows in each segment of the
    block (every ~4096 rows, :func:`_walk_kernel`), in row order: a cluster whose rows in
    a segment did not change keeps its statistics there, bit for bit, and the next pass
    takes them instead of walking its rows again.

    Attributes
    ----------
    counts : ndarray of shape (n_segments, n_clusters)
        Rows (summed weights).
    sx : ndarray of shape (n_segments, n_clusters, n_features)
        ``Σ w (x - r_k)``.
    sq : ndarray of shape (n_segments, n_clusters)
        ``Σ w ‖x - r_k‖²``.
    reference : ndarray of shape (n_clusters, n_features)
        The points ``r_k`` the sums are about.
    """

    counts: FloatArray
    sx: FloatArray
    sq: FloatArray
    reference: FloatArray

    @property
    def nbytes(self) -> int:
        """Memory held (``K (d + 2)`` floats per segment, ``K d`` more)."""
        return int(self.counts.nbytes + self.sx.nbytes + self.sq.nbytes + self.reference.nbytes)


@dataclass(frozen=True, eq=False)
class KMeansBounds:
    """Hamerly's per-row bounds of one block, for several restarts, kept between passes.

    Twelve bytes per row and restart: the label (int32) and two float32 bounds rounded
    outward — an upper bound on the row's distance to its centre, a lower bound on its
    distance to every other centre, under ``centers``. Beside them, per restart, the
    block's per-cluster statistics (:class:`BlockMoments`, ``K (3 d + 3)`` floats).

    Attributes
    ----------
    tags : tuple
        Which restart each row of the arrays belongs to (the engine's names for them).
    centers : tuple of ndarray
        Each restart's centres the bounds hold under.
    labels : ndarray of shape (n_restarts, n_rows), int32
    upper, lower : ndarray of shape (n_restarts, n_rows), float32
    moments : tuple of BlockMoments
        Each restart's per-cluster statistics of the block.
    scored : int
        Rows (times restarts) the pass that made these bounds scored against every centre;
        the others kept their label on their bounds alone.
    swept : int
        Rows (times restarts) whose sums that pass added again (the rows of the clusters
        whose rows in the block changed); the others' clusters kept their statistics.
    """

    tags: tuple[Any, ...]
    centers: tuple[FloatArray, ...]
    labels: AnyArray
    upper: AnyArray
    lower: AnyArray
    moments: tuple[BlockMoments, ...] = ()
    scored: int = 0
    swept: int = 0

    @property
    def nbytes(self) -> int:
        """Memory held by the per-row arrays and the per-cluster statistics."""
        return int(
            self.labels.nbytes + self.upper.nbytes + self.lower.nbytes
            + sum(m.nbytes for m in self.moments)
        )  # fmt: skip


#: Bytes a restart's kept state takes per row (:class:`KMeansBounds`): 12 for the bounds, at
#: most 2 for the segments' statistics (:func:`_segment_rows`).
BOUND_BYTES_PER_ROW = 14


def kmeans_estep_bounded(
    block: RowBlock,
    params: Sequence[KMeansParams],
    tags: Sequence[Any],
    previous: KMeansBounds | None,
) -> tuple[list[KMeansStats], KMeansBounds]:
    """:func:`kmeans_estep_many` with Hamerly's bounds kept from the previous pass.

    Restart ``tags[i]`` found in ``previous`` (with centres of the same shape) moves its
    rows' bounds by how far each centre moved since, and scores against every centre only
    the rows whose bounds fail; the others keep their label. The statistics equal, bit for
    bit, those of :func:`kmeans_estep_many` (labels are the argmin of exact distances in
    both, and every row is swept alike). A restart not in ``previous`` scores every row.

    Parameters
    ----------
    block : RowBlock
    params : sequence of KMeansParams
    tags : sequence of hashable
        One name per restart, the same from one pass to the next.
    previous : KMeansBounds or None
        The bounds the previous pass returned for this block.

    Returns
    -------
    stats : list of KMeansStats
        In the order of ``params``.
    bounds : KMeansBounds
        The bounds under ``params``' centres, for the next pass.
    """
    if len(tags) != len(params):
        raise ValueError(f"{len(tags)} tags for {len(params)} restarts")
    stats, bounds = _estep(block, params, tuple(tags), previous)
    assert bounds is not None
    return stats, bounds


def _estep(
    block: RowBlock,
    params: Sequence[KMeansParams],
    tags: tuple[Any, ...] | None,
    previous: KMeansBounds | None,
) -> tuple[list[KMeansStats], KMeansBounds | None]:
    out: list[KMeansStats | None] = [None] * len(params)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(tuple(np.shape(p.centers)), []).append(i)
    n = block.x.shape[0]
    keep = tags is not None
    R = len(params)
    labels = np.empty((R, n) if keep else (0, 0), dtype=np.int32)
    upper = np.empty((R, n) if keep else (0, 0), dtype=np.float32)
    lower = np.empty((R, n) if keep else (0, 0), dtype=np.float32)
    moments: list[BlockMoments | None] = [None] * R
    scored = swept = 0
    for members in groups.values():
        stats, group_moments, group_scored, group_swept = _estep_group(
            block,
            [params[i] for i in members],
            None if tags is None else [tags[i] for i in members],
            previous,
            members,
            (labels, upper, lower),
        )
        scored += group_scored
        swept += group_swept
        for i, s, mom in zip(members, stats, group_moments, strict=True):
            out[i] = s
            moments[i] = mom
    result = [s for s in out if s is not None]
    if tags is None:
        return result, None
    centers = tuple(_centers(p.centers) for p in params)
    kept = tuple(m for m in moments if m is not None)
    return result, KMeansBounds(tags, centers, labels, upper, lower, kept, scored, swept)


def _previous_rows(
    previous: KMeansBounds | None, tags: Sequence[Any] | None, centers: AnyArray, n: int
) -> tuple[IntArray, AnyArray, AnyArray, AnyArray, FloatArray, IntArray, FloatArray]:
    """Where each restart's previous bounds are (``-1``: none) and its centres' drift.

    Returns ``src``, the previous labels/upper/lower arrays, and per restart the drift of
    every centre (rounded up), the index of the largest and the second largest.
    """
    R, K, _ = centers.shape
    src = np.full(R, -1, dtype=np.int64)
    drift = np.zeros((R, K))
    first = np.zeros(R, dtype=np.int64)
    second = np.zeros(R)
    empty_i = np.empty((0, 0), dtype=np.int32)
    empty_f = np.empty((0, 0), dtype=np.float32)
    if previous is None or tags is None or previous.labels.shape[1] != n:
        return src, empty_i, empty_f, empty_f, drift, first, second
    where = {t: i for i, t in enumerate(previous.tags)}
    for r, tag in enumerate(tags):
        s = where.get(tag)
        if s is None or previous.centers[s].shape != centers[r].shape:
            continue
        src[r] = s
        step = centers[r] - previous.centers[s]
        sq = np.einsum("kd,kd->k", step, step)
        drift[r] = np.sqrt(sq) * (1.0 + _DELTA) + np.where(sq > 0, _TINY, 0.0)
        first[r] = int(np.argmax(drift[r]))
        others = np.delete(drift[r], first[r])
        second[r] = float(others.max()) if others.size else 0.0
    return src, previous.labels, previous.upper, previous.lower, drift, first, second


# Margins of Hamerly's bounds (here and in emdist.kernels.kmeans_bounds). Relative: a
# computed distance or drift is off by at most ~(d + 3) units of roundoff (2.2e-16) from
# the true one (float64 differences, positive sums); 1e-9 covers that for any d below a
# million, and costs nothing measurable in skipped rows. Absolute: below ~1e-154 the
# squares underflow and relative errors no longer hold.
_DELTA = 1e-9
_TINY = 1e-150


@jit
def _half_gaps_kernel(centers: FloatArray, delta: float, tiny: float, out: FloatArray) -> None:
    K, d = centers.shape
    gap = np.full(K, np.inf)
    for a in range(K):
        for b in range(a + 1, K):
            s = 0.0
            for j in range(d):
                t = centers[a, j] - centers[b, j]
                s += t * t
            if s < gap[a]:
                gap[a] = s
            if s < gap[b]:
                gap[b] = s
    for k in range(K):
        out[k] = 0.5 * np.sqrt(gap[k]) * (1.0 - delta) - tiny


def _half_gaps(centers: AnyArray, keep: bool) -> FloatArray:
    """Half the distance from every centre to its nearest other one, rounded down, (R, K).

    Only passes that keep bounds read it (``keep``); the others get infinities, O(R K).
    """
    R, K, _ = centers.shape
    out = np.full((R, K), np.inf)
    if keep:
        for r in range(R):
            _half_gaps_kernel(np.ascontiguousarray(centers[r]), _DELTA, _TINY, out[r])
    return out


def _estep_group(
    block: RowBlock,
    group: Sequence[KMeansParams],
    tags: Sequence[Any] | None,
    previous: KMeansBounds | None,
    members: Sequence[int],
    kept: tuple[AnyArray, AnyArray, AnyArray],
) -> tuple[list[KMeansStats], list[BlockMoments | None], int, int]:
    """:func:`_estep` for restarts of the same shape of centres.

    ``members``: their rows in the kept arrays. Returns the statistics, the segments'
    statistics to keep (with ``tags``), the rows scored and the rows summed again.
    """
    X, row_offset = block.x, block.row_offset
    # Weights (scikit-learn's sample_weight) weigh counts, sums and inertia; the far rows
    # that re-seed an empty cluster are, as scikit-learn's, the rows farthest from their
    # centres by plain distance, and carry their weights to the M-step. A row of weight 0
    # is no candidate: its new cluster would be empty again (scikit-learn then sends that
    # centre to the origin).
    weights = None if block.weights is None else np.asarray(block.weights, dtype=np.float64)
    w_arg = weights if weights is not None else np.empty(0)
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
    scored = swept = 0
    use = tags is not None
    segments = None
    rows = _sub_block_rows(K, d)
    segment = _segment_rows(K, d, rows)
    if n:
        Xr = as_row_major(X)
        scorings = [_Scoring.of(c, Xr.dtype) for c in centers]
        first_scoring = scorings[0]
        refs = np.stack([np.asarray(s.ref, dtype=np.float64) for s in scorings])
        # With ‖x‖, bounds the rounding of the scores: (‖x‖ + ‖r‖ + max ‖c - r‖)², r the
        # point the centres are scored about.
        radius = np.linalg.norm(refs, axis=1) + np.max(
            np.linalg.norm(centers - refs[:, None, :], axis=2), axis=1
        )
        if first_scoring.dtype == np.float32:
            # float32 products and sums, and the float32 rounding of the shifted rows and
            # centres.
            gamma = 2.0 * (d + 8) * float(np.finfo(np.float32).eps)
        else:
            eps = float(np.finfo(np.float64).eps)
            gamma = (d + 5) * eps / (1.0 - (d + 5) * eps)
        scoring_args = (
            np.stack([s.ref for s in scorings]),
            np.stack([s.neg2_t for s in scorings]),
            np.stack([s.bias for s in scorings]),
            first_scoring.shift_rows,
            radius,
            gamma,
            rows,
            segment,
            _MOMENT_REACH,
        )
        if not use:
            # ‖c - r‖ per cluster, rounded up: with ‖x - r‖ it bounds a row's distance.
            step = np.linalg.norm(centers - about, axis=2) * (1.0 + _DELTA) + _TINY
            _walk_kernel(
                Xr, 0, centers, about, *scoring_args, step, counts, sx, inertia,
                far_dist, far_row, far_label, n_far, w_arg, weights is not None, _DELTA, _TINY,
            )  # fmt: skip
        else:
            assert tags is not None
            scored, swept, segments = _bounded_walk(
                Xr, centers, about, scoring_args, tags, previous, members, kept, w_arg,
                weights is not None, (counts, sx, inertia), (far_dist, far_row, far_label, n_far),
            )  # fmt: skip
    out = []
    moments: list[BlockMoments | None] = []
    for r, p in enumerate(group):
        # Rows of weight 0 may leave places unfilled.
        kept_far = int(n_far[r])
        rows_far = far_row[r, :kept_far]
        out.append(
            KMeansStats(
                n=int(n),
                counts=counts[r],
                sx=sx[r],
                inertia=float(inertia[r]),
                far_dist=far_dist[r, :kept_far],
                far_row=rows_far + row_offset,
                far_label=far_label[r, :kept_far],
                far_x=np.asarray(X[rows_far], dtype=np.float64).reshape(kept_far, d),
                shift=p.centers,
                reference=p.about,
                far_w=None if weights is None else weights[rows_far],
            )
        )
        if not use:
            moments.append(None)
        elif segments is None:
            moments.append(
                BlockMoments(np.zeros((0, K)), np.zeros((0, K, d)), np.zeros((0, K)), about[r])
            )
        else:
            seg_counts, seg_sx, seg_sq = segments
            moments.append(BlockMoments(seg_counts[r], seg_sx[r], seg_sq[r], about[r]))
    return out, moments, int(scored), int(swept)


def _bounded_walk(
    X: AnyArray,
    centers: FloatArray,
    about: FloatArray,
    scoring_args: tuple[Any, ...],
    tags: Sequence[Any],
    previous: KMeansBounds | None,
    members: Sequence[int],
    kept: tuple[AnyArray, AnyArray, AnyArray],
    weights: FloatArray,
    weighted: bool,
    totals: tuple[FloatArray, FloatArray, FloatArray],
    far: tuple[FloatArray, IntArray, IntArray, IntArray],
) -> tuple[int, int, tuple[FloatArray, FloatArray, FloatArray]]:
    """A bounded pass of restarts of one shape (:func:`_bounded_kernel`), then its far rows.

    Fills ``totals`` (counts, sx, inertia) and ``far``; returns the rows scored, the rows
    summed again (times restarts) and the segments' statistics to keep.
    """
    counts, sx, inertia = totals
    far_dist, far_row, far_label, n_far = far
    R, K, d = centers.shape
    n = X.shape[0]
    n_seg = -(-n // int(scoring_args[-2]))
    src, old_labels, old_upper, old_lower, drift, first, second = _previous_rows(
        previous, tags, centers, n
    )
    labels, upper, lower = kept
    rows_of = np.asarray(members, dtype=np.int64)
    # One group (restarts of one K): the kept arrays themselves, written in place.
    whole = np.array_equal(rows_of, np.arange(labels.shape[0]))
    out_labels = labels if whole else labels[rows_of]
    out_upper = upper if whole else upper[rows_of]
    out_lower = lower if whole else lower[rows_of]
    # The segments' statistics the previous pass kept, where it has them for this restart.
    has_kept = np.zeros(R, dtype=np.bool_)
    moved_ref = np.zeros((R, K), dtype=np.bool_)
    kept_counts = np.zeros((R, n_seg, K))
    kept_sx = np.zeros((R, n_seg, K, d))
    kept_sq = np.zeros((R, n_seg, K))
    for r in range(R):
        s = int(src[r])
        if s < 0 or previous is None or not previous.moments:
            continue
        mom = previous.moments[s]
        if mom.counts.shape != (n_seg, K) or mom.sx.shape != (n_seg, K, d):
            continue
        has_kept[r] = True
        moved_ref[r] = np.any(about[r] != mom.reference, axis=1)
        kept_counts[r], kept_sx[r], kept_sq[r] = mom.counts, mom.sx, mom.sq
    seg_counts = np.empty((R, n_seg, K))
    seg_sx = np.empty((R, n_seg, K, d))
    seg_sq = np.empty((R, n_seg, K))
    dist = np.empty((R, n))
    ref, neg2_t, bias, shift_rows, radius, gamma, rows, segment, reach = scoring_args
    scored, swept = _bounded_kernel(
        X, centers, about, ref, neg2_t, bias, shift_rows, radius, gamma, rows, segment, reach,
        src, old_labels, old_upper, old_lower, drift, first,
        second, _half_gaps(centers, True), out_labels, out_upper, out_lower, dist, has_kept,
        moved_ref, kept_counts, kept_sx, kept_sq, seg_counts, seg_sx, seg_sq, counts, sx,
        inertia, weights, weighted, _DELTA, _TINY,
    )  # fmt: skip
    _far_kernel(
        X, 0, centers, out_labels, dist, out_upper, weights, weighted, far_dist, far_row,
        far_label, n_far, _DELTA, _TINY,
    )  # fmt: skip
    if not whole:
        labels[rows_of], upper[rows_of], lower[rows_of] = out_labels, out_upper, out_lower
    return int(scored), int(swept), (seg_counts, seg_sx, seg_sq)


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
