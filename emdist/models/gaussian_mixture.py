"""Gaussian mixture fitted by EM, one pass over row-chunked data per iteration."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import dask.array as da
import numpy as np

from emdist._typing import COVARIANCE_TYPES, AnyArray, CovarianceType, FloatArray
from emdist.engine.em import Observer
from emdist.engine.init import kmeans_plusplus
from emdist.engine.reduce import map_reduce
from emdist.exceptions import ConvergenceWarning
from emdist.io.checkpoint import CheckpointStore
from emdist.kernels.gaussian import (
    covariances_from_precisions,
    precision_cholesky_from_precisions,
    precisions_from_cholesky,
)
from emdist.kernels.mixture import (
    MixtureParams,
    MixtureStats,
    labels_from_log_prob,
    mixture_estep_chunk,
    mixture_hard_resp_stats_chunk,
    mixture_log_prob_chunk,
    mixture_mstep,
    mixture_random_resp_stats_chunk,
    mixture_stats_from_resp,
    proba_from_log_prob,
    score_samples_from_log_prob,
)
from emdist.models._base import (
    BaseEstimator,
    FitData,
    apply_rows,
    as_checkpoint,
    child_seeds,
    compute_context,
    estimator_config,
    fit_seed,
    prepare_fit_data,
    resolve_seed,
)
from emdist.models._restarts import BestRun, run_restarts
from emdist.models._sklearn import DensityMixin
from emdist.models.kmeans import fit_kmeans

__all__ = [
    "GaussianMixture",
    "GaussianMixtureFamily",
    "initial_mixture_params",
    "initial_resp_stats",
]

INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


@dataclass(frozen=True)
class GaussianMixtureFamily:
    """The Gaussian mixture as a model family of the EM engine.

    The lower bound is the mean log-likelihood per sample; converged when its change is
    below ``tol`` in absolute value (scikit-learn's meaning).
    """

    covariance_type: CovarianceType
    reg_covar: float

    def estep_chunk(self, X: AnyArray, row_offset: int, params: MixtureParams) -> MixtureStats:
        """Responsibilities of one block, reduced to sufficient statistics."""
        return mixture_estep_chunk(X, params, self.covariance_type)

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


def _check_user_array(value: Any, shape: tuple[int, ...], name: str) -> FloatArray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}; expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinity")
    return arr


def _precisions_shape(covariance_type: CovarianceType, K: int, d: int) -> tuple[int, ...]:
    return {"full": (K, d, d), "tied": (d, d), "diag": (K, d), "spherical": (K,)}[covariance_type]


def initial_resp_stats(
    data: FitData,
    *,
    n_components: int,
    covariance_type: CovarianceType,
    init_params: str,
    seed: int,
) -> MixtureStats:
    """Moments of the initial responsibilities of one restart.

    Both mixtures start from an M-step on initial responsibilities (scikit-learn's
    ``_initialize``): the maximum-likelihood one for :class:`GaussianMixture`, the
    variational one for ``BayesianGaussianMixture``. ``k-means++`` and ``random_from_data``
    give one-hot rows of the scan sample (no data pass), ``random`` takes one pass,
    ``kmeans`` runs K-means first.

    Parameters
    ----------
    data : FitData
    n_components : int
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}
    seed : int
        Seed of the restart.

    Returns
    -------
    MixtureStats
        About the data mean (every component), with ``log_lik = 0``.
    """
    K = n_components
    shift = np.tile(data.summary.mean, (K, 1))
    rng = np.random.default_rng(seed)
    if init_params == "kmeans":
        (km_seed,) = child_seeds(seed, 1)
        run = fit_kmeans(
            data, n_clusters=K, init="k-means++", n_init=1, max_iter=300, tol=1e-4, seed=km_seed
        )
        stats: MixtureStats = map_reduce(
            data.X, mixture_hard_resp_stats_chunk, run.params.centers, shift, covariance_type
        )
        return stats
    if init_params in ("k-means++", "random_from_data"):
        sample = data.summary.sample
        if init_params == "k-means++":
            idx = kmeans_plusplus(sample, K, rng)
        else:
            idx = rng.choice(len(sample), K, replace=False)
        # One row per component, as scikit-learn's one-hot responsibilities at those rows.
        return mixture_stats_from_resp(sample[idx], np.eye(K), shift, covariance_type)
    if init_params == "random":
        stats = map_reduce(
            data.X,
            mixture_random_resp_stats_chunk,
            int(rng.integers(2**63 - 1)),
            shift,
            covariance_type,
            with_offset=True,
        )
        return stats
    raise ValueError(f"init_params must be one of {INIT_PARAMS}; got {init_params!r}")


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
) -> MixtureParams:
    """Starting parameters of one restart, as scikit-learn builds them.

    Responsibilities come from ``init_params`` and give weights, means and covariances by
    one M-step; user arrays then replace what they give. ``k-means++`` and
    ``random_from_data`` pick rows of the scan sample (no data pass); ``random`` takes one
    pass; ``kmeans`` runs K-means first. Nothing is read when all three user arrays are given.
    """
    K, d = n_components, data.summary.n_features
    family = GaussianMixtureFamily(covariance_type, reg_covar)
    weights = (
        None if weights_init is None else _check_user_array(weights_init, (K,), "weights_init")
    )
    if weights is not None and (np.any(weights < 0) or not np.isclose(weights.sum(), 1.0)):
        raise ValueError("weights_init must be non-negative and sum to 1")
    means = None if means_init is None else _check_user_array(means_init, (K, d), "means_init")
    prec_chol = None
    if precisions_init is not None:
        precs = _check_user_array(
            precisions_init, _precisions_shape(covariance_type, K, d), "precisions_init"
        )
        if covariance_type in ("diag", "spherical") and np.any(precs <= 0):
            raise ValueError("precisions_init must be positive")
        try:
            prec_chol = precision_cholesky_from_precisions(precs, covariance_type)
        except np.linalg.LinAlgError:
            raise ValueError("precisions_init must be symmetric positive definite") from None
        if not np.all(np.isfinite(prec_chol)):
            raise ValueError("precisions_init must be symmetric positive definite")
        covariances = covariances_from_precisions(precs, covariance_type)
    if weights is not None and means is not None and prec_chol is not None:
        return MixtureParams(weights, means, covariances, prec_chol)

    stats = initial_resp_stats(
        data,
        n_components=K,
        covariance_type=covariance_type,
        init_params=init_params,
        seed=seed,
    )
    start = family.mstep(
        stats, MixtureParams(np.full(K, 1 / K), stats.shift, np.empty(0), np.empty(0))
    )
    return MixtureParams(
        start.weights if weights is None else weights,
        start.means if means is None else means,
        start.covariances if prec_chol is None else covariances,
        start.precisions_cholesky if prec_chol is None else prec_chol,
    )


class BaseMixture(DensityMixin, BaseEstimator):
    """Prediction and scoring shared by the mixture estimators.

    Subclasses set ``n_features_in_`` and supply :meth:`_log_prob` (the per-block kernel for
    labels, responsibilities and log-likelihood, with its arguments).
    """

    n_features_in_: int
    n_components: int
    covariance_type: CovarianceType
    random_state: Any
    weights_: FloatArray
    means_: FloatArray
    covariances_: FloatArray
    lower_bound_: float
    max_iter: int
    tol: float

    def _log_prob(self) -> tuple[Callable[..., FloatArray], tuple[Any, ...]]:
        """Per-block weighted log-densities ``(n, K)`` and their extra arguments."""
        raise NotImplementedError

    def _apply(
        self, fn: Callable[..., Any], X: Any, out_width: int | None, dtype: Any = np.float64
    ) -> Any:
        self._check_fitted()
        log_prob, args = self._log_prob()
        return apply_rows(
            X,
            fn,
            log_prob,
            *args,
            n_features=self.n_features_in_,
            name=type(self).__name__,
            out_width=out_width,
            dtype=dtype,
        )

    def predict(self, X: Any) -> Any:
        """Most probable component of every sample.

        Parameters
        ----------
        X : array-like, dask.array.Array, zarr.Array, str or path

        Returns
        -------
        ndarray of shape (n_samples,), or a lazy dask.array.Array for non-numpy input
        """
        return self._apply(labels_from_log_prob, X, None, np.int64)

    def predict_proba(self, X: Any) -> Any:
        """Responsibilities, shape (n_samples, n_components); lazy for non-numpy input."""
        return self._apply(proba_from_log_prob, X, self.n_components)

    def score_samples(self, X: Any) -> Any:
        """Log-likelihood ``log p(x)`` of every sample; lazy for non-numpy input."""
        return self._apply(score_samples_from_log_prob, X, None)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per sample of ``X`` (computed, also for lazy input)."""
        s = self.score_samples(X)
        return float(s.mean().compute() if isinstance(s, da.Array) else s.mean())

    def sample(self, n_samples: int = 1) -> tuple[FloatArray, AnyArray]:
        """Draw samples from the fitted mixture.

        Parameters
        ----------
        n_samples : int, default=1

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            Component of every sample.
        """
        self._check_fitted()
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1; got {n_samples}")
        rng = np.random.default_rng(
            None if self.random_state is None else resolve_seed(self.random_state)
        )
        counts = rng.multinomial(n_samples, self.weights_)
        d = self.n_features_in_
        parts = []
        for k, count in enumerate(counts):
            if self.covariance_type == "full":
                cov = self.covariances_[k]
            elif self.covariance_type == "tied":
                cov = self.covariances_
            elif self.covariance_type == "diag":
                cov = np.diag(self.covariances_[k])
            else:
                cov = np.eye(d) * self.covariances_[k]
            parts.append(rng.multivariate_normal(self.means_[k], cov, int(count)))
        y = np.repeat(np.arange(len(counts)), counts)
        return np.vstack(parts), y

    def _record_fit(self, best: BestRun[Any], n_features: int, bound_name: str) -> None:
        """Set the fitted attributes every mixture shares; warn if it did not converge."""
        self.converged_ = best.converged
        self.n_iter_ = best.n_iter
        self.lower_bound_ = best.lower_bound
        self.lower_bounds_ = list(best.lower_bounds)
        self.n_features_in_ = n_features
        if not best.converged:
            warnings.warn(
                f"{type(self).__name__} did not converge in max_iter={self.max_iter} "
                f"iterations (last change of the {bound_name} above tol={self.tol}); try "
                f"different init parameters, or increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=3,
            )

    def fit_predict(self, X: Any, y: Any = None) -> Any:
        """Fit, then return the labels of ``X`` under the fitted model."""
        return self.fit(X).predict(X)

    def fit(self, X: Any, y: Any = None) -> Self:
        """Fit the model (implemented by subclasses)."""
        raise NotImplementedError


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
        How the initial responsibilities are chosen. ``k-means++`` and ``random_from_data``
        read no data beyond the scan pass; ``kmeans`` runs a full K-means first.
    weights_init : ndarray of shape (n_components,), optional
    means_init : ndarray of shape (n_components, n_features), optional
    precisions_init : ndarray, optional
        Shaped by ``covariance_type`` as ``precisions_``.
    random_state : int, RandomState, Generator or None, default=None
    warm_start : bool, default=False
        Start from the previous fit's parameters (one restart).
    init_sample_size : int, optional
        Rows sampled for seeding; default ``max(10000, 100 * n_components)``.
    observer : callable, optional
        Called with an :class:`emdist.engine.IterationState` after every iteration;
        returning ``True`` stops the fit.
    checkpoint : CheckpointStore, str or path, optional
        Where to commit the fit state after iterations (see
        :class:`emdist.io.checkpoint.CheckpointStore`). A fit given a location that holds a
        checkpoint of the same configuration and data resumes from it and ends with exactly
        the model of an uninterrupted fit; one of another configuration or data is refused.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_ : ndarray
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Mean log-likelihood per sample of the parameters before the last M-step (as
        scikit-learn).
    lower_bounds_ : list of float
        ``lower_bound`` per iteration of the best restart.
    n_features_in_ : int
    """

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
        observer: Observer | None = None,
        checkpoint: CheckpointStore | str | os.PathLike[str] | None = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.init_sample_size = init_sample_size
        self.observer = observer
        self.checkpoint = checkpoint

    def _validate_params(self) -> None:
        if not isinstance(self.n_components, int | np.integer) or self.n_components < 1:
            raise ValueError(f"n_components must be a positive int; got {self.n_components!r}")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {COVARIANCE_TYPES}; got {self.covariance_type!r}"
            )
        if self.init_params not in INIT_PARAMS:
            raise ValueError(f"init_params must be one of {INIT_PARAMS}; got {self.init_params!r}")
        for name in ("max_iter", "n_init"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if not self.tol >= 0:
            raise ValueError(f"tol must be >= 0; got {self.tol!r}")
        if not self.reg_covar >= 0:
            raise ValueError(f"reg_covar must be >= 0; got {self.reg_covar!r}")

    def _family(self) -> GaussianMixtureFamily:
        return GaussianMixtureFamily(self.covariance_type, float(self.reg_covar))

    def fit(self, X: Any, y: Any = None) -> Self:
        """Estimate the parameters by EM.

        Parameters
        ----------
        X : array-like, dask.array.Array, zarr.Array, str or path
            Data of shape (n_samples, n_features); a path names a Zarr array.
        y : ignored

        Returns
        -------
        self
        """
        self._validate_params()
        checkpoint = as_checkpoint(self.checkpoint)
        seed = fit_seed(self.random_state, checkpoint)
        sample_seed, restarts_seed = child_seeds(seed, 2)
        warm = bool(self.warm_start) and hasattr(self, "converged_")
        n_init = 1 if warm else int(self.n_init)
        family = self._family()
        previous = self._params() if warm else None

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
            )

        with compute_context():
            data = prepare_fit_data(
                X,
                n_clusters=int(self.n_components),
                seed=sample_seed,
                sample_size=self.init_sample_size,
                what="n_components",
            )
            best = run_restarts(
                data,
                family,
                n_init=n_init,
                seeds=child_seeds(restarts_seed, n_init),
                make_start=make_start,
                params_from_arrays=MixtureParams,
                score=lambda result: result.lower_bound,
                tol=float(self.tol),
                max_iter=int(self.max_iter),
                observer=self.observer,
                checkpoint=checkpoint,
                config=estimator_config(self, n_init=n_init, warm_start=warm),
                seed=seed,
                # As scikit-learn: a warm start's first change is measured from the last
                # bound of the previous fit, so it can converge at once.
                previous_bound=self.lower_bound_ if warm else None,
            )
        self._set_params(best.params)
        self._record_fit(best, data.summary.n_features, "mean log-likelihood")
        return self

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
        return mixture_log_prob_chunk, (self._params(), self.covariance_type)

    def _n_parameters(self) -> int:
        K, d = self.means_.shape
        cov_params = {
            "full": K * d * (d + 1) / 2.0,
            "diag": K * d,
            "tied": d * (d + 1) / 2.0,
            "spherical": K,
        }[self.covariance_type]
        return int(cov_params + d * K + K - 1)

    def _n_samples(self, X: Any) -> int:
        shape = getattr(X, "shape", None)
        if shape is None:
            from emdist.io.sources import as_dask_array

            shape = as_dask_array(X).shape
        return int(shape[0])

    def information_criteria(self, X: Any) -> dict[str, float]:
        """Mean log-likelihood, BIC and AIC of ``X`` from one pass over it.

        Parameters
        ----------
        X : array-like, dask.array.Array, zarr.Array, str or path

        Returns
        -------
        dict
            ``{"score": ..., "bic": ..., "aic": ...}``.
        """
        n = self._n_samples(X)
        score = self.score(X)
        p = self._n_parameters()
        return {
            "score": score,
            "bic": float(-2 * score * n + p * np.log(n)),
            "aic": float(-2 * score * n + 2 * p),
        }

    def bic(self, X: Any) -> float:
        """Bayesian information criterion of the model on ``X`` (lower is better)."""
        n = self._n_samples(X)
        return float(-2 * self.score(X) * n + self._n_parameters() * np.log(n))

    def aic(self, X: Any) -> float:
        """Akaike information criterion of the model on ``X`` (lower is better)."""
        return -2 * self.score(X) * self._n_samples(X) + 2 * self._n_parameters()
