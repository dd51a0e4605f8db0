"""K-means (Lloyd) fitted one pass per iteration over row-chunked data."""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import dask.array as da
import numpy as np

from emdist._random import child_seeds
from emdist._typing import AnyArray, FloatArray
from emdist.engine.data import FitData, active_client
from emdist.engine.em import (
    BATCH,
    EMResult,
    FitSpec,
    IterationState,
    ModelPlan,
    Observer,
    run_restarts,
)
from emdist.engine.oversampling import (
    LabelKernel,
    OversampledStart,
    Refine,
    start_seed,
    uses_oversampling,
)
from emdist.engine.reduce import PassData, map_reduce
from emdist.engine.restarts import BestRun, best_run, keep_best
from emdist.engine.seeding import DataSummary, kmeans_plusplus, sample_rows_by_weight
from emdist.exceptions import ConvergenceWarning, InvalidParameterError
from emdist.io.checkpoint import CheckpointStore
from emdist.kernels.kmeans import (
    BOUND_BYTES_PER_ROW,
    KMeansBounds,
    KMeansParams,
    KMeansStats,
    kmeans_estep_bounded,
    kmeans_estep_chunk,
    kmeans_estep_many,
    kmeans_labels_chunk,
    kmeans_mstep,
    kmeans_transform_chunk,
)
from emdist.kernels.kmeans_bounds import lloyd_bounds
from emdist.kernels.kmeans_clean import KMeansSkip
from emdist.kernels.rebase import rebase_kmeans_stats
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
from emdist.models._criteria import KernelStep, criteria_rows, label_counts_chunk
from emdist.models._docs import fill_doc
from emdist.models._partial import (
    KMEANS_STREAM_ATTRIBUTES,
    check_stream_values,
    partial_fit_kmeans,
)
from emdist.models._sklearn import ClusterMixin, TransformerMixin
from emdist.models._validation import (
    UPDATES_CONSTRAINTS,
    Constraint,
    any_of,
    check_data_scale,
    is_none,
    literal,
    non_negative_real,
    positive_int,
    restart_count,
)
from emdist.registry import register_family

__all__ = [
    "KMeans",
    "KMeansFamily",
    "fit_kmeans",
    "initial_centers",
    "kmeans_plan",
    "lloyd_on_rows",
    "oversampled_start",
]


@dataclass(frozen=True)
class KMeansFamily:
    """K-means as a model family of the EM engine (hard assignments, Lloyd updates).

    The lower bound is ``-inertia / n_samples``; convergence is scikit-learn's: the squared
    centre shift summed over clusters is at most ``tol`` (an absolute tolerance here; the
    estimator scales the user's ``tol`` by the mean feature variance). Centres are sums about
    fixed reference points (:mod:`emdist.kernels.kmeans`), so an iteration whose labels equal
    the previous one's moves no centre: ``tol=0`` is scikit-learn's strict convergence.
    """

    #: Incremental EM (emdist.engine.incremental) restores kept statistics of this class.
    stats_type: ClassVar[type[KMeansStats]] = KMeansStats

    def estep_chunk(self, block: RowBlock, params: KMeansParams) -> KMeansStats:
        """Assignment statistics of one block."""
        return kmeans_estep_chunk(block, params)

    def estep_many(self, block: RowBlock, params: Sequence[KMeansParams]) -> list[KMeansStats]:
        """Several restarts' statistics of one block, in one walk over its rows.

        Each equals, bit for bit, what :meth:`estep_chunk` gives under its parameters.
        """
        return kmeans_estep_many(block, params)

    #: Bytes a restart's kept state (Hamerly bounds, segment statistics) takes per row: the
    #: engine's budget of kept state.
    kept_bytes_per_row: ClassVar[int] = BOUND_BYTES_PER_ROW

    #: Blocks whose kept bounds prove every label are left unread by a fit's passes.
    kept_skip: ClassVar[KMeansSkip] = KMeansSkip()

    def estep_kept(
        self,
        block: RowBlock,
        params: Sequence[KMeansParams],
        tags: Sequence[Any],
        previous: KMeansBounds | None,
    ) -> tuple[list[KMeansStats], KMeansBounds]:
        """:meth:`estep_many` with the block's Hamerly bounds kept from pass to pass.

        The engine keeps the returned bounds beside the block (:mod:`emdist.engine.kept`)
        and hands them to the next pass; rows whose bounds prove their label are not
        scored. The statistics equal :meth:`estep_many`'s, bit for bit.
        """
        return kmeans_estep_bounded(block, params, tags, previous)

    def mstep(self, stats: KMeansStats, params: KMeansParams) -> KMeansParams:
        """New centres; empty clusters re-seeded from far points."""
        return kmeans_mstep(stats)[0]

    def lower_bound(self, stats: KMeansStats, params: KMeansParams) -> float:
        """Minus the mean squared distance to the assigned centre."""
        return -stats.inertia / stats.n

    def converged(
        self,
        prev_bound: float,
        bound: float,
        params: KMeansParams,
        new_params: KMeansParams,
        tol: float,
    ) -> bool:
        """Squared centre shift at most ``tol``."""
        return float(np.sum((new_params.centers - params.centers) ** 2)) <= tol

    # -- incremental EM (emdist.engine.incremental) -------------------------------------

    def rebase(self, stats: KMeansStats, params: KMeansParams) -> KMeansStats:
        """The same assignments measured from the centres of ``params``, about its references."""
        return rebase_kmeans_stats(stats, params.centers, params.about)

    def entropy(self, stats: KMeansStats, params: KMeansParams) -> float:
        """0: hard assignments have no entropy."""
        return 0.0

    def free_energy(self, stats: KMeansStats, entropy: float, params: KMeansParams) -> float:
        """Minus the mean squared distance of the kept assignments to the centres of ``params``.

        An empty cluster re-seeded by the M-step is not written back into the kept
        assignments: its far point stays in its old cluster's statistics until its shard
        is visited again (docs/design.md, "Incremental EM").
        """
        return -rebase_kmeans_stats(stats, params.centers).inertia / stats.n


def _needs_final_pass(result: EMResult[KMeansParams, KMeansStats]) -> bool:
    """Whether the last pass ran under centres other than the final ones (or is unknown)."""
    stats = result.stats
    return stats is None or not np.array_equal(stats.shift, result.params.centers)


def _final_inertia(X: PassData, result: EMResult[KMeansParams, KMeansStats]) -> float:
    """Inertia of the final centres (re-assigning if the last pass ran under other ones)."""
    stats = result.stats
    if stats is not None and np.array_equal(stats.shift, result.params.centers):
        # Labels did not change in the last pass: its inertia is that of the final centres.
        return stats.inertia
    # As scikit-learn: re-assign under the final centres so inertia and labels match them.
    final: KMeansStats = map_reduce(X, KMeansFamily().estep_chunk, result.params)
    return final.inertia


def initial_centers(
    data: FitData, n_clusters: int, init: Any, seed: int, start: OversampledStart | None = None
) -> FloatArray:
    """Starting centres: k-means||, k-means++ or random rows of the scan sample, or arrays.

    ``start``: the fit's k-means|| start (``init='k-means++'``), which gives the restart's
    centres (:mod:`emdist.engine.oversampling`).
    """
    sample, w = data.summary.sample, data.summary.sample_weight
    rng = np.random.default_rng(seed)
    if isinstance(init, str):
        # Weighted as scikit-learn's seeding: a row's chance grows with its sample_weight.
        if init == "k-means++" and start is not None:
            seeded: FloatArray | None = start.centers(seed)
            if seeded is not None:
                return seeded
        if init == "k-means++":
            return sample[kmeans_plusplus(sample, n_clusters, rng, sample_weight=w)].copy()
        if init == "random":
            return sample[sample_rows_by_weight(len(sample), n_clusters, rng, w)].copy()
        raise InvalidParameterError(f"init must be 'k-means++', 'random' or an array; got {init!r}")
    centers = np.asarray(init, dtype=np.float64)
    expected = (n_clusters, data.summary.n_features)
    if centers.shape != expected:
        raise InvalidParameterError(f"init has shape {centers.shape}; expected {expected}")
    if not np.all(np.isfinite(centers)):
        raise InvalidParameterError("init contains NaN or infinity")
    return centers


def lloyd_on_rows(
    seeds: FloatArray, rows: FloatArray, weights: FloatArray, seed: int
) -> FloatArray:
    """Weighted Lloyd in memory from ``seeds`` (the last step of the k-means|| start).

    scikit-learn's K-means of a mixture's start: 300 iterations at most, ``tol=1e-4``
    relative to the rows' mean (weighted) variance.
    """
    mean = weights @ rows / weights.sum()
    summary = DataSummary(
        n_samples=len(rows),
        n_features=rows.shape[1],
        mean=mean,
        variance=weights @ (rows - mean) ** 2 / weights.sum(),
        sample=rows,
        sample_rows=np.arange(len(rows)),
        sample_weight=weights,
    )
    on_rows = FitData(rows, summary, True, {"weights": weights})
    run = fit_kmeans(
        on_rows, n_clusters=len(seeds), init=seeds, n_init=1, max_iter=300, tol=1e-4, seed=seed
    )
    return run.params.centers


def oversampled_start(
    data: FitData, n_clusters: int, label_kernel: LabelKernel | None = None
) -> OversampledStart | None:
    """The k-means|| start of a fit (in memory where the scan sample holds every row).

    ``None`` for data with missing values and for a sample's own K-means (no scan seed).
    The centres of the cells are refined by Lloyd on the sample, except for K-means itself
    (no ``label_kernel``) on data the sample holds whole: the fit's own Lloyd over the same
    rows follows.
    """
    if not uses_oversampling(data):
        return None
    summary = data.summary
    refine: Refine = lloyd_on_rows
    if label_kernel is None and summary.n_samples <= len(summary.sample):
        refine = _seeds_as_they_are
    return OversampledStart(
        data, n_clusters, start_seed(data), refine=refine, label_kernel=label_kernel
    )


def _seeds_as_they_are(
    seeds: FloatArray, rows: FloatArray, weights: FloatArray, seed: int
) -> FloatArray:
    """No refinement: the fit's Lloyd runs over the same rows next."""
    return seeds


def _in_memory_run(
    data: FitData, spec: FitSpec[KMeansParams, KMeansStats]
) -> BestRun[KMeansParams] | None:
    """The fit on in-memory data with Hamerly's bounds, or ``None`` where passes must run.

    Passes run instead for data out of core or on a cluster, with a checkpoint (whose
    iterations are passes), a warm start's previous bound, incremental updates, or per-row
    weights (``sample_weight``: the bounds kernel keeps unweighted centre sums and counts,
    and its empty-cluster relocation moves rows of weight 1; the passes weigh both).
    """
    if (
        spec.checkpoint is not None
        or spec.previous_bound is not None
        or spec.schedule is not BATCH
        or data.per_row
    ):
        return None
    block = _in_memory_block(data)
    if block is None:
        return None
    return _fit_in_memory(spec, block)


def _in_memory_block(data: FitData) -> AnyArray | None:
    """The data as one numpy array when the user passed in-memory data and no cluster runs.

    In-memory data larger than a few thousand rows arrives as a Dask view in several
    blocks (``FitData`` does not keep the user's array): it is gathered into one array,
    a copy of the data held for the fit.
    """
    if isinstance(data.X, np.ndarray):
        return data.X
    if not data.in_memory or active_client() is not None:
        return None
    block: AnyArray = data.X.compute(scheduler="synchronous")
    return block


def _fit_in_memory(spec: FitSpec[KMeansParams, KMeansStats], X: AnyArray) -> BestRun[KMeansParams]:
    """The restarts on one in-memory block: Lloyd with Hamerly's bounds, one after another.

    No pass over the data per iteration: the bounds, labels and distances of every row stay
    in memory between iterations, and only rows whose bounds fail are scored
    (:mod:`emdist.kernels.kmeans_bounds`). Assignments are exactly Lloyd's, as with the
    passes; the observer sees the same iterations, restart after restart. Centres are each
    cluster's mean about one fixed point, the passes' about each cluster's starting centre
    and summed block by block, so the two may differ in the last digits.
    """
    model = spec.model
    assert model is not None
    best = None
    for restart, restart_seed in enumerate(spec.seeds):
        start = model.make_start(restart, restart_seed).centers
        report = _Report(restart, X.shape[0], spec.observer)
        run = lloyd_bounds(X, start, max_iter=spec.max_iter, tol=model.tol, on_iteration=report)
        # One bound per iteration, as a pass-driven restart records them (n_iter_).
        assert len(report.history) == run.n_iter
        best = keep_best(
            best,
            restart,
            KMeansParams(run.centers),
            tuple(report.history),
            run.converged,
            -run.final_inertia,
        )
    return best_run(best, KMeansParams)


@dataclass
class _Report:
    """The iterations of one in-memory restart: its bounds, and the observer's view."""

    restart: int
    n_samples: int
    observer: Observer | None
    history: list[float] = field(default_factory=list)
    clock: float = field(default_factory=time.perf_counter)

    def __call__(
        self, iteration: int, inertia: float, centers: FloatArray, converged: bool
    ) -> bool:
        now = time.perf_counter()
        seconds, self.clock = now - self.clock, now
        bound = -inertia / self.n_samples
        change = bound - self.history[-1] if self.history else math.inf
        self.history.append(bound)
        if self.observer is None:
            return False
        state = IterationState(
            restart=self.restart,
            iteration=iteration,
            lower_bound=bound,
            change=change,
            params=KMeansParams(centers),
            converged=converged,
            seconds=seconds,
            lower_bounds=tuple(self.history),
        )
        return bool(self.observer(state))


def kmeans_plan(
    data: FitData, n_clusters: int, init: Any, tol: float
) -> ModelPlan[KMeansParams, KMeansStats]:
    """Lloyd's algorithm as a model plan: seeding, the family, restarts compared by inertia.

    ``tol`` is relative to the mean feature variance (scikit-learn's meaning). In-memory
    data runs with Hamerly's bounds (:func:`_in_memory_run`) instead of passes.
    """
    summary = data.summary
    check_data_scale(summary.n_samples, summary.variance, summary.sample, "K-means")
    start = None
    if isinstance(init, str) and init == "k-means++":
        start = oversampled_start(data, n_clusters)
    return ModelPlan(
        KMeansFamily(),
        lambda restart, seed: KMeansParams(initial_centers(data, n_clusters, init, seed, start)),
        KMeansParams,
        score=lambda result: -_final_inertia(data.rows, result),
        tol=float(np.mean(data.summary.variance)) * tol,
        # The restarts loop runs that pass beside the other restarts' iterations, so
        # _final_inertia finds it done.
        final_pass=_needs_final_pass,
        in_memory=_in_memory_run,
        start=start,
    )


def fit_kmeans(
    data: FitData,
    *,
    n_clusters: int,
    init: Any,
    n_init: int,
    max_iter: int,
    tol: float,
    seed: int,
) -> BestRun[KMeansParams]:
    """Run ``n_init`` restarts of Lloyd's algorithm and keep the lowest inertia.

    For other models' initialisation (``init_params='kmeans'``); :class:`KMeans` runs the
    same plan through the estimators' fit template.

    Parameters
    ----------
    data : FitData
        Opened and scanned data.
    n_clusters, init, n_init, max_iter, tol :
        As :class:`KMeans`; ``tol`` is relative to the mean feature variance.
    seed : int
        Seed of the restarts.

    Returns
    -------
    BestRun
        ``score`` is minus the inertia of the kept centres.
    """
    spec = FitSpec[KMeansParams, KMeansStats](
        seeds=child_seeds(seed, n_init), max_iter=max_iter, seed=seed
    )
    return run_restarts(data, spec.planned(kmeans_plan(data, n_clusters, init, tol)))


@register_family("kmeans", summary="K-means (Lloyd), k-means++ seeding")
@fill_doc
class KMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    """K-means clustering by Lloyd's algorithm, one pass over the data per iteration.

    Accepts data that does not fit in memory (a Dask array, a Zarr array or its path):
    each iteration streams the row-blocks once, reduces them to per-cluster counts and
    sums, and updates the centres on the client.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters.
    init : {'k-means++', 'random'} or ndarray of shape (n_clusters, n_features), \
default='k-means++'
        Seeding, never one pass per centre. Both start from a uniform sample of rows drawn
        in the scan pass that also validates the data (``init_sample_size`` rows).
        ``k-means++`` is k-means|| over all the rows (:mod:`emdist.engine.oversampling`):
        the best of 10 k-means++ seedings of 4K weighted candidates; in memory where the
        sample holds every row, one pass shared by the restarts on larger data.
        ``random``: rows of the sample.
    n_init : 'auto' or int, default='auto'
        Restarts; the one with the lowest inertia is kept. ``'auto'`` means 1 for
        ``k-means++`` and for an explicit array, 10 for ``random``.
    max_iter : int, default=300
        Maximum Lloyd iterations per restart.
    tol : float, default=1e-4
        Relative tolerance: converged when the summed squared centre shift is at most
        ``tol`` times the mean feature variance (scikit-learn's meaning).
    random_state : int, RandomState, Generator or None, default=None
        Seed of everything random in the fit (sampling and seeding).
    init_sample_size : int, optional
        Rows sampled for seeding; default ``max(10000, 100 * n_clusters)``. Data with
        more rows starts by k-means|| (``init='k-means++'``: one pass).
    {{updates}}
    {{fit_hooks}}

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
    labels_ : ndarray of shape (n_samples,) or dask.array.Array
        Labels of the training data (lazy when the data was not in memory).
    inertia_ : float
        ``Σ ‖x - c_label‖²`` under the final centres.
    n_iter_ : int
        Lloyd iterations of the best restart.
    converged_ : bool
    lower_bounds_ : list of float
        ``-inertia / n_samples`` per iteration of the best restart.
    n_features_in_ : int
    n_steps_ : int
        Batches :meth:`partial_fit` has seen since the last ``fit`` (absent before).
    counts_ : ndarray of shape (n_clusters,)
        :meth:`partial_fit`'s weight of the rows assigned to each centre (with
        ``n_since_reassign_`` and ``stream_seed_``, saved with the model).

    Examples
    --------
    >>> import numpy as np
    >>> from emdist import KMeans
    >>> X = np.array([[1.0, 2.0], [1.0, 4.0], [1.0, 0.0], [10.0, 2.0], [10.0, 4.0], [10.0, 0.0]])
    >>> km = KMeans(n_clusters=2, random_state=0).fit(X)
    >>> sorted(km.cluster_centers_[:, 0].tolist())
    [1.0, 10.0]
    """

    _parameter_constraints: ClassVar[dict[str, Constraint]] = {
        "n_clusters": positive_int,
        "max_iter": positive_int,
        "tol": non_negative_real,
        "n_init": any_of(literal("auto"), restart_count),
        "init_sample_size": any_of(is_none, positive_int),
        **UPDATES_CONSTRAINTS,
    }
    _n_components_param = "n_clusters"
    _convergence_quantity = "squared centre shift"
    tol_is_bound_change = False
    bound_name = "-inertia / n"
    _config_aliases: ClassVar[dict[str, str]] = {"n_components": "n_clusters"}
    _params_type = KMeansParams
    _stream_attributes = KMEANS_STREAM_ATTRIBUTES
    n_steps_: int
    counts_: FloatArray
    n_since_reassign_: int
    stream_seed_: int

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: Literal["k-means++", "random"] | AnyArray = "k-means++",
        n_init: Literal["auto"] | int = "auto",
        max_iter: int = 300,
        tol: float = 1e-4,
        random_state: Any = None,
        init_sample_size: int | None = None,
        updates: str = "batch",
        n_shards: int = 8,
        observer: Observer | None = None,
        checkpoint: CheckpointStore | str | os.PathLike[str] | None = None,
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
        self.n_clusters = n_clusters
        self.init = init

    def _n_init(self) -> int:
        if self.n_init == "auto":
            return 10 if isinstance(self.init, str) and self.init == "random" else 1
        if not isinstance(self.init, str) and self.n_init != 1:
            warnings.warn(
                "Explicit initial centres given: performing only one init (n_init=1).",
                RuntimeWarning,
                stacklevel=4,  # _n_init <- _setup_fit <- fit <- the caller
            )
            return 1
        return int(self.n_init)

    def _use_start(self, previous: Any) -> None:
        # scikit-learn's own way to start from given centres: an explicit ``init``, one run.
        self.init = np.array(previous.cluster_centers_, dtype=np.float64, copy=True)
        self.n_init = 1

    def _plan(self, data: FitData, warm: bool) -> ModelPlan[KMeansParams, KMeansStats]:
        return kmeans_plan(data, int(self.n_clusters), self.init, float(self.tol))

    def _record(self, best: BestRun[Any], data: FitData, X: Any) -> None:
        self.cluster_centers_ = best.params.centers
        self.inertia_ = -best.score
        # The cluster sizes of the training data under the final centres, when the kept
        # restart's last pass ran under them (a final pass, or labels that did not change):
        # the information criteria of that data then need no pass of their own. Known by the
        # name of the Dask array fitted (in-memory data costs no read).
        stats = best.stats
        self._training_sizes: tuple[str, AnyArray] | None = None
        if (
            isinstance(data.X, da.Array)
            and not data.per_row  # weighted sizes are not the criteria's row counts
            and isinstance(stats, KMeansStats)
            and np.array_equal(stats.shift, self.cluster_centers_)
        ):
            self._training_sizes = (data.X.name, np.asarray(stats.counts))
        self.labels_ = self.predict(X if data.in_memory else data.X)
        distinct = len(np.unique(self.cluster_centers_, axis=0))
        if distinct < self.cluster_centers_.shape[0]:
            warnings.warn(
                f"Number of distinct clusters ({distinct}) found smaller than "
                f"n_clusters ({self.cluster_centers_.shape[0]}). Possibly due to duplicate "
                f"points in X.",
                ConvergenceWarning,
                stacklevel=4,  # _record <- _finish_fit <- fit <- the caller
            )

    @classmethod
    def from_config(cls, params: Mapping[str, Any], **runtime: Any) -> KMeans:
        """Build from a family-neutral model configuration (see the base class).

        ``n_components`` is ``n_clusters``; ``init_params`` ``'random'`` and
        ``'random_from_data'`` seed with random rows, the others with k-means++.
        """
        params = dict(params)
        init_params = params.pop("init_params", None)
        if init_params is not None:
            params["init"] = (
                "random" if init_params in ("random", "random_from_data") else "k-means++"
            )
        return super().from_config(params, **runtime)

    def components(self) -> Components:
        """The centres (K-means has no weights or covariances)."""
        self._check_fitted()
        return Components(self.cluster_centers_, None, None)

    def information_criteria(self, X: Any, sample_weight: Any = None) -> dict[str, float]:
        """BIC and AIC of the clustering read as identical spherical Gaussians (X-means).

        Inertia alone always falls as K grows; Pelleg & Moore's X-means criterion scores
        the clustering as a mixture of K spherical Gaussians with one shared variance
        ``σ² = inertia / (d (n - K))`` and weights ``n_k / n``, so K can be chosen by BIC.
        ``inertia_`` must be that of ``X`` (the training data). Costs one pass (the
        cluster sizes), or none when ``X`` is the Dask array just fitted and the fit's last
        pass ran under the final centres (its sizes are those).

        Parameters
        ----------
        X : array-like, dask.array.Array, zarr.Array, str or path
            The training data.
        sample_weight : array-like, dask.array.Array, zarr.Array, str or path, optional
            The weights it was fitted with (``inertia_`` is weighted then): sizes are
            summed weights and ``n = Σ w``, the criteria of the rows repeated ``w`` times.

        Returns
        -------
        dict
            ``{"score": ..., "bic": ..., "aic": ...}``, the score being the mean
            log-likelihood per sample.
        """
        self._check_fitted(X)
        step, args = self._criteria_step()
        rows, n = criteria_rows(X, self.n_features_in_, type(self).__name__, sample_weight)
        known = getattr(self, "_training_sizes", None)
        if known is not None and isinstance(rows, da.Array) and rows.name == known[0]:
            # The training data as fitted: its sizes came with the fit's last pass.
            return self._criteria_from(known[1], n)
        return self._criteria_from(map_reduce(rows, step.estep_chunk, args), n)

    def _criteria_step(self) -> tuple[KernelStep, tuple[Any, ...]]:
        """The reduction behind :meth:`information_criteria`: cluster sizes."""
        return KernelStep(label_counts_chunk), (self.cluster_centers_,)

    def _criteria_from(self, sizes: AnyArray, n: float) -> dict[str, float]:
        """The X-means score, BIC and AIC from the cluster sizes of ``n`` samples."""
        K, d = self.cluster_centers_.shape
        counts = np.asarray(sizes).astype(float)
        sigma2 = max(float(self.inertia_) / (d * max(n - K, 1)), np.finfo(float).tiny)
        nz = counts[counts > 0]
        log_lik = float(
            np.sum(nz * np.log(nz / n)) - n * d / 2 * np.log(2 * np.pi * sigma2) - d * (n - K) / 2
        )
        n_params = K * d + 1 + (K - 1)
        return {
            "score": log_lik / n,
            "bic": float(-2 * log_lik + n_params * np.log(n)),
            "aic": float(-2 * log_lik + 2 * n_params),
        }

    def summary_statistics(self, X: Any, sample_weight: Any = None) -> dict[str, Any]:
        """Inertia, and the X-means score, BIC and AIC of the training data ``X`` (one pass)."""
        return self._summary_with(self.information_criteria(X, sample_weight))

    def _summary_with(self, criteria: dict[str, float]) -> dict[str, Any]:
        return {"inertia": float(self.inertia_), **criteria}

    def predict(self, X: Any) -> Any:
        """Index of the nearest centre of every sample.

        Parameters
        ----------
        X : array-like, dask.array.Array, zarr.Array, str or path

        Returns
        -------
        ndarray of shape (n_samples,), or a lazy dask.array.Array for non-numpy input
        """
        self._check_fitted(X)
        return apply_rows(
            X,
            kmeans_labels_chunk,
            self.cluster_centers_,
            n_features=self.n_features_in_,
            name=type(self).__name__,
            out_width=None,
            dtype=np.int64,
        )

    def transform(self, X: Any) -> Any:
        """Euclidean distance of every sample to every centre, (n_samples, n_clusters).

        A DataFrame (columns ``kmeans0``...) after ``set_output(transform="pandas")``.
        """
        return self._wrap_output(self._distances(X), X)

    def _distances(self, X: Any) -> Any:
        """The distances :meth:`transform` returns, as an array whatever ``set_output``."""
        self._check_fitted(X)
        return apply_rows(
            X,
            kmeans_transform_chunk,
            self.cluster_centers_,
            n_features=self.n_features_in_,
            name=type(self).__name__,
            out_width=self.cluster_centers_.shape[0],
        )

    def check_fitted_values(self) -> None:
        """The base class's checks and a finite, non-negative ``inertia_``."""
        super().check_fitted_values()
        if fitted_float(self, "inertia_") < 0:
            raise ValueError(f"field 'inertia_' is {self.inertia_!r}, not >= 0")
        check_stream_values(self, KMEANS_STREAM_ATTRIBUTES)

    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> KMeans:
        """One mini-batch K-means step on a batch (scikit-learn's ``MiniBatchKMeans``).

        Every centre keeps the weight of the rows ever assigned to it (``counts_``) and
        moves to their mean: ``c ← c + (x̄_batch,k - c) · n_batch,k / N_k``. Centres lighter
        than 1% of the heaviest move to random rows of the batch (checked every
        ``10 * n_clusters`` rows, and whenever a centre had no weight before the step),
        seeded by the stream and the step. The first call of an unfitted model seeds from
        its batch as ``fit`` does; after ``fit`` (or a loaded fitted model) the fitted
        centres start the stream with zero counts, as an ``init`` array does. ``fit``
        starts it over.

        Parameters
        ----------
        X : array-like, dask.array.Array, zarr.Array, str or path
            The batch, (n_rows, n_features); a Dask batch is reduced over its blocks.
        y : ignored
        sample_weight : array-like or dask.array.Array of shape (n_rows,), optional

        Returns
        -------
        self
            ``inertia_`` is the batch's under the centres before the step; ``labels_``
            is not set.
        """
        partial_fit_kmeans(self, X, sample_weight)
        return self

    def check_parameter_values(self) -> None:
        """Centres of shape (n_clusters, n_features_in_), finite."""
        shape = (fitted_int(self, "n_clusters"), fitted_int(self, "n_features_in_"))
        fitted_array(self, "cluster_centers_", shape)

    def _set_params(self, params: KMeansParams) -> None:
        self.cluster_centers_ = params.centers

    @property
    def _n_features_out(self) -> int:
        """Columns of :meth:`transform`: one distance per centre."""
        return int(self.cluster_centers_.shape[0])

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> KMeans:
        """Compute the centres, one pass over the data per Lloyd iteration.

        Parameters
        ----------
        X : array-like, dask.array.Array, zarr.Array, str or path
            Data of shape (n_samples, n_features); a path names a Zarr array (or a
            dataset group written by emdist, whose data array is used).
        y : ignored
        sample_weight : array-like, dask.array.Array, zarr.Array, str or path of shape \
(n_samples,), optional
            Weight of every row, as scikit-learn's: weighted centres, inertia, seeding and
            empty-cluster relocation. Checked (length, finite, >= 0, not all zero)
            before any pass. In-memory data then runs the passes, not the bounded loop.

        Returns
        -------
        self
        """
        return self._fit(X, sample_weight)

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """Fit, then return the labels of ``X``."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def fit_transform(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """Fit, then return the distances of ``X`` to the centres."""
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Minus the (weighted) inertia of ``X`` under the fitted centres."""
        d = self._distances(X)
        closest = d.min(axis=1) ** 2
        if sample_weight is not None:
            closest = closest * weights_like(sample_weight, closest)
        total = closest.sum()
        return -float(total.compute() if isinstance(total, da.Array) else total)
