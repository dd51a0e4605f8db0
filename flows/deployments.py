"""Scheduled runs of the pipeline flow: ``serve`` (no work pool) and ``deploy`` (a pool).

``flow.serve`` runs scheduled flow runs in this process and needs no worker. ``deploy``
registers a deployment on a *process* work pool; process workers need the code's location,
so the flow is loaded ``from_source`` this checkout (a plain ``flow.deploy()`` fails for
process pools; docs/design.md, "Orchestration"). ``deploy/prefect.yaml`` is the declarative
equivalent for ``prefect deploy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from flows.pipeline_flow import clustering_pipeline

__all__ = ["PROJECT_ROOT", "deploy_pipeline", "serve_pipeline"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = "flows/pipeline_flow.py:clustering_pipeline"


def serve_pipeline(config_path: str, *, cron: str | None, name: str = "emdist-scheduled") -> None:
    """Serve the pipeline for ``config_path`` on a cron schedule (blocks until stopped)."""
    clustering_pipeline.serve(
        name=name,
        cron=cron,
        parameters={"config_path": str(Path(config_path).resolve())},
        tags=["emdist"],
    )


def deploy_pipeline(
    config_path: str,
    *,
    cron: str | None,
    work_pool: str = "emdist-process",
    name: str = "emdist-scheduled",
    job_variables: dict[str, Any] | None = None,
) -> UUID:
    """Register a deployment of the pipeline on a process work pool, with a schedule.

    Returns
    -------
    uuid.UUID
        The deployment's id.
    """
    flow = clustering_pipeline.from_source(source=str(PROJECT_ROOT), entrypoint=ENTRYPOINT)
    deployment_id: UUID = flow.deploy(  # type: ignore[union-attr]
        name=name,
        work_pool_name=work_pool,
        cron=cron,
        parameters={"config_path": str(Path(config_path).resolve())},
        job_variables=job_variables or {},
        tags=["emdist"],
        print_next_steps=False,
    )
    return deployment_id
