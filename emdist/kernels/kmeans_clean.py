"""Blocks a K-means pass need not read: every row provably keeps its label.

A bounded pass (:func:`emdist.kernels.kmeans.kmeans_estep_bounded`) leaves, per block, each
row's label and Hamerly bounds under that pass's centres, and the per-segment statistics
of every cluster. Summed up per cluster (:func:`block_reach`: the largest upper bound and
the smallest gap ``lower - upper`` of its rows), they tell the engine, before the next
pass and without the rows, whether every row of the block keeps its label under the new
centres (:func:`block_stays`). Then the block's statistics are the kept ones, and its
inertia follows from the kept moments and the new centres by the formula a read block
uses (:func:`kept_block_stats`) — unless the moments would cancel, where only the rows'
distances give it, and the block is read after all.

Such a block gives no far rows (the candidates that re-seed an empty cluster): a pass that
skipped blocks and left a cluster empty is run again reading every block (the engine's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emdist._typing import AnyArray, FloatArray
from emdist.kernels._jit import jit
from emdist.kernels.kmeans import (
    _DELTA,
    _MOMENT_REACH,
    _TINY,
    KMeansBounds,
    KMeansParams,
    KMeansStats,
    _centers,
    _half_gaps,
    _inertia_of,
    _moment_terms,
)

__all__ = ["BlockReach", "KMeansSkip", "block_reach", "block_stays", "kept_block_stats"]

# Margins of the test that a block's rows keep their labels: four times the kernel's
# (emdist.kernels.kmeans), so that a row passing it would pass the kernel's own test too,
# and the exact argmin (float64 differences, ~(d + 3) units of roundoff) cannot differ.
_MARGIN = 4.0 * _DELTA
_FLOOR = 4.0 * _TINY


@dataclass(frozen=True, eq=False)
class BlockReach:
    """What a block's kept bounds prove, summed up per restart and cluster.

    Attributes
    ----------
    tags : tuple
        The restarts (as in :class:`~emdist.kernels.kmeans.KMeansBounds`).
    centers : tuple of ndarray
        Each restart's centres the bounds hold under (the pass that last read the block).
    upper : ndarray of shape (n_restarts, n_clusters)
        The largest upper bound of the cluster's rows (``-inf``: none in the block); with
        restarts of several K, a restart's clusters are its first columns.
    slack : ndarray of shape (n_restarts, n_clusters)
        The smallest ``max(lower, 2 h - upper) - upper`` of the cluster's rows (``inf``:
        none), ``h`` half the distance from the cluster's centre to its nearest other one:
        how much nearer every other centre may come, or its own move away, before a row
        could change label.
    """

    tags: tuple[Any, ...]
    centers: tuple[FloatArray, ...]
    upper: FloatArray
    slack: FloatArray


@jit
def _reach_kernel(
    labels: AnyArray,
    upper: AnyArray,
    lower: AnyArray,
    half_gap: FloatArray,
    top: FloatArray,
    slack: FloatArray,
) -> None:
    R, n = labels.shape
    for r in range(R):
        for i in range(n):
            k = labels[r, i]
            u = np.float64(upper[r, i])
            # Every other centre is at least max(lower, 2 half gap - upper) from the row.
            gap = max(np.float64(lower[r, i]), 2.0 * half_gap[r, k] - u) - u
            if u > top[r, k]:
                top[r, k] = u
            if gap < slack[r, k]:
                slack[r, k] = gap


def block_reach(bounds: KMeansBounds) -> BlockReach:
    """The per-cluster reach of a block's bounds (``K`` floats twice per restart)."""
    R = len(bounds.tags)
    K = max((c.shape[0] for c in bounds.centers), default=0)
    top = np.full((R, K), -np.inf)
    slack = np.full((R, K), np.inf)
    if R and bounds.labels.shape[1]:
        # Restarts of several K side by side: each its own first columns (its labels
        # never reach the others).
        half_gap = np.full((R, K), np.inf)
        for r, centers in enumerate(bounds.centers):
            half_gap[r, : centers.shape[0]] = _half_gaps(centers[None], True)[0]
        _reach_kernel(bounds.labels, bounds.upper, bounds.lower, half_gap, top, slack)
    return BlockReach(tuple(bounds.tags), tuple(bounds.centers), top, slack)


def _drift(centers: FloatArray, before: FloatArray) -> FloatArray:
    # Each centre's move, rounded up as the kernel rounds it.
    step = centers - before
    sq = np.einsum("kd,kd->k", step, step)
    out: FloatArray = np.sqrt(sq) * (1.0 + _DELTA) + np.where(sq > 0, _TINY, 0.0)
    return out


def block_stays(reach: BlockReach, params: Sequence[KMeansParams], tags: Sequence[Any]) -> bool:
    """Whether every row of the block keeps its label under ``params``' centres.

    The drift of every centre is taken from the centres the block was last read under,
    however many passes ago. A row labelled ``a`` is at most ``V = upper + drift_a`` from
    its new centre; a centre ``k`` with ``‖c_a - c_k‖ > 2 V`` (new centres, ``upper`` the
    cluster's largest) is farther for every row of ``a``. Each other, *near* centre came
    at most its drift nearer than the row's ``max(lower, 2 h - upper)``: the rows keep
    their labels while the cluster's least slack exceeds ``drift_a`` plus the largest
    drift of its near centres. Margins wider than the kernel's. Every restart must have
    bounds in the block; restarts that have finished since may linger there (their memory
    was the budget's while they ran; the block's next read drops them).
    """
    if not set(tags) <= set(reach.tags):
        return False
    where = {t: i for i, t in enumerate(reach.tags)}
    for tag, p in zip(tags, params, strict=True):
        s = where[tag]
        centers = _centers(p.centers)
        before = reach.centers[s]
        K = centers.shape[0]
        if centers.shape != before.shape or reach.upper.shape[1] < K:
            return False
        drift = _drift(centers, before)
        top = reach.upper[s, :K]
        present = top > -np.inf
        if not np.any(present):
            continue
        reach_a = (np.where(present, top, 0.0) + drift) * (1.0 + _MARGIN) + _FLOOR
        step = centers[:, None, :] - centers[None, :, :]
        apart = np.sqrt(np.einsum("akd,akd->ak", step, step)) * (1.0 - _MARGIN) - _FLOOR
        near = apart <= 2.0 * reach_a[:, None]
        np.fill_diagonal(near, False)
        nearest = np.max(np.where(near, drift[None, :], 0.0), axis=1) if K > 1 else drift * 0
        stays = reach.slack[s, :K] - drift - nearest > _MARGIN * (reach_a + nearest) + _FLOOR
        if not np.all(stays | ~present):
            return False
    return True


def kept_block_stats(
    bounds: KMeansBounds, params: Sequence[KMeansParams], tags: Sequence[Any]
) -> list[KMeansStats] | None:
    """A block's statistics under ``params`` from its kept segments, without its rows.

    For a block whose rows all keep their labels (:func:`block_stays`): counts and sums
    are the kept ones, added segment by segment as a read block adds them, and the
    inertia is the moments' ``Q - 2 (c - r)·S + W ‖c - r‖²``, per segment and cluster as a
    read block takes it, so every value equals a read block's bit for bit. No far rows.
    ``None`` where the rows are needed: a restart without kept segments, a reference point
    that moved, or moments that would cancel (the read block sums distances there).
    """
    where = {t: i for i, t in enumerate(bounds.tags)}
    out = []
    n = int(bounds.labels.shape[1])
    for tag, p in zip(tags, params, strict=True):
        s = where.get(tag)
        if s is None or s >= len(bounds.moments):
            return None
        mom = bounds.moments[s]
        centers = _centers(p.centers)
        about = _centers(p.about)
        K, d = centers.shape
        if mom.sx.shape[1:] != (K, d) or not np.array_equal(mom.reference, about):
            return None
        counts = np.zeros(K)
        sx = np.zeros((K, d))
        inertia = 0.0
        value = np.empty(K)
        ok = np.empty(K, dtype=np.bool_)
        unused = np.zeros(K)
        for seg in range(mom.counts.shape[0]):
            if not _moment_terms(
                mom.counts[seg], mom.sx[seg], mom.sq[seg], centers, about, _MOMENT_REACH,
                value, ok,
            ):  # fmt: skip
                return None
            inertia += _inertia_of(value, ok, unused)
            counts += mom.counts[seg]
            sx += mom.sx[seg]
        out.append(
            KMeansStats(
                n=n,
                counts=counts,
                sx=sx,
                inertia=float(inertia),
                far_dist=np.empty(0),
                far_row=np.empty(0, dtype=np.int64),
                far_label=np.empty(0, dtype=np.int64),
                far_x=np.empty((0, d)),
                shift=p.centers,
                reference=p.about,
            )
        )
    return out


class KMeansSkip:
    """K-means' blocks left unread (the engine's ``Skipping``, :mod:`emdist.engine.kept`)."""

    def __dask_tokenize__(self) -> str:
        return type(self).__qualname__

    def reach(self, state: KMeansBounds) -> BlockReach:
        """:func:`block_reach`."""
        return block_reach(state)

    def stays(self, reach: BlockReach, params: Sequence[KMeansParams], tags: Sequence[Any]) -> bool:
        """:func:`block_stays`."""
        return block_stays(reach, params, tags)

    def kept_stats(
        self, state: KMeansBounds, params: Sequence[KMeansParams], tags: Sequence[Any]
    ) -> list[KMeansStats] | None:
        """:func:`kept_block_stats`."""
        return kept_block_stats(state, params, tags)

    def stands(self, totals: Sequence[KMeansStats]) -> bool:
        """Whether no cluster came out empty (re-seeding it needs every block's far rows)."""
        return all(not np.any(s.counts == 0) for s in totals)
