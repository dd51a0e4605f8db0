"""Shared machinery of the estimators: parameters, randomness, data preparation."""

from __future__ import annotations

import contextlib
import inspect
import numbers
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

import dask.array as da
import numpy as np

from emdist.engine.init import DataSummary, scan_data
from emdist.engine.threads import blas_single_threaded
from emdist.exceptions import InvalidDataError
from emdist.io.checkpoint import CheckpointStore
from emdist.io.sources import as_dask_array, as_numpy_array, is_out_of_core
from emdist.models._sklearn import SklearnEstimatorMixin

__all__ = ["BaseEstimator", "FitData", "active_client", "compute_context", "resolve_seed"]


class BaseEstimator(SklearnEstimatorMixin):
    """``get_params`` / ``set_params`` / ``repr`` from the ``__init__`` signature.

    As in scikit-learn, ``__init__`` only stores its arguments; validation happens in
    ``fit``, so ``set_params`` and cloning behave predictably. The rest of scikit-learn's
    protocol (tags, fitted test) comes from :class:`SklearnEstimatorMixin`.
    """

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters of this estimator, by name.

        Parameters
        ----------
        deep : bool, default=True
            Ignored (no nested estimators); kept for scikit-learn compatibility.

        Returns
        -------
        dict
        """
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Self:
        """Set parameters by name; unknown names raise ``ValueError``.

        Returns
        -------
        self
        """
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for {type(self).__name__}; "
                    f"valid parameters are {sorted(valid)}."
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            n: p.default for n, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = []
        for name, value in self.get_params().items():
            default = defaults.get(name, inspect.Parameter.empty)
            same = value is default or (
                not isinstance(value, np.ndarray)
                and not isinstance(default, np.ndarray)
                and value == default
            )
            if not same:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"


def resolve_seed(random_state: Any) -> int:
    """One integer seed for a fit, from ``None``, an int, a ``RandomState`` or a ``Generator``.

    Everything random in a fit derives from this seed through ``SeedSequence``, so the fit
    is reproducible whatever the scheduler and the chunking.
    """
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if int(random_state) < 0:
            raise ValueError(f"random_state must be non-negative; got {random_state}")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63 - 1))
    raise ValueError(
        f"random_state must be None, an int, a numpy RandomState or Generator; got {random_state!r}"
    )


def child_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent integer seeds derived from ``seed``."""
    return [int(s.generate_state(1, np.uint64)[0]) for s in np.random.SeedSequence(seed).spawn(n)]


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
    if n_clusters > 1 and not np.any(summary.variance > 0):
        raise InvalidDataError(
            f"X has zero variance in every feature (all {summary.n_samples} rows are "
            f"identical), so it cannot be split into {what}={n_clusters} clusters. "
            f"Use {what}=1 or check the data."
        )
    return FitData(Xd, summary, in_memory)


def check_features(X: da.Array | np.ndarray[Any, Any], n_features: int, name: str) -> None:
    """Reject data whose number of features differs from the fitted one."""
    if X.shape[1] != n_features:
        raise InvalidDataError(
            f"X has {X.shape[1]} features, but {name} is expecting {n_features} features as input."
        )


def _first_non_finite(block: np.ndarray[Any, Any], row_offset: int) -> None:
    finite = np.isfinite(block)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise InvalidDataError(
            f"X contains NaN or infinity at row {int(r) + row_offset}, column {int(c)}; "
            f"remove or impute non-finite values."
        )


def _rowwise_block(
    block: np.ndarray[Any, Any],
    fn: Any,
    args: tuple[Any, ...],
    block_info: dict[Any, Any] | None = None,
) -> Any:
    offset = 0
    if block_info is not None and 0 in block_info:
        offset = int(block_info[0]["array-location"][0][0])
    _first_non_finite(block, offset)
    return fn(block, *args)


def apply_rows(
    X: Any,
    fn: Any,
    *args: Any,
    n_features: int,
    name: str,
    out_width: int | None,
    dtype: Any = np.float64,
) -> Any:
    """Apply a per-block kernel to every row of ``X``.

    In-memory data (numpy, lists, pandas...) in, numpy out; Dask, Zarr or a path in, a
    lazy Dask array out. ``out_width`` is the number of output columns, or ``None`` for
    one value per row.
    """
    if not is_out_of_core(X):
        arr = as_numpy_array(X)
        check_features(arr, n_features, name)
        _first_non_finite(arr, 0)
        return fn(arr, *args)
    Xd = as_dask_array(X)
    check_features(Xd, n_features, name)
    if out_width is None:
        return da.map_blocks(
            _rowwise_block, Xd, fn, args, dtype=dtype, drop_axis=1, chunks=(Xd.chunks[0],)
        )
    return da.map_blocks(
        _rowwise_block, Xd, fn, args, dtype=dtype, chunks=(Xd.chunks[0], (out_width,))
    )


_NOT_CONFIG = ("observer", "checkpoint")


def as_checkpoint(value: Any) -> CheckpointStore | None:
    """A :class:`CheckpointStore` from ``None``, a store, or a path."""
    if value is None or isinstance(value, CheckpointStore):
        return value
    if isinstance(value, str | os.PathLike):
        return CheckpointStore(value)
    raise ValueError(f"checkpoint must be None, a path or a CheckpointStore; got {value!r}")


def estimator_config(estimator: BaseEstimator, **resolved: Any) -> dict[str, Any]:
    """The configuration a checkpoint is tied to: class, parameters, resolved values."""
    params = {k: v for k, v in estimator.get_params().items() if k not in _NOT_CONFIG}
    if isinstance(params.get("random_state"), np.random.RandomState | np.random.Generator):
        # The seed drawn from it is recorded with the checkpoint; the object's repr names a
        # memory address, which would refuse every resume in a new process.
        params["random_state"] = type(params["random_state"]).__name__
    return {"estimator": type(estimator).__name__, **params, **resolved}


def fit_seed(random_state: Any, checkpoint: CheckpointStore | None) -> int:
    """The fit's seed: the one a resumable checkpoint recorded, else from ``random_state``."""
    stored = checkpoint.stored_seed() if checkpoint is not None else None
    return stored if stored is not None else resolve_seed(random_state)
