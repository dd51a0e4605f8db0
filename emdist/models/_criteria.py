"""Information criteria from one pass: per-block statistics that add, for one model or many.

A model that has information criteria (BIC, AIC) gives a *criteria step* — a reduction
kernel and its arguments — and turns the reduced statistics into the criteria. One model
runs it with :func:`~emdist.engine.reduce.map_reduce`; a K sweep runs every model's step in
one shared pass (:func:`emdist.engine.lockstep.shared_pass`), with identical results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from emdist._typing import AnyArray
from emdist.engine.reduce import Data, PassData, Rows
from emdist.io.sources import as_dask_array, as_numpy_array, is_out_of_core
from emdist.kernels.kmeans import kmeans_labels_chunk
from emdist.kernels.missing import check_missing_rows
from emdist.kernels.mixture import score_samples_from_log_prob
from emdist.kernels.rows import RowBlock
from emdist.models._base import _first_non_finite, check_features, weights_like

__all__ = [
    "KernelStep",
    "criteria_rows",
    "label_counts_chunk",
    "log_lik_sum_chunk",
    "log_lik_sum_missing_chunk",
    "pass_data",
]


@dataclass(frozen=True)
class KernelStep:
    """A reduction kernel behind the E-step signature the shared passes call.

    Attributes
    ----------
    fn : callable
        ``fn(block, *args)`` -> summable statistics, ``block`` a
        :class:`~emdist.kernels.rows.RowBlock`.
    """

    fn: Callable[..., Any]

    def estep_chunk(self, block: RowBlock, args: tuple[Any, ...]) -> Any:
        """``fn(block, *args)``."""
        return self.fn(block, *args)


def label_counts_chunk(block: RowBlock, centers: AnyArray) -> AnyArray:
    """Samples of one block nearest to each centre (int64, adds exactly; float64 weights)."""
    _first_non_finite(block.x, block.row_offset)
    labels = kmeans_labels_chunk(block.x, centers)
    if block.weights is not None:
        w = np.asarray(block.weights, dtype=np.float64)
        return np.bincount(labels, weights=w, minlength=centers.shape[0])
    return np.bincount(labels, minlength=centers.shape[0]).astype(np.int64)


def log_lik_sum_chunk(block: RowBlock, log_prob: Callable[..., AnyArray], *args: Any) -> float:
    """``Σ w log p(x)`` over one block under a mixture's per-block log-probability kernel."""
    _first_non_finite(block.x, block.row_offset)
    log_p = score_samples_from_log_prob(block.x, log_prob, *args)
    if block.weights is not None:
        return float(np.asarray(block.weights, dtype=np.float64) @ log_p)
    return float(np.sum(log_p))


def log_lik_sum_missing_chunk(
    block: RowBlock, log_prob: Callable[..., AnyArray], *args: Any
) -> float:
    """:func:`log_lik_sum_chunk` of rows that may hold NaN (``missing='marginalize'``)."""
    check_missing_rows(block.x, block.row_offset)
    log_p = score_samples_from_log_prob(block.x, log_prob, *args)
    if block.weights is not None:
        return float(np.asarray(block.weights, dtype=np.float64) @ log_p)
    return float(np.sum(log_p))


def criteria_rows(
    X: Any, n_features: int, name: str, sample_weight: Any = None
) -> tuple[PassData, float]:
    """What a criteria pass runs over, and the number of samples it counts.

    With ``sample_weight`` the rows carry their weights and the count is their sum: the
    criteria of the rows repeated ``w`` times.
    """
    data = pass_data(X, n_features, name)
    if sample_weight is None:
        return data, float(data.shape[0])
    w = weights_like(sample_weight, data)
    total = w.sum()
    return Rows(data, {"weights": w}), float(
        total.compute() if isinstance(total, da.Array) else total
    )


def pass_data(X: Any, n_features: int, name: str) -> Data:
    """``X`` as a pass runs over it: numpy for in-memory data, else a row-chunked Dask array."""
    arr: Data = as_dask_array(X) if is_out_of_core(X) else as_numpy_array(X)
    check_features(arr, n_features, name)
    return arr
