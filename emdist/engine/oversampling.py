"""The default start: k-means|| in at most two passes (none when the sample is all the data).

K-means++ on the scan sample alone lands in poor local optima on data a uniform sample
under-represents (heavy tails, clusters of unequal weights): docs/design.md#initialisation.
k-means|| (Bahmani et al. 2012) oversamples candidate centres over all the data instead:

- the first ``2K`` candidates are greedy k-means++ on the scan sample (no read);
- pass 1 draws ``2K`` more rows with probability proportional to ``w D²`` (their weighted
  squared distance to the first candidates: the rows the sample explains worst) and, from
  the same distances, weighs every first candidate by the rows nearest to it (its cell);
- in memory, per restart: the best of ``TRIES`` weighted greedy k-means++ seedings of the
  cells and drawn rows, each followed by weighted Lloyd on them (:func:`cluster_cells`),
  then ``refine`` (the model's weighted Lloyd on the sample and the drawn rows);
- pass 2, for a mixture only: every row labelled under each starting restart's centres, the
  moments of those hard labels being its start (scikit-learn's).

The restarts of a fit share both passes, and every fit sharing a read (a K sweep) runs its
passes in the same reads (:func:`run_start_passes`), before the first EM pass.

On data no larger than the scan sample the sample holds every row: the same start runs its
two passes over the sample in memory (in the data's row order) and reads nothing.

Everything random derives from the scan's seed: the first candidates from it, the
exponential draws of pass 1 from a stream keyed by the global row index
(:mod:`emdist.kernels.oversampling`), so the start is the same for every chunking and a
fit killed during its start redoes the same start when run again (nothing is committed
before the first iteration).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from emdist._random import child_seeds
from emdist._typing import FloatArray, IntArray
from emdist.engine.data import FitData
from emdist.engine.lockstep import StatsTuple, kernels_all, shared_kernel_pass
from emdist.engine.reduce import PassData, Rows
from emdist.engine.seeding import kmeans_plusplus
from emdist.kernels.oversampling import D2Sample, d2_sample_chunk, nearest

__all__ = [
    "Cells",
    "LabelKernel",
    "OversampledStart",
    "Refine",
    "StartPasses",
    "cell_centers",
    "cluster_cells",
    "run_start_passes",
    "start_seed",
    "uses_oversampling",
]

#: First candidates per cluster, and rows per cluster drawn by D² (Bahmani et al.'s ``l = 2K``).
OVERSAMPLING = 2
#: Seedings of the cells per restart (the best is kept).
TRIES = 10


class StartPasses(Protocol):
    """A start that reads the data: the kernels of its passes, one after another."""

    def want(self, seeds: Sequence[int]) -> None:
        """The seeds of the restarts about to start (a start may read for each)."""
        ...

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


def uses_oversampling(data: FitData) -> bool:
    """Whether the default start is k-means|| (over the data, or over a sample holding it all).

    Data with missing values (``missing='marginalize'``) keeps k-means++ on the mean-imputed
    sample: the passes' squared distances need whole rows. A summary of a sample (no scan
    seed: the K-means a start runs on a sample) keeps k-means++ too.
    """
    summary = data.summary
    return summary.seed is not None and summary.n_observed is None


def _sample_as_data(data: FitData) -> Rows | None:
    """The scan sample in the data's row order when it holds every row, else ``None``.

    The start's passes then run over it in memory: the row-keyed draws and the cells are
    those a pass over the data would give, and nothing is read.
    """
    summary = data.summary
    if summary.n_samples > len(summary.sample):
        return None
    order = np.argsort(summary.sample_rows, kind="stable")
    w = summary.sample_weight
    return Rows(summary.sample[order], {} if w is None else {"weights": w[order]})


def start_seed(data: FitData) -> int:
    """The seed of a fit's k-means|| start, derived from the scan's (shared by its restarts)."""
    assert data.summary.seed is not None
    return child_seeds(data.summary.seed, 1)[0]


@dataclass(frozen=True)
class Cells:
    """The candidates' cells: what the seeding in memory works on.

    Attributes
    ----------
    points : ndarray of shape (m, n_features)
        Every non-empty cell's weighted mean.
    weight : ndarray of shape (m,)
        Its weight.
    """

    points: FloatArray
    weight: FloatArray


#: ``refine(seeds, rows, weights, seed)``: centres from seeds by Lloyd on weighted rows.
Refine = Callable[[FloatArray, FloatArray, FloatArray, int], FloatArray]
#: ``label_kernel(centres)``: the per-block kernel (and arguments) of the labelling pass.
LabelKernel = Callable[[FloatArray], tuple[Callable[..., Any], tuple[Any, ...]]]


class OversampledStart:
    """k-means|| over the data for the restarts of one fit: one pass, then one more per start.

    When the scan sample holds every row, both passes run over it in memory (no read;
    :attr:`pending` is then always false).

    Pass 1 draws ``2K`` rows with probability ∝ ``w D²`` to ``2K`` first candidates
    (greedy k-means++ on the scan sample): with the sample, they are the rows the seeding
    works on in memory. A restart's centres (:meth:`centers`): the candidates' cells of
    those rows, clustered (:func:`cluster_cells`), then ``refine`` (Lloyd on the rows). With
    ``label_kernel`` (a mixture, whose start is the moments of hard labels over all the
    data, as scikit-learn's), pass 2 labels the data under the centres of every restart
    that starts, in one read.

    Parameters
    ----------
    data : FitData
        Scanned data.
    n_clusters : int
    seed : int
        Seed of the start (first candidates and the pass's draws).
    refine : callable
        ``refine(seeds, rows, weights, seed)`` -> centres.
    label_kernel : callable, optional
        ``label_kernel(centres)`` -> (kernel, args) of the labelling pass.
    """

    def __init__(
        self,
        data: FitData,
        n_clusters: int,
        seed: int,
        refine: Refine,
        label_kernel: LabelKernel | None = None,
    ) -> None:
        self.data = data
        self.n_clusters = n_clusters
        self.refine = refine
        self.label_kernel = label_kernel
        first_seed, self._draw_seed = child_seeds(seed, 2)
        summary = data.summary
        sample, w = summary.sample, summary.sample_weight
        n_first = min(OVERSAMPLING * n_clusters, _distinct_rows(sample, w))
        idx = kmeans_plusplus(sample, n_first, np.random.default_rng(first_seed), w)
        self._first = sample[idx].copy()
        self._in_memory = _sample_as_data(data)
        self._drawn: D2Sample | None = None
        self._wanted: list[int] = []
        self._asked: list[int] = []
        self._centers: dict[int, FloatArray | None] = {}
        self._labelled: dict[int, Any] = {}

    def want(self, seeds: Sequence[int]) -> None:
        """The restarts (by seed) about to start: pass 2 labels under their centres."""
        self._wanted += [s for s in seeds if s not in self._wanted]

    def _unlabelled(self) -> list[int]:
        """Wanted restarts whose labelling pass has not run (and that have centres)."""
        if self.label_kernel is None or self._drawn is None:
            return []
        out = []
        for s in self._wanted:
            if s in self._labelled:
                continue
            if self.centers(s) is None:
                self._labelled[s] = None  # the model falls back to the sample's start
            else:
                out.append(s)
        return out

    def _needs_pass(self) -> bool:
        return self._drawn is None or bool(self._unlabelled())

    @property
    def pending(self) -> bool:
        """Whether a pass over the data is still needed (never when it runs in memory)."""
        return self._in_memory is None and self._needs_pass()

    def _run_passes(self) -> None:
        """The passes still needed: over the data, or over the sample in memory."""
        if self._in_memory is None:
            run_start_passes(self.data.rows, [self])
            return
        while self._needs_pass():
            (stats,) = shared_kernel_pass(self._in_memory, [self.request()])
            self.receive(stats)

    def request(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """Pass 1: the D² sample; pass 2: the labels under every wanted restart's centres."""
        if self._drawn is None:
            size = OVERSAMPLING * self.n_clusters
            return d2_sample_chunk, (self._first, self._draw_seed, size)
        label_kernel = self.label_kernel
        assert label_kernel is not None
        self._asked = self._unlabelled()
        calls = []
        for s in self._asked:
            centers = self.centers(s)
            assert centers is not None
            calls.append(label_kernel(centers))
        return kernels_all, (tuple(calls),)

    def receive(self, stats: Any) -> None:
        """Keep the D² sample, then the labelling statistics of every restart asked."""
        if self._drawn is None:
            assert isinstance(stats, D2Sample)
            self._drawn = stats
            return
        assert isinstance(stats, StatsTuple)
        for s, item in zip(self._asked, stats.items, strict=True):
            self._labelled[s] = item

    def centers(self, seed: int) -> FloatArray | None:
        """A restart's centres (``None``: fewer distinct rows than clusters to seed from)."""
        if seed not in self._centers:
            if self._drawn is None:
                self._run_passes()
            self._centers[seed] = self._compute_centers(seed)
        return self._centers[seed]

    def labelled(self, seed: int) -> Any:
        """The labelling pass's statistics under a restart's centres (``None``: no centres)."""
        self.want([seed])
        self._run_passes()
        return self._labelled[seed]

    def _compute_centers(self, seed: int) -> FloatArray | None:
        cells = self._cells()
        if len(np.unique(cells.points, axis=0)) < self.n_clusters:
            return None
        seeds = cell_centers(cells, cluster_cells(cells, self.n_clusters, seed), self.n_clusters)
        rows, weights = self._rows()
        return self.refine(seeds, rows, weights, seed)

    def _cells(self) -> Cells:
        """The first candidates' cells over all the data, and the D² rows with their weights.

        Bahmani et al. weigh every candidate by the rows nearest to it, which takes a pass
        once the candidates are known; the first candidates' cells come from pass 1 itself
        (the distances are those of the D² draw), and a D² row weighs its own weight.
        """
        assert self._drawn is not None
        cells = self._drawn.cells
        keep = np.flatnonzero(cells.weight > 0)
        means = self._first[keep] + cells.sx[keep] / cells.weight[keep, None]
        return Cells(
            np.concatenate([means, self._drawn.x]),
            np.concatenate([cells.weight[keep], self._drawn.weight]),
        )

    def _rows(self) -> tuple[FloatArray, FloatArray]:
        """The scan sample (each row standing for ``n / m`` rows) and the D² rows."""
        assert self._drawn is not None
        summary = self.data.summary
        sample, w = summary.sample, summary.sample_weight
        scale = summary.n_samples / len(sample)
        sample_w = np.full(len(sample), scale) if w is None else scale * w
        # A D² row already in the sample counts once.
        new = ~np.isin(self._drawn.rows, summary.sample_rows)
        rows = np.concatenate([sample, self._drawn.x[new]])
        return rows, np.concatenate([sample_w, self._drawn.weight[new]])


def _distinct_rows(sample: FloatArray, w: FloatArray | None) -> int:
    rows = sample if w is None else sample[w > 0]
    return int(len(np.unique(rows, axis=0)))


def cluster_cells(cells: Cells, n_clusters: int, seed: int, max_iter: int = 300) -> IntArray:
    """Weighted greedy k-means++ and weighted Lloyd on the cells: each cell's cluster.

    ``TRIES`` seedings, each followed by Lloyd until no cell changes cluster (or
    ``max_iter``), and the clustering of the lowest weighted cost is kept: the cells are
    few, so this costs little, and a single k-means++ on a few dozen points lands in a
    poor local optimum far more often than on the rows they stand for. An emptied cluster
    takes the cell farthest from its centre, as scikit-learn relocates empty clusters.

    Parameters
    ----------
    cells : Cells
        At least ``n_clusters`` distinct ones.
    n_clusters : int
    seed : int
        Seed of the restart's seedings.
    max_iter : int, default=300

    Returns
    -------
    ndarray of shape (m,)
        The cluster of every cell.
    """
    rng = np.random.default_rng(seed)
    best: tuple[float, IntArray] | None = None
    for _ in range(TRIES):
        labels, cost = _weighted_lloyd(cells, n_clusters, rng, max_iter)
        if best is None or cost < best[0]:
            best = (cost, labels)
    assert best is not None
    return best[1]


def _weighted_lloyd(
    cells: Cells, n_clusters: int, rng: np.random.Generator, max_iter: int
) -> tuple[IntArray, float]:
    points, weight = cells.points, cells.weight
    centers = points[kmeans_plusplus(points, n_clusters, rng, sample_weight=weight)].copy()
    labels: IntArray | None = None
    dist = np.zeros(len(points))
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
        centers = cell_centers(cells, labels, n_clusters)
    assert labels is not None
    return labels, float(weight @ dist)


def cell_centers(cells: Cells, labels: IntArray, n_clusters: int) -> FloatArray:
    """The weighted mean of every cluster's cells: its centre over the rows of its cells."""
    sums = np.zeros((n_clusters, cells.points.shape[1]))
    np.add.at(sums, labels, cells.points * cells.weight[:, None])
    mass = np.bincount(labels, weights=cells.weight, minlength=n_clusters)
    return sums / mass[:, None]
