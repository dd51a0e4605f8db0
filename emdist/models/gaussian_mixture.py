"""Gaussian mixture fitted by EM, one pass over row-chunked data per iteration."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from dask.delayed import Delayed

from emdist._typing import AnyArray, CovarianceType, FloatArray
from emdist.engine.acceleration import ACCELERATIONS, accelerated
from emdist.engine.data import FitData
from emdist.engine.em import ModelPlan, Observer, Schedule
from emdist.engine.oversampling import OversampledStart
from emdist.engine.reduce import build_reduction, map_reduce
from emdist.exceptions import InvalidParameterError
from emdist.io.checkpoint import CheckpointStore
from emdist.io.sources import as_dask_array
from emdist.kernels.covariance import covariance_shape, n_covariance_parameters
from emdist.kernels.gaussian import (
    covariances_from_precisions,
    precision_cholesky_from_precisions,
    precisions_from_cholesky,
)
from emdist.kernels.missing import (
    MISSING,
    mixture_estep_missing_chunk,
    mixture_log_prob_missing_chunk,
)
from emdist.kernels.mixture import (
    MixtureParams,
    MixtureStats,
    mixture_estep_chunk,
    mixture_hard_resp_stats_chunk,
    mixture_log_prob_chunk,
    mixture_mstep,
)
from emdist.kernels.mixture_vector import mixture_from_vector, mixture_to_vector
from emdist.kernels.rebase import mixture_expected_log_lik, rebase_mixture_stats
from emdist.kernels.rows import RowBlock
from emdist.models._base import weight_total
from emdist.models._criteria import (
    KernelStep,
    criteria_rows,
    log_lik_sum_chunk,
    log_lik_sum_missing_chunk,
)
from emdist.models._docs import fill_doc
from emdist.models._mixture import BaseMixture, check_user_array, initial_resp_stats
from emdist.models._partial import (
    MIXTURE_STREAM_ATTRIBUTES,
    check_stream_values,
    partial_fit_mixture,
    step_decay_constraint,
)
from emdist.models._validation import Constraint, any_of, check_data_scale, is_none, one_of
from emdist.models.kmeans import oversampled_start
from emdist.registry import register_family

__all__ = ["GaussianMixture", "GaussianMixtureFamily", "initial_mixture_params"]


@dataclass(frozen=True)
class GaussianMixtureFamily:
    """The Gaussian mixture as a model family of the EM engine.

    The lower bound is the mean log-likelihood per sample; converged when its change is
    below ``tol`` in absolute value (scikit-learn's meaning).
    """

    covariance_type: CovarianceType
    reg_covar: float
    #: ``'marginalize'``: NaN marks a missing value (:mod:`emdist.kernels.missing`).
    missing: str = "error"
    #: Incremental EM (emdist.engine.incremental) restores kept statistics of this class.
    stats_type: ClassVar[type[MixtureStats]] = MixtureStats

    def estep_chunk(self, block: RowBlock, params: MixtureParams) -> MixtureStats:
        """Responsibilities of one block, reduced to sufficient statistics.

        With ``missing='marginalize'`` a block holding NaN takes the incomplete-data E-step
        on its incomplete rows; a block without NaN is the same E-step either way.
        """
        if self.missing == "marginalize":
            return mixture_estep_missing_chunk(block, params, self.covariance_type)
        return mixture_estep_chunk(block, params, self.covariance_type)

    def mstep(self, stats: MixtureStats, params: MixtureParams) -> MixtureParams:
        """Weighted means, covariances and mixing weights."""
        return mixture_mstep(stats, self.covariance_type, self.reg_covar)

    def lower_bound(self, stats: MixtureStats, params: MixtureParams) -> float:
        """Mean log-likelihood per sample of ``params``."""
        return stats.log_lik / stats.n

    def converged(
        self,
        prev_bound: float,
        bound: float,
        params: MixtureParams,
        new_params: MixtureParams,
        tol: float,
    ) -> bool:
        """``|Δ mean log-likelihood| < tol``."""
        return abs(bound - prev_bound) < tol

    # -- incremental EM (emdist.engine.incremental) -------------------------------------

    def rebase(self, stats: MixtureStats, params: MixtureParams) -> MixtureStats:
        """``stats`` about the means of ``params``."""
        return rebase_mixture_stats(stats, params.means, self.covariance_type)

    def entropy(self, stats: MixtureStats, params: MixtureParams) -> float:
        """Entropy of the responsibilities of a pass under ``params``.

        ``log p(x) = E_r[log p(x, z)] + H(r)`` for the posterior ``r``: the pass's
        log-likelihood minus the expected complete-data one.
        """
        return stats.log_lik - mixture_expected_log_lik(stats, params, self.covariance_type)

    def free_energy(self, stats: MixtureStats, entropy: float, params: MixtureParams) -> float:
        """``(E_r[log p(X, Z | params)] + H(r)) / n`` for the responsibilities behind ``stats``."""
        return (mixture_expected_log_lik(stats, params, self.covariance_type) + entropy) / stats.n

    # -- accelerated EM (emdist.engine.acceleration) ------------------------------------

    def to_vector(self, params: MixtureParams) -> FloatArray:
        """Log-weights, means and covariances as one vector."""
        return mixture_to_vector(params)

    def from_vector(self, vector: FloatArray, like: MixtureParams) -> MixtureParams | None:
        """Parameters from a vector, projected (simplex, covariances >= ``reg_covar``)."""
        return mixture_from_vector(vector, like, self.covariance_type, self.reg_covar)


def initial_mixture_params(
    data: FitData,
    *,
    n_components: int,
    covariance_type: CovarianceType,
    reg_covar: float,
    init_params: str,
    weights_init: Any,
    means_init: Any,
    precisions_init: Any,
    seed: int,
    start: OversampledStart | None = None,
) -> MixtureParams:
    """Starting parameters of one restart, as scikit-learn builds them.

    Responsibilities come from ``init_params`` and give weights, means and covariances by
    one M-step; user arrays then replace what they give. ``kmeans`` (K-means on the scan
    sample), ``k-means++`` and ``random_from_data`` (rows of the scan sample) read no data;
    ``random`` takes one pass. Nothing is read when all three user arrays are given.
    """
    K, d = n_components, data.summary.n_features
    family = GaussianMixtureFamily(covariance_type, reg_covar)
    weights = None if weights_init is None else check_user_array(weights_init, (K,), "weights_init")
    if weights is not None and (np.any(weights < 0) or not np.isclose(weights.sum(), 1.0)):
        raise InvalidParameterError("weights_init must be non-negative and sum to 1")
    means = None if means_init is None else check_user_array(means_init, (K, d), "means_init")
    prec_chol = None
    if precisions_init is not None:
        precs = check_user_array(
            precisions_init, covariance_shape(covariance_type, K, d), "precisions_init"
        )
        if covariance_type in ("diag", "spherical") and np.any(precs <= 0):
            raise InvalidParameterError("precisions_init must be positive")
        try:
            prec_chol = precision_cholesky_from_precisions(precs, covariance_type)
        except np.linalg.LinAlgError:
            raise InvalidParameterError(
                "precisions_init must be symmetric positive definite"
            ) from None
        if not np.all(np.isfinite(prec_chol)):
            raise InvalidParameterError("precisions_init must be symmetric positive definite")
        covariances = covariances_from_precisions(precs, covariance_type)
    if weights is not None and means is not None and prec_chol is not None:
        return MixtureParams(weights, means, covariances, prec_chol)

    stats = initial_resp_stats(
        data,
        n_components=K,
        covariance_type=covariance_type,
        init_params=init_params,
        seed=seed,
        start=start,
    )
    first = family.mstep(
        stats, MixtureParams(np.full(K, 1 / K), stats.shift, np.empty(0), np.empty(0))
    )
    return MixtureParams(
        first.weights if weights is None else weights,
        first.means if means is None else means,
        first.covariances if prec_chol is None else covariances,
        first.precisions_cholesky if prec_chol is None else prec_chol,
    )


@register_family("gmm", summary="Gaussian mixture fitted by EM")
@fill_doc
class GaussianMixture(BaseMixture):
    """Gaussian mixture fitted by EM, one pass over the data per iteration.

    Follows :class:`sklearn.mixture.GaussianMixture` (names, meanings, attributes): from the
    same starting parameters it reproduces its iterations. Unlike it, the data may be a
    Dask array, a Zarr array or a path to one, larger than memory: each iteration maps the
    row-blocks to sufficient statistics, tree-reduces them and runs the M-step on the client.

    Parameters
    ----------
    n_components : int, default=1
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
    tol : float, default=1e-3
        Converged when the mean log-likelihood per sample changes by less than ``tol``.
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance.
    max_iter : int, default=100
        EM iterations per restart.
    n_init : int, default=1
        Restarts; the one with the highest final lower bound is kept.
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, default='kmeans'
        How the initial responsibilities are chosen. ``kmeans``: hard K-means labels of
        every row, as scikit-learn's start, the centres from k-means|| over all the rows
        (the best of 10 k-means++ seedings of 4K weighted candidates, then Lloyd;
        :mod:`emdist.engine.oversampling`). On data no larger than the scan pass's uniform
        sample (``init_sample_size`` rows) this runs on the sample in memory and reads
        nothing; on larger data it takes two passes shared by the restarts.
        ``k-means++`` and ``random_from_data``: one-hot rows of the sample, no read;
        ``random`` (random responsibilities for every row) takes one pass.
    weights_init : ndarray of shape (n_components,), optional
    means_init : ndarray of shape (n_components, n_features), optional
    precisions_init : ndarray, optional
        Shaped by ``covariance_type`` as ``precisions_``.
    random_state : int, RandomState, Generator or None, default=None
    warm_start : bool, default=False
        Start from the previous fit's parameters (one restart).
    init_sample_size : int, optional
        Rows sampled for seeding; default ``max(10000, 100 * n_components)``. Data with
        more rows starts by k-means|| (``init_params='kmeans'``: two passes).
    step_decay : float in (0.5, 1], default=0.7
        ``κ`` of :meth:`partial_fit`'s step sizes ``η_t = (t + 2)^-κ``: smaller forgets
        old batches faster (benchmarks/README.md, "partial_fit").
    {{updates}}
    {{fit_hooks}}
    acceleration : {'auto', 'secant', 'squarem', 'overrelax', 'daarem'} or None, default='auto'
        Accelerated EM with ``updates='batch'`` (:mod:`emdist.engine.acceleration`): every
        pass evaluates one point, an EM iterate or an extrapolation along EM steps
        (``'secant'``: ``θ + α (M(θ) - θ)`` after every accepted pass, ``α`` a secant
        estimate from the last two; ``'squarem'``: squared extrapolation along two EM
        steps; ``'overrelax'``: adaptive over-relaxation; ``'daarem'``: damped Anderson
        acceleration over a window of EM steps), projected onto the parameter space; a
        proposal whose bound would drop is rejected and the next pass takes the plain EM
        step, so the bound history never decreases. ``'auto'``: ``'squarem'`` with
        ``updates='batch'`` (fewer passes than plain EM on every measured mixture, a bound
        no worse; benchmarks/README.md), plain EM with ``updates='incremental'``. ``None``: plain
        EM, scikit-learn's iterations. An explicit method with ``updates='incremental'``
        is an error.
    missing : {'error', 'marginalize'}, default='error'
        What a NaN in the data means. ``'error'``: refused (one line naming the row and
        column). ``'marginalize'``: a missing value. Each row is scored by every
        component's marginal density on its observed coordinates, and the M-step uses the
        conditional expectations of the missing coordinates given the observed ones
        (EM for incomplete data, Ghahramani & Jordan 1994); ``score_samples``, ``score``,
        ``predict`` and ``predict_proba`` give the marginal on the observed coordinates.
        A row with every value missing is refused, infinity always. Rows without NaN go
        through the same kernels as with ``'error'``: on data without NaN both give the
        same fit, bit for bit. The start (``init_params``) imputes the scan sample's
        missing values by the feature means (``'random'``: every row's), for the start
        only.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_ : ndarray
    converged_ : bool
        Whether the change of the bound from one accepted point to its EM step fell below
        ``tol`` (every iteration of plain EM).
    n_iter_ : int
        Passes over the data of the best restart (with acceleration, rejected proposals
        included).
    lower_bound_ : float
        Mean log-likelihood per sample of the parameters before the last M-step (as
        scikit-learn); with acceleration, of the last accepted point, the best evaluated;
        the fitted parameters are its EM step.
    lower_bounds_ : list of float
        ``lower_bound`` per iteration (pass) of the best restart; a pass whose proposal
        was rejected repeats the accepted bound.
    n_features_in_ : int
    n_steps_ : int
        Batches :meth:`partial_fit` has seen since the last ``fit`` (absent before).
    running_nk_, running_sx_, running_sxx_ : ndarray
        :meth:`partial_fit`'s running statistics per unit weight (counts, first and
        second moments about ``means_``), saved with the model.
    """

    _parameter_constraints: ClassVar[dict[str, Constraint]] = {
        **BaseMixture._parameter_constraints,
        "acceleration": any_of(is_none, one_of(ACCELERATIONS)),
        "step_decay": step_decay_constraint,
        "missing": one_of(MISSING),
    }
    _params_type = MixtureParams
    _stream_attributes = MIXTURE_STREAM_ATTRIBUTES
    n_steps_: int
    running_nk_: FloatArray
    running_sx_: FloatArray
    running_sxx_: FloatArray
    _convergence_quantity = "change of the mean log-likelihood"
    bound_name = "mean log-likelihood per sample"

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: CovarianceType = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init: AnyArray | None = None,
        means_init: AnyArray | None = None,
        precisions_init: AnyArray | None = None,
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
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.acceleration = acceleration
        self.step_decay = step_decay
        self.missing = missing

    def _schedule(self) -> Schedule:
        """Batch EM, accelerated batch EM (``acceleration``) or incremental EM (``updates``)."""
        return accelerated(super()._schedule(), self.acceleration, self.updates)

    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> GaussianMixture:
        """One stepwise-EM update on a batch (Liang & Klein 2009; Cappé & Moulines 2009).

        The running statistics per unit weight move towards the batch's,
        ``s_t = (1 - η_t) s_{t-1} + η_t · stats(batch) / n_batch`` with
        ``η_t = (t + 2)^-step_decay`` (``t`` updates so far), and the M-step runs on them.
        The first call of an unfitted model seeds from its batch as ``fit`` does and
        takes ``η = 1``: one EM iteration on the batch. After ``fit`` (or a loaded fitted
        model) the first update starts from the fitted parameters, also with ``η = 1``.
        ``fit`` starts the stream over.

        Parameters
        ----------
        X : array-like, dask.array.Array, zarr.Array, str or path
            The batch, (n_rows, n_features); a Dask batch is reduced over its blocks.
        y : ignored
        sample_weight : array-like or dask.array.Array of shape (n_rows,), optional
            How many times each row of the batch counts.

        Returns
        -------
        self
        """
        partial_fit_mixture(self, X, sample_weight)
        return self

    def check_fitted_values(self) -> None:
        """The mixture's checks, and :meth:`partial_fit`'s running statistics if present."""
        super().check_fitted_values()
        check_stream_values(self, MIXTURE_STREAM_ATTRIBUTES)

    def _family(self) -> GaussianMixtureFamily:
        return GaussianMixtureFamily(self.covariance_type, float(self.reg_covar), self.missing)

    def _plan(self, data: FitData, warm: bool) -> ModelPlan[MixtureParams, MixtureStats]:
        summary = data.summary
        check_data_scale(summary.n_samples, summary.variance, summary.sample, "GaussianMixture")
        previous = self._params() if warm else self._start_from
        K = int(self.n_components)
        start = None
        user = (self.weights_init, self.means_init, self.precisions_init)
        if previous is None and self.init_params == "kmeans" and any(a is None for a in user):
            # k-means|| over the data (two passes shared by the restarts) instead of K-means
            # on the sample alone: docs/design.md#initialisation.
            shift = np.tile(summary.mean, (K, 1))
            covariance_type = self.covariance_type
            start = oversampled_start(
                data,
                K,
                label_kernel=lambda centers: (
                    mixture_hard_resp_stats_chunk,
                    (centers, shift, covariance_type),
                ),
            )

        def make_start(restart: int, restart_seed: int) -> MixtureParams:
            if previous is not None:
                return previous
            return initial_mixture_params(
                data,
                n_components=int(self.n_components),
                covariance_type=self.covariance_type,
                reg_covar=float(self.reg_covar),
                init_params=self.init_params,
                weights_init=self.weights_init,
                means_init=self.means_init,
                precisions_init=self.precisions_init,
                seed=restart_seed,
                start=start,
            )

        return ModelPlan(
            self._family(),
            make_start,
            MixtureParams,
            score=lambda result: result.lower_bound,
            tol=float(self.tol),
            start=start,
        )

    def _set_params(self, params: MixtureParams) -> None:
        self.weights_ = params.weights
        self.means_ = params.means
        self.covariances_ = params.covariances
        self.precisions_cholesky_ = params.precisions_cholesky
        self.precisions_ = precisions_from_cholesky(
            params.precisions_cholesky, self.covariance_type
        )

    def _params(self) -> MixtureParams:
        return MixtureParams(
            self.weights_, self.means_, self.covariances_, self.precisions_cholesky_
        )

    def _log_prob(self) -> tuple[Callable[..., FloatArray], tuple[Any, ...]]:
        if self.missing == "marginalize":
            return mixture_log_prob_missing_chunk, (self._params(), self.covariance_type)
        return mixture_log_prob_chunk, (self._params(), self.covariance_type)

    def _n_parameters(self) -> int:
        K, d = self.means_.shape
        return int(n_covariance_parameters(self.covariance_type, K, d) + d * K + K - 1)

    def _n_samples(self, X: Any) -> int:
        shape = getattr(X, "shape", None)
        if shape is None:
            shape = as_dask_array(X).shape
        return int(shape[0])

    def information_criteria(self, X: Any, sample_weight: Any = None) -> dict[str, float]:
        """Mean log-likelihood, BIC and AIC of ``X`` from one pass over it.

        Parameters
        ----------
        X : array-like, dask.array.Array, zarr.Array, str or path
        sample_weight : array-like, dask.array.Array, zarr.Array, str or path, optional
            Weights of the rows: the criteria of the rows repeated ``w`` times (``n`` is
            ``Σ w``).

        Returns
        -------
        dict
            ``{"score": ..., "bic": ..., "aic": ...}``.
        """
        self._check_fitted(X)
        step, args = self._criteria_step()
        rows, n = criteria_rows(X, self.n_features_in_, type(self).__name__, sample_weight)
        return self._criteria_from(map_reduce(rows, step.estep_chunk, args), n)

    def _lazy_criteria(self, X: Any, sample_weight: Any = None) -> tuple[Delayed, float]:
        """:meth:`information_criteria`'s pass over Dask ``X``, not computed, and its ``n``.

        The same reduction (kernel, blocks, tree) as :meth:`information_criteria` builds, so
        its sum is that method's, bit for bit: ``_criteria_from(sum, n)`` gives the
        criteria. For computing them in a pass that reads ``X`` for something else.
        """
        self._check_fitted(X)
        step, args = self._criteria_step()
        rows, n = criteria_rows(X, self.n_features_in_, type(self).__name__, sample_weight)
        assert not isinstance(rows, np.ndarray)  # X is a Dask array: so are its rows
        return build_reduction(rows, step.estep_chunk, args), n

    def _criteria_step(self) -> tuple[KernelStep, tuple[Any, ...]]:
        """The reduction behind :meth:`information_criteria`: the summed log-likelihood."""
        if self.missing == "marginalize":
            return KernelStep(log_lik_sum_missing_chunk), (
                mixture_log_prob_missing_chunk,
                self._params(),
                self.covariance_type,
            )
        return KernelStep(log_lik_sum_chunk), (
            mixture_log_prob_chunk,
            self._params(),
            self.covariance_type,
        )

    def _criteria_from(self, log_lik: float, n: float) -> dict[str, float]:
        """Mean log-likelihood, BIC and AIC from the summed log-likelihood of ``n`` samples."""
        score = float(log_lik) / n
        p = self._n_parameters()
        return {
            "score": score,
            "bic": float(-2 * score * n + p * np.log(n)),
            "aic": float(-2 * score * n + 2 * p),
        }

    def bic(self, X: Any, sample_weight: Any = None) -> float:
        """Bayesian information criterion of the model on ``X`` (lower is better).

        ``sample_weight``: that of the rows repeated ``w`` times (``n = Σ w``).
        """
        n = self._weighted_n(X, sample_weight)
        score = self.score(X, sample_weight=sample_weight)
        return float(-2 * score * n + self._n_parameters() * np.log(n))

    def aic(self, X: Any, sample_weight: Any = None) -> float:
        """Akaike information criterion of the model on ``X`` (lower is better).

        ``sample_weight``: that of the rows repeated ``w`` times (``n = Σ w``).
        """
        n = self._weighted_n(X, sample_weight)
        return -2 * self.score(X, sample_weight=sample_weight) * n + 2 * self._n_parameters()

    def _weighted_n(self, X: Any, sample_weight: Any) -> float:
        n = self._n_samples(X)
        return float(n) if sample_weight is None else weight_total(sample_weight, n)

    def summary_statistics(self, X: Any, sample_weight: Any = None) -> dict[str, Any]:
        """Mean log-likelihood, BIC and AIC of ``X`` (one pass), and the mixing weights."""
        return self._summary_with(self.information_criteria(X, sample_weight))

    def _summary_with(self, criteria: dict[str, float]) -> dict[str, Any]:
        return {**criteria, "weights": [float(w) for w in self.weights_]}
