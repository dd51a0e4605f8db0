"""The whole job as plain Python (what the Prefect flow orchestrates step by step)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emdist.engine.em import Observer
from pipeline.cluster import dask_client
from pipeline.config import RunConfig
from pipeline.report import ReportRef, write_report
from pipeline.steps import (
    DatasetRef,
    FitSummary,
    PredictionsRef,
    fit_model,
    label_data,
    prepare_data,
)

__all__ = ["JobResult", "read_summary", "report_from_disk", "run_job", "write_summary"]


@dataclass(frozen=True)
class JobResult:
    """References to everything a job produced."""

    data: DatasetRef
    fit: FitSummary
    predictions: PredictionsRef
    report: ReportRef


def summary_path(config: RunConfig) -> Path:
    """Where the fit summary (JSON) of a run is kept, for reports written later."""
    return Path(config.output.dir) / "summary.json"


def write_summary(
    config: RunConfig, data: DatasetRef, fit: FitSummary, predictions: PredictionsRef | None
) -> Path:
    """Write the run's references as JSON, atomically (temp file + rename)."""
    path = summary_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
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
    return write_report(config.name, data, fit, predictions, config.report_dir)


def run_job(config: RunConfig, observer: Observer | None = None) -> JobResult:
    """Prepare data, fit (checkpointed), label and report, on the configured cluster."""
    data = prepare_data(config)
    with dask_client(config.cluster) as client:
        address = str(client.scheduler_info()["address"])
        fit = fit_model(config, data, scheduler=address, observer=observer)
        predictions = label_data(config, data, fit.model_path, scheduler=address)
    write_summary(config, data, fit, predictions)
    report = write_report(config.name, data, fit, predictions, config.report_dir)
    return JobResult(data, fit, predictions, report)
