"""``partial_fit``: one online update per batch (stepwise EM, mini-batch K-means).

A batch is reduced by the fit's own E-step kernels through :func:`map_reduce` (numpy
directly, a Dask batch over its blocks), then the running statistics kept on the estimator
move by one update (:mod:`emdist.kernels.stepwise`) and the ordinary M-step runs on them.

- The first call of an unfitted estimator starts from its batch as ``fit`` would (the
  batch is scanned and checked like ``fit``'s data, then seeded by ``init_params`` /
  ``init`` or the user's arrays), and its update has no previous statistics: for a mixture
  it is exactly one EM iteration on the batch, for K-means scikit-learn's first
  ``MiniBatchKMeans.partial_fit`` step.
- After ``fit`` (or a loaded model without running statistics) the first update starts
  from the fitted parameters as from given initial ones: it moves them by the batch alone.
- The running statistics are public arrays ending in ``_`` (``running_*_``, ``counts_``),
  so :func:`emdist.save_model` / :func:`emdist.load_model` keep them and a loaded model
  continues the stream exactly. ``fit`` drops them (``BaseEstimator._stream_attributes``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from emdist._random import resolve_seed
from emdist.engine.data import FitData, compute_context
from emdist.engine.reduce import Rows, map_reduce
from emdist.exceptions import InvalidDataError, InvalidParameterError
from emdist.io.sources import as_dask_array, as_numpy_array, is_out_of_core
from emdist.kernels.covariance import covariance_shape
from emdist.kernels.kmeans import KMeansParams, KMeansStats, kmeans_estep_chunk
from emdist.kernels.missing import check_missing_rows
from emdist.kernels.mixture import MixtureParams, MixtureStats
from emdist.kernels.rebase import rebase_mixture_stats
from emdist.kernels.rows import RowBlock
from emdist.kernels.stepwise import (
    blend_mixture_stats,
    low_count_clusters,
    minibatch_centers,
    scaled_mixture_stats,
    step_size,
)
from emdist.models._base import (
    check_features,
    check_sample_weight,
    fitted_array,
    fitted_float,
    fitted_int,
)
from emdist.models._validation import Constraint

__all__ = [
    "MIXTURE_STREAM_ATTRIBUTES",
    "VARIATIONAL_STREAM_ATTRIBUTES",
    "KMEANS_STREAM_ATTRIBUTES",
    "REASSIGNMENT_RATIO",
    "check_stream_values",
    "partial_fit_kmeans",
    "partial_fit_mixture",
    "partial_fit_variational",
    "step_decay_constraint",
]

#: The running state of a mixture's stream (dropped by ``fit``).
MIXTURE_STREAM_ATTRIBUTES = ("n_steps_", "running_nk_", "running_sx_", "running_sxx_")
#: The running state of the variational mixture's stream: the mixture's and the weight of
#: every row seen (SVI's data size).
VARIATIONAL_STREAM_ATTRIBUTES = (*MIXTURE_STREAM_ATTRIBUTES, "n_seen_")
#: The running state of K-means' stream (dropped by ``fit``).
KMEANS_STREAM_ATTRIBUTES = ("n_steps_", "counts_", "n_since_reassign_", "stream_seed_")
#: scikit-learn's ``MiniBatchKMeans`` default: centres lighter than this fraction of the
#: heaviest are moved to random rows of the batch.
REASSIGNMENT_RATIO = 0.01

step_decay_constraint = Constraint(
    "a float in (0.5, 1]",
    lambda v: (
        isinstance(v, int | float | np.floating)
        and not isinstance(v, bool)
        and 0.5 < float(v) <= 1.0
    ),
)


def _non_finite_at(x: Any, row_offset: int) -> None:
    finite = np.isfinite(x)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise InvalidDataError(
            f"X contains NaN or infinity at row {int(r) + row_offset}, column {int(c)}; "
            f"remove or impute non-finite values."
        )


def _checked_estep(block: RowBlock, estep: Callable[..., Any], *args: Any) -> Any:
    """The E-step of a block whose values are checked first (a later batch is not scanned).

    A family with ``missing='marginalize'`` takes NaN: only infinity and rows with every
    value missing are refused.
    """
    if getattr(getattr(estep, "__self__", None), "missing", "error") == "marginalize":
        check_missing_rows(block.x, block.row_offset)
    else:
        _non_finite_at(block.x, block.row_offset)
    return estep(block, *args)


def _refuse_checkpoint(estimator: Any) -> None:
    if estimator.checkpoint is not None:
        # A checkpoint resumes one fit over one dataset; a stream has neither.
        raise InvalidParameterError("partial_fit does not use checkpoint; set checkpoint=None")


def _first_batch(estimator: Any, X: Any, sample_weight: Any) -> tuple[Rows, Any, int]:
    """The first batch opened and scanned as ``fit``'s data, and the start seeded from it.

    Returns the rows, the starting parameters and the fit seed.
    """
    spec = estimator._setup_fit(X)
    assert spec.scan is not None
    if sample_weight is not None and not is_out_of_core(X):
        X = as_numpy_array(X)
    per_row = None
    if sample_weight is not None:
        n = int(X.shape[0] if isinstance(X, np.ndarray) else as_dask_array(X).shape[0])
        per_row = {"weights": check_sample_weight(sample_weight, n)}
    data: FitData = spec.scan.open(X, per_row=per_row)
    start = estimator._plan(data, False).make_start(0, spec.seeds[0])
    return data.rows, start, spec.seed


def _later_batch(estimator: Any, X: Any, sample_weight: Any) -> Rows:
    """A batch for a fitted estimator: its width, rows and weights checked (values per block)."""
    estimator._check_fitted(X)
    name = type(estimator).__name__
    x: Any = as_dask_array(X) if is_out_of_core(X) else as_numpy_array(X)
    if x.ndim != 2:
        raise InvalidDataError(f"X must be 2-D (n_samples, n_features); got shape {x.shape}")
    check_features(x, int(estimator.n_features_in_), name)
    n = int(x.shape[0])
    if n == 0:
        raise InvalidDataError("X has no rows; partial_fit needs at least one")
    per_row = {} if sample_weight is None else {"weights": check_sample_weight(sample_weight, n)}
    return Rows(x, per_row)


def _record_step(estimator: Any, rows: Rows, bound: float, n_steps: int) -> None:
    # One update is recorded as a one-iteration fit (what a saved model must hold): its
    # bound is the batch's under the parameters before the update, and one update is no
    # convergence test. The width last: it makes the estimator fitted, so a first batch
    # that fails leaves it unfitted.
    estimator.lower_bound_ = bound
    estimator.lower_bounds_ = [bound]
    estimator.n_iter_ = 1
    estimator.converged_ = False
    estimator.n_steps_ = n_steps
    estimator.n_features_in_ = int(rows.x.shape[1])


# -- stepwise EM --------------------------------------------------------------------------


def _running_mixture(estimator: Any) -> MixtureStats | None:
    """The kept statistics per unit weight, about ``means_`` (``None`` if there are none)."""
    if not all(hasattr(estimator, a) for a in estimator._stream_attributes):
        return None
    return MixtureStats(
        1.0,
        0.0,
        np.asarray(estimator.running_nk_, dtype=np.float64),
        np.asarray(estimator.running_sx_, dtype=np.float64),
        np.asarray(estimator.running_sxx_, dtype=np.float64),
        estimator.means_,
    )


def partial_fit_mixture(estimator: Any, X: Any, sample_weight: Any) -> None:
    """One stepwise-EM update of a GaussianMixture on the batch ``X`` (module docstring)."""
    estimator._validate_params()
    _refuse_checkpoint(estimator)
    family = estimator._family()
    params: MixtureParams
    with compute_context():
        if estimator.__sklearn_is_fitted__():
            rows = _later_batch(estimator, X, sample_weight)
            params = estimator._params()
            running = _running_mixture(estimator)
            n_steps = int(getattr(estimator, "n_steps_", 0)) if running is not None else 0
        else:
            rows, params, _ = _first_batch(estimator, X, sample_weight)
            running, n_steps = None, 0
        batch: MixtureStats = map_reduce(rows, _checked_estep, family.estep_chunk, params)
    eta = 1.0 if running is None else step_size(n_steps, float(estimator.step_decay))
    stats = blend_mixture_stats(running, batch, eta, estimator.covariance_type)
    new = family.mstep(scaled_mixture_stats(stats, batch.n), params)
    # Kept about the new means, so the saved model needs no shift of its own.
    kept = rebase_mixture_stats(stats, new.means, estimator.covariance_type)
    estimator._set_params(new)
    estimator.running_nk_ = kept.nk
    estimator.running_sx_ = kept.sx
    estimator.running_sxx_ = kept.sxx
    _record_step(estimator, rows, batch.log_lik / batch.n, n_steps + 1)


def partial_fit_variational(estimator: Any, X: Any, sample_weight: Any) -> None:
    """One stochastic variational update of a BayesianGaussianMixture (Hoffman et al. 2013).

    The posterior's natural parameters are the prior's plus the expected sufficient
    statistics, so SVI's step ``λ ← (1 - ρ) λ + ρ (prior + D · stats(batch) / n_batch)``
    is the variational M-step run on the stepwise-blended statistics per unit weight
    scaled to ``D``: here the weight of every row seen so far (``n_seen_``).
    """
    estimator._validate_params()
    _refuse_checkpoint(estimator)
    covariance_type = estimator.covariance_type
    with compute_context():
        if estimator.__sklearn_is_fitted__():
            rows = _later_batch(estimator, X, sample_weight)
            params = estimator._params()
            running = _running_mixture(estimator)
            n_steps = int(estimator.n_steps_) if running is not None else 0
            n_seen = float(estimator.n_seen_) if running is not None else 0.0
        else:
            rows, params, _ = _first_batch(estimator, X, sample_weight)
            running, n_steps, n_seen = None, 0, 0.0
        family = estimator._family()  # the priors are known once the first batch is
        batch = map_reduce(rows, _checked_estep, family.estep_chunk, params)
    eta = 1.0 if running is None else step_size(n_steps, float(estimator.step_decay))
    moments = blend_mixture_stats(running, batch.moments, eta, covariance_type)
    n_seen += float(batch.n)
    new = family.mstep(type(batch)(scaled_mixture_stats(moments, n_seen), 0.0), params)
    # The batch's own ELBO per sample (as a fit on the batch alone reports it).
    bound = family.lower_bound(batch, params)
    kept = rebase_mixture_stats(moments, new.means, covariance_type)
    estimator._set_params(new)
    estimator.running_nk_ = kept.nk
    estimator.running_sx_ = kept.sx
    estimator.running_sxx_ = kept.sxx
    estimator.n_seen_ = n_seen
    _record_step(estimator, rows, bound, n_steps + 1)


# -- mini-batch K-means -------------------------------------------------------------------


def partial_fit_kmeans(estimator: Any, X: Any, sample_weight: Any) -> None:
    """One mini-batch K-means step of a KMeans on the batch ``X`` (scikit-learn's rule)."""
    estimator._validate_params()
    _refuse_checkpoint(estimator)
    K = int(estimator.n_clusters)
    with compute_context():
        if estimator.__sklearn_is_fitted__():
            rows = _later_batch(estimator, X, sample_weight)
            centers = np.asarray(estimator.cluster_centers_, dtype=np.float64)
            counts = getattr(estimator, "counts_", None)
            streaming = counts is not None and hasattr(estimator, "stream_seed_")
            if streaming:
                counts = np.asarray(counts, dtype=np.float64)
                n_since = int(estimator.n_since_reassign_)
                seed = int(estimator.stream_seed_)
                n_steps = int(estimator.n_steps_)
            else:
                counts = np.zeros(K)
                n_since, n_steps = 0, 0
                seed = resolve_seed(estimator.random_state)
        else:
            rows, start, seed = _first_batch(estimator, X, sample_weight)
            centers = np.asarray(start.centers, dtype=np.float64)
            counts = np.zeros(K)
            n_since, n_steps = 0, 0
        stats: KMeansStats = map_reduce(
            rows, _checked_estep, kmeans_estep_chunk, KMeansParams(centers)
        )
        n_rows = int(stats.n)
        # scikit-learn looks for light centres every 10 * n_clusters rows seen, and
        # whenever a centre had no weight before the step (so always on the first).
        n_since += n_rows
        reassign = bool((counts == 0).any()) or n_since >= 10 * K
        centers, counts = minibatch_centers(centers, counts, stats)
        if reassign:
            n_since = 0
            low = low_count_clusters(counts, REASSIGNMENT_RATIO, n_rows)
            n_low = int(low.sum())
            if n_low:
                # Seeded by the stream and the step: a loaded model draws the same rows.
                rng = np.random.default_rng([seed, n_steps])
                idx = rng.choice(n_rows, size=n_low, replace=False)
                picked = rows.x[idx]
                centers[low] = np.asarray(
                    picked if isinstance(picked, np.ndarray) else picked.compute(),
                    dtype=np.float64,
                )
                counts[low] = counts[~low].min()
    weight = float(stats.counts.sum())
    estimator.cluster_centers_ = centers
    estimator.counts_ = counts
    estimator.n_since_reassign_ = n_since
    estimator.stream_seed_ = int(seed)
    estimator.inertia_ = float(stats.inertia)
    # Labels and cluster sizes of a previous fit's data no longer match the centres.
    estimator.__dict__.pop("labels_", None)
    estimator._training_sizes = None
    _record_step(estimator, rows, -float(stats.inertia) / weight, n_steps + 1)


# -- what a saved stream must hold --------------------------------------------------------


def _count(estimator: Any, field: str, low: int) -> int:
    value = getattr(estimator, field)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"field {field!r} is {value!r}, not an int >= {low}")
    return int(value)


def _non_negative(estimator: Any, field: str, shape: tuple[int, ...]) -> None:
    value = fitted_array(estimator, field, shape)
    if np.any(value < 0):
        raise ValueError(f"field {field!r} holds a negative value")


def check_stream_values(estimator: Any, attributes: tuple[str, ...]) -> None:
    """Check a loaded model's running statistics, if it has any (all or none of them).

    Raises
    ------
    ValueError
        Naming the field that is missing, misshaped, non-finite or out of range.
    """
    present = [a for a in attributes if hasattr(estimator, a)]
    if not present:
        return
    missing = [a for a in attributes if a not in present]
    if missing:
        raise ValueError(f"field {missing[0]!r} is missing (the stream's state is partial)")
    _count(estimator, "n_steps_", 1)
    d = fitted_int(estimator, "n_features_in_")
    if "n_seen_" in attributes and not fitted_float(estimator, "n_seen_") > 0:
        raise ValueError(f"field 'n_seen_' is {estimator.n_seen_!r}, not > 0")
    if "running_nk_" in attributes:
        K = fitted_int(estimator, "n_components")
        _non_negative(estimator, "running_nk_", (K,))
        fitted_array(estimator, "running_sx_", (K, d))
        fitted_array(estimator, "running_sxx_", covariance_shape(estimator.covariance_type, K, d))
    else:
        K = fitted_int(estimator, "n_clusters")
        _non_negative(estimator, "counts_", (K,))
        _count(estimator, "n_since_reassign_", 0)
        _count(estimator, "stream_seed_", 0)
