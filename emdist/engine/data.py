"""The data of a fit: opened lazily, scanned once, and the compute context it runs in.

Model-agnostic: every estimator opens its input here, gets one scan pass (validation,
moments, a uniform sample for seeding) and runs its passes inside :func:`compute_context`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np

from emdist.engine.reduce import Data, Rows
from emdist.engine.seeding import DataSummary, scan_data
from emdist.engine.threads import blas_single_threaded
from emdist.exceptions import InvalidDataError, InvalidParameterError
from emdist.io.sources import as_dask_array, as_numpy_array, is_out_of_core

__all__ = [
    "FitData",
    "ScanSpec",
    "active_client",
    "align_per_row",
    "compute_context",
    "default_sample_size",
    "prepare_fit_data",
]


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
    """The data of a fit, opened lazily, with what the scan pass learned of it.

    Attributes
    ----------
    X : dask.array.Array or ndarray
        Row-chunked data; in-memory data that fits in one block stays a numpy array, which
        the passes then run on directly (:func:`emdist.engine.reduce.map_reduce`).
    summary : DataSummary
    in_memory : bool
        Whether the user passed in-memory data.
    per_row : mapping of str to array
        Per-row inputs of the fit (``weights``...), as :func:`align_per_row` holds them
        (:class:`~emdist.engine.reduce.Rows`).
    """

    X: Data
    summary: DataSummary
    in_memory: bool
    per_row: Mapping[str, Data] = field(default_factory=dict)

    @property
    def rows(self) -> Rows:
        """What the passes run over: ``X`` and its per-row inputs."""
        return Rows(self.X, self.per_row)

    @property
    def row_chunks(self) -> tuple[int, ...]:
        """Rows of every row-block (the chunking a checkpoint is tied to)."""
        if isinstance(self.X, np.ndarray):
            return (int(self.X.shape[0]),)
        return tuple(int(c) for c in self.X.chunks[0])


def default_sample_size(n_clusters: int) -> int:
    """Rows to sample for seeding: plenty for k-means++, always in memory."""
    return max(10_000, 100 * n_clusters)


def prepare_fit_data(
    X: Any,
    *,
    n_clusters: int,
    seed: int,
    sample_size: int | None,
    what: str,
    per_row: Mapping[str, Any] | None = None,
    missing: str | None = None,
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
    per_row : mapping of str to array-like, optional
        Per-row inputs by :class:`~emdist.kernels.rows.RowBlock` field name, checked by the
        model; here only aligned with ``X``'s row-blocks (numpy for in-memory ``X``).
    missing : {'error', 'marginalize'} or None, optional
        The estimator's ``missing`` parameter (:func:`emdist.engine.seeding.scan_data`).

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
    X_fit: Data = Xd
    if in_memory and active_client() is not None:
        # Ship in-memory data to the workers once, not with every iteration's graph.
        X_fit = Xd.persist()
    elif in_memory and Xd.numblocks[0] == 1:
        # One block: no graph per pass (see map_reduce).
        X_fit = as_numpy_array(X)
    size = default_sample_size(n_clusters) if sample_size is None else int(sample_size)
    if size < n_clusters:
        raise InvalidParameterError(f"init_sample_size={size} must be >= {what}={n_clusters}")
    aligned = align_per_row(X_fit, per_row or {}, in_memory=in_memory)
    # The per-row inputs ride along the scan: the sample keeps its rows' weights.
    summary = scan_data(Rows(X_fit, aligned), seed, size, missing)
    return FitData(X_fit, summary, in_memory, aligned)


def align_per_row(
    X: Data, per_row: Mapping[str, Any], *, in_memory: bool = True
) -> dict[str, Data]:
    """Every per-row input as the passes over ``X`` read it, decided once per fit.

    Parameters
    ----------
    X : dask.array.Array or ndarray
        The fit's data as its passes run over it.
    per_row : mapping of str to array-like
        Per-row inputs (numpy, Dask or Zarr-backed Dask arrays), one row each per row of
        ``X``.
    in_memory : bool, default=True
        Whether the user's data is in memory: its per-row inputs are then made whole even
        when given as Dask arrays (computed here, once).

    Returns
    -------
    dict of str to array
        numpy for numpy ``X``; else *whole* (:class:`~emdist.engine.reduce.Rows`: one
        block, carried into every block's task and sliced there, so a pass has no task
        per block for it; numpy, or a Dask array persisted on the workers when a
        distributed client is active) for in-memory inputs, and
        *aligned*, rechunked to ``X``'s row chunks, for out-of-core ones (read block by
        block, each pass).
    """
    out: dict[str, Data] = {}
    for name, value in per_row.items():
        arr: Data = value if isinstance(value, da.Array) else np.asarray(value)
        if arr.shape[0] != X.shape[0]:
            raise InvalidDataError(f"{name} has {arr.shape[0]} rows; X has {X.shape[0]}")
        if isinstance(X, np.ndarray):
            out[name] = np.asarray(arr)
        elif isinstance(arr, np.ndarray) or in_memory:
            held = np.asarray(arr.compute() if isinstance(arr, da.Array) else arr)
            if active_client() is None:
                out[name] = held  # carried in the pass's graph, in a key it has anyway
            else:
                # On the workers once, not in every pass's graph. A random key
                # (``name=False``): hashing the values costs ~10 ms per 1M rows.
                out[name] = da.from_array(held, chunks=held.shape, name=False).persist()
        else:
            out[name] = arr.rechunk({0: X.chunks[0], **{i: -1 for i in range(1, arr.ndim)}})
    return out


@dataclass(frozen=True)
class ScanSpec:
    """How a fit opens and scans its data, decided before reading it.

    Attributes
    ----------
    n_clusters : int
        Components asked for.
    what : str
        The estimator's word for them (error messages).
    sample_seed : int
        Seed of the scan pass's sample.
    sample_size : int or None
        Rows the scan samples for seeding (``None``: the default for ``n_clusters``).
    missing : {'error', 'marginalize'} or None, default=None
        The estimator's ``missing`` parameter (``None``: it has none): whether NaN marks
        a missing value, and how the refusal of NaN is worded.
    """

    n_clusters: int
    what: str
    sample_seed: int
    sample_size: int | None
    missing: str | None = None

    @property
    def key(self) -> tuple[int, int, str | None]:
        """Fits with equal keys can share one scan pass (same sample seed, size, missing)."""
        size = self.sample_size
        resolved = default_sample_size(self.n_clusters) if size is None else size
        return self.sample_seed, resolved, self.missing

    def open(
        self, X: Any, n_clusters: int | None = None, per_row: Mapping[str, Any] | None = None
    ) -> FitData:
        """Open ``X`` and run the scan pass (``n_clusters``: the largest of fits sharing it).

        ``per_row``: the fit's per-row inputs (:func:`prepare_fit_data`).
        """
        return prepare_fit_data(
            X,
            n_clusters=self.n_clusters if n_clusters is None else n_clusters,
            seed=self.sample_seed,
            sample_size=self.key[1],
            what=self.what,
            per_row=per_row,
            missing=self.missing,
        )
