"""Online updates of running statistics: stepwise EM and mini-batch K-means.

Plain numpy on reduced statistics (no data, no Dask): the estimators' ``partial_fit``
reduces a batch with the ordinary E-step kernels and hands the totals here.

- **Stepwise EM** (Liang & Klein 2009; Cappé & Moulines 2009): the running statistics,
  normalised per unit weight, move towards the batch's by a step ``η_t``:
  ``s_t = (1 - η_t) s_{t-1} + η_t · stats(batch) / n_batch``, and the ordinary M-step runs
  on them. ``η_t = (t + 2)^-κ`` with ``κ ∈ (0.5, 1]`` satisfies Robbins-Monro
  (``Σ η = ∞``, ``Σ η² < ∞``), so the statistics converge to a stationary point of the
  likelihood of the stream's distribution.
- **Mini-batch K-means** (Sculley 2010, scikit-learn's ``MiniBatchKMeans``): per-centre
  weight sums; a centre moves to the weighted mean of everything ever assigned to it,
  ``c ← (c · N_k + Σ_batch x) / (N_k + n_k)``; centres whose weight falls below a fraction
  of the largest are moved to random rows of the batch.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from emdist._typing import CovarianceType, FloatArray
from emdist.kernels.kmeans import KMeansStats
from emdist.kernels.mixture import MixtureStats
from emdist.kernels.rebase import rebase_mixture_stats

__all__ = [
    "blend_mixture_stats",
    "low_count_clusters",
    "minibatch_centers",
    "scaled_mixture_stats",
    "step_size",
]


def step_size(t: int, kappa: float) -> float:
    """``η_t = (t + 2)^-κ``: the weight of the ``t``-th update's batch (``t`` from 0)."""
    return float((t + 2.0) ** -kappa)


def blend_mixture_stats(
    running: MixtureStats | None,
    batch: MixtureStats,
    eta: float,
    covariance_type: CovarianceType,
) -> MixtureStats:
    """Running statistics per unit weight after one stepwise-EM update.

    Parameters
    ----------
    running : MixtureStats or None
        The statistics before the update, per unit weight (``n == 1``), about any shift;
        ``None``: none yet (the batch's alone, whatever ``eta``).
    batch : MixtureStats
        The batch's summed statistics, about the means of the parameters it ran under.
    eta : float
        Step size in (0, 1].
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    MixtureStats
        About ``batch.shift``, with ``n == 1`` and ``log_lik`` the batch's mean.
    """
    n = float(batch.n)
    if running is None:
        eta = 1.0
    new = MixtureStats(
        1.0, batch.log_lik / n, batch.nk / n, batch.sx / n, batch.sxx / n, batch.shift
    )
    if eta == 1.0 or running is None:
        return new
    # Exact algebra to the batch's shift (docs/design.md, "Incremental EM"), then a convex
    # combination field by field.
    old = rebase_mixture_stats(running, batch.shift, covariance_type)
    keep = 1.0 - eta
    return MixtureStats(
        1.0,
        new.log_lik,
        keep * old.nk + eta * new.nk,
        keep * old.sx + eta * new.sx,
        keep * old.sxx + eta * new.sxx,
        batch.shift,
    )


def scaled_mixture_stats(stats: MixtureStats, n: float) -> MixtureStats:
    """Statistics per unit weight as sums over ``n`` rows (the M-step's input).

    The M-step is invariant to the scale but for the 10 machine epsilons scikit-learn adds
    to every count: at the batch's own size, a first update is batch EM's step exactly.
    """
    return MixtureStats(
        n, stats.log_lik * n, stats.nk * n, stats.sx * n, stats.sxx * n, stats.shift
    )


def minibatch_centers(
    centers: FloatArray, counts: FloatArray, stats: KMeansStats
) -> tuple[FloatArray, FloatArray]:
    """Centres and weight sums after one mini-batch step (scikit-learn's dense update).

    ``stats`` holds the batch's counts and sums about ``centers`` (the centres it was
    assigned under). A centre with batch weight ``n_k > 0`` becomes
    ``(c · N_k + Σ x) / (N_k + n_k)``, in scikit-learn's order of operations (the old
    centre scaled by its weight, the rows added, then times ``1 / N'_k``), so the two agree
    to rounding; the others stay.

    Returns
    -------
    centers : ndarray of shape (n_clusters, n_features)
    counts : ndarray of shape (n_clusters,)
    """
    nk = stats.counts
    sums = stats.sx + nk[:, None] * stats.shift  # Σ x per cluster
    new_counts = counts + nk
    new_centers = centers.copy()
    hit = nk > 0
    alpha = 1.0 / new_counts[hit]
    new_centers[hit] = (centers[hit] * counts[hit, None] + sums[hit]) * alpha[:, None]
    return new_centers, new_counts


def low_count_clusters(counts: FloatArray, ratio: float, n_rows: int) -> npt.NDArray[np.bool_]:
    """Which centres scikit-learn's mini-batch step moves to random rows (a bool mask).

    Those whose weight is below ``ratio`` times the largest, at most half the batch's rows
    (the lightest first).
    """
    low: npt.NDArray[np.bool_] = np.asarray(counts < ratio * counts.max())
    if low.sum() > 0.5 * n_rows:
        keep = np.argsort(counts)[int(0.5 * n_rows) :]
        low[keep] = False
    return low
