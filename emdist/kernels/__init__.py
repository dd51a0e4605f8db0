"""Per-chunk kernels: numpy (and numba-compiled loops) on one row-block, nothing of Dask.

Every reduction kernel takes one :class:`RowBlock` (the rows, their global offset and
optional per-row inputs) and its arguments, ``kernel(block, *args)``, and maps the block to a
*statistics value*: a frozen object that adds
(``a + b``) so that any chunking of the data, reduced in any tree, gives the same totals.
The M-step functions turn reduced statistics back into parameters.
"""

from __future__ import annotations

from emdist.kernels.gaussian import (
    compute_precision_cholesky,
    estimate_log_gaussian_prob,
    log_det_cholesky,
)
from emdist.kernels.kmeans import KMeansParams, KMeansStats, kmeans_estep_chunk, kmeans_mstep
from emdist.kernels.mixture import (
    MixtureParams,
    MixtureStats,
    mixture_estep_chunk,
    mixture_mstep,
    mixture_stats_from_resp,
)
from emdist.kernels.rows import RowBlock
from emdist.kernels.scan import ScanStats, scan_chunk

__all__ = [
    "KMeansParams",
    "KMeansStats",
    "MixtureParams",
    "MixtureStats",
    "RowBlock",
    "ScanStats",
    "compute_precision_cholesky",
    "estimate_log_gaussian_prob",
    "kmeans_estep_chunk",
    "kmeans_mstep",
    "log_det_cholesky",
    "mixture_estep_chunk",
    "mixture_mstep",
    "mixture_stats_from_resp",
    "scan_chunk",
]
