"""K-means (Lloyd) assignment step on one block, its statistics, and the centre update.

Labels come from the fast expansion ``‖c̃‖² - 2x·c̃`` (one GEMM, centres taken about their
mean so that it holds far from the origin), but the reported inertia is
``Σ‖x - c_label‖²`` computed from differences, which stays exact far from the origin. Each
block also keeps its ``K`` rows farthest from their centres: the candidates that re-seed an
empty cluster, so no extra pass is needed when a cluster empties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

from emdist._typing import AnyArray, FloatArray, IntArray
from emdist.kernels._blocks import iter_row_blocks, iter_sub_blocks, sub_block_rows

__all__ = [
    "KMeansParams",
    "KMeansStats",
    "kmeans_estep_chunk",
    "kmeans_labels_chunk",
    "kmeans_mstep",
    "kmeans_transform_chunk",
]


@dataclass(frozen=True, eq=False)
class KMeansParams:
    """Cluster centres, shape (n_clusters, n_features)."""

    centers: FloatArray

    def arrays(self) -> dict[str, FloatArray]:
        """The parameters as a name -> array mapping."""
        return {"centers": self.centers}


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
        ``Σ (x - c_k)`` over the rows assigned to cluster ``k`` (sums about the centres).
    inertia : float
        ``Σ ‖x - c_label‖²``.
    far_dist, far_row, far_label, far_x : ndarray
        The rows farthest from their centres (at most ``n_clusters``), ordered by
        decreasing distance then increasing row: candidates to re-seed empty clusters.
    shift : ndarray of shape (n_clusters, n_features)
        The centres the step ran under.
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

    def __add__(self, other: KMeansStats) -> KMeansStats:
        if not isinstance(other, KMeansStats):
            return NotImplemented
        if self.shift is not other.shift and not np.array_equal(self.shift, other.shift):
            raise ValueError("cannot add K-means statistics taken under different centres")
        dist = np.concatenate([self.far_dist, other.far_dist])
        row = np.concatenate([self.far_row, other.far_row])
        keep = np.lexsort((row, -dist))[: self.shift.shape[0]]
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
        )


# Rows per sub-block of the assignment step: longer than the cache optimum (~1024 rows) so
# that two Dask threads do not spend their time handing the GIL over (benchmarks/README.md,
# "Kernel sub-block sizes").
_TARGET_ASSIGN_ELEMENTS = 1 << 17


def _assign_rows(n_clusters: int, n_features: int) -> int:
    return int(min(8192, max(256, _TARGET_ASSIGN_ELEMENTS // max(n_clusters, n_features, 1))))


class _Assigner:
    """Nearest-centre labels from one GEMM, robust to data far from the origin.

    ``argmin_k ‖x - c_k‖²`` is ``argmin_k (‖c̃_k‖² + 2 m·c̃_k - 2 x·c̃_k)`` with ``c̃ = c - m``
    for any reference point ``m`` (the dropped terms do not depend on ``k``). Taking ``m``
    as the mean of the centres keeps every product at the scale of ``|x| · |c - m|``
    instead of ``|x| · |c|``: with the plain ``‖c‖² - 2 x·c`` the rounding error grows with
    the square of the distance to the origin and, at 1e9, swamps the distances themselves.
    """

    def __init__(self, centers: FloatArray, rows: int) -> None:
        ref = centers.mean(axis=0)
        shifted = centers - ref
        self.neg2_t = np.ascontiguousarray(-2.0 * shifted.T)
        bias = np.einsum("kd,kd->k", shifted, shifted) + 2.0 * (shifted @ ref)
        # Tiled to the scores' shape: a same-shape add runs as one long loop (3x faster
        # than broadcasting a row of K values, which loops once per row).
        self.bias = np.tile(bias, (rows, 1))

    def labels(self, Xb: FloatArray, scores: FloatArray, out: IntArray) -> IntArray:
        """Write the labels of the rows of ``Xb`` into ``out`` (``scores`` is scratch)."""
        np.matmul(Xb, self.neg2_t, out=scores)
        scores += self.bias[: len(Xb)]
        return np.argmin(scores, axis=1, out=out)


def kmeans_labels_chunk(X: AnyArray, centers: FloatArray) -> IntArray:
    """Index of the nearest centre of every row of a block."""
    K, d = centers.shape
    n = X.shape[0]
    rows = _assign_rows(K, d)
    assigner = _Assigner(centers, min(rows, n))
    out = np.empty(n, dtype=np.intp)
    scores = np.empty((min(rows, n), K))
    for start, Xb in iter_row_blocks(X, rows):
        m = len(Xb)
        assigner.labels(Xb, scores[:m], out[start : start + m])
    return out.astype(np.int64, copy=False)


def kmeans_transform_chunk(X: AnyArray, centers: FloatArray) -> FloatArray:
    """Euclidean distance of every row of a block to every centre, (n, K)."""
    out = np.empty((X.shape[0], centers.shape[0]))
    for start, Xb in iter_sub_blocks(X, sub_block_rows(centers.size)):
        diff = Xb[:, None, :] - centers[None, :, :]
        out[start : start + len(Xb)] = np.sqrt(np.einsum("nkd,nkd->nk", diff, diff))
    return out


class _Farthest:
    """The ``n_keep`` rows farthest from their centres, collected sub-block by sub-block.

    Rows at or above a running threshold (the ``n_keep``-th largest distance kept so far)
    are candidates; once they are many, they are cut back to the best ``n_keep``. Ordered by
    decreasing distance then increasing row, ties included, so the choice does not depend on
    the chunking. Costs one comparison per row instead of a partition of the whole chunk.
    """

    def __init__(self, n_keep: int) -> None:
        self.n_keep = n_keep
        self.threshold = -np.inf
        self.dist: list[FloatArray] = []
        self.rows: list[IntArray] = []
        self.count = 0

    def add(self, dist: FloatArray, start: int) -> None:
        """Offer the rows ``start, start + 1, ...`` with distances ``dist``."""
        if self.n_keep == 0:
            return
        sel = np.flatnonzero(dist >= self.threshold)
        if sel.size == 0:
            return
        self.dist.append(dist[sel])
        self.rows.append(sel + start)
        self.count += sel.size
        if self.count > 4 * self.n_keep + 64:
            self._cut()

    def _cut(self) -> None:
        dist = np.concatenate(self.dist)
        rows = np.concatenate(self.rows)
        keep = np.lexsort((rows, -dist))[: self.n_keep]
        self.dist, self.rows = [dist[keep]], [rows[keep]]
        self.count = len(keep)
        if len(keep) == self.n_keep:
            self.threshold = float(dist[keep[-1]])

    def result(self) -> IntArray:
        """Row indices (within the chunk) of the farthest rows, farthest first."""
        if not self.dist:
            return np.zeros(0, dtype=np.intp)
        self._cut()
        return np.asarray(self.rows[0], dtype=np.intp)


def kmeans_estep_chunk(X: AnyArray, row_offset: int, params: KMeansParams) -> KMeansStats:
    """Assign the rows of one block and reduce them to statistics.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)
    row_offset : int
        Global index of the block's first row (orders the far-point candidates).
    params : KMeansParams

    Returns
    -------
    KMeansStats
    """
    centers = params.centers
    K, d = centers.shape
    n = X.shape[0]
    rows = _assign_rows(K, d)
    b = min(rows, n)
    assigner = _Assigner(centers, b)
    labels = np.empty(n, dtype=np.intp)
    dist = np.empty(n)
    scores = np.empty((b, K))
    diff = np.empty((n, d))
    far = _Farthest(min(K, n))
    for start, Xb in iter_row_blocks(X, rows):
        m = len(Xb)
        stop = start + m
        lab = assigner.labels(Xb, scores[:m], labels[start:stop])
        dv = diff[start:stop]
        # mode="clip": the labels are valid, and "raise" copies `out` through a temporary.
        np.take(centers, lab, axis=0, out=dv, mode="clip")
        np.subtract(Xb, dv, out=dv)
        np.einsum("nd,nd->n", dv, dv, out=dist[start:stop])
        far.add(dist[start:stop], start)
    # Per-cluster sums of the differences: a sparse one-hot (K, n) @ (n, d), one pass of
    # n·d additions (a dense one-hot GEMM does K times the work: 157 -> 134 ms per 1M rows).
    onehot = scipy.sparse.csc_array((np.ones(n), labels, np.arange(n + 1)), shape=(K, n))
    sx = np.asarray(onehot @ diff, dtype=np.float64)
    top = far.result()
    return KMeansStats(
        n=int(n),
        counts=np.bincount(labels, minlength=K).astype(np.float64),
        sx=sx,
        inertia=float(dist.sum()),
        far_dist=dist[top],
        far_row=top.astype(np.int64) + row_offset,
        far_label=labels[top].astype(np.int64),
        far_x=np.asarray(X[top], dtype=np.float64).reshape(len(top), d),
        shift=centers,
    )


def kmeans_mstep(stats: KMeansStats) -> tuple[KMeansParams, int]:
    """New centres from reduced statistics, re-seeding empty clusters from far points.

    An empty cluster takes the row farthest from its own centre (then the next farthest,
    and so on), which leaves its old cluster — as scikit-learn's Lloyd does. No centre is
    ever sent to the origin. A row that sits exactly on its centre is no candidate: moving
    it lowers nothing, and on data with fewer distinct points than clusters it would make
    the empty cluster chase the same point forever; such a cluster keeps its centre.

    Parameters
    ----------
    stats : KMeansStats
        Statistics summed over the whole dataset.

    Returns
    -------
    params : KMeansParams
        The new centres.
    n_relocated : int
        Number of empty clusters that were re-seeded.
    """
    counts = stats.counts.copy()
    sums = stats.sx + counts[:, None] * stats.shift  # Σ x per cluster
    empty = np.flatnonzero(counts == 0)
    new_centers = np.empty_like(stats.shift)
    relocated: dict[int, FloatArray] = {}
    n_candidates = int(np.count_nonzero(stats.far_dist > 0))
    for j, k in enumerate(empty[:n_candidates]):
        x = stats.far_x[j]
        old = int(stats.far_label[j])
        sums[old] -= x
        counts[old] -= 1
        relocated[int(k)] = x
    for k in range(len(counts)):
        if int(k) in relocated:
            new_centers[k] = relocated[int(k)]
        elif counts[k] > 0:
            # Mean about the old centre: exact where a raw sum would cancel.
            if counts[k] == stats.counts[k]:
                new_centers[k] = stats.shift[k] + stats.sx[k] / counts[k]
            else:
                new_centers[k] = sums[k] / counts[k]
        else:
            new_centers[k] = stats.shift[k]
    return KMeansParams(new_centers), len(relocated)
