"""The job's steps as plain functions: prepare data → fit → label → report.

Each step takes the validated :class:`~pipeline.config.RunConfig` and small references
(paths, addresses), and returns a small, JSON-able reference: the orchestrator (the Prefect
flow in ``flows/``, or the CLI) passes these between steps, never arrays. Every step is
idempotent: re-running it after a failure resumes (fit) or redoes it atomically (outputs).
Nothing here knows Prefect.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

import emdist
from emdist import CheckpointStore, IterationState, Observer, family_class
from emdist.exceptions import InvalidParameterError
from emdist.io import (
    RECORD_KEY,
    as_dask_array,
    ingest,
    make_gaussian_mixture,
    open_synthetic,
    open_zarr_array,
    parse_source_format,
)
from pipeline.cluster import connect
from pipeline.config import CHECKPOINT_VERSION, ConfigError, ModelConfig, RunConfig
from pipeline.outputs import (
    JOB_ATTRIBUTE,
    check_outputs,
    claim,
    job_id,
    may_replace,
    selection_dir,
)

__all__ = [
    "DatasetRef",
    "FitSummary",
    "PredictionsRef",
    "cluster_sizes",
    "SelectionResult",
    "checkpoint_for",
    "connect",
    "data_version",
    "fit_model",
    "criteria_with_labels",
    "label_data",
    "latest_checkpoint",
    "open_dataset",
    "prepare_data",
    "prune_checkpoints",
    "select_components",
]


@dataclass(frozen=True)
class DatasetRef:
    """A dataset ready for fitting: a row-chunked Zarr array on disk."""

    path: str
    n_samples: int
    n_features: int
    chunk_rows: int
    n_chunks: int
    truth: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


@dataclass(frozen=True)
class FitSummary:
    """What a fit produced, for the report and the orchestrator."""

    model_path: str
    family: str
    n_components: int
    n_iter: int
    converged: bool
    lower_bounds: list[float]
    iteration_seconds: list[float]
    fit_seconds: float
    resumed_iterations: int
    score: float | None = None
    bic: float | None = None
    aic: float | None = None
    inertia: float | None = None
    weights: list[float] = field(default_factory=list)
    # Warnings the fit emitted (non-convergence, checkpoint fallback), for the run's logs
    # and summary; filled in by the orchestrator that caught them.
    warnings: list[str] = field(default_factory=list)
    # How the fit started: warm from the previous run's model, or cold and why.
    warm_started: bool = False
    start: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


@dataclass(frozen=True)
class PredictionsRef:
    """Labels written to Zarr, with the size of every cluster."""

    path: str
    counts: list[int]
    # The fitted model's score, BIC and AIC on the data, when the label step computed them
    # in its pass (label_data(criteria=True)).
    criteria: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


@dataclass(frozen=True)
class SelectionResult:
    """A fit per candidate number of components, and the pick."""

    rows: list[dict[str, Any]]
    best_k: int
    criterion: str
    best_fit: FitSummary

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def _describe(path: Path, truth: str | None = None) -> DatasetRef:
    arr = open_zarr_array(path)
    rows = int((arr.shards or arr.chunks)[0])
    n = int(arr.shape[0])
    return DatasetRef(
        path=str(path),
        n_samples=n,
        n_features=int(arr.shape[1]),
        chunk_rows=rows,
        n_chunks=-(-n // rows),
        truth=truth,
    )


def _ingested_from(dest: Path, source: Path) -> bool:
    """Whether ``dest`` was ingested from ``source`` as it is now (path, size, mtime)."""
    import datetime as dt

    if not (dest / "zarr.json").exists() or not source.exists():
        return False
    try:
        prov = dict(open_zarr_array(dest).attrs.get("provenance") or {})  # type: ignore[arg-type]
    except Exception:
        return False
    stat = source.stat()
    mtime = dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC).isoformat()
    return bool(
        prov.get("source") == str(source.resolve())
        and prov.get("source_mtime") == mtime
        and (source.is_dir() or prov.get("source_bytes") == stat.st_size)
    )


def prepare_data(config: RunConfig) -> DatasetRef:
    """Make the input a row-chunked Zarr array: generate it, ingest it, or open it.

    Idempotent: a generated dataset with the same settings, or an ingested one from the
    same unchanged source, is reused.
    """
    gen = config.input.generate
    if gen is not None:
        group = config.synthetic_path
        with contextlib.suppress(Exception):
            existing = open_synthetic(group)
            same = (
                existing.n_samples,
                existing.n_features,
                existing.n_components,
                existing.truth.covariance_type,
                existing.separation,
                existing.chunk_rows,
                existing.seed,
            ) == (
                gen.n_samples,
                gen.n_features,
                gen.n_components,
                gen.covariance_type,
                gen.separation,
                min(gen.chunk_rows, gen.n_samples),
                gen.random_state,
            )
            if same:
                return _describe(existing.data_path, str(group))
        ds = make_gaussian_mixture(
            group,
            n_samples=gen.n_samples,
            n_features=gen.n_features,
            n_components=gen.n_components,
            covariance_type=gen.covariance_type,
            separation=gen.separation,
            chunk_rows=gen.chunk_rows,
            random_state=gen.random_state,
            overwrite=may_replace(group, config),
        )
        claim(group, config)
        return _describe(ds.data_path, str(group))
    assert config.input.path is not None
    source = Path(config.input.path)
    if config.data_path == source:
        return _describe(source)
    if _ingested_from(config.data_path, source):
        return _describe(config.data_path)
    result = ingest(
        source,
        config.data_path,
        source_format=parse_source_format(config.input.format),
        dataset=config.input.dataset,
        overwrite=may_replace(config.data_path, config),
        # A fit that marginalizes missing values keeps the source's NaN (and nulls).
        allow_missing=config.model.missing == "marginalize",
    )
    claim(result.path, config)
    return _describe(Path(result.path))


_log = logging.getLogger("emdist.pipeline")


def data_version(path: str | Path) -> str:
    """A cheap key of the dataset's current version: 16 hex digits.

    Built from the array's shape, chunking and dtype, the integrity record and ingest
    provenance in its attributes, and its metadata file's modification time (Zarr rewrites
    it when the array is recreated or resized). One ``stat``, no data read: an input that
    grew, was re-ingested or regenerated gets a new key; the same data keeps its key, so a
    killed run finds its checkpoint again. Only the metadata is read: the fit opens and
    verifies the data once, in :func:`open_dataset`.
    """
    try:
        arr = zarr.open_array(str(path), mode="r")
    except Exception:  # not a plain array (a dataset group, damage): the checked open says why
        arr = open_zarr_array(path)
    attrs = arr.attrs.asdict()
    meta = Path(arr.store.root) / arr.path / "zarr.json" if hasattr(arr.store, "root") else None
    stat = meta.stat() if meta is not None and meta.is_file() else None
    material = {
        "shape": list(arr.shape),
        "chunks": list(arr.chunks),
        "shards": list(arr.shards) if arr.shards else None,
        "dtype": str(arr.dtype),
        "record": attrs.get(RECORD_KEY),
        "provenance": attrs.get("provenance"),
        "metadata": [stat.st_mtime_ns, stat.st_size] if stat is not None else None,
    }
    blob = json.dumps(material, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_for(config: RunConfig, data_path: str | Path) -> Path:
    """The checkpoint of a fit of ``config`` on the data at ``data_path`` as it is now.

    ``<checkpoint.path>/<data version>/checkpoint.zarr``; the version's folder also holds
    ``start.zarr``, the model a warm start began from (so a resumed run starts from the
    same model even after the previous run's model was replaced).

    Raises
    ------
    ConfigError
        ``checkpoint.path`` is itself one checkpoint (as earlier versions kept them): it is
        not turned into a folder of checkpoints behind the user's back.
    """
    root = config.checkpoint_path
    if (root / "zarr.json").is_file():
        raise ConfigError(
            f"{root} is a single checkpoint (an earlier emdist's layout); checkpoints are now "
            f"kept one per version of the data inside a folder: choose another checkpoint "
            f"path, or delete {root}"
        )
    return root / data_version(data_path) / "checkpoint.zarr"


def _versions(root: Path) -> list[Path]:
    """Version folders under a checkpoint root, oldest first (by last write)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT_VERSION.fullmatch(p.name)]

    def touched(p: Path) -> int:
        meta = p / "checkpoint.zarr" / "zarr.json"
        return (meta if meta.is_file() else p).stat().st_mtime_ns

    return sorted(found, key=touched)


def latest_checkpoint(config: RunConfig) -> Path | None:
    """The most recently written checkpoint of the job (for "resume" messages)."""
    for version in reversed(_versions(config.checkpoint_path)):
        if (version / "checkpoint.zarr").exists():
            return version / "checkpoint.zarr"
    return None


def prune_checkpoints(root: Path, keep: int, current: Path | None = None) -> list[Path]:
    """Delete all but the ``keep`` newest version folders under ``root`` (never ``current``).

    Only folders named like a data version are touched: anything else a user put there
    stays. Returns what was deleted.
    """
    versions = [v for v in _versions(root) if v != current]
    doomed = versions[: max(0, len(versions) - (keep - (current is not None)))]
    for version in doomed:
        shutil.rmtree(version, ignore_errors=True)
    return doomed


def checkpoint_store(config: RunConfig, path: Path | None = None) -> CheckpointStore | None:
    """The checkpoint store of the fit, or ``None`` when checkpoints are off."""
    if not config.checkpoint.enabled:
        return None
    return CheckpointStore(
        path or config.checkpoint_path,
        every=config.checkpoint.every,
        keep=config.checkpoint.keep,
        overwrite=config.checkpoint.restart,
    )


@dataclass(frozen=True)
class _Start:
    """Where a fit starts: a previous model (or ``None``: cold), why, and where to keep it."""

    previous: Any
    why: str
    keep_at: Path | None = None


def _previous_model(
    config: RunConfig, version: Path | None, model_path: Path | None = None
) -> _Start:
    """The model the fit should start from, if any (compatibility is the estimator's call).

    A version folder that already holds the start model (an interrupted or finished run on
    this data) gives that one; a checkpoint without it began cold and must go on cold;
    otherwise the model at ``model_path`` (default ``output.model``: the previous run's).
    """
    if not config.model.warm_start:
        return _Start(None, "cold start (model.warm_start is off)")
    kept = version / "start.zarr" if version is not None else None
    if kept is not None and config.checkpoint.restart:
        shutil.rmtree(kept, ignore_errors=True)  # starting over: from today's previous model
    elif kept is not None and kept.exists():
        return _Start(emdist.load_model(kept), f"warm start from the previous model ({kept})")
    elif version is not None and (version / "checkpoint.zarr" / "zarr.json").exists():
        return _Start(None, "cold start (this data's checkpoint began cold)")
    previous = model_path or config.model_path
    if not previous.exists():
        return _Start(None, f"cold start (no previous model at {previous})")
    try:
        model = emdist.load_model(previous)
    except Exception as exc:  # a damaged or foreign model: fit from scratch, say why
        return _Start(None, f"cold start (the model at {previous} cannot be read: {exc})")
    return _Start(model, f"warm start from the previous model ({previous})", kept)


@dataclass
class _PreparedFit:
    """An estimator ready to fit, with what its summary will need."""

    estimator: Any
    warm: bool
    how: str
    seconds: list[float] = field(default_factory=list)
    first_iteration: list[int] = field(default_factory=list)


def _prepare_fit(
    model: ModelConfig,
    data: DatasetRef,
    checkpoint: CheckpointStore | None,
    observer: Observer | None,
    start: _Start | None = None,
) -> _PreparedFit:
    prepared = _PreparedFit(None, False, start.why if start is not None else "")

    def watch(state: IterationState[Any]) -> bool | None:
        if not prepared.first_iteration:
            prepared.first_iteration.append(state.iteration)
        prepared.seconds.append(state.seconds)
        return observer(state) if observer is not None else None

    # The estimator the configuration describes, its family from the registry. warm_start
    # here is the job's (start from the previous run's model, see fit_model), not
    # scikit-learn's (continue this object's own fit).
    params = model.model_dump(exclude={"family", "warm_start"})
    estimator = family_class(model.family).from_config(
        params, checkpoint=checkpoint, observer=watch
    )
    prepared.estimator = estimator
    if start is not None and start.previous is not None:
        refused = estimator.warm_start_from(start.previous, data.n_features)
        if refused is not None:
            prepared.how = f"cold start ({refused})"
        else:
            prepared.warm = True
            if start.keep_at is not None and not start.keep_at.exists():
                # Kept before the checkpoint exists: a resume starts from this very model
                # even once the new one has replaced it at output.model.
                emdist.save_model(start.previous, start.keep_at)
    if prepared.how:
        _log.info("%s", prepared.how)
    return prepared


def _save_fit(
    prepared: _PreparedFit,
    model: ModelConfig,
    model_path: Path,
    fit_seconds: float,
    extra: dict[str, Any],
    owner: str,
) -> FitSummary:
    estimator = prepared.estimator
    # Atomic: the previous model stays whole at model_path until this one is complete. It
    # is claimed by the job in the same step: a kill right after it appears must not leave
    # a model the re-run refuses to replace.
    emdist.save_model(estimator, model_path, overwrite=True, attributes={JOB_ATTRIBUTE: owner})
    first = prepared.first_iteration
    return FitSummary(
        model_path=str(model_path),
        family=model.family,
        n_components=model.n_components,
        n_iter=int(estimator.n_iter_),
        converged=bool(estimator.converged_),
        lower_bounds=[float(v) for v in estimator.lower_bounds_],
        iteration_seconds=prepared.seconds,
        fit_seconds=fit_seconds,
        # Iterations this process did not run came from the checkpoint (all of them when the
        # checkpoint held a finished fit).
        resumed_iterations=(first[0] - 1) if first else int(estimator.n_iter_),
        warm_started=prepared.warm,
        start=prepared.how,
        **extra,
    )


def open_dataset(data: DatasetRef) -> da.Array:
    """The dataset opened and verified once, as the row-chunked array a fit runs over.

    The fit and its statistics take this array, not the path: opening a path verifies the
    store again (every chunk file is checked), and the statistics of the training data
    can come with the fit's last pass only when they see the very array it ran over.
    """
    return as_dask_array(data.path)


def open_weights(config: RunConfig) -> Any:
    """``input.sample_weight`` as the fit takes it: a Zarr array or a .npy file, or ``None``.

    A .npy file is memory-mapped (never unpickled); a Zarr array is opened lazily, read
    block by block with the data's row-blocks. Its values are checked by the fit, before
    any pass over the data.
    """
    path = config.input.sample_weight
    if path is None:
        return None
    if path.endswith(".npy"):
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidParameterError(
                f"sample_weight {path} is not a readable .npy array ({exc})"
            ).naming("sample_weight", "sample_weight") from None
    return path


def fit_model(
    config: RunConfig,
    data: DatasetRef,
    *,
    scheduler: str | None = None,
    observer: Observer | None = None,
    criteria: bool = True,
) -> FitSummary:
    """Fit the configured model to the dataset, checkpointed, and save it.

    Every version of the input data has its own checkpoint (:func:`checkpoint_for`):
    re-running after a crash resumes it and ends with the same model; a run on changed
    data (grown, re-ingested) starts a new one, warm-started from the previous run's model
    when ``model.warm_start`` (the default) and that model is compatible. After a
    successful fit, all but the ``checkpoint.versions`` newest checkpoints are deleted.

    Parameters
    ----------
    config : RunConfig
    data : DatasetRef
    scheduler : str, optional
        Address of a Dask scheduler; the local threaded scheduler when ``None``.
    observer : callable, optional
        Called after every EM iteration (progress bars, logging).
    criteria : bool, default=True
        ``False`` leaves the score, BIC and AIC of a model whose criteria take a pass of
        their own (:func:`criteria_with_labels`) to the label step, which computes them in
        its pass (``label_data(criteria=True)``): the summary then has them as ``None``.

    Returns
    -------
    FitSummary
    """
    # Refused before the fit, not after an hour of it; _save_fit then replaces it.
    check_outputs(config, [config.model_path])
    # Opened and verified once, before anything is written (a damaged store is refused here).
    X = open_dataset(data)
    weights = open_weights(config)
    version = checkpoint_for(config, data.path).parent if config.checkpoint.enabled else None
    store = checkpoint_store(config, version / "checkpoint.zarr") if version else None
    start = _previous_model(config, version)
    with connect(scheduler):
        prepared = _prepare_fit(config.model, data, store, observer, start)
        start_time = time.perf_counter()
        prepared.estimator.fit(X, sample_weight=weights)
        fit_seconds = time.perf_counter() - start_time
        if criteria or not criteria_with_labels(config.model):
            extra = prepared.estimator.summary_statistics(X, weights)
        else:
            extra = {"weights": [float(w) for w in prepared.estimator.weights_]}
        fit = _save_fit(
            prepared, config.model, config.model_path, fit_seconds, extra, job_id(config)
        )
    if version is not None:
        prune_checkpoints(config.checkpoint_path, config.checkpoint.versions, version)
    return fit


def criteria_with_labels(model: ModelConfig) -> bool:
    """Whether a job computes this model's score, BIC and AIC in the label step's pass.

    A Gaussian mixture's criteria need the log-likelihood under the final parameters, which
    no pass of the fit computes (each runs under the parameters before its M-step): a pass
    of their own after the fit, unless they come with the labels' pass, which reads every
    row under those parameters anyway. K-means' come from the fit's last pass; a variational
    mixture has none.
    """
    return model.family == "gmm"


def label_data(
    config: RunConfig,
    data: DatasetRef,
    model_path: str,
    *,
    scheduler: str | None = None,
    criteria: bool = False,
) -> PredictionsRef:
    """Write labels (and optional per-sample outputs) next to the data, atomically.

    ``criteria``: also compute the model's score, BIC and AIC on the data (with the job's
    sample weights) from the same reads, as ``PredictionsRef.criteria``: equal, bit for
    bit, to what the fit step computes in a pass of its own (``fit_model(criteria=True)``).
    """
    check_outputs(config, [config.predictions_path])
    model = emdist.load_model(model_path)
    mixture = model.gives_responsibilities
    weights = open_weights(config) if criteria else None
    with connect(scheduler):
        path = emdist.write_predictions(
            model,
            data.path,
            config.predictions_path,
            responsibilities=config.output.responsibilities and mixture,
            log_likelihood=config.output.log_likelihood and mixture,
            overwrite=may_replace(config.predictions_path, config),
            criteria=criteria,
            sample_weight=weights,
        )
        claim(path, config)
        counts = cluster_sizes(path / "labels", config.model.n_components)
    found = zarr.open_group(str(path), mode="r").attrs.get("criteria") if criteria else None
    scores = {k: float(v) for k, v in found.items()} if isinstance(found, dict) else None
    return PredictionsRef(str(path), counts, scores)


def cluster_sizes(labels_path: Path, n_components: int) -> list[int]:
    """Samples per cluster of a labels array, counted block by block and summed.

    Gathering the labels for one ``np.bincount`` would hold all of them (n int64s: 3 GB at
    375M rows) twice over, in a worker and in this process; per-block counts are K numbers.
    """
    labels = zarr.open_array(str(labels_path), mode="r")
    counts = da.bincount(da.from_zarr(labels), minlength=n_components).compute()
    return [int(c) for c in counts]


def select_components(
    config: RunConfig,
    data: DatasetRef,
    candidates: list[int],
    *,
    scheduler: str | None = None,
    observer: Observer | None = None,
) -> SelectionResult:
    """Fit one model per candidate number of components and pick the lowest BIC.

    The candidates are fitted together (:func:`emdist.fit_shared`): every pass over the data
    serves all of them, and one more pass gives all their criteria. Each candidate has its
    own checkpoint and model path under the output folder, so a re-run resumes the
    candidates that were interrupted and reuses the finished ones. ``fit_seconds`` of every
    candidate is the wall time of the whole sweep's fit.
    """
    if not candidates:
        raise InvalidParameterError("select_k needs at least one candidate number of components")
    # K-means is scored by the X-means BIC (see emdist.KMeans.information_criteria); inertia
    # alone would always pick the largest K.
    criterion = "bic"
    rows: list[dict[str, Any]] = []
    fits: dict[int, FitSummary] = {}
    base = selection_dir(config)
    ks = sorted(set(candidates))
    check_outputs(config, [base / f"k{k}" / "model.zarr" for k in ks])
    X = open_dataset(data)
    weights = open_weights(config)
    # As fit_model, per candidate: a checkpoint per data version, warm from its last model.
    key = data_version(data.path) if config.checkpoint.enabled else None
    with connect(scheduler):
        plans = []
        for k in ks:
            model = config.model.model_copy(update={"n_components": k})
            model_path = base / f"k{k}" / "model.zarr"
            version = base / f"k{k}" / "checkpoints" / key if key is not None else None
            store = checkpoint_store(config, version / "checkpoint.zarr") if version else None
            start = _previous_model(config, version, model_path)
            prepared = _prepare_fit(model, data, store, observer, start)
            plans.append((k, model, model_path, version, prepared))
        estimators = [prepared.estimator for *_, prepared in plans]
        start_time = time.perf_counter()
        emdist.fit_shared(estimators, X, weights)
        fit_seconds = time.perf_counter() - start_time
        extras = emdist.summary_statistics_shared(estimators, X, weights)
        for (k, model, model_path, version, prepared), extra in zip(plans, extras, strict=True):
            fit = _save_fit(prepared, model, model_path, fit_seconds, extra, job_id(config))
            if version is not None:
                prune_checkpoints(version.parent, config.checkpoint.versions, version)
            fits[k] = fit
            rows.append(
                {
                    "k": k,
                    "bic": fit.bic,
                    "aic": fit.aic,
                    "inertia": fit.inertia,
                    "lower_bound": fit.lower_bounds[-1] if fit.lower_bounds else None,
                    "n_iter": fit.n_iter,
                    "converged": fit.converged,
                    "model_path": fit.model_path,
                }
            )
    best = min(rows, key=lambda r: r[criterion])
    return SelectionResult(rows, int(best["k"]), criterion, fits[int(best["k"])])
