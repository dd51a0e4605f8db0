"""Several fits over the same data sharing every pass, and choosing K with them.

For data that does not fit in memory a fit costs its passes over the data. The fits of a K
sweep are independent, so they run side by side like the restarts of one fit
(:mod:`emdist.engine.lockstep`): each pass reads every block once and feeds every restart
of every K still running; the BIC/AIC of all of them then take one more shared pass.
Each fitted model equals, bit for bit, the model of its own separate ``fit``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from emdist._random import resolve_seed
from emdist.engine.data import FitData, compute_context
from emdist.engine.em import FitSpec, RestartGroup, run_groups
from emdist.engine.lockstep import shared_pass
from emdist.exceptions import InvalidParameterError
from emdist.models._base import BaseEstimator, fit_inputs
from emdist.models._criteria import criteria_rows

__all__ = [
    "ComponentSelection",
    "fit_shared",
    "information_criteria_shared",
    "select_n_components",
    "summary_statistics_shared",
]

#: Criteria a selection may minimise (information criteria) or maximise (the bound).
CRITERIA = ("bic", "aic", "lower_bound")


def fit_shared(
    estimators: Sequence[BaseEstimator], X: Any, sample_weight: Any = None
) -> list[BaseEstimator]:
    """Fit several estimators on the same data, one read of it per pass for all of them.

    Every estimator is fitted as by its own ``fit`` (its parameters, seed, checkpoint,
    observer, warm start) and ends with the same fitted model, bit for bit; the restarts of
    all of them run side by side, so each block is read once per iteration of the longest
    fit. Fits that sample the same rows for seeding (same seed and sample size) share one
    scan pass. Seeding that reads the data on its own (``init_params='kmeans'`` or
    ``'random'``) still takes its passes fit by fit.

    Parameters
    ----------
    estimators : sequence of estimators
        emdist estimators (any families), distinct objects.
    X : array-like, dask.array.Array, zarr.Array, str or path
        The data, as for ``fit``.
    sample_weight : array-like, dask.array.Array, zarr.Array, str or path, optional
        Weights of the rows, as for ``fit``; every fit uses them.

    Returns
    -------
    list
        ``estimators``, fitted.
    """
    estimators = list(estimators)
    if not estimators:
        raise InvalidParameterError("fit_shared needs at least one estimator")
    if len({id(e) for e in estimators}) != len(estimators):
        raise InvalidParameterError("fit_shared needs distinct estimators (one appears twice)")
    for e in estimators:
        if not isinstance(e, BaseEstimator):
            raise InvalidParameterError(f"fit_shared fits emdist estimators; got {e!r}")
    specs = [e._setup_fit(X) for e in estimators]
    if not all(s.schedule.side_by_side for s in specs):
        raise InvalidParameterError(
            "updates='incremental' fits run alone, not sharing passes with other fits: "
            "fit each estimator with its own fit(), or use updates='batch'"
        )
    X, per_row = fit_inputs(X, sample_weight)
    with compute_context():
        datas = _scan_once_per_key(X, specs, per_row)
        groups = [
            RestartGroup.open(data, s.planned(e._plan(data, s.warm)))
            for e, s, data in zip(estimators, specs, datas, strict=True)
        ]
        bests = run_groups(datas[0].rows, groups)
    for e, best, data in zip(estimators, bests, datas, strict=True):
        e._finish_fit(best, data, X)
    return estimators


def _scan_once_per_key(
    X: Any, specs: list[FitSpec[Any, Any]], per_row: dict[str, Any] | None = None
) -> list[FitData]:
    """One scan pass per distinct (sample seed, sample size, missing): the data of every fit."""
    scans = [s.scan for s in specs]
    assert all(scan is not None for scan in scans)
    largest: dict[tuple[int, int, str | None], int] = {}
    for scan in scans:
        assert scan is not None
        largest[scan.key] = max(largest.get(scan.key, 0), scan.n_clusters)
    scanned: dict[tuple[int, int, str | None], FitData] = {}
    out = []
    for scan in scans:
        assert scan is not None
        if scan.key not in scanned:
            scanned[scan.key] = scan.open(X, n_clusters=largest[scan.key], per_row=per_row)
        out.append(scanned[scan.key])
    return out


def _has_criteria(model: Any) -> bool:
    return hasattr(model, "_criteria_step")


def information_criteria_shared(
    models: Sequence[Any], X: Any, sample_weight: Any = None
) -> list[dict[str, float]]:
    """``model.information_criteria(X)`` of every model, from one pass over ``X``.

    Parameters
    ----------
    models : sequence of fitted KMeans or GaussianMixture
        Fitted on ``X`` (K-means' criteria need its training data).
    X : array-like, dask.array.Array, zarr.Array, str or path
    sample_weight : array-like, dask.array.Array, zarr.Array, str or path, optional
        Weights of the rows (``n = Σ w``), as the models' own ``information_criteria``.

    Returns
    -------
    list of dict
        ``{"score", "bic", "aic"}`` per model, equal to its own ``information_criteria``.
    """
    models = list(models)
    if not models:
        return []
    for m in models:
        if not _has_criteria(m):
            raise InvalidParameterError(
                f"{type(m).__name__} has no information criteria (BIC, AIC); "
                f"compare it by its lower bound instead"
            )
        m._check_fitted()
    n_features = {int(m.n_features_in_) for m in models}
    if len(n_features) != 1:
        raise InvalidParameterError(f"the models were fitted on {sorted(n_features)} features")
    data, n = criteria_rows(X, n_features.pop(), type(models[0]).__name__, sample_weight)
    steps = [m._criteria_step() for m in models]
    stats = shared_pass(data, steps)
    return [m._criteria_from(s, n) for m, s in zip(models, stats, strict=True)]


def summary_statistics_shared(
    models: Sequence[Any], X: Any, sample_weight: Any = None
) -> list[dict[str, Any]]:
    """``model.summary_statistics(X)`` of every model, with one pass over ``X`` for all.

    Parameters
    ----------
    models : sequence of fitted estimators
    X : array-like, dask.array.Array, zarr.Array, str or path
    sample_weight : array-like, dask.array.Array, zarr.Array, str or path, optional
        Weights of the rows, for the criteria (:func:`information_criteria_shared`).

    Returns
    -------
    list of dict
    """
    models = list(models)
    with_criteria = [m for m in models if _has_criteria(m)]
    shared = information_criteria_shared(with_criteria, X, sample_weight)
    criteria = dict(zip(map(id, with_criteria), shared, strict=True))
    return [
        m._summary_with(criteria[id(m)])
        if id(m) in criteria
        else m.summary_statistics(X, sample_weight)
        for m in models
    ]


@dataclass(frozen=True)
class ComponentSelection:
    """The fits of a K sweep and the chosen K.

    Attributes
    ----------
    n_components : list of int
        The candidates, ascending.
    estimators : list
        One fitted estimator per candidate.
    criteria : list of dict
        Per candidate: ``lower_bound`` (the kept restart's last bound) and, for models that
        have them, ``score``, ``bic`` and ``aic``.
    criterion : str
        What chose: ``'bic'`` or ``'aic'`` (lowest) or ``'lower_bound'`` (highest).
    best_index : int
        Index of the chosen candidate.
    """

    n_components: list[int]
    estimators: list[Any]
    criteria: list[dict[str, float]]
    criterion: str
    best_index: int

    @property
    def best_n_components(self) -> int:
        """The chosen number of components."""
        return self.n_components[self.best_index]

    @property
    def best_estimator(self) -> Any:
        """The fitted estimator of the chosen number of components."""
        return self.estimators[self.best_index]


def _candidates(n_components: Iterable[int]) -> list[int]:
    values = list(n_components)
    if not values:
        raise InvalidParameterError("n_components must name at least one candidate")
    for k in values:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise InvalidParameterError(f"n_components must be integers >= 1; got {k!r}")
    return sorted({int(k) for k in values})


def select_n_components(
    X: Any,
    estimator: BaseEstimator,
    n_components: Iterable[int] = range(2, 13),
    *,
    criterion: str = "bic",
    sample_weight: Any = None,
) -> ComponentSelection:
    """Fit ``estimator`` for every candidate number of components and choose one.

    The fits share every pass over the data (:func:`fit_shared`): each block is read once
    per iteration for the whole sweep, and once more for the criteria of all candidates.
    Every fit equals a separate ``fit`` of the estimator with that number of components
    and ``random_state`` set to the sweep's seed.

    Parameters
    ----------
    X : array-like, dask.array.Array, zarr.Array, str or path
    estimator : KMeans, GaussianMixture or BayesianGaussianMixture
        A template: its parameters are kept, the number of components is set per
        candidate. ``random_state`` is resolved to one seed for the whole sweep (an int is
        kept; ``None`` or a generator draws one). Checkpoints are per fit: pass estimators
        with their own checkpoints to :func:`fit_shared` instead.
    n_components : iterable of int, default=range(2, 13)
        The candidates (duplicates ignored).
    criterion : {'bic', 'aic', 'lower_bound'}, default='bic'
        ``'bic'`` and ``'aic'`` (lowest wins) for :class:`~emdist.GaussianMixture` and
        :class:`~emdist.KMeans` (the X-means criteria, see
        :meth:`emdist.KMeans.information_criteria`); ``'lower_bound'`` (highest wins) for
        any family, and the one that applies to the variational mixture (its ELBO).
    sample_weight : array-like, dask.array.Array, zarr.Array, str or path, optional
        Weights of the rows, for every fit and the criteria.

    Returns
    -------
    ComponentSelection

    Examples
    --------
    >>> import numpy as np
    >>> from emdist import GaussianMixture, select_n_components
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(c, 0.3, size=(200, 2)) for c in (-3.0, 0.0, 3.0)])
    >>> sel = select_n_components(X, GaussianMixture(random_state=0), n_components=[1, 2, 3, 4])
    >>> sel.best_n_components
    3
    """
    if criterion not in CRITERIA:
        raise InvalidParameterError(f"criterion must be one of {CRITERIA}; got {criterion!r}")
    if not isinstance(estimator, BaseEstimator):
        raise InvalidParameterError(f"estimator must be an emdist estimator; got {estimator!r}")
    if criterion != "lower_bound" and not _has_criteria(estimator):
        raise InvalidParameterError(
            f"{type(estimator).__name__} has no {criterion.upper()}; use criterion='lower_bound'"
        )
    if estimator.checkpoint is not None:
        raise InvalidParameterError(
            "select_n_components keeps no checkpoints (one checkpoint holds one fit); "
            "give each candidate its own with fit_shared"
        )
    candidates = _candidates(n_components)
    seed = resolve_seed(estimator.random_state)
    params = {**estimator.get_params(), "random_state": seed}
    name = estimator._n_components_param
    models = [type(estimator)(**{**params, name: k}) for k in candidates]
    fit_shared(models, X, sample_weight)
    rows: list[dict[str, float]] = [
        {"lower_bound": float(m.lower_bounds_[-1]) if m.lower_bounds_ else float("nan")}
        for m in models
    ]
    if _has_criteria(estimator):
        criteria = information_criteria_shared(models, X, sample_weight)
        for row, c in zip(rows, criteria, strict=True):
            row.update(c)
    values = [row[criterion] for row in rows]
    if criterion == "lower_bound":
        best = max(range(len(values)), key=values.__getitem__)
    else:
        best = min(range(len(values)), key=values.__getitem__)
    return ComponentSelection(candidates, models, rows, criterion, best)
