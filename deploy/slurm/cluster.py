"""Run the emdist pipeline flow on a SLURM cluster, with Dask workers from dask-jobqueue.

The flow runs in this process (usually itself a SLURM job: see ``run_flow.sbatch``). It
starts a Dask scheduler here, submits SLURM jobs that each start single-threaded Dask
worker processes on a compute node, and runs the pipeline flow with ``cluster.address``
set to that scheduler. When the flow ends (or fails) the worker jobs are cancelled.

Usage (from the repository root, in the project's virtualenv)::

    python deploy/slurm/cluster.py --config deploy/configs/job.yaml --jobs 4

The run config's paths (input, output, checkpoint) must be on a filesystem that this
node and the compute nodes share; its ``cluster`` section is replaced. Site settings come
from the environment (see ``cluster_kwargs``) or from keyword overrides.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: One SLURM job = one node's share: 8 cores as 8 single-threaded worker processes (our
#: kernels run one BLAS thread per Dask thread), 4 GiB each.
DEFAULT_CORES = 8
DEFAULT_MEMORY = "32GiB"
DEFAULT_WALLTIME = "04:00:00"


def cluster_kwargs(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of :class:`dask_jobqueue.SLURMCluster` for emdist's workers.

    Environment (all optional): ``EMDIST_SLURM_PARTITION``, ``EMDIST_SLURM_ACCOUNT``,
    ``EMDIST_SLURM_INTERFACE`` (network interface the workers reach the scheduler on,
    e.g. ``ib0``; ``lo`` keeps everything on 127.0.0.1 on a one-node cluster),
    ``EMDIST_SLURM_EXTRA`` (more ``#SBATCH`` options, e.g.
    ``"--qos=long --constraint=skylake"``), ``EMDIST_VENV`` (virtualenv to activate on
    the compute nodes; default: the one running this script), ``EMDIST_SLURM_CORES`` and
    ``EMDIST_SLURM_MEMORY`` (per worker job: one single-threaded worker process per core
    sharing the memory), ``EMDIST_SLURM_LOG_DIR`` (the worker jobs' output; default
    ``logs/slurm`` of the checkout), ``EMDIST_SLURM_DASHBOARD`` (the scheduler's dashboard
    address, default ``:8787``). ``overrides`` win.
    """
    env = os.environ
    cores = int(overrides.pop("cores", env.get("EMDIST_SLURM_CORES") or DEFAULT_CORES))
    walltime = overrides.pop("walltime", DEFAULT_WALLTIME)
    venv = Path(env.get("EMDIST_VENV", sys.prefix))
    extra = shlex.split(env.get("EMDIST_SLURM_EXTRA", ""))
    kwargs: dict[str, Any] = {
        "job_name": "emdist-dask",
        "queue": env.get("EMDIST_SLURM_PARTITION") or None,
        "account": env.get("EMDIST_SLURM_ACCOUNT") or None,
        "cores": cores,
        "processes": cores,  # one single-threaded worker process per core
        # Per job; each worker's --memory-limit is memory/processes.
        "memory": env.get("EMDIST_SLURM_MEMORY") or DEFAULT_MEMORY,
        "walltime": walltime,
        "interface": env.get("EMDIST_SLURM_INTERFACE") or None,
        "scheduler_options": {"dashboard_address": env.get("EMDIST_SLURM_DASHBOARD", ":8787")},
        # Spill to node-local disk, not to the shared filesystem.
        "local_directory": '"${TMPDIR:-/tmp}"',
        "log_directory": env.get("EMDIST_SLURM_LOG_DIR") or str(PROJECT_ROOT / "logs" / "slurm"),
        "job_extra_directives": [
            "--nodes=1",
            "--hint=nomultithread",  # one worker per physical core
            *extra,
        ],
        "job_script_prologue": [
            f"source {shlex.quote(str(venv / 'bin' / 'activate'))}",
            # Nanny environment: one BLAS thread, no MALLOC_TRIM_THRESHOLD_ (deploy/dask).
            f"export DASK_CONFIG={shlex.quote(str(PROJECT_ROOT / 'deploy' / 'dask'))}",
            "export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1",
        ],
        # Retire workers gracefully before the walltime; adapt() then submits new jobs.
        "worker_extra_args": ["--lifetime", "225m", "--lifetime-stagger", "5m"],
        "python": str(venv / "bin" / "python"),
    }
    kwargs.update(overrides)
    return kwargs


def build_cluster(**overrides: Any) -> Any:
    """A :class:`dask_jobqueue.SLURMCluster` (its scheduler starts in this process).

    No job is submitted until the cluster is scaled.
    """
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(**cluster_kwargs(**overrides))


def run(config_path: str, jobs: int, wait_timeout: float) -> dict[str, Any]:
    """Run the pipeline flow for ``config_path`` on ``jobs`` SLURM jobs of Dask workers."""
    from distributed import Client

    from flows.pipeline_flow import clustering_pipeline
    from pipeline.config import load_config

    config = load_config(config_path)  # fail on a bad config before submitting jobs
    Path(cluster_kwargs()["log_directory"]).mkdir(parents=True, exist_ok=True)
    with build_cluster() as cluster:
        cluster.adapt(minimum_jobs=jobs, maximum_jobs=jobs)
        print(f"Dask scheduler {cluster.scheduler_address}; worker job script:")
        print(cluster.job_script(), flush=True)
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=wait_timeout)
        address = str(cluster.scheduler_address)
        on_slurm = config.model_copy(
            update={"cluster": config.cluster.model_copy(update={"address": address})}
        )
        result: dict[str, Any] = clustering_pipeline(config=on_slurm.model_dump())
        return result


def main(argv: list[str] | None = None) -> int:
    """Command line: ``cluster.py --config job.yaml [--jobs N] [--wait SECONDS]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML/TOML run configuration")
    parser.add_argument("--jobs", type=int, default=4, help="SLURM jobs of Dask workers")
    parser.add_argument(
        "--wait", type=float, default=3600.0, help="seconds to wait for the first worker"
    )
    args = parser.parse_args(argv)
    result = run(args.config, args.jobs, args.wait)
    print(f"report: {result['report']}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT_ROOT))  # the flows/pipeline packages of this checkout
    sys.exit(main())
