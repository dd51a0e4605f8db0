"""The K-means assignment step in plain numpy: the readable reference of the compiled kernels.

:mod:`emdist.kernels.kmeans` runs the same step as numba kernels; this module says what
they compute, in a few numpy calls, and the tests check the kernels against it on random
blocks (``tests/kernels/test_kmeans_compiled.py``). It is not used by the fits.

Labels come from the fast expansion ``‖c̃‖² - 2x·c̃`` (one GEMM, centres taken about their
mean so that it holds far from the origin), but the reported inertia is
``Σ‖x - c_label‖²`` computed from differences, which stays exact far from the origin. Each
block also keeps its ``K`` rows farthest from their centres: the candidates that re-seed an
empty cluster, so no extra pass is needed when a cluster empties.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from emdist._typing import AnyArray, FloatArray, IntArray
from emdist.kernels._blocks import iter_row_blocks, iter_sub_blocks, sub_block_rows
from emdist.kernels.kmeans import KMeansParams, KMeansStats
from emdist.kernels.rows import RowBlock

__all__ = [
    "kmeans_estep_reference",
    "kmeans_labels_reference",
    "kmeans_transform_reference",
]

# Rows per sub-block: long enough that two Dask threads do not spend their time handing the
# GIL over (benchmarks/README.md, "Kernel sub-block sizes").
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
        self.bias = np.tile(bias, (rows, 1))

    def labels(self, Xb: FloatArray, scores: FloatArray, out: IntArray) -> IntArray:
        """Write the labels of the rows of ``Xb`` into ``out`` (``scores`` is scratch)."""
        np.matmul(Xb, self.neg2_t, out=scores)
        scores += self.bias[: len(Xb)]
        return np.argmin(scores, axis=1, out=out)


def kmeans_labels_reference(X: AnyArray, centers: FloatArray) -> IntArray:
    """Index of the nearest centre of every row of a block (lowest index on ties)."""
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


def kmeans_transform_reference(X: AnyArray, centers: FloatArray) -> FloatArray:
    """Euclidean distance of every row of a block to every centre, (n, K)."""
    out = np.empty((X.shape[0], centers.shape[0]))
    for start, Xb in iter_sub_blocks(X, sub_block_rows(centers.size)):
        diff = Xb[:, None, :] - centers[None, :, :]
        out[start : start + len(Xb)] = np.sqrt(np.einsum("nkd,nkd->nk", diff, diff))
    return out


def _farthest(dist: FloatArray, n_keep: int) -> IntArray:
    """The ``n_keep`` largest distances, farthest first, ties by increasing row."""
    return np.lexsort((np.arange(len(dist)), -dist))[:n_keep].astype(np.intp)


def kmeans_estep_reference(block: RowBlock, params: KMeansParams) -> KMeansStats:
    """Assign the rows of one block and reduce them to statistics (see ``KMeansStats``).

    Parameters
    ----------
    block : RowBlock
        The rows (any real dtype and layout), their global offset and per-row inputs.
    params : KMeansParams

    Returns
    -------
    KMeansStats
    """
    X, row_offset = block.x, block.row_offset
    centers = params.centers
    K, d = centers.shape
    n = X.shape[0]
    labels = kmeans_labels_reference(X, centers).astype(np.intp)
    # Differences in float64 whatever the data dtype (float32 and integers convert exactly).
    diff = np.asarray(X, dtype=np.float64) - centers[labels]
    dist = np.einsum("nd,nd->n", diff, diff)
    # Per-cluster sums of the differences from the reference points: a sparse one-hot
    # (K, n) @ (n, d).
    about = diff if params.reference is None else np.asarray(X, np.float64) - params.about[labels]
    onehot = scipy.sparse.csc_array((np.ones(n), labels, np.arange(n + 1)), shape=(K, n))
    top = _farthest(dist, min(K, n))
    return KMeansStats(
        n=int(n),
        counts=np.bincount(labels, minlength=K).astype(np.float64),
        sx=np.asarray(onehot @ about, dtype=np.float64).reshape(K, d),
        inertia=float(dist.sum()),
        far_dist=dist[top],
        far_row=top.astype(np.int64) + row_offset,
        far_label=labels[top].astype(np.int64),
        far_x=np.asarray(X[top], dtype=np.float64).reshape(len(top), d),
        shift=centers,
        reference=params.about,
    )
