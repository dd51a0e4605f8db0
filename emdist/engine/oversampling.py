"""The default start on data larger than the scan sample: k-means|| in two passes.

K-means++ on the scan sample alone misses what a uniform sample under-represents: small,
far clusters and the tails of heavy-tailed data, and its Lloyd iterations see the sample's
clusters, not the data's (docs/design.md#initialisation). k-means|| (Bahmani et al. 2012)
oversamples candidate centres over all the data instead, here in two passes:

- the first candidates are greedy k-means++ on the scan sample (``2K`` of them, no read);
- pass 1 draws ``2K`` more rows with probability proportional to ``w D²`` (their weighted
  squared distance to the first candidates): the rows the sample explains worst;
- pass 2 gives every candidate the weight and mean of its cell (the rows nearest to it).

In memory, the cells' means weighted by their weights are then clustered by weighted
greedy k-means++ and weighted Lloyd (:meth:`CellStart.centers`), one run per restart with
the restart's seed: the restarts of a fit share the two passes. A few dozen cells seed
well but place the centres coarsely; the models then run Lloyd on the scan sample from
those centres, in memory, as the sample start did from k-means++. Every fit sharing a read
(the restarts of a fit, the fits of a K sweep) runs its passes together, one read for all
(:func:`run_start_passes`), before the first EM pass.

Everything random derives from the scan's seed: the first candidates from it, the
exponential draws of pass 1 from a stream keyed by the global row index
(:mod:`emdist.kernels.oversampling`), so the start is the same for every chunking and a
fit killed during its start redoes the same start when run again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from emdist._random import child_seeds
from emdist._typing import FloatArray, IntArray
from emdist.engine.data import FitData
from emdist.engine.lockstep import shared_kernel_pass
from emdist.engine.reduce import PassData
from emdist.engine.seeding import kmeans_plusplus
from emdist.kernels.oversampling import (
    CellStats,
    D2Sample,
    cell_stats_chunk,
    d2_sample_chunk,
    nearest,
)

__all__ = [
    "CellStart",
    "Cells",
    "StartPasses",
    "cell_centers",
    "cluster_cells",
    "run_start_passes",
    "start_seed",
    "uses_cell_start",
]

#: Candidates per cluster drawn in each of the two rounds (Bahmani et al.'s ``l = 2K``).
OVERSAMPLING = 2


class StartPasses(Protocol):
    """A start that reads the data: the kernels of its passes, one after another."""

    @property
    def pending(self) -> bool:
        """Whether it needs another pass."""
        ...

    def request(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """The per-block kernel of its next pass and the kernel's arguments."""
        ...

    def receive(self, stats: Any) -> None:
        """The reduced result of that pass."""
        ...


def run_start_passes(X: PassData, starts: Sequence[StartPasses]) -> int:
    """Run the passes of several starts, one read of the data per pass for all of them.

    Parameters
    ----------
    X : dask.array.Array, ndarray or Rows
        The data and its per-row inputs (:attr:`FitData.rows`).
    starts : sequence of StartPasses

    Returns
    -------
    int
        Passes run.
    """
    unique = list({id(s): s for s in starts}.values())
    passes = 0
    while True:
        waiting = [s for s in unique if s.pending]
        if not waiting:
            return passes
        results = shared_kernel_pass(X, [s.request() for s in waiting])
        passes += 1
        for start, stats in zip(waiting, results, strict=True):
            start.receive(stats)


def uses_cell_start(data: FitData) -> bool:
    """Whether the data has rows the scan sample does not hold (then k-means|| is worth it).

    On data no larger than the sample, k-means++ on the sample is k-means++ on all the
    data (scikit-learn's start) and reads nothing.
    """
    return data.summary.seed is not None and data.summary.n_samples > len(data.summary.sample)


def start_seed(data: FitData) -> int:
    """The seed of a fit's k-means|| start, derived from the scan's (shared by its restarts)."""
    assert data.summary.seed is not None
    return child_seeds(data.summary.seed, 1)[0]


@dataclass(frozen=True)
class Cells:
    """The candidates' cells: what the re-clustering in memory works on.

    Attributes
    ----------
    points : ndarray of shape (m, n_features)
        Every non-empty cell's weighted mean.
    weight : ndarray of shape (m,)
        ``Σ w`` of its rows.
    """

    points: FloatArray
    weight: FloatArray


class CellStart:
    """k-means|| candidates of one fit, weighted by their cells (two passes, then memory).

    Parameters
    ----------
    data : FitData
        Scanned data (the first candidates come from its scan sample).
    n_clusters : int
    seed : int
        Seed of the start (first candidates and the pass's draws).
    """

    def __init__(self, data: FitData, n_clusters: int, seed: int) -> None:
        self.data = data
        self.n_clusters = n_clusters
        first_seed, self._draw_seed = child_seeds(seed, 2)
        summary = data.summary
        sample, w = summary.sample, summary.sample_weight
        n_first = min(OVERSAMPLING * n_clusters, _distinct_rows(sample, w))
        idx = kmeans_plusplus(sample, n_first, np.random.default_rng(first_seed), w)
        self._first = sample[idx].copy()
        self._drawn: D2Sample | None = None
        self._candidates: FloatArray | None = None
        self._cells: Cells | None = None

    @property
    def pending(self) -> bool:
        """Whether a pass is still needed."""
        return self._cells is None

    def request(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """Pass 1: the D² sample; pass 2: the cells of every candidate."""
        if self._drawn is None:
            size = OVERSAMPLING * self.n_clusters
            return d2_sample_chunk, (self._first, self._draw_seed, size)
        self._candidates = np.concatenate([self._first, self._drawn.x])
        return cell_stats_chunk, (self._candidates,)

    def receive(self, stats: Any) -> None:
        """Keep the D² sample, then the cells."""
        if self._drawn is None:
            assert isinstance(stats, D2Sample)
            self._drawn = stats
            return
        assert isinstance(stats, CellStats) and self._candidates is not None
        self._cells = _cells(self._candidates, stats)

    def cells(self) -> Cells:
        """The weighted cells, running the passes first if they have not run."""
        if self.pending:
            run_start_passes(self.data.rows, [self])
        assert self._cells is not None
        return self._cells

    def centers(self, seed: int) -> FloatArray | None:
        """One restart's centres: the cells clustered with its seed (``None``: too few cells).

        Fewer distinct cells than clusters (data with few distinct rows) leave the start
        to k-means++ on the sample.
        """
        cells = self.cells()
        if len(np.unique(cells.points, axis=0)) < self.n_clusters:
            return None
        return cell_centers(cells, cluster_cells(cells, self.n_clusters, seed), self.n_clusters)


def _distinct_rows(sample: FloatArray, w: FloatArray | None) -> int:
    rows = sample if w is None else sample[w > 0]
    return int(len(np.unique(rows, axis=0)))


def _cells(candidates: FloatArray, stats: CellStats) -> Cells:
    """Non-empty cells as weighted means."""
    keep = np.flatnonzero(stats.weight > 0)
    weight = stats.weight[keep]
    return Cells(candidates[keep] + stats.sx[keep] / weight[:, None], weight)


def cluster_cells(cells: Cells, n_clusters: int, seed: int, max_iter: int = 300) -> IntArray:
    """Weighted greedy k-means++ and weighted Lloyd on the cells: each cell's cluster.

    Lloyd runs until no cell changes cluster (or ``max_iter``); an emptied cluster takes
    the cell farthest from its centre, as scikit-learn relocates empty clusters.

    Parameters
    ----------
    cells : Cells
        At least ``n_clusters`` of them.
    n_clusters : int
    seed : int
        Seed of the restart's k-means++.
    max_iter : int, default=300

    Returns
    -------
    ndarray of shape (m,)
        The cluster of every cell.
    """
    points, weight = cells.points, cells.weight
    rng = np.random.default_rng(seed)
    centers = points[kmeans_plusplus(points, n_clusters, rng, sample_weight=weight)].copy()
    labels: IntArray | None = None
    for _ in range(max_iter):
        new, dist = nearest(points, centers)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        mass = np.bincount(labels, weights=weight, minlength=n_clusters)
        for k in np.flatnonzero(mass == 0):
            far = int(np.argmax(np.where(mass[labels] > weight, dist, -1.0)))
            mass[labels[far]] -= weight[far]
            labels[far], dist[far] = k, 0.0
            mass[k] = weight[far]
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, points * weight[:, None])
        centers = sums / np.bincount(labels, weights=weight, minlength=n_clusters)[:, None]
    assert labels is not None
    return labels


def cell_centers(cells: Cells, labels: IntArray, n_clusters: int) -> FloatArray:
    """The weighted mean of every cluster's cells: its centre over the rows of its cells."""
    sums = np.zeros((n_clusters, cells.points.shape[1]))
    np.add.at(sums, labels, cells.points * cells.weight[:, None])
    mass = np.bincount(labels, weights=cells.weight, minlength=n_clusters)
    return sums / mass[:, None]
