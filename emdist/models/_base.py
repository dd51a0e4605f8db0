"""Shared machinery of the estimators: parameters, the fit template, randomness, row maps.

Every estimator's ``fit`` is :meth:`BaseEstimator.fit`: validate the parameter table and
decide the fit once (:meth:`BaseEstimator._setup_fit` returns the
:class:`~emdist.engine.em.FitSpec` the engine runs: seeds, schedule, checkpoint, budget),
open and scan the data, run the restarts with the EM engine (resuming a checkpoint), record
the fitted attributes, warn if the kept restart did not converge. A model says only what
differs, in the abstract hooks :meth:`BaseEstimator._plan` (its engine family, how a restart
starts and how restarts compare) and :meth:`BaseEstimator._record`.
"""

from __future__ import annotations

import abc
import inspect
import math
import numbers
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self, cast

import dask.array as da
import numpy as np
import zarr

from emdist._random import child_seeds, resolve_seed
from emdist._typing import FloatArray
from emdist.engine.data import FitData, ScanSpec, compute_context
from emdist.engine.em import BATCH, FitSpec, ModelPlan, Schedule, run_restarts
from emdist.engine.incremental import IncrementalSchedule
from emdist.engine.restarts import BestRun
from emdist.exceptions import (
    ConvergenceWarning,
    EmdistError,
    InvalidDataError,
    InvalidParameterError,
)
from emdist.io.checkpoint import CheckpointStore
from emdist.io.sources import as_dask_array, as_numpy_array, is_out_of_core, open_zarr_array
from emdist.kernels.missing import check_missing_rows
from emdist.models._sklearn import SklearnEstimatorMixin
from emdist.models._validation import Constraint, shards_of, validate_parameters

__all__ = [
    "BaseEstimator",
    "Components",
    "apply_rows",
    "as_checkpoint",
    "check_features",
    "estimator_config",
    "fit_seed",
    "fitted_array",
    "fitted_float",
    "fitted_int",
]


@dataclass(frozen=True)
class Components:
    """The fitted components in one shape for every family (reports, plots).

    Attributes
    ----------
    means : ndarray of shape (n_components, n_features)
        Means, or K-means centres.
    weights : ndarray of shape (n_components,) or None
        Mixing weights (``None`` for K-means).
    covariances : ndarray of shape (n_components, n_features, n_features) or None
        Every component's full covariance (``None`` for K-means).
    """

    means: FloatArray
    weights: FloatArray | None
    covariances: FloatArray | None


class BaseEstimator(SklearnEstimatorMixin, abc.ABC):
    """``get_params`` / ``set_params`` / ``repr`` from the ``__init__`` signature, and ``fit``.

    As in scikit-learn, ``__init__`` only stores its arguments; validation happens in
    ``fit``, so ``set_params`` and cloning behave predictably. As scikit-learn's mixtures,
    a concrete estimator lists every parameter in its own ``__init__`` (``get_params``
    reads that signature) and passes the shared ones to ``super().__init__``. Subclasses
    declare ``_parameter_constraints`` and implement the abstract hooks :meth:`_plan`,
    :meth:`_record`, :meth:`components` and :meth:`summary_statistics`. The rest of
    scikit-learn's protocol (tags, fitted test) comes from :class:`SklearnEstimatorMixin`.
    """

    # Set by :func:`emdist.registry.register_family`.
    family_name: ClassVar[str]
    family_summary: ClassVar[str]
    #: What each parameter may be, checked before any data is read.
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {}
    #: The estimator's word for the number of components (error messages, data checks).
    _n_components_param: ClassVar[str] = "n_components"
    #: What the convergence test watches, for the non-convergence warning.
    _convergence_quantity: ClassVar[str] = "change of the lower bound"
    #: What ``lower_bounds_`` holds, in words (axis labels, reports).
    bound_name: ClassVar[str] = "lower bound per sample"
    #: Whether the model gives responsibilities and log-likelihoods (``predict_proba``,
    #: ``score_samples``) besides labels.
    gives_responsibilities: ClassVar[bool] = False
    #: Whether ``tol`` bounds the change of ``lower_bounds_`` (plots draw it beside them).
    tol_is_bound_change: ClassVar[bool] = True
    #: Family-neutral configuration names that this estimator calls otherwise.
    _config_aliases: ClassVar[dict[str, str]] = {}
    #: The running state ``partial_fit`` keeps (``emdist.models._partial``); ``fit`` drops
    #: it, since it belongs to the parameters the stream reached.
    _stream_attributes: ClassVar[tuple[str, ...]] = ()

    random_state: Any
    max_iter: int
    tol: float
    init_sample_size: int | None
    observer: Any
    checkpoint: Any
    n_features_in_: int
    #: Parameters the next fit starts from (set by :meth:`warm_start_from`), or ``None``.
    #: Not a parameter: a clone starts as configured.
    _start_from: Any = None

    @abc.abstractmethod
    def __init__(
        self,
        *,
        n_init: Any,
        max_iter: int,
        tol: float,
        random_state: Any,
        init_sample_size: int | None,
        updates: str,
        n_shards: int,
        observer: Any,
        checkpoint: Any,
    ) -> None:
        # The parameters every family shares: restarts, budget, seed, seeding sample, EM
        # schedule and the hooks of one run.
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.init_sample_size = init_sample_size
        self.updates = updates
        self.n_shards = n_shards
        self.observer = observer
        self.checkpoint = checkpoint

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    @classmethod
    def from_config(cls, params: Mapping[str, Any], **runtime: Any) -> Self:
        """Build the estimator from a family-neutral model configuration.

        Parameters
        ----------
        params : mapping
            Configuration fields (``n_components``, ``tol``, ``init_params``...); names
            this estimator spells otherwise are translated (``_config_aliases``), fields
            it has no parameter for are left out, and ``None`` means "the default".
        **runtime
            Parameters that belong to one run (``observer``, ``checkpoint``).

        Returns
        -------
        estimator
        """
        names = set(cls._param_names())
        kwargs = {}
        for key, value in params.items():
            name = cls._config_aliases.get(key, key)
            if name in names and value is not None:
                kwargs[name] = value
        return cls(**kwargs, **runtime)

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
                raise InvalidParameterError(
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

    # -- the fit template ----------------------------------------------------------------

    def _validate_params(self) -> None:
        validate_parameters(self._parameter_constraints, self.get_params())

    def _check_input(self, X: Any) -> None:
        """Checks that need the data's shape but not its values (before any read)."""

    def _n_init(self) -> int:
        """Number of restarts (K-means resolves ``'auto'``)."""
        return int(getattr(self, "n_init", 1))

    def _warm(self) -> bool:
        """Whether this fit continues from the previous one (``warm_start``)."""
        return bool(getattr(self, "warm_start", False)) and hasattr(self, "converged_")

    def warm_start_from(self, previous: Any, n_features: int | None = None) -> str | None:
        """Start the next :meth:`fit` from ``previous``'s fitted parameters, if they fit.

        For a fit on new data (a scheduled job whose input grew): one restart, from the
        previous model instead of a fresh initialisation, usually needs fewer passes. Unlike
        ``warm_start``, the previous fit's bound is not carried over (it belongs to other
        data), and ``previous`` may be another object (a loaded model).

        Parameters
        ----------
        previous : estimator
            A fitted model, typically the previous run's (:func:`emdist.load_model`).
        n_features : int, optional
            Features of the data about to be fitted; a model of another width is refused.

        Returns
        -------
        str or None
            ``None`` when the next fit will start from ``previous``; otherwise why not
            (another family, number of components, covariance type or width), and the
            next fit starts cold as configured.
        """
        reason = self._warm_refusal(previous, n_features)
        if reason is None:
            self._use_start(previous)
        return reason

    def _warm_refusal(self, previous: Any, n_features: int | None) -> str | None:
        """Why ``previous`` cannot start this estimator's next fit (``None``: it can)."""
        if type(previous) is not type(self):
            return f"the previous model is a {type(previous).__name__}, not a {type(self).__name__}"
        name = self._n_components_param
        mine, theirs = int(getattr(self, name)), int(getattr(previous, name))
        if mine != theirs:
            return f"the previous model has {name}={theirs}, this fit {mine}"
        mine_cov = getattr(self, "covariance_type", None)
        theirs_cov = getattr(previous, "covariance_type", None)
        if mine_cov != theirs_cov:
            return f"the previous model has covariance_type={theirs_cov!r}, this fit {mine_cov!r}"
        width = getattr(previous, "n_features_in_", None)
        if width is None:
            return "the previous model is not fitted"
        if n_features is not None and int(width) != int(n_features):
            return f"the previous model has {width} features, the data {n_features}"
        return None

    def _use_start(self, previous: Any) -> None:
        """Make ``previous``'s parameters the start of the next fit (checked compatible)."""
        self._start_from = previous._params()

    @abc.abstractmethod
    def _plan(self, data: FitData, warm: bool) -> ModelPlan[Any, Any]:
        """The model's part of the fit, given the scanned data."""

    @abc.abstractmethod
    def _record(self, best: BestRun[Any], data: FitData, X: Any) -> None:
        """Set the fitted attributes from the kept restart."""

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> Self:
        """Fit the model, one pass over the data per iteration.

        Parameters
        ----------
        X : array-like, dask.array.Array, zarr.Array, str or path
            Data of shape (n_samples, n_features); a path names a Zarr array (or a
            dataset group written by emdist, whose data array is used).
        y : ignored
        sample_weight : array-like, dask.array.Array, zarr.Array, str or path of shape \
(n_samples,), optional
            How many times each row counts (finite, >= 0, not all zero): integer weights
            fit as the rows repeated that many times. ``None``: every row once. Checked
            before any pass over ``X``; covered by the checkpoint's fingerprint.

        Returns
        -------
        self
        """
        return self._fit(X, sample_weight)

    def _fit(self, X: Any, sample_weight: Any) -> Self:
        """The fit template; ``sample_weight`` as :meth:`GaussianMixture.fit` takes it."""
        spec = self._setup_fit(X)
        assert spec.scan is not None
        X, per_row = fit_inputs(X, sample_weight)
        with compute_context():
            data = spec.scan.open(X, per_row=per_row)
            best = run_restarts(data, spec.planned(self._plan(data, spec.warm)))
        self._finish_fit(best, data, X)
        return self

    def _schedule(self) -> Schedule:
        """Batch EM, or incremental EM over ``n_shards`` shards (``updates``)."""
        n_shards = shards_of(self.updates, self.n_shards)
        return BATCH if n_shards is None else IncrementalSchedule(n_shards)

    def _setup_fit(self, X: Any) -> FitSpec[Any, Any]:
        """The fit as the engine runs it, decided before reading the data.

        Parameters, seeds, schedule, checkpoint and budget; the model's part is attached
        once the data is scanned (:meth:`_plan`, :meth:`FitSpec.planned`).
        """
        self._validate_params()
        self._check_input(X)
        self._reset_fit_input(X)  # feature_names_in_, as scikit-learn's fit
        warm = self._warm()
        start = self._start_from
        n_init = 1 if warm or start is not None else self._n_init()
        checkpoint = as_checkpoint(self.checkpoint)
        seed = fit_seed(self.random_state, checkpoint)
        sample_seed, restarts_seed = child_seeds(seed, 2)
        resolved: dict[str, Any] = {"n_init": n_init}
        if "warm_start" in self._param_names():
            resolved["warm_start"] = warm
        if start is not None:
            # Tied to the checkpoint (arrays are hashed): a resume must start from the same
            # model, or its first iterations would belong to another fit.
            resolved["start_from"] = dict(start.arrays())
        return FitSpec(
            seeds=child_seeds(restarts_seed, n_init),
            max_iter=int(self.max_iter),
            seed=seed,
            observer=self.observer,
            checkpoint=checkpoint,
            config=estimator_config(self, **resolved),
            # As scikit-learn: a warm start's first change is measured from the last
            # bound of the previous fit, so it can converge at once.
            previous_bound=getattr(self, "lower_bound_", None) if warm else None,
            schedule=self._schedule(),
            scan=ScanSpec(
                n_clusters=int(getattr(self, self._n_components_param)),
                what=self._n_components_param,
                sample_seed=sample_seed,
                sample_size=self.init_sample_size,
                missing=getattr(self, "missing", None),
            ),
            warm=warm,
        )

    def _finish_fit(self, best: BestRun[Any], data: FitData, X: Any) -> None:
        """Record the kept restart; warn if it did not converge."""
        for name in self._stream_attributes:
            self.__dict__.pop(name, None)
        self.converged_ = best.converged
        self.n_iter_ = best.n_iter
        self.lower_bounds_ = list(best.lower_bounds)
        self.n_features_in_ = data.summary.n_features
        self._record(best, data, X)
        if not best.converged:
            warnings.warn(
                f"{type(self).__name__} did not converge in max_iter={self.max_iter} "
                f"iterations (last {self._convergence_quantity} above "
                f"tol={self.tol}); try different init parameters, or increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=3,
            )

    # -- what a saved model must hold -----------------------------------------------------

    def check_fitted_values(self) -> None:
        """Check that the fitted attributes can be a model of this kind (after loading).

        Raises
        ------
        ValueError
            Naming the field that is missing, misshaped, non-finite or out of range.
        """
        fitted_int(self, "n_features_in_")
        n_iter = fitted_int(self, "n_iter_")
        converged = getattr(self, "converged_", None)
        if not isinstance(converged, bool):
            raise ValueError(f"field 'converged_' is {converged!r}, not a bool")
        # n_iter_ and lower_bounds_ are both the kept restart's: one bound per iteration.
        bounds = getattr(self, "lower_bounds_", None)
        if not isinstance(bounds, list) or len(bounds) != n_iter:
            length = len(bounds) if isinstance(bounds, list) else type(bounds).__name__
            raise ValueError(
                f"field 'lower_bounds_' must be a list of n_iter_={n_iter} numbers; got {length}"
            )
        if not all(_finite_real(v) for v in bounds):
            raise ValueError("field 'lower_bounds_' holds a value that is not a finite number")
        self.check_parameter_values()

    def check_parameter_values(self) -> None:
        """Check the fitted parameters alone (also those of a checkpoint's restarts).

        Raises
        ------
        ValueError
            Naming the field that is missing, misshaped, non-finite or out of range.
        """

    #: The engine's parameters class of the estimator (checks of checkpointed states).
    _params_type: ClassVar[Callable[..., Any] | None] = None

    @classmethod
    def check_state_params(
        cls, arrays: Mapping[str, Any], config: Mapping[str, Any], n_features: int
    ) -> None:
        """Check the parameters of a checkpointed restart as a saved model's are checked.

        Parameters
        ----------
        arrays : mapping
            The restart's parameter arrays, by name (``params.arrays()``).
        config : mapping
            The fit's configuration (components, covariance type).
        n_features : int

        Raises
        ------
        ValueError
            Naming the field that is missing, misshaped, non-finite or out of range.
        """
        if cls._params_type is None:
            return
        # Concrete estimators give every parameter a default (scikit-learn's convention).
        estimator = cast(Callable[[], BaseEstimator], cls)()
        for key in (cls._n_components_param, "covariance_type"):
            if key in config:
                setattr(estimator, key, config[key])
        estimator.n_features_in_ = n_features
        try:
            params = cls._params_type(**arrays)
        except TypeError:
            raise ValueError(
                f"fields {sorted(arrays)} are not the parameters of a {cls.__name__}"
            ) from None
        estimator._set_params(params)
        estimator.check_parameter_values()

    def _set_params(self, params: Any) -> None:
        """Set the fitted parameter attributes from the engine's parameters."""
        raise NotImplementedError

    # -- what reports ask of every model ---------------------------------------------------

    @abc.abstractmethod
    def components(self) -> Components:
        """The fitted components: means, weights and full covariances where the model has them.

        Returns
        -------
        Components
        """

    @abc.abstractmethod
    def summary_statistics(self, X: Any, sample_weight: Any = None) -> dict[str, Any]:
        """The figures a report shows for this fit on ``X`` (at most one pass over it).

        Parameters
        ----------
        X : array-like, dask.array.Array, zarr.Array, str or path
        sample_weight : array-like, dask.array.Array, zarr.Array, str or path, optional
            Weights of the rows (the fit's), for the criteria.

        Returns
        -------
        dict
            Some of ``score``, ``bic``, ``aic``, ``inertia`` (floats) and ``weights``
            (list of floats), as the model defines them.
        """


def fit_inputs(X: Any, sample_weight: Any) -> tuple[Any, dict[str, Any] | None]:
    """``X`` and the per-row inputs of a fit, ``sample_weight`` checked before any pass."""
    if sample_weight is None:
        return X, None
    if not is_out_of_core(X):
        X = as_numpy_array(X)
    return X, {"weights": check_sample_weight(sample_weight, _n_rows(X))}


def _n_rows(X: Any) -> int:
    """Rows of ``X`` without reading its values (an in-memory ``X`` is numpy here)."""
    return int(X.shape[0] if isinstance(X, np.ndarray) else as_dask_array(X).shape[0])


def check_sample_weight(sample_weight: Any, n_samples: int) -> Any:
    """``sample_weight`` checked: ``n_samples`` finite values >= 0, not all zero.

    A Dask array, a Zarr array or the path of one stays lazy; its values are checked by
    one small compute over the weights alone (not the data).

    Raises
    ------
    InvalidParameterError
        One line naming what is wrong.
    """
    w: Any = sample_weight
    if isinstance(w, str | os.PathLike):
        try:
            w = open_zarr_array(w)
        except EmdistError as exc:
            raise InvalidParameterError(f"sample_weight: {exc}").naming(
                "sample_weight", "sample_weight"
            ) from None
    if isinstance(w, zarr.Array):
        # Out of core: read block by block with the data's row-blocks (FitData aligns).
        w = da.from_zarr(w)
    if not isinstance(w, da.Array):
        w = np.asarray(w)
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise InvalidParameterError(
            f"sample_weight has shape {tuple(w.shape)}; expected ({n_samples},), one weight "
            f"per row of X"
        ).naming("sample_weight", "sample_weight")
    if not np.issubdtype(w.dtype, np.number) or np.issubdtype(w.dtype, np.complexfloating):
        raise InvalidParameterError(f"sample_weight must hold real numbers; got {w.dtype}").naming(
            "sample_weight", "sample_weight"
        )
    w = w.astype(np.float64)
    if n_samples == 0:
        return w  # no rows: the data check says so
    if isinstance(w, da.Array):
        finite, low, total = da.compute(da.isfinite(w).all(), w.min(), w.sum())
    else:
        finite, low, total = np.isfinite(w).all(), w.min(), w.sum()
    if not bool(finite):
        raise InvalidParameterError("sample_weight contains NaN or infinity").naming(
            "sample_weight", "sample_weight"
        )
    if float(low) < 0:
        raise InvalidParameterError(
            f"sample_weight must be >= 0; its smallest is {float(low)}"
        ).naming("sample_weight", "sample_weight")
    if float(total) <= 0:
        raise InvalidParameterError(
            "sample_weight sums to zero; at least one weight must be > 0"
        ).naming("sample_weight", "sample_weight")
    return w


def _finite_real(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def fitted_float(estimator: Any, field: str) -> float:
    """``estimator.<field>`` if it is a finite number, else ``ValueError`` naming the field."""
    value: Any = getattr(estimator, field, None)
    if not _finite_real(value):
        raise ValueError(f"field {field!r} is {value!r}, not a finite number")
    return float(value)


def fitted_int(estimator: Any, field: str) -> int:
    """``estimator.<field>`` if it is an int >= 1, else ``ValueError`` naming the field."""
    value = getattr(estimator, field, None)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"field {field!r} is {value!r}, not an int >= 1")
    return int(value)


def fitted_array(estimator: Any, field: str, shape: tuple[int, ...]) -> FloatArray:
    """``estimator.<field>`` if it is a finite float array of ``shape``, else ``ValueError``."""
    value = getattr(estimator, field, None)
    if not isinstance(value, np.ndarray):
        raise ValueError(f"field {field!r} is missing")
    if value.shape != shape:
        raise ValueError(f"field {field!r} has shape {value.shape}, expected {shape}")
    if not np.issubdtype(value.dtype, np.floating) or not np.all(np.isfinite(value)):
        raise ValueError(f"field {field!r} holds non-finite values")
    return value


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


def check_rows(block: np.ndarray[Any, Any], row_offset: int, missing: str | None) -> None:
    """Refuse non-finite values; with ``missing='marginalize'`` only infinity and all-NaN rows.

    ``missing``: the estimator's parameter (``None``: it has none). With ``'error'`` a NaN's
    refusal says that ``missing='marginalize'`` scores rows with missing values.
    """
    if missing == "marginalize":
        check_missing_rows(block, row_offset)
        return
    try:
        _first_non_finite(block, row_offset)
    except InvalidDataError as exc:
        r, c = np.argwhere(~np.isfinite(block))[0]
        if missing is None or not np.isnan(block[r, c]):
            raise
        raise InvalidDataError(
            f"{str(exc).rstrip('.')}, or set missing='marginalize' to score rows with missing "
            f"values."
        ).naming("missing", "missing='marginalize'", "marginalize") from None


def _rowwise_block(
    block: np.ndarray[Any, Any],
    fn: Any,
    args: tuple[Any, ...],
    missing: str | None = None,
    block_info: dict[Any, Any] | None = None,
) -> Any:
    offset = 0
    if block_info is not None and 0 in block_info:
        offset = int(block_info[0]["array-location"][0][0])
    check_rows(block, offset, missing)
    return fn(block, *args)


def apply_rows(
    X: Any,
    fn: Any,
    *args: Any,
    n_features: int,
    name: str,
    out_width: int | None,
    dtype: Any = np.float64,
    missing: str | None = None,
) -> Any:
    """Apply a per-block kernel to every row of ``X``.

    In-memory data (numpy, lists, pandas...) in, numpy out; Dask, Zarr or a path in, a
    lazy Dask array out. ``out_width`` is the number of output columns, or ``None`` for
    one value per row. ``missing``: the estimator's parameter (``None``: it has none);
    with ``'marginalize'`` NaN marks a missing value the kernel handles, and infinity and
    rows with every value missing are refused.
    """
    if not is_out_of_core(X):
        arr = as_numpy_array(X)
        check_features(arr, n_features, name)
        check_rows(arr, 0, missing)
        return fn(arr, *args)
    Xd = as_dask_array(X)
    check_features(Xd, n_features, name)
    if out_width is None:
        return da.map_blocks(
            _rowwise_block,
            Xd,
            fn,
            args,
            missing,
            dtype=dtype,
            drop_axis=1,
            chunks=(Xd.chunks[0],),
        )
    return da.map_blocks(
        _rowwise_block,
        Xd,
        fn,
        args,
        missing,
        dtype=dtype,
        chunks=(Xd.chunks[0], (out_width,)),
    )


_NOT_CONFIG = ("observer", "checkpoint")


def as_checkpoint(value: Any) -> CheckpointStore | None:
    """A :class:`CheckpointStore` from ``None``, a store, or a path."""
    if value is None or isinstance(value, CheckpointStore):
        return value
    if isinstance(value, str | os.PathLike):
        return CheckpointStore(value)
    raise InvalidParameterError(
        f"checkpoint must be None, a path or a CheckpointStore; got {value!r}"
    )


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


def weights_like(sample_weight: Any, values: Any) -> Any:
    """``sample_weight`` checked against ``values`` (one per row) and held as they are.

    numpy for numpy ``values``; a Dask array with the row chunks of Dask ``values``.
    """
    w = check_sample_weight(sample_weight, int(values.shape[0]))
    if isinstance(values, da.Array):
        return da.asarray(w).rechunk((values.chunks[0],))
    return np.asarray(w.compute() if isinstance(w, da.Array) else w)


def weight_total(sample_weight: Any, n_samples: int) -> float:
    """``Σ sample_weight`` (checked): the number of samples the weighted rows count for."""
    total = check_sample_weight(sample_weight, n_samples).sum()
    return float(total.compute() if isinstance(total, da.Array) else total)
