"""K-means (Lloyd) assignment step on one block, its statistics, and the centre update.

Labels come from the fast expansion ``‖c‖² - 2x·c`` (one GEMM), but the reported inertia is
``Σ‖x - c_label‖²`` computed from differences, which stays exact far from the origin. Each
block also keeps its ``K`` rows farthest from their centres: the candidates that re-seed an
empty cluster, so no extra pass is needed when a cluster empties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emdist._typing import AnyArray, FloatArray, IntArray
from emdist.kernels._blocks import iter_sub_blocks, sub_block_rows

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


def _assign(Xb: FloatArray, centers: FloatArray, c_sq: FloatArray) -> IntArray:
    # ‖x‖² is the same for every centre, so argmin needs only ‖c‖² - 2 x·c.
    d2 = Xb @ centers.T
    d2 *= -2.0
    d2 += c_sq
    return np.argmin(d2, axis=1)


def kmeans_labels_chunk(X: AnyArray, centers: FloatArray) -> IntArray:
    """Index of the nearest centre of every row of a block."""
    c_sq = np.einsum("kd,kd->k", centers, centers)
    out = np.empty(X.shape[0], dtype=np.int64)
    for start, Xb in iter_sub_blocks(X, sub_block_rows(centers.shape[0])):
        out[start : start + len(Xb)] = _assign(Xb, centers, c_sq)
    return out


def kmeans_transform_chunk(X: AnyArray, centers: FloatArray) -> FloatArray:
    """Euclidean distance of every row of a block to every centre, (n, K)."""
    out = np.empty((X.shape[0], centers.shape[0]))
    for start, Xb in iter_sub_blocks(X, sub_block_rows(centers.size)):
        diff = Xb[:, None, :] - centers[None, :, :]
        out[start : start + len(Xb)] = np.sqrt(np.einsum("nkd,nkd->nk", diff, diff))
    return out


def kmeans_estep_chunk(X: AnyArray, params: KMeansParams, row_offset: int) -> KMeansStats:
    """Assign the rows of one block and reduce them to statistics.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)
    params : KMeansParams
    row_offset : int
        Global index of the block's first row (orders the far-point candidates).

    Returns
    -------
    KMeansStats
    """
    centers = params.centers
    K, d = centers.shape
    c_sq = np.einsum("kd,kd->k", centers, centers)
    counts = np.zeros(K)
    sx = np.zeros((K, d))
    inertia = 0.0
    far_dist: list[FloatArray] = []
    far_row: list[IntArray] = []
    far_label: list[IntArray] = []
    far_x: list[FloatArray] = []
    for start, Xb in iter_sub_blocks(X, sub_block_rows(K)):
        labels = _assign(Xb, centers, c_sq)
        diff = Xb - centers[labels]
        dist = np.einsum("nd,nd->n", diff, diff)
        inertia += float(dist.sum())
        counts += np.bincount(labels, minlength=K)
        # Per-cluster sums of the differences: a (K, b) @ (b, d) product with a one-hot.
        onehot = np.zeros((K, len(Xb)))
        onehot[labels, np.arange(len(Xb))] = 1.0
        sx += onehot @ diff
        m = min(K, len(Xb))
        top = np.argpartition(-dist, m - 1)[:m] if m < len(Xb) else np.arange(len(Xb))
        far_dist.append(dist[top])
        far_row.append(top.astype(np.int64) + row_offset + start)
        far_label.append(labels[top])
        far_x.append(Xb[top])
    dist_all = np.concatenate(far_dist) if far_dist else np.zeros(0)
    row_all = np.concatenate(far_row) if far_row else np.zeros(0, dtype=np.int64)
    keep = np.lexsort((row_all, -dist_all))[:K]
    return KMeansStats(
        n=int(X.shape[0]),
        counts=counts,
        sx=sx,
        inertia=inertia,
        far_dist=dist_all[keep],
        far_row=row_all[keep],
        far_label=(np.concatenate(far_label) if far_label else np.zeros(0, np.int64))[keep],
        far_x=(np.concatenate(far_x) if far_x else np.zeros((0, d)))[keep],
        shift=centers,
    )


def kmeans_mstep(stats: KMeansStats) -> tuple[KMeansParams, int]:
    """New centres from reduced statistics, re-seeding empty clusters from far points.

    An empty cluster takes the row farthest from its own centre (then the next farthest,
    and so on), which leaves its old cluster — as scikit-learn's Lloyd does. No centre is
    ever sent to the origin.

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
    for j, k in enumerate(empty[: len(stats.far_x)]):
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
