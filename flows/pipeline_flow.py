"""The job as Prefect flows: the whole pipeline, and choosing the number of components."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.tasks import fit_task, label_task, prepare_data_task, report_task, select_k_task
from pipeline.cluster import dask_client
from pipeline.config import RunConfig, load_config, parse_config

__all__ = ["choose_components", "clustering_pipeline", "resolve_config"]


def resolve_config(config_path: str | None, config: dict[str, Any] | None) -> RunConfig:
    """The run configuration from a file path or an inline mapping (exactly one)."""
    if (config_path is None) == (config is None):
        raise ValueError("pass exactly one of config_path and config")
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
    cfg = resolve_config(config_path, config)
    data = prepare_data_task(cfg)
    # The cluster (if embedded) lives exactly as long as the numeric steps, and is closed
    # on failure too; tasks receive its address, never a live client.
    with dask_client(cfg.cluster) as client:
        address = str(client.scheduler_info()["address"])
        fit = fit_task(cfg, data, address)
        predictions = label_task(cfg, data, fit.model_path, address)
    report = report_task(cfg, data, fit, predictions)
    get_run_logger().info("report written to %s", report.markdown_path)
    return {
        "data": data.path,
        "model": fit.model_path,
        "predictions": predictions.path,
        "report": report.markdown_path,
        "n_iter": fit.n_iter,
        "converged": fit.converged,
        "lower_bound": fit.lower_bounds[-1] if fit.lower_bounds else None,
        "bic": fit.bic,
        "counts": predictions.counts,
    }


@flow(name="emdist-select-k")
def choose_components(
    candidates: list[int],
    config_path: str | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit a range of K, tabulate BIC/AIC, pick the best, and label with it.

    Returns
    -------
    dict
        The table, the best K and the report path.
    """
    cfg = resolve_config(config_path, config)
    data = prepare_data_task(cfg)
    with dask_client(cfg.cluster) as client:
        address = str(client.scheduler_info()["address"])
        selection = select_k_task(cfg, data, candidates, address)
        best = next(r for r in selection.rows if r["k"] == selection.best_k)
        best_cfg = cfg.model_copy(
            update={"model": cfg.model.model_copy(update={"n_components": selection.best_k})}
        )
        predictions = label_task(best_cfg, data, best["model_path"], address)
    report = report_task(best_cfg, data, selection.best_fit, predictions, selection)
    return {
        "best_k": selection.best_k,
        "criterion": selection.criterion,
        "rows": selection.rows,
        "report": report.markdown_path,
    }
