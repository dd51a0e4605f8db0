"""Shared machinery of the estimators: parameters, the fit template, randomness, row maps.

Every estimator's ``fit`` is :meth:`BaseEstimator.fit`: validate the parameter table,
derive the seeds, open and scan the data, run the restarts with the EM engine (resuming a
checkpoint), record the fitted attributes, warn if the kept restart did not converge. A
model says only what differs, in :meth:`BaseEstimator._plan` (its engine family, how a
restart starts and how restarts compare) and :meth:`BaseEstimator._record`.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Self, TypeVar

import dask.array as da
import numpy as np

from emdist._random import child_seeds, resolve_seed
from emdist._typing import FloatArray
from emdist.engine.data import FitData, compute_context, default_sample_size, prepare_fit_data
from emdist.engine.em import EMResult, ModelFamily, Observer
from emdist.engine.restarts import BestRun, RestartGroup, RestartSpec, run_restarts
from emdist.exceptions import ConvergenceWarning, InvalidDataError, InvalidParameterError
from emdist.io.checkpoint import CheckpointStore
from emdist.io.sources import as_dask_array, as_numpy_array, is_out_of_core
from emdist.models._sklearn import SklearnEstimatorMixin
from emdist.models._validation import Constraint, validate_parameters

__all__ = [
    "BaseEstimator",
    "Components",
    "FitPlan",
    "FitSetup",
    "apply_rows",
    "as_checkpoint",
    "check_features",
    "estimator_config",
    "fit_seed",
    "fitted_array",
    "fitted_float",
    "fitted_int",
]

P = TypeVar("P")


@dataclass(frozen=True)
class FitPlan(Generic[P]):
    """What one estimator's fit brings to the shared template.

    Attributes
    ----------
    family : ModelFamily
        The model as the EM engine sees it (E-step, M-step, bound, convergence).
    make_start : callable
        ``make_start(restart, seed)`` -> the restart's starting parameters.
    params_type : callable
        Rebuilds parameters from ``params.arrays()`` (checkpoints).
    score : callable
        Larger is better: which restart is kept (may run a final pass).
    tol : float
        The tolerance the family's convergence test receives.
    final_pass : callable or None
        ``final_pass(result)``: whether ``score`` needs the statistics of one more pass
        under the restart's final parameters (K-means re-assigns under its final centres);
        that pass is shared with the other restarts' iterations. ``None``: never.
    n_shards : int or None, default=None
        Incremental EM over this many shards (the family must support it, see
        :mod:`emdist.engine.incremental`); ``None``: batch EM.
    """

    family: ModelFamily[P, Any]
    make_start: Callable[[int, int], P]
    params_type: Callable[..., P]
    score: Callable[[EMResult[P, Any]], float]
    tol: float
    final_pass: Callable[[EMResult[P, Any]], bool] | None = None
    n_shards: int | None = None

    def run(
        self,
        data: FitData,
        *,
        seeds: list[int],
        max_iter: int,
        seed: int,
        observer: Observer | None = None,
        checkpoint: CheckpointStore | None = None,
        config: dict[str, Any] | None = None,
        previous_bound: float | None = None,
    ) -> BestRun[P]:
        """Run one restart per seed, side by side, and keep the best (see ``run_restarts``).

        Parameters
        ----------
        data : FitData
        seeds : list of int
            One per restart.
        max_iter : int
        seed : int
            The fit's seed, recorded with the checkpoint.
        observer, checkpoint, config, previous_bound :
            As :func:`emdist.engine.restarts.run_restarts`.

        Returns
        -------
        BestRun
        """
        spec = self._spec(seeds, max_iter, seed, observer, checkpoint, config, previous_bound)
        return run_restarts(data, spec, n_shards=self.n_shards)

    def open(
        self,
        data: FitData,
        *,
        seeds: list[int],
        max_iter: int,
        seed: int,
        observer: Observer | None = None,
        checkpoint: CheckpointStore | None = None,
        config: dict[str, Any] | None = None,
        previous_bound: float | None = None,
    ) -> RestartGroup[P, Any]:
        """The restarts of :meth:`run`, started (or resumed), for ``run_groups`` to drive.

        Several fits share their passes this way (:func:`emdist.fit_shared`).

        Returns
        -------
        RestartGroup

        Raises
        ------
        InvalidParameterError
            For incremental EM, whose restarts run one after another, not side by side.
        """
        if self.n_shards is not None:
            raise InvalidParameterError(
                "updates='incremental' fits run alone, not sharing passes with other fits: "
                "fit each estimator with its own fit(), or use updates='batch'"
            )
        spec = self._spec(seeds, max_iter, seed, observer, checkpoint, config, previous_bound)
        return RestartGroup.open(data, spec)

    def _spec(
        self,
        seeds: list[int],
        max_iter: int,
        seed: int,
        observer: Observer | None,
        checkpoint: CheckpointStore | None,
        config: dict[str, Any] | None,
        previous_bound: float | None,
    ) -> RestartSpec[P, Any]:
        return RestartSpec(
            family=self.family,
            seeds=seeds,
            make_start=self.make_start,
            params_from_arrays=self.params_type,
            score=self.score,
            tol=self.tol,
            max_iter=max_iter,
            seed=seed,
            observer=observer,
            checkpoint=checkpoint,
            config=config or {},
            previous_bound=previous_bound,
            final_pass=self.final_pass,
        )


@dataclass(frozen=True)
class FitSetup:
    """What one fit decided before reading the data: scan, seeds, checkpoint, budget.

    Attributes
    ----------
    warm : bool
        Whether the fit continues the estimator's previous one (``warm_start``).
    n_clusters : int
        Components asked for.
    what : str
        The estimator's word for them (error messages).
    sample_seed : int
        Seed of the scan pass's sample.
    sample_size : int or None
        Rows the scan samples for seeding (``None``: the default for ``n_clusters``).
    seeds : list of int
        One per restart.
    max_iter : int
    observer : callable or None
    checkpoint : CheckpointStore or None
    config : dict
        The configuration the checkpoint is tied to.
    seed : int
        The fit's seed.
    previous_bound : float or None
        A warm start's previous bound.
    """

    warm: bool
    n_clusters: int
    what: str
    sample_seed: int
    sample_size: int | None
    seeds: list[int]
    max_iter: int
    observer: Observer | None
    checkpoint: CheckpointStore | None
    config: dict[str, Any]
    seed: int
    previous_bound: float | None

    @property
    def scan_key(self) -> tuple[int, int]:
        """Fits with equal keys can share one scan pass (same sample seed and size)."""
        size = self.sample_size
        return self.sample_seed, default_sample_size(self.n_clusters) if size is None else size

    def scan(self, X: Any, n_clusters: int | None = None) -> FitData:
        """Open ``X`` and run the scan pass (``n_clusters``: the largest of fits sharing it)."""
        return prepare_fit_data(
            X,
            n_clusters=self.n_clusters if n_clusters is None else n_clusters,
            seed=self.sample_seed,
            sample_size=self.scan_key[1],
            what=self.what,
        )

    def run_args(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`FitPlan.run` and :meth:`FitPlan.open`."""
        return {
            "seeds": self.seeds,
            "max_iter": self.max_iter,
            "observer": self.observer,
            "checkpoint": self.checkpoint,
            "config": self.config,
            "seed": self.seed,
            "previous_bound": self.previous_bound,
        }


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


class BaseEstimator(SklearnEstimatorMixin):
    """``get_params`` / ``set_params`` / ``repr`` from the ``__init__`` signature, and ``fit``.

    As in scikit-learn, ``__init__`` only stores its arguments; validation happens in
    ``fit``, so ``set_params`` and cloning behave predictably. Subclasses declare
    ``_parameter_constraints`` and implement :meth:`_plan` and :meth:`_record`. The rest of
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

    def _plan(self, data: FitData, warm: bool) -> FitPlan[Any]:
        """The model's part of the fit, given the scanned data."""
        raise NotImplementedError

    def _record(self, best: BestRun[Any], data: FitData, X: Any) -> None:
        """Set the fitted attributes from the kept restart."""
        raise NotImplementedError

    def fit(self, X: Any, y: Any = None) -> Self:
        """Fit the model, one pass over the data per iteration.

        Parameters
        ----------
        X : array-like, dask.array.Array, zarr.Array, str or path
            Data of shape (n_samples, n_features); a path names a Zarr array (or a
            dataset group written by emdist, whose data array is used).
        y : ignored

        Returns
        -------
        self
        """
        setup = self._setup_fit(X)
        with compute_context():
            data = setup.scan(X)
            best = self._plan(data, setup.warm).run(data, **setup.run_args())
        self._finish_fit(best, data, X)
        return self

    def _setup_fit(self, X: Any) -> FitSetup:
        """Everything a fit decides before reading the data (parameters, seeds, checkpoint)."""
        self._validate_params()
        self._check_input(X)
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
        return FitSetup(
            warm=warm,
            n_clusters=int(getattr(self, self._n_components_param)),
            what=self._n_components_param,
            sample_seed=sample_seed,
            sample_size=self.init_sample_size,
            seeds=child_seeds(restarts_seed, n_init),
            max_iter=int(self.max_iter),
            observer=self.observer,
            checkpoint=checkpoint,
            config=estimator_config(self, **resolved),
            seed=seed,
            # As scikit-learn: a warm start's first change is measured from the last
            # bound of the previous fit, so it can converge at once.
            previous_bound=getattr(self, "lower_bound_", None) if warm else None,
        )

    def _finish_fit(self, best: BestRun[Any], data: FitData, X: Any) -> None:
        """Record the kept restart; warn if it did not converge."""
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
        estimator = cls()
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

    def components(self) -> Components:
        """The fitted components: means, weights and full covariances where the model has them.

        Returns
        -------
        Components
        """
        raise NotImplementedError

    def summary_statistics(self, X: Any) -> dict[str, Any]:
        """The figures a report shows for this fit on ``X`` (at most one pass over it).

        Parameters
        ----------
        X : array-like, dask.array.Array, zarr.Array, str or path

        Returns
        -------
        dict
            Some of ``score``, ``bic``, ``aic``, ``inertia`` (floats) and ``weights``
            (list of floats), as the model defines them.
        """
        raise NotImplementedError


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
