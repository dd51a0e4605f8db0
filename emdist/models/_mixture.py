"""What the Gaussian mixtures share: initialisation, parameter table, prediction, sampling.

:class:`~emdist.GaussianMixture` and :class:`~emdist.BayesianGaussianMixture` both start
from an M-step on initial responsibilities (:func:`initial_resp_stats`) and predict through
the same per-block functions over their own log-probability kernel.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, ClassVar, Self

import dask.array as da
import numpy as np

from emdist._random import child_seeds, resolve_seed
from emdist._typing import COVARIANCE_TYPES, AnyArray, CovarianceType, FloatArray
from emdist.engine.data import FitData
from emdist.engine.oversampling import OversampledStart
from emdist.engine.reduce import map_reduce
from emdist.engine.restarts import BestRun
from emdist.engine.seeding import kmeans_plusplus, sample_rows_by_weight, sample_summary
from emdist.exceptions import InvalidParameterError
from emdist.kernels.covariance import covariance_shape, full_covariances
from emdist.kernels.gaussian import precisions_from_cholesky
from emdist.kernels.mixture import (
    MixtureStats,
    labels_from_log_prob,
    mixture_hard_resp_stats_chunk,
    mixture_random_resp_stats_chunk,
    mixture_stats_from_resp,
    proba_from_log_prob,
    score_samples_from_log_prob,
)
from emdist.kernels.rows import RowBlock
from emdist.models._base import (
    BaseEstimator,
    Components,
    apply_rows,
    fitted_array,
    fitted_float,
    fitted_int,
    weights_like,
)
from emdist.models._sklearn import DensityMixin
from emdist.models._validation import (
    UPDATES_CONSTRAINTS,
    Constraint,
    any_of,
    is_none,
    non_negative_real,
    one_of,
    positive_int,
    restart_count,
)
from emdist.models.kmeans import fit_kmeans

__all__ = [
    "BaseMixture",
    "INIT_PARAMS",
    "check_user_array",
    "initial_resp_stats",
]

INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")
# How far saved weights may sum from 1 (float rounding of a normalisation) and still load.
_WEIGHT_SUM_TOL = 1e-6


def _inverse_of(precision: FloatArray, covariance: FloatArray) -> bool:
    """Whether ``precision @ covariance`` is the identity up to the rounding of an inverse.

    The rounding of an inverse grows with the condition number, so the tolerance does too
    (a well-conditioned pair must agree to about 1e-8; a tampered one is off by O(1)).
    """
    d = covariance.shape[0]
    cond = float(np.linalg.cond(covariance))
    residual = float(np.max(np.abs(precision @ covariance - np.eye(d))))
    return math.isfinite(cond) and residual <= max(1e-8, 1e4 * np.finfo(np.float64).eps * cond)


def check_user_array(value: Any, shape: tuple[int, ...], name: str) -> FloatArray:
    """``value`` as a float64 array of ``shape`` with finite values, or ``ValueError``."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise InvalidParameterError(f"{name} has shape {arr.shape}; expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidParameterError(f"{name} contains NaN or infinity")
    return arr


def initial_resp_stats(
    data: FitData,
    *,
    n_components: int,
    covariance_type: CovarianceType,
    init_params: str,
    seed: int,
    start: OversampledStart | None = None,
) -> MixtureStats:
    """Moments of the initial responsibilities of one restart.

    Both mixtures start from an M-step on initial responsibilities (scikit-learn's
    ``_initialize``): the maximum-likelihood one for :class:`GaussianMixture`, the
    variational one for ``BayesianGaussianMixture``. ``kmeans`` labels the scan sample by
    K-means run on it in memory, ``k-means++`` and ``random_from_data`` give one-hot rows of
    the scan sample: none of them reads the data. ``random`` (random responsibilities for
    every row, as scikit-learn) takes one pass. With ``start`` (the fit's k-means|| start,
    the default for ``kmeans``), ``kmeans`` is K-means centres seeded over all the data
    and the moments of every row under their labels: two passes, none where the sample
    holds every row (:mod:`emdist.engine.oversampling`). Without it (data with missing
    values), K-means with k-means++ on the mean-imputed sample.

    Parameters
    ----------
    data : FitData
    n_components : int
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}
    seed : int
        Seed of the restart.
    start : OversampledStart, optional
        The fit's k-means|| start (its passes shared by the restarts).

    Returns
    -------
    MixtureStats
        About the data mean (every component), with ``log_lik = 0``.
    """
    K = n_components
    shift = np.tile(data.summary.mean, (K, 1))
    rng = np.random.default_rng(seed)
    # Missing values (missing='marginalize') are imputed by the feature means of the
    # observed values for the start only: K-means and one-hot starts need whole rows, and
    # the EM iterations that follow treat the values as missing (docs/design.md).
    sample = _imputed(data.summary.sample, data.summary.mean)
    fill = data.summary.mean if sample is not data.summary.sample else None
    if init_params == "kmeans":
        # The k-means|| start gives centres and the labels of every row (two passes, in
        # memory where the sample holds every row: docs/design.md#initialisation). Without
        # it, K-means on the scan sample in memory, at no pass over the data.
        labelled = None if start is None else start.labelled(seed)
        if labelled is not None:
            stats: MixtureStats = labelled
            return stats
        w = data.summary.sample_weight
        per_row = {} if w is None else {"weights": w}
        on_sample = FitData(
            sample, sample_summary(replace(data.summary, sample=sample)), True, per_row
        )
        (km_seed,) = child_seeds(seed, 1)
        run = fit_kmeans(
            on_sample,
            n_clusters=K,
            init="k-means++",
            n_init=1,
            max_iter=300,
            tol=1e-4,
            seed=km_seed,
        )
        return mixture_hard_resp_stats_chunk(
            RowBlock(sample, weights=w), run.params.centers, shift, covariance_type
        )
    if init_params in ("k-means++", "random_from_data"):
        w = data.summary.sample_weight
        if init_params == "k-means++":
            idx = kmeans_plusplus(sample, K, rng, sample_weight=w)
        else:
            idx = sample_rows_by_weight(len(sample), K, rng, w)
        # One row per component, as scikit-learn's one-hot responsibilities at those rows.
        return mixture_stats_from_resp(sample[idx], np.eye(K), shift, covariance_type)
    if init_params == "random":
        stats = map_reduce(
            data.rows,
            mixture_random_resp_stats_chunk,
            int(rng.integers(2**63 - 1)),
            shift,
            covariance_type,
            fill,
        )
        return stats
    raise InvalidParameterError(f"init_params must be one of {INIT_PARAMS}; got {init_params!r}")


def _imputed(sample: FloatArray, mean: FloatArray) -> FloatArray:
    """``sample`` with every NaN replaced by its feature's mean (itself when it has none)."""
    nan = np.isnan(sample)
    if not nan.any():
        return sample
    return np.where(nan, mean[None, :], sample)


class BaseMixture(DensityMixin, BaseEstimator):
    """What the mixture estimators share: parameter table, fit record, prediction, sampling.

    Subclasses supply :meth:`_set_params` and :meth:`_log_prob` (the per-block kernel for
    labels, responsibilities and log-likelihood, with its arguments).
    """

    gives_responsibilities = True
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {
        "n_components": positive_int,
        "covariance_type": one_of(COVARIANCE_TYPES),
        "tol": non_negative_real,
        "reg_covar": non_negative_real,
        "max_iter": positive_int,
        "n_init": restart_count,
        "init_params": one_of(INIT_PARAMS),
        "init_sample_size": any_of(is_none, positive_int),
        **UPDATES_CONSTRAINTS,
    }

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

    @classmethod
    def from_config(cls, params: Mapping[str, Any], **runtime: Any) -> Self:
        """Build from a family-neutral model configuration (see the base class).

        A null field there means the estimator's default, so plain EM is spelt
        ``acceleration: none`` (``acceleration=None``); the default is ``'auto'``.
        """
        params = dict(params)
        if params.get("acceleration") == "none" and "acceleration" in cls._param_names():
            del params["acceleration"]
            return super().from_config(params, **runtime).set_params(acceleration=None)
        return super().from_config(params, **runtime)

    def __init__(
        self,
        *,
        n_components: int,
        covariance_type: CovarianceType,
        tol: float,
        reg_covar: float,
        max_iter: int,
        n_init: int,
        init_params: str,
        random_state: Any,
        warm_start: bool,
        init_sample_size: int | None,
        updates: str,
        n_shards: int,
        observer: Any,
        checkpoint: Any,
    ) -> None:
        super().__init__(
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            random_state=random_state,
            init_sample_size=init_sample_size,
            updates=updates,
            n_shards=n_shards,
            observer=observer,
            checkpoint=checkpoint,
        )
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.init_params = init_params
        self.warm_start = warm_start

    @abc.abstractmethod
    def _log_prob(self) -> tuple[Callable[..., FloatArray], tuple[Any, ...]]:
        """Per-block weighted log-densities ``(n, K)`` and their extra arguments."""

    def _apply(
        self, fn: Callable[..., Any], X: Any, out_width: int | None, dtype: Any = np.float64
    ) -> Any:
        self._check_fitted(X)
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
            missing=getattr(self, "missing", None),
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

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Mean log-likelihood per sample of ``X`` (computed, also for lazy input).

        With ``sample_weight``, per unit weight: ``Σ w log p(x) / Σ w`` (the score of the
        rows repeated ``w`` times).
        """
        s = self.score_samples(X)
        if sample_weight is not None:
            w = weights_like(sample_weight, s)
            mean: Any = (s * w).sum() / w.sum()
        else:
            mean = s.mean()
        return float(mean.compute() if isinstance(mean, da.Array) else mean)

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
            raise InvalidParameterError(f"n_samples must be >= 1; got {n_samples}")
        rng = np.random.default_rng(
            None if self.random_state is None else resolve_seed(self.random_state)
        )
        counts = rng.multinomial(n_samples, self.weights_)
        covariances = self.components().covariances
        assert covariances is not None
        parts = [
            rng.multivariate_normal(mean, cov, int(count))
            for mean, cov, count in zip(self.means_, covariances, counts, strict=True)
        ]
        y = np.repeat(np.arange(len(counts)), counts)
        return np.vstack(parts), y

    @abc.abstractmethod
    def _set_params(self, params: Any) -> None:
        """Set the fitted parameter attributes from the engine's parameters."""

    def _record(self, best: BestRun[Any], data: FitData, X: Any) -> None:
        self.lower_bound_ = best.lower_bound
        self._set_params(best.params)

    def check_fitted_values(self) -> None:
        """The base class's checks, a finite ``lower_bound_``, and the parameters' values.

        ``lower_bound_`` is the last of ``lower_bounds_`` (the kept restart's last iteration).
        """
        super().check_fitted_values()
        bound = fitted_float(self, "lower_bound_")
        if bound != float(self.lower_bounds_[-1]):
            raise ValueError(
                f"field 'lower_bound_' ({bound!r}) is not the last of 'lower_bounds_' "
                f"({self.lower_bounds_[-1]!r})"
            )

    def check_parameter_values(self) -> None:
        """Weights on the simplex, finite means, covariances and precisions that agree.

        ``covariances_`` must be positive definite (a Cholesky factorisation exists; positive
        variances for 'diag' and 'spherical'); ``precisions_cholesky_`` a triangular factor
        with a positive diagonal whose precision is the inverse of the covariance (within
        float rounding); ``precisions_``, where present, that precision.
        """
        d = fitted_int(self, "n_features_in_")
        K = fitted_int(self, "n_components")
        weights = fitted_array(self, "weights_", (K,))
        if np.any(weights < 0) or abs(float(weights.sum()) - 1.0) > _WEIGHT_SUM_TOL:
            raise ValueError(
                f"field 'weights_' must be >= 0 and sum to 1 (sum {float(weights.sum())!r}, "
                f"min {float(weights.min())!r})"
            )
        fitted_array(self, "means_", (K, d))
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"field 'covariance_type' is {self.covariance_type!r}")
        shape = covariance_shape(self.covariance_type, K, d)
        factor = fitted_array(self, "precisions_cholesky_", shape)
        covariances = fitted_array(self, "covariances_", shape)
        if self.covariance_type in ("diag", "spherical"):
            diagonal, triangular = factor, True
        else:
            mats = factor.reshape(-1, d, d)
            diagonal = np.diagonal(mats, axis1=-2, axis2=-1)
            triangular = bool(np.all(np.triu(mats, 1) == 0) or np.all(np.tril(mats, -1) == 0))
        if not triangular or np.any(diagonal <= 0):
            raise ValueError(
                "field 'precisions_cholesky_' is not a triangular factor with a positive "
                "diagonal (its precision would not be positive definite)"
            )
        full_cov = full_covariances(covariances, self.covariance_type, K, d)
        precision = precisions_from_cholesky(factor, self.covariance_type)
        full_prec = full_covariances(precision, self.covariance_type, K, d)
        for k, cov in enumerate(full_cov):
            who = "the tied covariance" if self.covariance_type == "tied" else f"component {k}"
            try:
                np.linalg.cholesky(cov)
            except np.linalg.LinAlgError:
                raise ValueError(f"field 'covariances_' is not positive definite ({who})") from None
            if not _inverse_of(full_prec[k], cov):
                raise ValueError(
                    f"field 'precisions_cholesky_' does not match 'covariances_' ({who}: "
                    f"its precision is not the covariance's inverse)"
                )
        if getattr(self, "precisions_", None) is not None:
            saved = fitted_array(self, "precisions_", shape)
            scale = max(float(np.max(np.abs(precision))), np.finfo(np.float64).tiny)
            if float(np.max(np.abs(saved - precision))) > 1e-9 * scale:
                raise ValueError(
                    "field 'precisions_' does not match 'precisions_cholesky_' (it must be "
                    "the factor times its transpose)"
                )

    def components(self) -> Components:
        """Means, mixing weights and every component's full covariance."""
        self._check_fitted()
        K, d = self.means_.shape
        return Components(
            self.means_,
            self.weights_,
            full_covariances(self.covariances_, self.covariance_type, K, d),
        )

    def fit_predict(self, X: Any, y: Any = None) -> Any:
        """Fit, then return the labels of ``X`` under the fitted model."""
        return self.fit(X).predict(X)
