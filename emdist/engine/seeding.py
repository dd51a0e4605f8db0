"""Initialisation at scale: one scan pass, then seeding on a sample in memory.

Seeding for data that does not fit in memory must not read the data once per centre.
The scan pass (see :mod:`emdist.kernels.scan`) validates the data, computes its moments and
draws a uniform sample of rows reproducibly; k-means++ then runs on that sample.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from emdist._typing import FloatArray, IntArray
from emdist.engine.reduce import PassData, as_rows, map_reduce, row_offsets
from emdist.exceptions import InvalidDataError
from emdist.kernels.scan import ScanStats, scan_chunk

__all__ = [
    "DataSummary",
    "kmeans_plusplus",
    "sample_rows_by_weight",
    "sample_summary",
    "scan_data",
]


@dataclass(frozen=True)
class DataSummary:
    """What the scan pass learns about the data.

    Attributes
    ----------
    n_samples, n_features : int
    mean, variance : ndarray of shape (n_features,)
    sample : ndarray of shape (m, n_features)
        Uniform sample of rows, in random order (float64).
    sample_rows : ndarray of shape (m,)
        Global indices of the sampled rows.
    sample_weight : ndarray of shape (m,) or None
        ``sample_weight`` of the sampled rows (``None``: unweighted data). Rows of weight 0
        are sampled only when fewer than ``m`` rows weigh more.
    weights_digest : str or None
        A chunking-independent digest of every weight (the checkpoint fingerprint's), from
        the same pass.
    weight_sum : float or None
        ``Σ sample_weight`` (``None``: unweighted data).
    n_observed : ndarray of shape (n_features,) or None
        Observed values per feature when the data holds missing values (NaN, with
        ``missing='marginalize'``); ``None``: it holds none. ``mean`` and ``variance`` are
        over the observed values.
    seed : int or None
        Seed of the sampling stream; the passes of a start that reads the data derive
        their streams from it (``None``: a summary of a sample, which no start reads).
    """

    n_samples: int
    n_features: int
    mean: FloatArray
    variance: FloatArray
    sample: FloatArray
    sample_rows: IntArray
    sample_weight: FloatArray | None = None
    weights_digest: str | None = None
    weight_sum: float | None = None
    n_observed: FloatArray | None = None
    seed: int | None = None


def scan_data(X: PassData, seed: int, sample_size: int, missing: str | None = None) -> DataSummary:
    """One pass: reject non-finite values, compute moments, draw a uniform sample.

    Parameters
    ----------
    X : dask.array.Array, ndarray or Rows of shape (n_samples, n_features)
        With its ``weights`` (:class:`~emdist.engine.reduce.Rows`), the sample carries
        the sampled rows' weights and the summary the weights' digest.
    seed : int
        Seed of the sampling stream (the sample depends only on it and the data).
    sample_size : int
        Rows to sample (all rows if the data has fewer).
    missing : {'error', 'marginalize'} or None, default=None
        The estimator's ``missing`` parameter (``None``: it has none). With
        ``'marginalize'`` NaN marks a missing value: moments are over the observed values
        and the sample keeps its NaN; infinity and rows with every value missing are
        refused. Otherwise NaN is refused, the message saying how to allow it.

    Returns
    -------
    DataSummary

    Raises
    ------
    InvalidDataError
        If the data holds NaN or infinity; the message names the row, column and block.
    """
    allow = missing == "marginalize"
    stats: ScanStats = map_reduce(X, scan_chunk, seed, sample_size, allow)
    if stats.bad_row >= 0:
        block = bisect.bisect_right(row_offsets(X), stats.bad_row) - 1
        where = (
            f"X contains NaN or infinity at row {stats.bad_row}, column {stats.bad_col} "
            f"(row-block {block})"
        )
        if not stats.bad_is_nan:
            raise InvalidDataError(f"{where}: an infinite value; remove or replace it first.")
        if missing is None:
            raise InvalidDataError(
                f"{where}: a missing value, which this estimator does not fit; remove or "
                f"impute them (GaussianMixture fits them with missing='marginalize')."
            )
        raise InvalidDataError(
            f"{where}: a missing value; pass missing='marginalize' to fit with missing "
            f"values, or remove or impute them."
        ).naming("missing", "missing='marginalize'", "marginalize")
    if stats.empty_row >= 0:
        block = bisect.bisect_right(row_offsets(X), stats.empty_row) - 1
        raise InvalidDataError(
            f"X row {stats.empty_row} (row-block {block}) has every value missing (NaN); "
            f"a row needs at least one observed value: drop it."
        )
    digest = stats.weights_digest
    return DataSummary(
        n_samples=stats.n,
        n_features=int(as_rows(X).shape[1]),
        mean=stats.mean,
        variance=stats.variance,
        sample=stats.sample,
        sample_rows=stats.sample_rows,
        sample_weight=stats.sample_weight,
        weights_digest=None if digest is None else "".join(f"{int(v):016x}" for v in digest),
        weight_sum=stats.weight_sum,
        n_observed=stats.n_obs,
        seed=seed,
    )


def sample_summary(summary: DataSummary) -> DataSummary:
    """The summary of the scan sample seen as a dataset of its own.

    An initialisation that runs on the sample in memory (K-means for a mixture's
    ``init_params='kmeans'``) scans nothing: its moments are the sample's, and its own
    seeding sample is the whole sample.

    Parameters
    ----------
    summary : DataSummary
        The scan pass's summary of the data.

    Returns
    -------
    DataSummary
        ``n_samples`` = rows of the sample, their mean and (population) variance, the same
        sample and global row indices.
    """
    sample = summary.sample
    # Missing values (NaN) of a sample of missing='marginalize' data: over the observed.
    has_nan = bool(np.isnan(sample).any())
    return DataSummary(
        n_samples=int(sample.shape[0]),
        n_features=summary.n_features,
        mean=np.nanmean(sample, axis=0) if has_nan else sample.mean(axis=0),
        variance=np.nanvar(sample, axis=0) if has_nan else sample.var(axis=0),
        sample=sample,
        sample_rows=summary.sample_rows,
        sample_weight=summary.sample_weight,
    )


def kmeans_plusplus(
    X: FloatArray,
    n_clusters: int,
    rng: np.random.Generator,
    sample_weight: FloatArray | None = None,
    n_local_trials: int | None = None,
) -> IntArray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007) on in-memory rows.

    Each new centre is the best of ``n_local_trials`` candidates drawn with probability
    proportional to the (weighted) squared distance to the nearest chosen centre.

    Parameters
    ----------
    X : ndarray of shape (n, n_features)
    n_clusters : int
    rng : numpy.random.Generator
    sample_weight : ndarray of shape (n,), optional
        Row weights (k-means|| candidates are weighted by the points they attract).
    n_local_trials : int, optional
        Defaults to ``2 + int(log(n_clusters))``, as scikit-learn.

    Returns
    -------
    ndarray of shape (n_clusters,)
        Indices of the chosen rows.
    """
    n = X.shape[0]
    if n < n_clusters:
        raise InvalidDataError(f"cannot seed {n_clusters} clusters from {n} rows")
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if n_local_trials is None:
        n_local_trials = 2 + int(np.log(n_clusters))
    indices = np.empty(n_clusters, dtype=np.int64)
    first = int(rng.choice(n, p=w / w.sum()))
    indices[0] = first

    def sqdist(rows: FloatArray) -> FloatArray:
        diff = rows[:, None, :] - X[None, :, :]
        return np.asarray(np.einsum("cnd,cnd->cn", diff, diff))

    closest = sqdist(X[[first]])[0]
    potential = float(w @ closest)
    for c in range(1, n_clusters):
        if potential <= 0.0:
            # Fewer distinct rows than clusters: take unused rows in order (never the origin).
            unused = np.setdiff1d(np.arange(n), indices[:c])
            indices[c] = unused[0]
            continue
        draws = rng.uniform(size=n_local_trials) * potential
        candidates = np.searchsorted(np.cumsum(w * closest), draws)
        np.clip(candidates, 0, n - 1, out=candidates)
        cand_dist = np.minimum(closest, sqdist(X[candidates]))
        pots = cand_dist @ w
        best = int(np.argmin(pots))
        indices[c] = candidates[best]
        closest = cand_dist[best]
        potential = float(pots[best])
    return indices


def sample_rows_by_weight(
    n: int, size: int, rng: np.random.Generator, sample_weight: FloatArray | None
) -> IntArray:
    """``size`` distinct rows of ``n`` drawn with probability proportional to their weight.

    scikit-learn's random seeding with ``sample_weight``; uniform without weights.

    Raises
    ------
    InvalidDataError
        If fewer than ``size`` rows weigh more than zero.
    """
    if sample_weight is None:
        return np.asarray(rng.choice(n, size, replace=False))
    w = np.asarray(sample_weight, dtype=np.float64)
    if np.count_nonzero(w) < size:
        raise InvalidDataError(
            f"only {np.count_nonzero(w)} rows have sample_weight > 0; {size} are needed to seed"
        )
    return np.asarray(rng.choice(n, size, replace=False, p=w / w.sum()))
