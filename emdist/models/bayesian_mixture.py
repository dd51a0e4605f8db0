"""Variational Bayesian Gaussian mixture, one pass over row-chunked data per iteration.

The same engine as every other family: a pass maps the row-blocks to summable statistics
(:func:`~emdist.kernels.variational.variational_estep_chunk`), tree-reduces them, and the
client runs the variational M-step and evaluates the ELBO from the reduced statistics.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from emdist._typing import AnyArray, CovarianceType, FloatArray
from emdist.engine.acceleration import ACCELERATIONS, accelerated
from emdist.engine.data import FitData
from emdist.engine.em import ModelPlan, Observer, Schedule, run_em
from emdist.engine.reduce import PassData, Rows, map_reduce
from emdist.engine.threads import blas_single_threaded
from emdist.exceptions import InvalidDataError, InvalidParameterError
from emdist.io.checkpoint import CheckpointStore
from emdist.io.sources import as_dask_array
from emdist.kernels.gaussian import precisions_from_cholesky
from emdist.kernels.missing import MISSING
from emdist.kernels.mixture import MixtureStats
from emdist.kernels.mixture_vector import variational_from_vector, variational_to_vector
from emdist.kernels.rebase import rebase_mixture_stats
from emdist.kernels.rows import RowBlock
from emdist.kernels.variational import (
    WEIGHT_PRIOR_TYPES,
    VariationalParams,
    VariationalPriors,
    VariationalStats,
    WeightPriorType,
    pairwise_scatter_chunk,
    scatter_stats_chunk,
    variational_estep_chunk,
    variational_estep_missing_chunk,
    variational_log_prob_chunk,
    variational_log_prob_missing_chunk,
    variational_lower_bound,
    variational_mstep,
)
from emdist.models._docs import fill_doc
from emdist.models._mixture import BaseMixture, initial_resp_stats
from emdist.models._partial import (
    VARIATIONAL_STREAM_ATTRIBUTES,
    check_stream_values,
    partial_fit_variational,
    step_decay_constraint,
)
from emdist.models._validation import (
    Constraint,
    any_of,
    boolean,
    check_data_scale,
    is_none,
    one_of,
)
from emdist.registry import register_family

__all__ = [
    "BayesianGaussianMixture",
    "BayesianMixtureFamily",
    "SampleFitFamily",
    "prefit_on_sample",
    "resolve_priors",
]

#: The fit on the scan sample stops at ``tol * PREFIT_TOL_FACTOR`` (or after
#: ``max_iter * PREFIT_ITER_FACTOR`` iterations): a split cluster merges over a long plateau
#: of small bound changes, and iterations on the sample read no data (benchmarks/README.md,
#: "Variational mixture at its defaults").
PREFIT_TOL_FACTOR = 0.1
PREFIT_ITER_FACTOR = 10


@dataclass(frozen=True, eq=False)
class BayesianMixtureFamily:
    """The variational Gaussian mixture as a model family of the EM engine.

    The lower bound of a pass run under ``q_t(θ)`` is the ELBO of that pass's
    responsibilities ``q_t(Z)`` together with the posterior ``q_{t+1}(θ)`` the M-step
    computes from them — scikit-learn's ``_compute_lower_bound`` after its ``_m_step`` —
    divided by the number of samples. Converged when its change is below ``tol`` in
    absolute value.

    Attributes
    ----------
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    reg_covar : float
    priors : VariationalPriors
    """

    covariance_type: CovarianceType
    reg_covar: float
    priors: VariationalPriors
    #: ``'marginalize'``: NaN marks a missing value (:mod:`emdist.kernels.missing`).
    missing: str = "error"
    #: Incremental EM (emdist.engine.incremental) restores kept statistics of this class.
    stats_type: ClassVar[type[VariationalStats]] = VariationalStats

    def estep_chunk(self, block: RowBlock, params: VariationalParams) -> VariationalStats:
        """Variational responsibilities of one block, reduced to statistics."""
        if self.missing == "marginalize":
            return variational_estep_missing_chunk(block, params, self.covariance_type)
        return variational_estep_chunk(block, params, self.covariance_type)

    def mstep(self, stats: VariationalStats, params: VariationalParams) -> VariationalParams:
        """The posterior given the responsibilities summarised by ``stats``."""
        return variational_mstep(stats.moments, self.priors, self.covariance_type, self.reg_covar)

    def lower_bound(self, stats: VariationalStats, params: VariationalParams) -> float:
        """Per-sample ELBO of ``stats``' responsibilities and the posterior they give.

        The M-step is a few small factorisations on the client; running it here as well
        as in :meth:`mstep` keeps the family stateless.
        """
        posterior = self.mstep(stats, params)
        return float(variational_lower_bound(stats, posterior, self.covariance_type) / stats.n)

    def converged(
        self,
        prev_bound: float,
        bound: float,
        params: VariationalParams,
        new_params: VariationalParams,
        tol: float,
    ) -> bool:
        """``|Δ per-sample ELBO| < tol``."""
        return abs(bound - prev_bound) < tol

    # -- incremental EM (emdist.engine.incremental) -------------------------------------

    def rebase(self, stats: VariationalStats, params: VariationalParams) -> VariationalStats:
        """``stats`` with their moments about the posterior means of ``params``."""
        moments = rebase_mixture_stats(stats.moments, params.means, self.covariance_type)
        return VariationalStats(moments, stats.resp_log_resp)

    def entropy(self, stats: VariationalStats, params: VariationalParams) -> float:
        """0: the statistics carry ``Σ r log r`` themselves."""
        return 0.0

    # -- accelerated EM (emdist.engine.acceleration) ------------------------------------

    def to_vector(self, params: VariationalParams) -> FloatArray:
        """The posterior as one vector (positive parameters by their logarithms)."""
        return variational_to_vector(params)

    def from_vector(self, vector: FloatArray, like: VariationalParams) -> VariationalParams | None:
        """A posterior from a vector, projected (covariances positive definite)."""
        return variational_from_vector(vector, like, self.covariance_type, self.reg_covar)

    def free_energy(
        self, stats: VariationalStats, entropy: float, params: VariationalParams
    ) -> float:
        """Per-sample ELBO of the kept responsibilities and ``params``, their posterior."""
        return float(variational_lower_bound(stats, params, self.covariance_type) / stats.n)


# ---------------------------------------------------------------------------- the priors


def _positive_real(value: Any, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidParameterError(
            f"{name} must be None or a positive finite float; got {value!r}"
        )
    return float(value)


def _user_array(value: Any, shape: tuple[int, ...], name: str) -> FloatArray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"{name} must be an array of shape {shape}; got {value!r}"
        ) from None
    if arr.shape != shape:
        raise InvalidParameterError(f"{name} has shape {arr.shape}; expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidParameterError(f"{name} contains NaN or infinity")
    return arr


@dataclass(frozen=True)
class _UserPriors:
    """The user's priors, checked against ``n_features``; ``None`` = from the data."""

    weight_concentration: float | None
    mean_precision: float
    mean: FloatArray | None
    degrees_of_freedom: float
    covariance: FloatArray | float | None


def _check_priors(
    est: BayesianGaussianMixture, n_features: int, covariance_type: CovarianceType
) -> _UserPriors:
    """Validate the prior parameters before any data is read."""
    d = n_features
    wc = est.weight_concentration_prior
    weight = None if wc is None else _positive_real(wc, "weight_concentration_prior")
    mp = est.mean_precision_prior
    mean_precision = 1.0 if mp is None else _positive_real(mp, "mean_precision_prior")
    mean = None if est.mean_prior is None else _user_array(est.mean_prior, (d,), "mean_prior")
    dof = est.degrees_of_freedom_prior
    if dof is None:
        degrees_of_freedom = float(d)
    else:
        degrees_of_freedom = _positive_real(dof, "degrees_of_freedom_prior")
        if not degrees_of_freedom > d - 1.0:
            raise InvalidParameterError(
                f"degrees_of_freedom_prior must be greater than n_features - 1 = {d - 1} "
                f"(a Wishart needs it); got {dof!r}"
            )
    cp = est.covariance_prior
    covariance: FloatArray | float | None
    if cp is None:
        covariance = None
    elif covariance_type in ("full", "tied"):
        covariance = _user_array(cp, (d, d), f"{covariance_type} covariance_prior")
        if not (
            np.allclose(covariance, covariance.T) and np.all(np.linalg.eigvalsh(covariance) > 0)
        ):
            raise InvalidParameterError(
                f"{covariance_type} covariance_prior must be symmetric positive definite"
            )
    elif covariance_type == "diag":
        covariance = _user_array(cp, (d,), "diag covariance_prior")
        if np.any(covariance <= 0):
            raise InvalidParameterError("diag covariance_prior must be positive")
    else:
        covariance = _positive_real(cp, "spherical covariance_prior")
    return _UserPriors(weight, mean_precision, mean, degrees_of_freedom, covariance)


def resolve_priors(
    data: FitData,
    *,
    n_components: int,
    covariance_type: CovarianceType,
    weight_concentration_prior_type: WeightPriorType,
    weight_concentration_prior: float | None,
    mean_precision_prior: float,
    mean_prior: FloatArray | None,
    degrees_of_freedom_prior: float,
    covariance_prior: FloatArray | float | None,
) -> VariationalPriors:
    """Fill in the data-dependent defaults of the priors, as scikit-learn.

    ``weight_concentration_prior`` defaults to ``1 / n_components``; ``mean_prior`` to the
    data mean and ``covariance_prior`` to the empirical covariance (``ddof=1``: full and
    tied the matrix, diag the variances, spherical their mean). Mean and variances come
    from the scan pass; the full matrix takes one extra pass, accumulated about the scan
    pass's mean so that it suffers no cancellation.

    Raises
    ------
    InvalidDataError
        If the empirical covariance is needed and there is a single sample.
    """
    summary = data.summary
    n = summary.n_samples
    covariance: FloatArray | float
    missing = summary.n_observed is not None
    if (missing or "weights" in data.per_row) and (mean_prior is None or covariance_prior is None):
        return _weighted_priors(
            data,
            n_components=n_components,
            covariance_type=covariance_type,
            weight_concentration_prior_type=weight_concentration_prior_type,
            weight_concentration_prior=weight_concentration_prior,
            mean_precision_prior=mean_precision_prior,
            mean_prior=mean_prior,
            degrees_of_freedom_prior=degrees_of_freedom_prior,
            covariance_prior=covariance_prior,
        )
    if covariance_prior is not None:
        covariance = covariance_prior
    else:
        if n < 2:
            raise InvalidDataError(
                f"The default covariance_prior is the empirical covariance of X, which needs "
                f"at least 2 samples (got n_samples={n}); pass covariance_prior or more data."
            )
        if covariance_type in ("full", "tied"):
            scatter: MixtureStats = map_reduce(data.X, scatter_stats_chunk, summary.mean)
            delta = scatter.sx[0] / n
            covariance = (scatter.sxx[0] - n * np.outer(delta, delta)) / (n - 1)
        elif covariance_type == "diag":
            covariance = summary.variance * (n / (n - 1))
        else:
            covariance = float(np.mean(summary.variance * (n / (n - 1))))
    return VariationalPriors(
        weight_concentration_prior_type=weight_concentration_prior_type,
        weight_concentration=(
            1.0 / n_components
            if weight_concentration_prior is None
            else float(weight_concentration_prior)
        ),
        mean_precision=float(mean_precision_prior),
        mean=summary.mean.copy() if mean_prior is None else mean_prior,
        degrees_of_freedom=float(degrees_of_freedom_prior),
        covariance=covariance,
    )


def _pairwise_moments(data: FitData) -> tuple[FloatArray, FloatArray, float]:
    """Mean, covariance and total weight of data with missing values, pair by pair.

    Every mean over the rows observing the feature, every covariance entry over the rows
    observing both features (``ddof=1`` on their weight): one pass. A pairwise matrix need
    not be positive definite; then its diagonal (the variances) is used.
    """
    center = data.summary.mean
    moments = np.asarray(map_reduce(data.rows, pairwise_scatter_chunk, center))
    d = center.shape[0]
    products, counts = moments[0, :, :d], moments[1, :, :d]
    n_j = moments[1, :, d]
    delta = moments[0, :, d] / np.maximum(n_j, 1e-300)
    full = (products - counts * np.outer(delta, delta)) / np.maximum(counts - 1.0, 1e-300)
    full = 0.5 * (full + full.T)
    try:
        np.linalg.cholesky(full)
    except np.linalg.LinAlgError:
        full = np.diag(np.diag(full))
    return center + delta, full, float(np.max(n_j))


def _weighted_priors(
    data: FitData,
    *,
    n_components: int,
    covariance_type: CovarianceType,
    weight_concentration_prior_type: WeightPriorType,
    weight_concentration_prior: float | None,
    mean_precision_prior: float,
    mean_prior: FloatArray | None,
    degrees_of_freedom_prior: float,
    covariance_prior: FloatArray | float | None,
) -> VariationalPriors:
    """:func:`resolve_priors` of weighted rows: the weighted mean and covariance.

    The defaults of the rows repeated ``w`` times (``ddof=1`` on ``n = Σ w``), from one pass
    of weighted moments about the scan pass's mean (the scan's own moments are unweighted).
    Data with missing values (weighted or not) take them pair by pair
    (:func:`_pairwise_moments`).

    Raises
    ------
    InvalidDataError
        If the covariance is needed and the weights sum to at most 1.
    """
    if data.summary.n_observed is not None:
        mean, full, total = _pairwise_moments(data)
    else:
        scatter: MixtureStats = map_reduce(data.rows, scatter_stats_chunk, data.summary.mean)
        total = float(scatter.nk[0])
        delta = scatter.sx[0] / total
        mean = data.summary.mean + delta
        full = (scatter.sxx[0] - total * np.outer(delta, delta)) / max(total - 1.0, 1e-300)
    covariance: FloatArray | float
    if covariance_prior is not None:
        covariance = covariance_prior
    else:
        if total <= 1.0:
            raise InvalidDataError(
                f"The default covariance_prior is the weighted covariance of X, which needs "
                f"sample_weight to sum to more than 1 (got {total}); pass covariance_prior."
            )
        if covariance_type in ("full", "tied"):
            covariance = full
        elif covariance_type == "diag":
            covariance = np.diag(full).copy()
        else:
            covariance = float(np.mean(np.diag(full)))
    return VariationalPriors(
        weight_concentration_prior_type=weight_concentration_prior_type,
        weight_concentration=(
            1.0 / n_components
            if weight_concentration_prior is None
            else float(weight_concentration_prior)
        ),
        mean_precision=float(mean_precision_prior),
        mean=mean if mean_prior is None else mean_prior,
        degrees_of_freedom=float(degrees_of_freedom_prior),
        covariance=covariance,
    )


def _n_features(X: Any) -> int:
    """Number of columns of ``X`` without reading it."""
    try:
        shape = np.shape(X) if isinstance(X, np.ndarray | list | tuple) else None
    except ValueError as exc:  # rows of different lengths (a ragged list)
        raise InvalidDataError(
            f"X cannot be read as a 2-D array: {' '.join(str(exc).split())}"
        ) from None
    if shape is None:
        shape = as_dask_array(X).shape
    if len(shape) != 2:
        raise InvalidDataError(
            f"X must be 2-D (n_samples, n_features); got {len(shape)}-D data of shape "
            f"{tuple(shape)}. Reshape 1-D data with X.reshape(-1, 1)."
        )
    return int(shape[1])


# ------------------------------------------------------------------- fit on the sample


@dataclass(frozen=True, eq=False)
class SampleFitFamily(BayesianMixtureFamily):
    """The variational mixture as fitted on the scan sample: also waits for the weights.

    While two components that split one cluster merge, the bound can change by less than
    1e-6 per sample for a hundred iterations and then grow again (docs/design.md
    #initialisation); the weights keep moving all along. The fit on the sample is an
    initialisation, not scikit-learn's algorithm, so it may test both.
    """

    def converged(
        self,
        prev_bound: float,
        bound: float,
        params: VariationalParams,
        new_params: VariationalParams,
        tol: float,
    ) -> bool:
        """``|Δ per-sample ELBO| < tol`` and no mixing weight moved by ``tol`` or more."""
        moved = float(np.max(np.abs(new_params.weights - params.weights)))
        return abs(bound - prev_bound) < tol and moved < tol


def prefit_on_sample(
    data: FitData,
    family: BayesianMixtureFamily,
    start: VariationalParams,
    *,
    tol: float,
    max_iter: int,
) -> VariationalParams:
    """Run the variational fit on the scan sample in memory; its posterior, scaled to the data.

    Unneeded components fade over hundreds of iterations (docs/design.md#initialisation);
    on the scan sample, in memory, those iterations read no data. The last responsibilities
    of the sample fit, their statistics scaled by ``n_samples / sample rows`` (statistics
    are sums), give the posterior that the passes over the data start from: the components
    the sample emptied start empty.

    Parameters
    ----------
    data : FitData
        The scanned data; its ``summary.sample`` is fitted.
    family : BayesianMixtureFamily
        The model, with the priors of the whole data (fitted on the sample as a
        :class:`SampleFitFamily`).
    start : VariationalParams
        Where the sample fit starts (from ``init_params``).
    tol, max_iter : float, int
        Convergence test of the sample fit (:meth:`SampleFitFamily.converged`).

    Returns
    -------
    VariationalParams
    """
    summary = data.summary
    sample: PassData = summary.sample
    total: float = summary.n_samples
    if summary.sample_weight is not None and summary.weight_sum is not None:
        # The sample's rows weigh what they weigh in the data; scaled to the total weight.
        sample = Rows(summary.sample, {"weights": summary.sample_weight})
        total = summary.weight_sum
    # One BLAS thread whatever the scheduler: the start must not depend on it (bitwise).
    with blas_single_threaded():
        on_sample = SampleFitFamily(
            family.covariance_type, family.reg_covar, family.priors, family.missing
        )
        result = run_em(sample, on_sample, start, tol=tol, max_iter=max_iter)
        assert result.stats is not None  # max_iter >= 1: at least one pass ran
        moments = result.stats.moments
        factor = total / moments.n
        scaled = dataclasses.replace(
            moments,
            n=moments.n * factor,
            log_lik=moments.log_lik * factor,
            nk=moments.nk * factor,
            sx=moments.sx * factor,
            sxx=moments.sxx * factor,
        )
        return variational_mstep(scaled, family.priors, family.covariance_type, family.reg_covar)


# ----------------------------------------------------------------------------- estimator


@register_family(
    "bayesian_gmm", summary="variational Bayesian Gaussian mixture (prunes components)"
)
@fill_doc
class BayesianGaussianMixture(BaseMixture):
    """Variational Bayesian Gaussian mixture, one pass over the data per iteration.

    Follows :class:`sklearn.mixture.BayesianGaussianMixture` (names, meanings, attributes,
    numbers): from the same initial responsibilities it reproduces its iterations. The
    data may be a Dask array, a Zarr array or a path to one, larger than memory: each
    iteration maps the row-blocks to summable statistics (moments of the variational
    responsibilities and ``Σ r log r``), tree-reduces them, and runs the variational
    M-step and the ELBO on the client. With ``n_components`` set above the number of
    clusters, the weights of unneeded components shrink towards zero; by default they do
    so first on the scan sample in memory (``prefit_on_sample``), so that the data is
    read a few times rather than the hundreds of iterations that fading takes.
    ``prefit_on_sample=False`` runs scikit-learn's iterations exactly.

    Parameters
    ----------
    n_components : int, default=1
        Upper bound on the number of components.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
    tol : float, default=1e-5
        Converged when the **per-sample** lower bound changes by less than ``tol``. Unlike
        scikit-learn, which compares the change of the *total* bound with ``tol``, this
        ``tol`` means the same for any dataset size and the same as for
        :class:`~emdist.GaussianMixture`; scikit-learn's ``tol=t`` on ``n`` samples is
        ``tol=t / n`` here. The default is smaller than scikit-learn's ``1e-3`` because
        unneeded components fade slowly, with small per-sample gains: on 3 clusters of 700
        points fitted with 10 components, ``tol=1e-3`` per sample stopped after 25
        iterations with 8 components above 1% weight, ``1e-5`` after 88 with 3 (scikit-learn,
        whose ``1e-3`` on the total is ``5e-7`` per sample there, ran 100).
    reg_covar : float, default=1e-6
        Added to the diagonal of the empirical covariances of the components.
    max_iter : int, default=100
        Iterations per restart (one pass over the data each).
    n_init : int, default=1
        Restarts; the one with the highest final lower bound is kept.
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, default='kmeans'
        How the initial responsibilities are chosen (the same as
        :class:`~emdist.GaussianMixture`'s for the same ``random_state``: ``kmeans`` runs
        K-means on the scan sample, reading no data); the posterior starts as the
        variational M-step of them.
    prefit_on_sample : bool, default=True
        First run the variational fit in memory on the scan pass's uniform sample
        (``init_sample_size`` rows) from that start, until the per-sample bound changes by
        less than ``tol / 10`` and no weight moves by as much (at most ``10 * max_iter``
        iterations; :class:`SampleFitFamily`), and start the
        passes over the data from its posterior, its statistics scaled to ``n_samples``.
        Unneeded components take hundreds of iterations to fade; this way they fade in
        memory and the data is read a few times, not hundreds. ``False`` runs
        scikit-learn's algorithm: every iteration a pass over the data from the
        ``init_params`` start. A cluster with fewer than a few dozen rows in the sample
        can be emptied by the sample fit: raise ``init_sample_size`` if such small
        clusters matter.
    weight_concentration_prior_type : {'dirichlet_process', 'dirichlet_distribution'}, \
default='dirichlet_process'
        Stick-breaking (truncated Dirichlet process) or finite Dirichlet prior on the
        weights.
    weight_concentration_prior : float, optional
        ``γ`` / ``α_0`` > 0; higher values activate more components. Default
        ``1 / n_components``.
    mean_precision_prior : float, optional
        ``β_0`` > 0; larger values pull the means towards ``mean_prior``. Default 1.
    mean_prior : array-like of shape (n_features,), optional
        ``m_0``. Default: the mean of X.
    degrees_of_freedom_prior : float, optional
        ``ν_0`` > ``n_features - 1``. Default ``n_features``.
    covariance_prior : float or array-like, optional
        ``W_0⁻¹``: (n_features, n_features) for full and tied, (n_features,) for diag, a
        float for spherical. Default: the empirical covariance of X (``ddof=1``; the full
        matrix costs one extra pass over the data).
    random_state : int, RandomState, Generator or None, default=None
    warm_start : bool, default=False
        Start from the previous fit's posterior (one restart).
    init_sample_size : int, optional
        Rows sampled for seeding; default ``max(10000, 100 * n_components)``.
    step_decay : float in (0.5, 1], default=0.7
        ``κ`` of :meth:`partial_fit`'s step sizes ``ρ_t = (t + 2)^-κ``.
    {{updates}}
        Incremental: the posterior's global factors are updated after every shard
        (incremental variational Bayes).
    {{fit_hooks}}
    acceleration : {'auto', 'secant', 'squarem', 'overrelax', 'daarem'} or None, default='auto'
        Accelerated variational EM with ``updates='batch'`` (as
        :class:`~emdist.GaussianMixture`'s; the posterior is extrapolated with its positive
        parameters by their logarithms). ``n_iter_`` then counts passes, rejected
        proposals included, and ``lower_bounds_`` repeats the accepted bound on those.
        ``'auto'``: ``'squarem'`` with ``updates='batch'``, plain EM with
        ``updates='incremental'``. ``None``: plain variational EM, scikit-learn's
        iterations.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
        Expected mixing weights ``E[π_k]``.
    means_ : ndarray of shape (n_components, n_features)
        Posterior means ``m_k`` of the component means.
    covariances_, precisions_, precisions_cholesky_ : ndarray
        ``W_k⁻¹ / ν_k``, its inverse ``ν_k W_k`` (the expected precision) and the latter's
        Cholesky factor; shaped by ``covariance_type`` as in
        :class:`~emdist.GaussianMixture`.
    weight_concentration_ : ndarray of shape (2, n_components) or (n_components,)
        ``dirichlet_process``: the Beta parameters ``(a_k, b_k)`` of the stick-breaking
        fractions, one per row — scikit-learn's tuple ``(a, b)`` as an array, so
        ``a, b = weight_concentration_`` works the same (and the model saves as arrays);
        ``dirichlet_distribution``: the Dirichlet ``α_k``.
    mean_precision_ : ndarray of shape (n_components,)
        ``β_k``.
    degrees_of_freedom_ : ndarray of shape (n_components,) or float (tied)
        ``ν_k``.
    weight_concentration_prior_, mean_precision_prior_, mean_prior_, \
degrees_of_freedom_prior_, covariance_prior_ :
        The priors used, defaults resolved.
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        scikit-learn's lower bound divided by ``n_samples``: the ELBO per sample, up to an
        additive constant fixed by the priors, ``n_samples`` and ``n_features`` (scikit-learn
        drops those terms; compare bounds only between fits of the same data and priors).
        It belongs to the responsibilities of the last pass together with the posterior
        computed from them, i.e. the fitted parameters. scikit-learn's ``lower_bound_`` is
        this times ``n_samples``.
    lower_bounds_ : list of float
        ``lower_bound`` per iteration of the best restart (never decreasing).
    n_features_in_ : int
    n_steps_, n_seen_ : int, float
        Batches :meth:`partial_fit` has seen since the last ``fit``, and their total
        weight (absent before).
    running_nk_, running_sx_, running_sxx_ : ndarray
        :meth:`partial_fit`'s running statistics per unit weight, about ``means_``.

    Notes
    -----
    ``predict``, ``predict_proba`` and ``score_samples`` use the variational
    responsibilities (Bishop eq. 10.46-10.49), as scikit-learn: ``score_samples`` is
    ``log Σ_k ρ_k(x)``, not the log-density of a plug-in mixture.
    """

    _parameter_constraints: ClassVar[dict[str, Constraint]] = {
        **BaseMixture._parameter_constraints,
        "weight_concentration_prior_type": one_of(WEIGHT_PRIOR_TYPES),
        "prefit_on_sample": boolean,
        "acceleration": any_of(is_none, one_of(ACCELERATIONS)),
        "step_decay": step_decay_constraint,
        "missing": one_of(MISSING),
    }
    _params_type = VariationalParams
    _stream_attributes = VARIATIONAL_STREAM_ATTRIBUTES
    n_steps_: int
    n_seen_: float
    running_nk_: FloatArray
    running_sx_: FloatArray
    running_sxx_: FloatArray
    _convergence_quantity = "change of the per-sample lower bound"
    bound_name = "ELBO per sample"

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: CovarianceType = "full",
        tol: float = 1e-5,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        prefit_on_sample: bool = True,
        weight_concentration_prior_type: WeightPriorType = "dirichlet_process",
        weight_concentration_prior: float | None = None,
        mean_precision_prior: float | None = None,
        mean_prior: AnyArray | None = None,
        degrees_of_freedom_prior: float | None = None,
        covariance_prior: AnyArray | float | None = None,
        random_state: Any = None,
        warm_start: bool = False,
        init_sample_size: int | None = None,
        step_decay: float = 0.7,
        updates: str = "batch",
        n_shards: int = 8,
        observer: Observer | None = None,
        checkpoint: CheckpointStore | str | os.PathLike[str] | None = None,
        acceleration: str | None = "auto",
        missing: str = "error",
    ) -> None:
        super().__init__(
            n_components=n_components,
            covariance_type=covariance_type,
            tol=tol,
            reg_covar=reg_covar,
            max_iter=max_iter,
            n_init=n_init,
            init_params=init_params,
            random_state=random_state,
            warm_start=warm_start,
            init_sample_size=init_sample_size,
            updates=updates,
            n_shards=n_shards,
            observer=observer,
            checkpoint=checkpoint,
        )
        self.acceleration = acceleration
        self.prefit_on_sample = prefit_on_sample
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.step_decay = step_decay
        self.missing = missing

    def partial_fit(self, X: Any, y: Any = None) -> BayesianGaussianMixture:
        """One stochastic variational inference update on a batch (Hoffman et al. 2013).

        The running expected statistics per unit weight move towards the batch's with
        ``ρ_t = (t + 2)^-step_decay``, and the variational M-step runs on them scaled to
        the weight of every row seen so far (``n_seen_``, SVI's data size): a natural-
        gradient step on the posterior's global factors. The first call of an unfitted
        model seeds from its batch as ``fit`` does (priors included) and takes ``ρ = 1``:
        one variational iteration on the batch. After ``fit`` (or a loaded fitted model)
        the first update starts from the fitted posterior, also with ``ρ = 1``.

        Parameters
        ----------
        X : array-like, dask.array.Array, zarr.Array, str or path
            The batch, (n_rows, n_features); a Dask batch is reduced over its blocks.
        y : ignored

        Returns
        -------
        self
            As ``fit``, no ``sample_weight``: the variational E-step counts every row once.
        """
        partial_fit_variational(self, X, None)
        return self

    def _family(self) -> BayesianMixtureFamily:
        """The engine family of the fitted priors (set by ``fit`` or the first batch)."""
        priors = VariationalPriors(
            self.weight_concentration_prior_type,
            self.weight_concentration_prior_,
            self.mean_precision_prior_,
            np.asarray(self.mean_prior_, dtype=np.float64),
            self.degrees_of_freedom_prior_,
            self.covariance_prior_,
        )
        return BayesianMixtureFamily(
            self.covariance_type, float(self.reg_covar), priors, self.missing
        )

    def check_fitted_values(self) -> None:
        """The mixture's checks, and :meth:`partial_fit`'s running statistics if present."""
        super().check_fitted_values()
        check_stream_values(self, VARIATIONAL_STREAM_ATTRIBUTES)

    def _schedule(self) -> Schedule:
        """Batch, accelerated batch (``acceleration``) or incremental EM (``updates``)."""
        return accelerated(super()._schedule(), self.acceleration, self.updates)

    def _check_input(self, X: Any) -> None:
        # The priors are checked against n_features before the data is read.
        _check_priors(self, _n_features(X), self.covariance_type)

    def _plan(self, data: FitData, warm: bool) -> ModelPlan[VariationalParams, VariationalStats]:
        summary = data.summary
        check_data_scale(
            summary.n_samples, summary.variance, summary.sample, "BayesianGaussianMixture"
        )
        covariance_type: CovarianceType = self.covariance_type
        K = int(self.n_components)
        user = _check_priors(self, data.summary.n_features, covariance_type)
        priors = resolve_priors(
            data,
            n_components=K,
            covariance_type=covariance_type,
            weight_concentration_prior_type=self.weight_concentration_prior_type,
            weight_concentration_prior=user.weight_concentration,
            mean_precision_prior=user.mean_precision,
            mean_prior=user.mean,
            degrees_of_freedom_prior=user.degrees_of_freedom,
            covariance_prior=user.covariance,
        )
        # The resolved priors are attributes as soon as they are known, as scikit-learn's.
        self._set_priors(priors)
        family = BayesianMixtureFamily(covariance_type, float(self.reg_covar), priors, self.missing)
        previous = self._params() if warm else self._start_from

        def make_start(restart: int, restart_seed: int) -> VariationalParams:
            if previous is not None:
                return previous
            stats = initial_resp_stats(
                data,
                n_components=K,
                covariance_type=covariance_type,
                init_params=self.init_params,
                seed=restart_seed,
            )
            start = variational_mstep(stats, priors, covariance_type, family.reg_covar)
            if not self.prefit_on_sample:
                return start
            return prefit_on_sample(
                data,
                family,
                start,
                tol=float(self.tol) * PREFIT_TOL_FACTOR,
                max_iter=int(self.max_iter) * PREFIT_ITER_FACTOR,
            )

        return ModelPlan(
            family,
            make_start,
            VariationalParams,
            score=lambda result: result.lower_bound,
            tol=float(self.tol),
        )

    def _set_priors(self, priors: VariationalPriors) -> None:
        self.weight_concentration_prior_ = priors.weight_concentration
        self.mean_precision_prior_ = priors.mean_precision
        self.mean_prior_ = priors.mean
        self.degrees_of_freedom_prior_ = priors.degrees_of_freedom
        self.covariance_prior_ = priors.covariance

    def _set_params(self, params: VariationalParams) -> None:
        self.weight_concentration_ = params.weight_concentration
        self.mean_precision_ = params.mean_precision
        self.means_ = params.means
        dof = params.degrees_of_freedom
        self.degrees_of_freedom_: FloatArray | float = float(dof) if dof.ndim == 0 else dof
        self.covariances_ = params.covariances
        self.precisions_cholesky_ = params.precisions_cholesky
        self.precisions_ = precisions_from_cholesky(
            params.precisions_cholesky, self.covariance_type
        )
        self.weights_ = params.weights

    def _params(self) -> VariationalParams:
        return VariationalParams(
            np.asarray(self.weight_concentration_, dtype=np.float64),
            self.mean_precision_,
            self.means_,
            np.asarray(self.degrees_of_freedom_, dtype=np.float64),
            self.covariances_,
            self.precisions_cholesky_,
        )

    def _log_prob(self) -> tuple[Callable[..., FloatArray], tuple[Any, ...]]:
        if self.missing == "marginalize":
            return variational_log_prob_missing_chunk, (self._params(), self.covariance_type)
        return variational_log_prob_chunk, (self._params(), self.covariance_type)

    def summary_statistics(self, X: Any, sample_weight: Any = None) -> dict[str, Any]:
        """The mixing weights (a variational mixture is judged by its ELBO, not a BIC)."""
        self._check_fitted()
        return {"weights": [float(w) for w in self.weights_]}

    def score_samples(self, X: Any) -> Any:
        """``log Σ_k ρ_k(x)`` of every sample (scikit-learn's meaning); lazy for non-numpy input.

        ``ρ_k`` are the unnormalised variational responsibilities (Bishop eq. 10.46); this
        is what scikit-learn's ``BayesianGaussianMixture.score_samples`` returns, not the
        log-density of a plug-in mixture.
        """
        return super().score_samples(X)
