"""Scheduled runs of the flows: ``serve`` (no work pool) and ``deploy`` (a pool).

``flow.serve`` runs scheduled flow runs in this process and needs no worker. ``deploy``
registers a deployment on a *process* work pool; process workers need the code's location,
so the flow is loaded ``from_source`` this checkout (a plain ``flow.deploy()`` fails for
process pools; docs/design.md, "Orchestration"). The entrypoint is derived from the flow
itself, so any flow of :data:`flows.pipeline_flow.FLOWS` can be served or deployed.
``deploy/prefect.yaml`` is the declarative equivalent for ``prefect deploy``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import Flow

from emdist.exceptions import EmdistError
from flows.pipeline_flow import clustering_pipeline

__all__ = [
    "PROJECT_ROOT",
    "WorkPoolMissingError",
    "check_work_pool",
    "deploy_pipeline",
    "entrypoint",
    "serve_pipeline",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def entrypoint(flow: Flow[..., Any]) -> str:
    """``path/to/module.py:function`` of ``flow``, relative to the project root."""
    source = inspect.getsourcefile(flow.fn)
    assert source is not None
    return f"{Path(source).resolve().relative_to(PROJECT_ROOT).as_posix()}:{flow.fn.__name__}"


class WorkPoolMissingError(EmdistError):
    """The work pool a deployment names does not exist on the Prefect server."""


def check_work_pool(name: str) -> None:
    """Refuse, in one line saying how to create it, a work pool the server does not have.

    Prefect finds out only deep inside ``deploy`` (a long traceback ending in "Could not find
    work pool"); the user needs the one command that creates it.

    Raises
    ------
    WorkPoolMissingError
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            raise WorkPoolMissingError(
                f"no work pool {name!r} on the Prefect server at {client.api_url}: create it "
                f"with `prefect work-pool create {name} --type process` (or run the schedule "
                "in this process with `emdist serve`, no pool needed)"
            ) from None


def _parameters(config_path: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    return {"config_path": str(Path(config_path).resolve()), **(extra or {})}


def serve_pipeline(
    config_path: str,
    *,
    cron: str | None,
    name: str = "emdist-scheduled",
    flow: Flow[..., Any] = clustering_pipeline,
    parameters: dict[str, Any] | None = None,
) -> None:
    """Serve ``flow`` for ``config_path`` on a cron schedule (blocks until stopped)."""
    flow.serve(
        name=name,
        cron=cron,
        parameters=_parameters(config_path, parameters),
        tags=["emdist"],
    )


def deploy_pipeline(
    config_path: str,
    *,
    cron: str | None,
    work_pool: str = "emdist-process",
    name: str = "emdist-scheduled",
    job_variables: dict[str, Any] | None = None,
    flow: Flow[..., Any] = clustering_pipeline,
    parameters: dict[str, Any] | None = None,
) -> UUID:
    """Register a deployment of ``flow`` on a process work pool, with a schedule.

    Returns
    -------
    uuid.UUID
        The deployment's id.

    Raises
    ------
    WorkPoolMissingError
        Before anything is registered, when ``work_pool`` does not exist.
    """
    check_work_pool(work_pool)
    loaded = flow.from_source(source=str(PROJECT_ROOT), entrypoint=entrypoint(flow))
    deployment_id: UUID = loaded.deploy(  # type: ignore[union-attr,assignment]
        name=name,
        work_pool_name=work_pool,
        cron=cron,
        parameters=_parameters(config_path, parameters),
        job_variables=job_variables or {},
        tags=["emdist"],
        print_next_steps=False,
    )
    return deployment_id
