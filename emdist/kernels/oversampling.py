"""k-means|| on one block: a D²-weighted sample of rows, and the statistics of candidate cells.

The default start of K-means and of the Gaussian mixture oversamples candidate centres over
the whole data (Bahmani et al. 2012, "Scalable k-means++"; :mod:`emdist.engine.oversampling`).
:func:`d2_sample_chunk` computes every row's squared distance ``D²`` to the first
candidates, the weight and sum of every candidate's cell (the rows nearest to it), and a
sample of ``size`` rows drawn without replacement with probability proportional to
``w D²``. Row ``i`` gets the key ``E_i / (w_i D²_i)``, ``E_i`` exponential from a
counter-based stream positioned at the row's global index, and the rows with the smallest
keys form the sample (the exponential race, weighted priority sampling): the sample depends
only on the seed and the data, never on the chunking.

Distances are computed row by row (differences, not the GEMM expansion), so a row's
distances, and with them its key and its cell, are the same in every block it can fall in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emdist._typing import FloatArray, IntArray
from emdist.kernels.rows import RowBlock
from emdist.kernels.scan import row_uniforms

__all__ = ["CellStats", "D2Sample", "d2_sample_chunk", "nearest"]

#: Rows per sub-block of the distance computation (bounds the (rows, m, d) temporary).
_SUB_ROWS_BYTES = 8 * 2**20


def nearest(X: FloatArray, centers: FloatArray) -> tuple[IntArray, FloatArray]:
    """Nearest centre of every row and the squared distance to it (lowest index on ties).

    Row by row from the differences, so the result of a row does not depend on the rows
    computed with it.
    """
    n = X.shape[0]
    m, d = centers.shape
    labels = np.empty(n, dtype=np.int64)
    dist = np.empty(n)
    step = max(1, _SUB_ROWS_BYTES // (8 * max(1, m * d)))
    for start in range(0, n, step):
        part = X[start : start + step]
        diff = part[:, None, :] - centers[None, :, :]
        sq = np.einsum("nmd,nmd->nm", diff, diff)
        lab = np.argmin(sq, axis=1)
        labels[start : start + step] = lab
        dist[start : start + step] = sq[np.arange(len(part)), lab]
    return labels, dist


@dataclass(frozen=True, eq=False)
class D2Sample:
    """Summable result of a D² sampling pass, with the cells of the centres it measured to.

    Attributes
    ----------
    keys : ndarray of shape (m,)
        Priority keys of the sampled rows (the ``size`` smallest seen so far).
    rows : ndarray of shape (m,)
        Their global indices.
    x : ndarray of shape (m, n_features)
        The sampled rows (float64).
    weight : ndarray of shape (m,)
        Their weights (1 without ``sample_weight``).
    size : int
        Capacity of the sample.
    cost : float
        ``Σ w D²`` over the rows seen (the k-means cost of the centres).
    cells : CellStats
        Weight and sum of the rows nearest to each centre (the distances are the same).
    """

    keys: FloatArray
    rows: IntArray
    x: FloatArray
    weight: FloatArray
    size: int
    cost: float
    cells: CellStats

    def __add__(self, other: D2Sample) -> D2Sample:
        keys = np.concatenate([self.keys, other.keys])
        rows = np.concatenate([self.rows, other.rows])
        # Order by (key, row): a total order, so the merge is associative and commutative.
        order = np.lexsort((rows, keys))[: self.size]
        return D2Sample(
            keys[order],
            rows[order],
            np.concatenate([self.x, other.x])[order],
            np.concatenate([self.weight, other.weight])[order],
            self.size,
            self.cost + other.cost,
            self.cells + other.cells,
        )


def d2_sample_chunk(block: RowBlock, centers: FloatArray, seed: int, size: int) -> D2Sample:
    """One block's share of a sample of ``size`` rows drawn with probability ∝ ``w D²``.

    Parameters
    ----------
    block : RowBlock
        The rows, their global offset and weights.
    centers : ndarray of shape (m, n_features)
        The candidates ``D²`` is measured to.
    seed : int
        Key of the stream of the rows' exponential draws.
    size : int
        Rows the whole sample holds. Rows at distance 0 (or of weight 0) are never drawn.

    Returns
    -------
    D2Sample
    """
    X = np.asarray(block.x, dtype=np.float64)
    n, d = X.shape
    labels, dist = nearest(X, centers)
    w = np.ones(n) if block.weights is None else np.asarray(block.weights, dtype=np.float64)
    mass = dist * w
    # E / mass with E exponential: P(row is the smallest key) ∝ mass (the exponential race).
    expo = -np.log1p(-row_uniforms(seed, block.row_offset, n)[:, 0])
    with np.errstate(divide="ignore"):
        keys = np.where(mass > 0, expo / np.where(mass > 0, mass, 1.0), np.inf)
    eligible = np.flatnonzero(np.isfinite(keys))
    take = min(size, len(eligible))
    if take < len(eligible):
        idx = eligible[np.argpartition(keys[eligible], take - 1)[:take]]
    else:
        idx = eligible
    order = idx[np.lexsort((idx, keys[idx]))]
    return D2Sample(
        keys=keys[order],
        rows=(order + block.row_offset).astype(np.int64),
        x=X[order].copy().reshape(len(order), d),
        weight=w[order].copy(),
        size=size,
        cost=float(mass.sum()),
        cells=_cell_stats(X, w, centers, labels),
    )


@dataclass(frozen=True, eq=False)
class CellStats:
    """Summable statistics of the rows nearest to each candidate (its cell).

    Attributes
    ----------
    weight : ndarray of shape (m,)
        ``Σ w`` of every cell (its row count without weights).
    sx : ndarray of shape (m, n_features)
        ``Σ w (x - c)`` about the cell's candidate ``c``.
    """

    weight: FloatArray
    sx: FloatArray

    def __add__(self, other: CellStats) -> CellStats:
        return CellStats(self.weight + other.weight, self.sx + other.sx)


def _cell_stats(X: FloatArray, w: FloatArray, centers: FloatArray, labels: IntArray) -> CellStats:
    m, d = centers.shape
    weight = np.bincount(labels, weights=w, minlength=m).astype(np.float64)
    sx = np.zeros((m, d))
    np.add.at(sx, labels, (X - centers[labels]) * w[:, None])
    return CellStats(weight, sx)
