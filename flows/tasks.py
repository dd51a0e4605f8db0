"""The job's stages as Prefect tasks, and what a flow run shows of them.

:data:`TASKS` is :data:`pipeline.job.STEPS` with each plain function decorated once with
``prefect.task``: no stage is written here. :class:`PrefectHooks` is what the run shows
around them: a log line per EM iteration, progress artifacts, the fit's warnings in the
run's logs and summary, and the report as markdown and table artifacts.

Retries go on I/O-bound steps (preparing data, writing labels and reports), and never on a
user's mistake (a missing input, bad data, an output that may not be replaced): trying again
cannot fix those. The fit has no retries: it is checkpointed, so running it again — a retry
of the flow, or a new run of the same configuration — resumes from the last committed
iteration instead of starting over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from emdist import IterationState, Observer
from flows.logs import install_run_log_filter
from pipeline.config import RunConfig
from pipeline.errors import is_user_error
from pipeline.job import STEPS, Hooks, Steps
from pipeline.report import ReportRef, inline_images
from pipeline.steps import DatasetRef, FitSummary, SelectionResult

__all__ = [
    "TASKS",
    "IterationLogger",
    "PrefectHooks",
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
        # Called from a synchronous flow, the creation is synchronous too: its id.
        self.artifact_id: UUID = create_progress_artifact(  # type: ignore[assignment]
            progress=0.0, key=key, description="EM iterations of the current restart"
        )

    def __call__(self, state: IterationState[Any]) -> None:
        """Log ``state`` and advance the progress artifact."""
        self.logger.info(
            "restart %d iteration %d: lower bound %.8f (change %.3e) in %.3f s%s%s",
            state.restart,
            state.iteration,
            state.lower_bound,
            state.change,
            state.seconds,
            # Restarts share each pass: its seconds are those of the whole pass.
            f" (pass shared by {state.in_pass} restarts)" if state.in_pass > 1 else "",
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

    def finish(self, fit: FitSummary) -> None:
        """Set the final progress: 100% for a converged fit, also one restored whole."""
        progress = 100.0 if fit.converged else 100.0 * fit.n_iter / self.max_iter
        update_progress_artifact(self.artifact_id, progress=min(progress, 100.0))


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry an outage, not a user's mistake."""
    return not is_user_error(state.result(raise_on_failure=False))


install_run_log_filter()


@contextlib.contextmanager
def logged_warnings() -> Iterator[list[str]]:
    """Send the warnings raised inside to the run's logs; yield their lines.

    A served or deployed run has no terminal: a non-convergence or a checkpoint fallback
    must reach the run's logs (and, through the yielded list, its summary artifact).
    """
    said: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield said
        finally:
            for w in caught:
                said.append(f"{w.category.__name__}: {w.message}")
                get_run_logger().warning("%s", said[-1])


prepare_data_task = task(
    name="prepare-data",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_user_error,
)(STEPS.prepare)
# No retries: a re-run resumes from the checkpoint.
fit_task = task(name="fit")(STEPS.fit)
select_k_task = task(name="select-k")(STEPS.select)
label_task = task(
    name="label",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_user_error,
)(STEPS.label)
report_task = task(
    name="report",
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_user_error,
)(STEPS.report)

#: The job's stages as Prefect tasks of the current flow: :data:`pipeline.job.STEPS`, each
#: function decorated once.
TASKS = Steps(
    prepare=prepare_data_task,
    fit=fit_task,
    select=select_k_task,
    label=label_task,
    report=report_task,
)


def _median(values: list[float]) -> float | None:
    return round(sorted(values)[len(values) // 2], 4) if values else None


class PrefectHooks(Hooks):
    """What a flow run shows of the job: logs of the run, and Prefect artifacts.

    One per flow run: it keeps the running fit's progress artifact and warnings between
    :meth:`fitting` and :meth:`fitted`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._progress: IterationLogger | None = None
        self._said: list[str] = []

    def log(self, message: str) -> None:
        """Log ``message`` to the flow run (and so to the terminal of ``emdist run``)."""
        get_run_logger().info("%s", message)

    def prepared(self, config: RunConfig, data: DatasetRef) -> None:
        """Log the dataset's size and chunking."""
        get_run_logger().info(
            "dataset %s: %d x %d in %d chunks",
            data.path,
            data.n_samples,
            data.n_features,
            data.n_chunks,
        )

    @contextlib.contextmanager
    def fitting(self, config: RunConfig, stage: str) -> Iterator[Observer | None]:
        """An :class:`IterationLogger` for the fit; its warnings go to the run's logs."""
        self._progress = IterationLogger(config.model.max_iter, key=f"emdist-{stage}-progress")
        with logged_warnings() as said:
            self._said = said
            yield self._progress

    def fitted(self, config: RunConfig, fit: FitSummary) -> FitSummary:
        """Complete the progress, say how the fit started, and keep its warnings."""
        logger = get_run_logger()
        if self._progress is not None:
            self._progress.finish(fit)
        if fit.start:
            # Warm or cold, and why: a scheduled run on new data says which it did.
            logger.info("%s", fit.start)
        if fit.resumed_iterations:
            logger.info("resumed after %d checkpointed iterations", fit.resumed_iterations)
        return dataclasses.replace(fit, warnings=list(self._said))

    def reported(
        self,
        config: RunConfig,
        fit: FitSummary,
        report: ReportRef,
        selection: SelectionResult | None = None,
    ) -> None:
        """Publish the report as Prefect artifacts (markdown and tables)."""
        banner = ""
        if not fit.converged:
            banner = (
                f"**Not converged**: stopped after max_iter={fit.n_iter} iterations; raise "
                "`model.max_iter` (CLI: `--max-iter`) or `model.tol`.\n\n"
            )
        create_markdown_artifact(
            markdown=banner
            + inline_images(report.markdown, report.dir)
            + f"\n\nReport folder: `{report.dir}`\n",
            key="emdist-report",
            description=f"emdist report of {config.name}",
        )
        run_rows: list[dict[str, Any]] = [
            {"quantity": "family", "value": fit.family},
            {"quantity": "n_components", "value": fit.n_components},
            {"quantity": "iterations", "value": fit.n_iter},
            {"quantity": "converged", "value": fit.converged},
            {"quantity": "start", "value": fit.start or "cold start"},
            {
                "quantity": "lower_bound",
                "value": fit.lower_bounds[-1] if fit.lower_bounds else None,
            },
            {"quantity": "bic", "value": fit.bic},
            {"quantity": "aic", "value": fit.aic},
            {"quantity": "inertia", "value": fit.inertia},
            {"quantity": "fit_seconds", "value": round(fit.fit_seconds, 3)},
            {"quantity": "median_seconds_per_iteration", "value": _median(fit.iteration_seconds)},
            {"quantity": "warnings", "value": "; ".join(fit.warnings) or "none"},
        ]
        create_table_artifact(table=run_rows, key="emdist-summary", description="run summary")
        create_table_artifact(table=report.rows, key="emdist-components", description="components")
        if selection is not None:
            create_table_artifact(
                table=[{k: v for k, v in r.items() if k != "model_path"} for r in selection.rows],
                key="emdist-select-k",
                description=f"fits per K; best K by {selection.criterion}: {selection.best_k}",
            )
