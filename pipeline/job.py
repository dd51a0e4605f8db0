"""The job's sequence, written once: check outputs → prepare data → fit → label → report.

:func:`run_job`, :func:`run_selection` and :func:`fit_only` say *what* runs in which order
and on which cluster. The stages themselves are one :class:`Steps` value of plain
functions (:data:`STEPS`: those of :mod:`pipeline.steps` and :mod:`pipeline.report`); the
Prefect flows (``flows/``) decorate these very functions with ``prefect.task`` and pass
them here as another :class:`Steps`. What an orchestrator shows while the stages run (a
progress bar, log lines, Prefect artifacts) is a :class:`Hooks` object, which watches and
never does a stage's work. So the CLI, tests and the flows share one sequence, one output
check and one cluster life cycle, and no stage is written twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from emdist import CheckpointStore, Observer
from pipeline import steps as plain
from pipeline.cluster import (
    SchedulerLostError,
    SchedulerUnreachableError,
    dask_client,
    scheduler_answers,
    unreachable_message,
)
from pipeline.config import RunConfig
from pipeline.outputs import (
    check_outputs,
    claim,
    derived_outputs,
    job_id,
    selection_config,
    selection_dir,
)
from pipeline.report import ReportRef, report_job
from pipeline.steps import (
    DatasetRef,
    FitSummary,
    PredictionsRef,
    SelectionResult,
    criteria_with_labels,
)

__all__ = [
    "STEPS",
    "Hooks",
    "JobResult",
    "SelectionJobResult",
    "Steps",
    "fit_only",
    "read_summary",
    "report_from_disk",
    "run_job",
    "run_selection",
    "write_summary",
]


@dataclass(frozen=True)
class JobResult:
    """References to everything a job produced."""

    data: DatasetRef
    fit: FitSummary
    predictions: PredictionsRef
    report: ReportRef


@dataclass(frozen=True)
class SelectionJobResult:
    """What choosing the number of components produced."""

    data: DatasetRef
    selection: SelectionResult
    predictions: PredictionsRef
    report: ReportRef


# -- the stages -----------------------------------------------------------------------------


class PrepareStep(Protocol):
    """``prepare(config) -> DatasetRef``."""

    def __call__(self, config: RunConfig) -> DatasetRef: ...  # noqa: D102


class FitStep(Protocol):
    """``fit(config, data, *, scheduler, observer, criteria) -> FitSummary``."""

    def __call__(  # noqa: D102
        self,
        config: RunConfig,
        data: DatasetRef,
        *,
        scheduler: str | None = None,
        observer: Observer | None = None,
        criteria: bool = True,
    ) -> FitSummary: ...


class SelectStep(Protocol):
    """``select(config, data, candidates, *, scheduler, observer) -> SelectionResult``."""

    def __call__(  # noqa: D102
        self,
        config: RunConfig,
        data: DatasetRef,
        candidates: list[int],
        *,
        scheduler: str | None = None,
        observer: Observer | None = None,
    ) -> SelectionResult: ...


class LabelStep(Protocol):
    """``label(config, data, model_path, *, scheduler, criteria) -> PredictionsRef``."""

    def __call__(  # noqa: D102
        self,
        config: RunConfig,
        data: DatasetRef,
        model_path: str,
        *,
        scheduler: str | None = None,
        criteria: bool = False,
    ) -> PredictionsRef: ...


class ReportStep(Protocol):
    """``report(config, data, fit, predictions, selection) -> ReportRef``."""

    def __call__(  # noqa: D102
        self,
        config: RunConfig,
        data: DatasetRef,
        fit: FitSummary,
        predictions: PredictionsRef | None,
        selection: SelectionResult | None = None,
    ) -> ReportRef: ...


@dataclass(frozen=True)
class Steps:
    """The job's stages as plain functions.

    Each takes plain inputs (the configuration, small references, a scheduler address)
    and returns a small JSON-able reference.
    :func:`run_job` calls ``prepare``, ``fit``, ``label``, ``report``; :func:`run_selection`
    calls ``prepare``, ``select``, ``label``, ``report``; :func:`fit_only` calls ``prepare``,
    ``fit``. An orchestrator passes the same functions wrapped (the Prefect flows: each
    one decorated once with ``prefect.task``), never other ones.

    Attributes
    ----------
    prepare : callable
        Generate, ingest or open the dataset (:func:`pipeline.steps.prepare_data`).
    fit : callable
        Fit the model, checkpointed, and save it (:func:`pipeline.steps.fit_model`).
    select : callable
        Fit one model per candidate K and pick one
        (:func:`pipeline.steps.select_components`).
    label : callable
        Write the labels (:func:`pipeline.steps.label_data`).
    report : callable
        Write the report (:func:`pipeline.report.report_job`).
    """

    prepare: PrepareStep
    fit: FitStep
    select: SelectStep
    label: LabelStep
    report: ReportStep


#: The stages as plain calls in this process.
STEPS = Steps(
    prepare=plain.prepare_data,
    fit=plain.fit_model,
    select=plain.select_components,
    label=plain.label_data,
    report=report_job,
)


class Hooks:
    """What the job shows of its stages while they run: the plain version, in this process.

    A hook only watches: it never does a stage's work, and a job runs the same without
    it. An orchestrator subclasses it to show more (the Prefect flows log every EM
    iteration and publish artifacts, ``flows.tasks.PrefectHooks``).

    Parameters
    ----------
    observer : callable, optional
        Called after every EM iteration of the fits (a progress bar).
    log : callable, optional
        Where one-line messages for the user go (default: nowhere).
    """

    def __init__(
        self, observer: Observer | None = None, log: Callable[[str], None] | None = None
    ) -> None:
        self.observer = observer
        self._log = log

    def log(self, message: str) -> None:
        """Tell the user one line (a dashboard's link, how a fit started)."""
        if self._log is not None:
            self._log(message)

    def prepared(self, config: RunConfig, data: DatasetRef) -> None:
        """After the data is ready (here: nothing)."""

    @contextlib.contextmanager
    def fitting(self, config: RunConfig, stage: str) -> Iterator[Observer | None]:
        """Around a fit (``stage`` ``"fit"``) or a selection (``"select-k"``): the observer."""
        yield self.observer

    def fitted(self, config: RunConfig, fit: FitSummary) -> FitSummary:
        """After a fit: say how it started when a previous model was involved."""
        if fit.warm_started or "previous model" in fit.start:
            self.log(fit.start)
        return fit

    def reported(
        self,
        config: RunConfig,
        fit: FitSummary,
        report: ReportRef,
        selection: SelectionResult | None = None,
    ) -> None:
        """After the report is written (here: nothing)."""


# -- the run's summary on disk --------------------------------------------------------------


def summary_path(config: RunConfig) -> Path:
    """Where the fit summary (JSON) of a run is kept, for reports written later."""
    return Path(config.output.dir) / "summary.json"


def write_summary(
    config: RunConfig,
    data: DatasetRef,
    fit: FitSummary,
    predictions: PredictionsRef | None,
    path: Path | None = None,
) -> Path:
    """Write the run's references as JSON, atomically (temp file + rename).

    ``path`` defaults to :func:`summary_path`.
    """
    path = path if path is not None else summary_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "job": job_id(config),
        "data": data.to_dict(),
        "fit": fit.to_dict(),
        "predictions": predictions.to_dict() if predictions else None,
    }
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    return path


def read_summary(
    config: RunConfig,
) -> tuple[DatasetRef, FitSummary, PredictionsRef | None]:
    """Read what :func:`write_summary` wrote."""
    path = summary_path(config)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the job (or its fit step) first")
    payload: dict[str, Any] = json.loads(path.read_text())
    preds = payload.get("predictions")
    return (
        DatasetRef(**payload["data"]),
        FitSummary(**payload["fit"]),
        PredictionsRef(**preds) if preds else None,
    )


def report_from_disk(config: RunConfig) -> ReportRef:
    """Rewrite the report of a finished run from its saved summary and model."""
    data, fit, predictions = read_summary(config)
    check_outputs(config, [config.report_dir])
    report = report_job(config, data, fit, predictions)
    claim(config.report_dir, config)
    return report


# -- the sequence ---------------------------------------------------------------------------


def _iterations_saved(config: RunConfig) -> int | None:
    """Iterations of the running restarts in the fit's checkpoint (``None``: none saved)."""
    path = plain.latest_checkpoint(config) if config.checkpoint.enabled else None
    if path is None:
        return None
    try:
        state = CheckpointStore(path).load()
    except Exception:  # a damaged checkpoint is not what this message is about
        return None
    if state is None:
        return None
    # Every restart finished: the kept one's iterations.
    return state.iteration if state.running or state.best is None else state.best.n_iter


@contextlib.contextmanager
def _quiet_reconnects() -> Iterator[None]:
    """Silence the client's tracebacks while it tries to reconnect to a lost scheduler.

    A lost scheduler is reported by :func:`_on_cluster` in one line; distributed's client
    would log a traceback per reconnect attempt above it, and its batched sender one for
    the write the closed connection broke.
    """
    loggers = [logging.getLogger(name) for name in ("distributed.client", "distributed.batched")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def _on_cluster(config: RunConfig, hooks: Hooks) -> Iterator[str]:
    """The job's scheduler address, for the numeric steps; says so if it goes away."""
    quiet = contextlib.nullcontext() if config.cluster.address is None else _quiet_reconnects()
    with quiet, dask_client(config.cluster, announce=hooks.log) as client:
        address = str(client.scheduler_info()["address"])
        try:
            yield address
        except Exception as exc:
            # Only a scheduler of the user's (config.cluster.address) can vanish under us
            # and be restarted by them; an embedded one dies with this process.
            if config.cluster.address is None or scheduler_answers(address):
                raise
            saved = _iterations_saved(config)
            resume = (
                f"after iteration {saved}; the checkpoint is saved; rerun to resume"
                if saved is not None
                else "before any checkpoint was saved; rerun to start again"
            )
            raise SchedulerLostError(f"lost the Dask scheduler at {address} {resume}") from exc


def _start(
    config: RunConfig,
    outputs: list[Path],
    flag: str = "output.overwrite: true",
) -> None:
    """Check what the job would replace and that its scheduler answers, before any work."""
    check_outputs(config, outputs, flag=flag)
    address = config.cluster.address
    # Before preparing the data, which can take long (an ingest): a wrong address is the
    # user's to fix, and is said within connect_timeout seconds.
    if address is not None and not scheduler_answers(address, config.cluster.connect_timeout):
        raise SchedulerUnreachableError(
            unreachable_message(address, config.cluster.connect_timeout)
        )


def _prepare(config: RunConfig, steps: Steps, hooks: Hooks) -> DatasetRef:
    data = steps.prepare(config)
    hooks.prepared(config, data)
    return data


def _fit(
    config: RunConfig,
    data: DatasetRef,
    scheduler: str | None,
    steps: Steps,
    hooks: Hooks,
    criteria: bool = True,
) -> FitSummary:
    with hooks.fitting(config, "fit") as observer:
        fit = steps.fit(config, data, scheduler=scheduler, observer=observer, criteria=criteria)
    return hooks.fitted(config, fit)


def run_job(
    config: RunConfig,
    observer: Observer | None = None,
    *,
    steps: Steps = STEPS,
    hooks: Hooks | None = None,
) -> JobResult:
    """Prepare data, fit (checkpointed), label and report, on the configured cluster.

    Parameters
    ----------
    config : RunConfig
    observer : callable, optional
        Called after every EM iteration (when ``hooks`` is not given).
    steps : Steps, optional
        The stages (default: :data:`STEPS`, plain calls in this process).
    hooks : Hooks, optional
        What is shown while they run (default: ``Hooks(observer)``).

    Raises
    ------
    OutputExistsError
        Before any work, if an output exists that this job did not write.
    """
    hooks = hooks if hooks is not None else Hooks(observer)
    _start(config, derived_outputs(config))
    data = _prepare(config, steps, hooks)
    with _on_cluster(config, hooks) as address:
        # A Gaussian mixture's criteria come with the labels' pass, not a pass of their own
        # after the fit: the same figures, one read of the data fewer.
        later = criteria_with_labels(config.model)
        fit = _fit(config, data, address, steps, hooks, criteria=not later)
        predictions = steps.label(config, data, fit.model_path, scheduler=address, criteria=later)
    if predictions.criteria is not None:
        got = predictions.criteria
        fit = dataclasses.replace(fit, score=got["score"], bic=got["bic"], aic=got["aic"])
    write_summary(config, data, fit, predictions)
    report = steps.report(config, data, fit, predictions)
    hooks.reported(config, fit, report)
    claim(config.report_dir, config)
    return JobResult(data, fit, predictions, report)


def run_selection(
    config: RunConfig,
    candidates: list[int],
    observer: Observer | None = None,
    *,
    steps: Steps = STEPS,
    hooks: Hooks | None = None,
) -> SelectionJobResult:
    """Fit each candidate K, pick the best by BIC, label with it and report.

    Parameters are those of :func:`run_job`, plus ``candidates`` (numbers of components).
    Everything it writes (a model per candidate, the best one's labels, the report and the
    summary) goes under :func:`~pipeline.outputs.selection_dir`, never over the outputs of
    :func:`run_job`: a folder never mixes the model of one K with the labels of another.
    """
    hooks = hooks if hooks is not None else Hooks(observer)
    chosen = selection_config(config, config.model.n_components)
    _start(chosen, [p for p in derived_outputs(chosen) if p != chosen.model_path])
    data = _prepare(config, steps, hooks)
    with _on_cluster(config, hooks) as address:
        with hooks.fitting(config, "select-k") as watch:
            selection = steps.select(config, data, candidates, scheduler=address, observer=watch)
        best = next(r for r in selection.rows if r["k"] == selection.best_k)
        chosen = selection_config(config, selection.best_k)
        predictions = steps.label(chosen, data, best["model_path"], scheduler=address)
    summary = selection_dir(config) / "summary.json"
    write_summary(chosen, data, selection.best_fit, predictions, summary)
    report = steps.report(chosen, data, selection.best_fit, predictions, selection)
    hooks.reported(chosen, selection.best_fit, report, selection)
    claim(chosen.report_dir, config)
    return SelectionJobResult(data, selection, predictions, report)


def fit_only(
    config: RunConfig,
    observer: Observer | None = None,
    *,
    steps: Steps = STEPS,
    hooks: Hooks | None = None,
    flag: str = "output.overwrite: true",
) -> FitSummary:
    """Prepare data and fit, on ``config.cluster.address`` or Dask's local threads.

    The ``emdist fit`` command: no labels, no report, no embedded LocalCluster (a fit of
    a small file should not pay for starting worker processes). ``flag`` is how the user
    asks to replace an output, for the error message.
    """
    hooks = hooks if hooks is not None else Hooks(observer)
    _start(config, derived_outputs(config, label=False, report=False), flag)
    data = _prepare(config, steps, hooks)
    if config.cluster.address is None:
        return _fit(config, data, None, steps, hooks)
    with _on_cluster(config, hooks) as address:
        return _fit(config, data, address, steps, hooks)
