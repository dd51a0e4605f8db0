"""The data of a fit: opened lazily, scanned once, and the compute context it runs in.

Model-agnostic: every estimator opens its input here, gets one scan pass (validation,
moments, a uniform sample for seeding) and runs its passes inside :func:`compute_context`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dask.array as da

from emdist.engine.seeding import DataSummary, scan_data
from emdist.engine.threads import blas_single_threaded
from emdist.exceptions import InvalidDataError
from emdist.io.sources import as_dask_array, is_out_of_core

__all__ = ["FitData", "active_client", "compute_context", "default_sample_size", "prepare_fit_data"]


def active_client() -> Any | None:
    """The active ``dask.distributed`` Client, or ``None``."""
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


@contextlib.contextmanager
def compute_context() -> Iterator[None]:
    """BLAS policy for a fit: one BLAS thread per Dask thread on local schedulers.

    On a distributed cluster the workers limit themselves (see ``engine.threads``) and the
    client keeps its BLAS threads for the small M-step.
    """
    if active_client() is not None:
        yield
    else:
        with blas_single_threaded():
            yield


@dataclass(frozen=True)
class FitData:
    """The data of a fit, opened lazily, with what the scan pass learned of it."""

    X: da.Array
    summary: DataSummary
    in_memory: bool


def default_sample_size(n_clusters: int) -> int:
    """Rows to sample for seeding: plenty for k-means++, always in memory."""
    return max(10_000, 100 * n_clusters)


def prepare_fit_data(
    X: Any, *, n_clusters: int, seed: int, sample_size: int | None, what: str
) -> FitData:
    """Open ``X``, run the scan pass, and reject data that cannot be clustered.

    Parameters
    ----------
    X : array-like, dask.array.Array, zarr.Array, str or path
    n_clusters : int
        Number of components or clusters asked for.
    seed : int
        Seed of the scan pass's sample.
    sample_size : int, optional
        Rows to sample for seeding (default :func:`default_sample_size`).
    what : str
        The estimator's name for ``n_clusters`` (``n_components`` or ``n_clusters``), for
        error messages in the user's words.

    Returns
    -------
    FitData

    Raises
    ------
    InvalidDataError
        Non-finite values, fewer samples than components, wrong shape or dtype.
    """
    in_memory = not is_out_of_core(X)
    Xd = as_dask_array(X)
    if Xd.shape[0] < n_clusters:
        raise InvalidDataError(
            f"n_samples={Xd.shape[0]} should be >= {what}={n_clusters}: every "
            f"component needs at least one sample. Use fewer components or more data."
        )
    if in_memory and active_client() is not None:
        # Ship in-memory data to the workers once, not with every iteration's graph.
        Xd = Xd.persist()
    size = default_sample_size(n_clusters) if sample_size is None else int(sample_size)
    if size < n_clusters:
        raise ValueError(f"init_sample_size={size} must be >= {what}={n_clusters}")
    summary = scan_data(Xd, seed, size)
    return FitData(Xd, summary, in_memory)
