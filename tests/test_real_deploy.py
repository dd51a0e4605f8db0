"""deploy/ run for real: the SLURM job script on a SLURM cluster, the compose stack in Docker.

Both tests need root and Debian's packages (``slurm-wlm munge``; ``docker.io
debootstrap``), which ``.ci/run`` installs. They start every daemon themselves on
127.0.0.1 and stop it, with whatever it started, also when they fail. Nothing is mocked:

* SLURM: ``sbatch deploy/slurm/run_flow.sbatch`` as deploy/README.md says; the flow job
  starts dask-jobqueue's ``SLURMCluster``, whose workers are SLURM jobs; then the same
  again with one worker job ``scancel``-ed mid-fit: the fit ends with the same model.
* Docker: the image of ``deploy/docker/Dockerfile`` on a locally built base, the stack of
  ``deploy/compose.yaml`` (with a host-network override), a deployment run triggered on its
  Prefect server and run by its Prefect worker against its Dask workers.

Kubernetes stays statically validated (tests/test_deploy.py): no image can be pulled here.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
import zarr

import emdist
from tests.services import PROJECT_ROOT, wait_for
from tests.slurm import Slurm, slurm_cluster
from tests.test_real_services import assert_same_model

pytestmark = [pytest.mark.real_deploy, pytest.mark.slow]

FINAL_JOB_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment minus any ``PREFECT_*``, telemetry off, scratch under ``home``.

    ``PYTHONPATH`` points at this checkout so that every process (also the SLURM jobs, which
    inherit the submitter's environment) imports the code under test.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env.update(
        TMPDIR=str(home / "tmp"),
        PYTHONPATH=str(PROJECT_ROOT),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
    )
    env.pop("EMDIST_PROJECT_DIR", None)
    env.update(extra)
    return env


def gmm_job(out: Path, max_iter: int) -> dict[str, Any]:
    """A run config: generated data, a full-covariance GMM that runs ``max_iter`` iterations
    (``tol=0`` never converges), checkpointed every iteration; no ``cluster`` section."""
    return {
        "name": "real-deploy",
        "input": {
            "generate": {
                "n_samples": 200_000,
                "n_features": 8,
                "n_components": 4,
                "chunk_rows": 20_000,
                "random_state": 3,
            }
        },
        "model": {
            "family": "gmm",
            "n_components": 4,
            "covariance_type": "full",
            "tol": 0.0,
            "max_iter": max_iter,
            "init_params": "random_from_data",
            "random_state": 4,
        },
        "output": {"dir": str(out)},
        "checkpoint": {"every": 1, "keep": 2},
    }


def check_outputs(out: Path, n_samples: int = 200_000) -> Any:
    """The model, predictions and report of a finished run are on disk; return the model."""
    assert (out / "model.zarr" / "zarr.json").is_file(), sorted(out.iterdir())
    labels = zarr.open_array(str(out / "predictions.zarr" / "labels"), mode="r")
    assert labels.shape == (n_samples,)
    report = out / "report" / "report.md"
    assert report.is_file() and report.stat().st_size > 0
    model = emdist.load_model(out / "model.zarr")
    assert model.means_.shape == (4, 8)
    return model


# -- SLURM -------------------------------------------------------------------------------------


@pytest.fixture
def slurm(tmp_path: Path) -> Iterator[Slurm]:
    """A one-node SLURM cluster on 127.0.0.1 for one test (daemons, jobs and folder go)."""
    with slurm_cluster(clean_env(tmp_path)) as cluster:
        yield cluster


def submit_flow(slurm: Slurm, tmp_path: Path, name: str, max_iter: int) -> tuple[str, Path, Path]:
    """``sbatch deploy/slurm/run_flow.sbatch`` from the checkout, as deploy/README.md says.

    The site knobs are environment variables the script and cluster.py read: 2 worker jobs
    of 1 single-threaded worker with 1.5 GiB, on ``lo`` (127.0.0.1 only). Job output goes to
    ``tmp_path`` rather than ``logs/slurm`` of the checkout (``--output`` on the command line
    wins over the script's ``#SBATCH`` line). Returns the job ID, output dir and job log.
    """
    out = tmp_path / name
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(gmm_job(out, max_iter)))
    log = tmp_path / f"{name}-flow.out"
    slurm.env.update(
        EMDIST_CONFIG=str(config),
        EMDIST_DASK_JOBS="2",
        EMDIST_VENV=sys.prefix,
        EMDIST_SLURM_INTERFACE="lo",
        EMDIST_SLURM_CORES="1",
        EMDIST_SLURM_MEMORY="1536MiB",
        EMDIST_SLURM_LOG_DIR=str(tmp_path / "worker-logs"),
        EMDIST_SLURM_DASHBOARD="127.0.0.1:0",
    )
    job_id = slurm.run(
        "sbatch",
        "--parsable",
        f"--output={log}",
        f"--error={log}",
        "deploy/slurm/run_flow.sbatch",
        cwd=PROJECT_ROOT,
    ).strip()
    assert job_id.isdigit(), job_id
    return job_id, out, log


def wait_job(slurm: Slurm, job_id: str, log: Path, timeout: float) -> str:
    """Wait for a job to reach a final state; return it."""

    def final() -> str | None:
        state = slurm.job_state(job_id)
        return state if state in FINAL_JOB_STATES else None

    def diagnose() -> str:
        text = log.read_text(errors="replace") if log.exists() else "(no job output)"
        return f"{text[-6000:]}\n{slurm.logs()}"

    state = wait_for(final, timeout, f"SLURM job {job_id}", 1.0, diagnose)
    assert isinstance(state, str)
    return state


def test_slurm_flow_job_runs_the_pipeline_on_slurm_worker_jobs(
    slurm: Slurm, tmp_path: Path
) -> None:
    """The sbatch script runs the flow; its Dask workers are SLURM jobs; the outputs are
    there. Then again, with one of the two worker jobs cancelled mid-fit: dask-jobqueue
    submits a replacement job, lost tasks rerun, and the fit ends with the same model."""
    max_iter = 25
    started = time.monotonic()
    job_id, out, log = submit_flow(slurm, tmp_path, "reference", max_iter)
    state = wait_job(slurm, job_id, log, 600)
    text = log.read_text()
    assert state == "COMPLETED", text[-6000:]
    assert f"report: {out / 'report' / 'report.md'}" in text, text[-3000:]
    assert "tcp://127.0.0.1:" in text  # the scheduler, on loopback
    reference = check_outputs(out)
    assert reference.n_iter_ == max_iter
    workers_logs = sorted((tmp_path / "worker-logs").glob("*.err"))
    assert len(workers_logs) >= 2, workers_logs  # two worker jobs ran
    print(f"SLURM reference run: {time.monotonic() - started:.0f} s")

    started = time.monotonic()
    job_id, out, log = submit_flow(slurm, tmp_path, "cancelled", max_iter)

    def iterations() -> int:
        """EM iterations the flow job has logged so far."""
        text = log.read_text(errors="replace") if log.exists() else ""
        return len(re.findall(r"restart 0 iteration \d+:", text))

    def fitting() -> bool:
        assert slurm.job_state(job_id) in ("PENDING", "RUNNING"), log.read_text()[-3000:]
        return iterations() >= 3

    wait_for(fitting, 400, "three EM iterations", 0.1, slurm.logs)
    before = slurm.jobs("emdist-dask")
    assert len(before) == 2, before
    victim = before[0]
    slurm.run("scancel", victim)
    iteration_at_cancel = iterations()
    assert iteration_at_cancel < max_iter - 5, "cancelled too late to be mid-fit"

    state = wait_job(slurm, job_id, log, 600)
    text = log.read_text()
    assert state == "COMPLETED", text[-6000:]
    assert slurm.job_state(victim) == "CANCELLED"
    interrupted = check_outputs(out)
    print(
        f"SLURM run with a worker job cancelled after {iteration_at_cancel} iterations: "
        f"{time.monotonic() - started:.0f} s"
    )
    assert_same_model(interrupted, reference, "worker job cancelled vs uninterrupted")
