"""Prefect tasks: thin shells over ``pipeline`` steps.

Retries go on I/O-bound steps (preparing data, writing labels and reports). The fit has no
retries: it is checkpointed, so running it again — a retry of the flow, or a new run of the
same configuration — resumes from the last committed iteration instead of starting over.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from emdist.engine.em import IterationState
from pipeline import steps
from pipeline.config import RunConfig
from pipeline.job import write_summary
from pipeline.report import ReportRef, inline_images, write_report

__all__ = [
    "IterationLogger",
    "fit_task",
    "label_task",
    "prepare_data_task",
    "report_task",
    "select_k_task",
]


class IterationLogger:
    """Observer that makes every EM iteration visible in Prefect.

    Logs one line per iteration (restart, iteration, lower bound, change, seconds) and
    keeps a progress artifact at ``iteration / max_iter`` (100% when converged), updated at
    most every ``min_interval`` seconds and always at the end.
    """

    def __init__(
        self, max_iter: int, key: str = "emdist-fit-progress", min_interval: float = 2.0
    ) -> None:
        self.max_iter = max_iter
        self.min_interval = min_interval
        self._last_update = time.monotonic()
        self.logger = get_run_logger()
        self.artifact_id = create_progress_artifact(
            progress=0.0, key=key, description="EM iterations of the current restart"
        )

    def __call__(self, state: IterationState[Any]) -> None:
        """Log ``state`` and advance the progress artifact."""
        self.logger.info(
            "restart %d iteration %d: lower bound %.8f (change %.3e) in %.3f s%s",
            state.restart,
            state.iteration,
            state.lower_bound,
            state.change,
            state.seconds,
            " — converged" if state.converged else "",
        )
        # An artifact update is a synchronous API call (~tens of ms on a busy machine):
        # throttled so that it stays a small fraction of even a short iteration.
        now = time.monotonic()
        final = state.converged or state.iteration >= self.max_iter
        if final or now - self._last_update >= self.min_interval:
            progress = 100.0 if state.converged else 100.0 * state.iteration / self.max_iter
            update_progress_artifact(self.artifact_id, progress=min(progress, 100.0))
            self._last_update = now

    def finish(self, fit: steps.FitSummary) -> None:
        """Set the final progress: 100% for a converged fit, also one restored whole."""
        progress = 100.0 if fit.converged else 100.0 * fit.n_iter / self.max_iter
        update_progress_artifact(self.artifact_id, progress=min(progress, 100.0))


@task(name="prepare-data", retries=2, retry_delay_seconds=2)
def prepare_data_task(config: RunConfig) -> steps.DatasetRef:
    """Generate, ingest or open the dataset as row-chunked Zarr."""
    data = steps.prepare_data(config)
    get_run_logger().info(
        "dataset %s: %d x %d in %d chunks",
        data.path,
        data.n_samples,
        data.n_features,
        data.n_chunks,
    )
    return data


@task(name="fit")
def fit_task(config: RunConfig, data: steps.DatasetRef, scheduler: str | None) -> steps.FitSummary:
    """Fit the model, checkpointed; a re-run resumes from the checkpoint."""
    progress = IterationLogger(config.model.max_iter)
    fit = steps.fit_model(config, data, scheduler=scheduler, observer=progress)
    progress.finish(fit)
    if fit.resumed_iterations:
        get_run_logger().info("resumed after %d checkpointed iterations", fit.resumed_iterations)
    return fit


@task(name="label", retries=2, retry_delay_seconds=2)
def label_task(
    config: RunConfig, data: steps.DatasetRef, model_path: str, scheduler: str | None
) -> steps.PredictionsRef:
    """Write labels (and optional per-sample outputs) to Zarr atomically."""
    return steps.label_data(config, data, model_path, scheduler=scheduler)


@task(name="report", retries=1, retry_delay_seconds=2)
def report_task(
    config: RunConfig,
    data: steps.DatasetRef,
    fit: steps.FitSummary,
    predictions: steps.PredictionsRef | None,
    selection: steps.SelectionResult | None = None,
) -> ReportRef:
    """Write the report and publish it as Prefect artifacts (markdown and a table)."""
    write_summary(config, data, fit, predictions)
    report = write_report(config.name, data, fit, predictions, config.report_dir, selection)
    create_markdown_artifact(
        markdown=inline_images(report.markdown, report.dir)
        + f"\n\nReport folder: `{report.dir}`\n",
        key="emdist-report",
        description=f"emdist report of {config.name}",
    )
    run_rows: list[dict[str, Any]] = [
        {"quantity": "family", "value": fit.family},
        {"quantity": "n_components", "value": fit.n_components},
        {"quantity": "iterations", "value": fit.n_iter},
        {"quantity": "converged", "value": fit.converged},
        {"quantity": "lower_bound", "value": fit.lower_bounds[-1] if fit.lower_bounds else None},
        {"quantity": "bic", "value": fit.bic},
        {"quantity": "aic", "value": fit.aic},
        {"quantity": "inertia", "value": fit.inertia},
        {"quantity": "fit_seconds", "value": round(fit.fit_seconds, 3)},
        {
            "quantity": "median_seconds_per_iteration",
            "value": round(sorted(fit.iteration_seconds)[len(fit.iteration_seconds) // 2], 4)
            if fit.iteration_seconds
            else None,
        },
    ]
    create_table_artifact(table=run_rows, key="emdist-summary", description="run summary")
    create_table_artifact(table=report.rows, key="emdist-components", description="components")
    if selection is not None:
        create_table_artifact(
            table=[{k: v for k, v in r.items() if k != "model_path"} for r in selection.rows],
            key="emdist-select-k",
            description=f"fits per K; best K by {selection.criterion}: {selection.best_k}",
        )
    return report


@task(name="select-k")
def select_k_task(
    config: RunConfig, data: steps.DatasetRef, candidates: list[int], scheduler: str | None
) -> steps.SelectionResult:
    """Fit one checkpointed model per candidate K and pick the best by BIC (inertia)."""
    return steps.select_components(
        config,
        data,
        candidates,
        scheduler=scheduler,
        observer=IterationLogger(config.model.max_iter, key="emdist-select-k-progress"),
    )
