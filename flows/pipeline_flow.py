"""The job as Prefect flows: the whole pipeline, and choosing the number of components.

Both flows run the sequence of :mod:`pipeline.job` (written once, also used without
Prefect) over :data:`flows.tasks.TASKS`, the job's plain stages each decorated as a Prefect
task, and show it through :class:`flows.tasks.PrefectHooks`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.tasks import TASKS, PrefectHooks
from pipeline.config import ConfigError, RunConfig, load_config, parse_config
from pipeline.job import run_job, run_selection

__all__ = ["FLOWS", "choose_components", "clustering_pipeline", "resolve_config"]


def resolve_config(config_path: str | None, config: dict[str, Any] | None) -> RunConfig:
    """The run configuration from a file path or an inline mapping (exactly one)."""
    if (config_path is None) == (config is None):
        raise ConfigError("pass exactly one of config_path and config")
    return load_config(config_path) if config_path is not None else parse_config(config or {})


@flow(name="emdist-pipeline")
def clustering_pipeline(
    config_path: str | None = None, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Prepare data → fit (checkpointed) → label → report, on the configured Dask cluster.

    Parameters
    ----------
    config_path : str, optional
        A YAML/TOML run configuration.
    config : dict, optional
        The same, inline.

    Returns
    -------
    dict
        Paths of the model, predictions and report, and the fit's figures.
    """
    result = run_job(resolve_config(config_path, config), steps=TASKS, hooks=PrefectHooks())
    fit, predictions = result.fit, result.predictions
    get_run_logger().info("report written to %s", result.report.markdown_path)
    return {
        "data": result.data.path,
        "model": fit.model_path,
        "predictions": predictions.path,
        "report": result.report.markdown_path,
        "n_samples": result.data.n_samples,
        "n_iter": fit.n_iter,
        "converged": fit.converged,
        "warm_started": fit.warm_started,
        "lower_bound": fit.lower_bounds[-1] if fit.lower_bounds else None,
        "bic": fit.bic,
        "counts": predictions.counts,
        "warnings": fit.warnings,
    }


@flow(name="emdist-select-k")
def choose_components(
    candidates: list[int] | None = None,
    config_path: str | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit a range of K, tabulate BIC/AIC, pick the best, and label with it.

    Parameters
    ----------
    candidates : list of int, optional
        Numbers of components to try (default: the configuration's ``select_k``).
    config_path, config
        As for :func:`clustering_pipeline`.

    Returns
    -------
    dict
        The table, the best K and the report path.
    """
    cfg = resolve_config(config_path, config)
    candidates = candidates or cfg.select_k
    if not candidates or min(candidates) < 1:
        raise ConfigError(
            f"select-k needs candidate numbers of components >= 1 (--k, or select_k in the "
            f"configuration); got {candidates}"
        )
    result = run_selection(cfg, list(candidates), steps=TASKS, hooks=PrefectHooks())
    selection = result.selection
    return {
        "best_k": selection.best_k,
        "criterion": selection.criterion,
        "rows": selection.rows,
        "report": result.report.markdown_path,
    }


#: The flows ``emdist serve`` and ``emdist deploy`` can schedule, by the CLI's name.
FLOWS = {"pipeline": clustering_pipeline, "select-k": choose_components}
