"""deploy/ run for real: the SLURM job script on a SLURM cluster, the compose stack in Docker.

Both tests need root and Debian's packages (``slurm-wlm munge``; ``docker.io
debootstrap``), which ``tools/ensure-debian-packages`` installs (``make test`` and
``make test-deploy`` run it as root). Without them the tests are skipped, saying what is
missing, and under ``EMDIST_REQUIRE_ROOT_TESTS=1`` (.ci/run) they fail instead
(tests/markers.py). They start every daemon themselves on 127.0.0.1 and stop it, with
whatever it started, also when they fail. Nothing is mocked:

* SLURM: ``sbatch deploy/slurm/run_flow.sbatch`` as deploy/README.md says; the flow job
  starts dask-jobqueue's ``SLURMCluster``, whose workers are SLURM jobs; then the same
  again with one worker job ``scancel``-ed mid-fit: the fit ends with the same model.
* Docker: the image of ``deploy/docker/Dockerfile`` on a locally built base, the stack of
  ``deploy/compose.yaml`` (with a host-network override), a deployment run triggered on its
  Prefect server and run by its Prefect worker against its Dask workers.

Kubernetes stays statically validated (tests/system/test_deploy.py): no image can be pulled here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import distributed
import pytest
import yaml
import zarr
from distributed.versions import VersionMismatchWarning
from prefect.client.orchestration import SyncPrefectClient

import emdist
from tests.docker_engine import compose_binary, docker_engine
from tests.markers import service_fixture
from tests.services import HOST, PROJECT_ROOT, free_port, wait_for
from tests.slurm import Slurm, slurm_cluster
from tests.system.test_real_services import assert_same_model

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
    (plain EM at ``tol=0`` never converges; accelerated EM reaches this data's optimum
    exactly in 12), checkpointed every iteration; no ``cluster`` section."""
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
            "acceleration": "none",
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


@service_fixture()
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
    there. Then again, with one of the two worker jobs cancelled mid-fit: the tasks lost
    with it rerun on the other worker (``adapt`` also submits a replacement job, which joins
    if it starts before the fit ends), and the same fit (no restart, no resume from the
    checkpoint) ends with the same model as the uninterrupted run."""
    max_iter = 25
    checkout_before = sorted((PROJECT_ROOT / "deploy").rglob("*"))
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
    # The fit went on in the same run: every iteration logged once, in order, none resumed.
    logged = [int(i) for i in re.findall(r"restart 0 iteration (\d+):", text)]
    assert logged == list(range(1, max_iter + 1)), logged
    assert "resumed after" not in text
    worker_jobs = sorted(p.stem for p in (tmp_path / "worker-logs").glob("*.err"))
    print(f"worker jobs of both runs: {worker_jobs} (cancelled: {victim})")
    interrupted = check_outputs(out)
    print(
        f"SLURM run with a worker job cancelled after {iteration_at_cancel} iterations: "
        f"{time.monotonic() - started:.0f} s"
    )
    assert_same_model(interrupted, reference, "worker job cancelled vs uninterrupted")
    # The jobs wrote nothing into the checkout (dask-jobqueue once dropped its jobqueue.yaml
    # into deploy/dask, the flow job's DASK_CONFIG).
    assert sorted((PROJECT_ROOT / "deploy").rglob("*")) == checkout_before


# -- Docker + Compose ----------------------------------------------------------------------


@dataclass
class Ports:
    """The stack's ports on 127.0.0.1 (free ones, not the defaults a developer may use)."""

    prefect: int
    scheduler: int
    scheduler_http: int
    worker_health: int

    @property
    def api_url(self) -> str:
        """The Prefect server's API."""
        return f"http://{HOST}:{self.prefect}/api"


def http_check(url: str) -> list[str]:
    """A compose healthcheck command: GET ``url`` with the image's Python."""
    probe = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=5)"
    return ["CMD", "python", "-c", probe]


def compose_override(ports: Ports, data: Path, base_image: str) -> dict[str, Any]:
    """What the test changes in deploy/compose.yaml: host networking on 127.0.0.1 only.

    The engine runs without a bridge, so every service uses the host's network
    (``network_mode: host``; published ports are dropped with ``!reset``), binds 127.0.0.1 on
    the test's ports and finds the others there instead of by service name. Builds use the
    host network too (packages come from PyPI as on the host) on the local base image. The
    shared volume ``emdist-data`` is a folder of the test, so it can check the outputs.
    Nothing restarts by itself: a crash fails the test instead of looping.
    """
    api = {"PREFECT_API_URL": ports.api_url}
    build = {"network": "host", "args": {"BASE_IMAGE": base_image}}
    common = {"network_mode": "host", "build": build, "restart": "no"}
    services: dict[str, Any] = {
        "prefect-server": {
            **common,
            "command": f"prefect server start --host {HOST} --port {ports.prefect} --analytics-off",
            "environment": api | {"PREFECT_UI_API_URL": ports.api_url},
            "ports": Reset([]),
            "healthcheck": {"test": http_check(f"{ports.api_url}/health")},
        },
        "dask-scheduler": {
            **common,
            "command": (
                f"dask scheduler --host {HOST} --port {ports.scheduler}"
                f" --dashboard-address {HOST}:{ports.scheduler_http}"
            ),
            "ports": Reset([]),
            "healthcheck": {"test": http_check(f"http://{HOST}:{ports.scheduler_http}/health")},
        },
        "dask-worker": {
            **common,
            # Two replicas share the host's ports: each takes free ones, and no dashboard
            # (whose port the healthcheck would need): the test counts them on the scheduler.
            "command": (
                f"dask worker tcp://{HOST}:{ports.scheduler} --host {HOST} --nworkers 1"
                " --nthreads 1 --memory-limit 3GiB --local-directory /tmp/dask-worker"
                " --no-dashboard --death-timeout 120"
            ),
            "healthcheck": {"disable": True},
        },
        "prefect-deploy": {**common, "environment": api},
        "prefect-worker": {
            **common,
            "environment": api | {"PREFECT_WORKER_WEBSERVER_PORT": str(ports.worker_health)},
            "healthcheck": {"test": http_check(f"http://{HOST}:{ports.worker_health}/health")},
        },
    }
    bind = {"type": "none", "o": "bind", "device": str(data)}
    return {
        "services": services,
        "volumes": {"emdist-data": {"driver": "local", "driver_opts": bind}},
    }


#: The image compose.yaml builds and runs (its default EMDIST_IMAGE).
IMAGE = "emdist:0.1.0"


def image_id(tag: str) -> str:
    """The ID of the local image ``tag`` ("" if there is none)."""
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", tag],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else ""


class Reset(list[Any]):
    """A sequence written with Compose's ``!reset`` tag (drops the base file's value)."""


class ComposeDumper(yaml.SafeDumper):
    """YAML dumper that knows :class:`Reset`."""


ComposeDumper.add_representer(Reset, lambda d, v: d.represent_sequence("!reset", list(v)))


class Compose:
    """``docker-compose -p PROJECT -f deploy/compose.yaml -f OVERRIDE ...`` for one test."""

    def __init__(self, project: str, override: Path, log_dir: Path) -> None:
        self.argv = [compose_binary(), "-p", project]
        self.argv += ["-f", str(PROJECT_ROOT / "deploy" / "compose.yaml"), "-f", str(override)]
        self.project = project
        self.log_dir = log_dir
        # No buildx plugin here: compose builds through the engine's own BuildKit.
        self.env = dict(os.environ, COMPOSE_BAKE="false", EMDIST_IMAGE=IMAGE)
        self.count = 0

    def __call__(self, *args: str, timeout: float = 600) -> str:
        """Run a compose command; its output (fails with it on a non-zero exit)."""
        self.count += 1
        log = self.log_dir / f"{self.count:02d}-{args[0]}.log"
        done = subprocess.run(
            [*self.argv, *args],
            cwd=PROJECT_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        log.write_text(done.stdout + done.stderr)
        assert done.returncode == 0, f"compose {args}:\n{(done.stdout + done.stderr)[-6000:]}"
        return done.stdout

    def states(self) -> dict[str, tuple[str, str]]:
        """Each container's (state, health), by container name."""
        out = self("ps", "--all", "--format", "json")
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return {r["Name"]: (r["State"], r.get("Health", "")) for r in rows}

    def logs(self) -> str:
        """The end of every service's log, for failure messages."""
        try:
            return self("logs", "--no-color", "--tail", "40", timeout=60)[-12000:]
        except AssertionError as exc:
            return str(exc)


def timed(what: str, started: float, figures: dict[str, float]) -> None:
    """Record and print how long ``what`` took since ``started``."""
    figures[what] = time.monotonic() - started
    print(f"{what}: {figures[what]:.0f} s")


def test_compose_stack_in_docker_runs_the_deployment(tmp_path: Path) -> None:
    """Build the image on a locally made base, bring the compose stack up (Prefect server,
    Dask scheduler, 2 Dask workers, deployments registered, a Prefect worker), trigger the
    nightly deployment now, and find the run Completed and its outputs on the shared volume;
    then take everything down."""
    figures: dict[str, float] = {}
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 10001, 10001)  # the image's unprivileged user writes the shared volume
    logs = tmp_path / "logs"
    logs.mkdir()
    ports = Ports(free_port(), free_port(), free_port(), free_port())
    project = f"emdist-test-{os.getpid()}"

    with docker_engine(tmp_path / "engine") as engine:
        started = time.monotonic()
        base = subprocess.run(
            [str(PROJECT_ROOT / "deploy" / "docker" / "base-image.sh")],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        assert base.returncode == 0, f"{base.stderr[-4000:]}\n{engine.logs()}"
        base_image = base.stdout.strip()
        timed("base image", started, figures)

        override = tmp_path / "compose.test.yaml"
        override.write_text(
            yaml.dump(compose_override(ports, data, base_image), Dumper=ComposeDumper)
        )
        compose = Compose(project, override, logs)
        try:
            started = time.monotonic()
            # One build: all five services share the image (EMDIST_IMAGE); `build` of every
            # service would rebuild it from cache per service and leave four dangling copies.
            previous = image_id(IMAGE)
            compose("build", "prefect-server", timeout=1800)
            timed("image build", started, figures)
            if previous and previous != image_id(IMAGE):
                # Our tag moved to the new build: drop the old one instead of leaving it
                # dangling run after run (fails harmlessly if a container still uses it).
                subprocess.run(["docker", "rmi", previous], capture_output=True, check=False)

            job = gmm_job(Path("/data/runs/compose"), max_iter=10)
            job["cluster"] = {"address": f"tcp://{HOST}:{ports.scheduler}"}
            (data / "compose-job.yaml").write_text(yaml.safe_dump(job))

            started = time.monotonic()
            # `up` waits for the healthy dependencies and for prefect-deploy to complete.
            compose("up", "--detach", "--no-build", timeout=900)

            def worker_healthy() -> bool:
                states = compose.states()
                deploy = next(s for n, s in states.items() if "prefect-deploy" in n)
                assert deploy[0] == "exited", states
                running = [s for n, s in states.items() if "prefect-deploy" not in n]
                assert all(s[0] == "running" for s in running), states
                return all(s[1] in ("", "healthy") for s in running)

            wait_for(worker_healthy, 300, "every service healthy", 2.0, compose.logs)
            timed("stack start", started, figures)
            names = sorted(compose.states())
            assert sum("dask-worker" in n for n in names) == 2, names

            # The image's Python (Debian's 3.11.2) may differ from this venv's in the patch
            # release: Dask warns, rightly harmless for a client that only counts workers.
            with (
                warnings.catch_warnings(action="ignore", category=VersionMismatchWarning),
                distributed.Client(f"tcp://{HOST}:{ports.scheduler}", timeout=30) as client,
            ):
                client.wait_for_workers(2, timeout=120)
                assert all(
                    a.startswith(f"tcp://{HOST}:") for a in client.scheduler_info()["workers"]
                )

            started = time.monotonic()
            out = compose(
                "exec",
                "-T",
                "prefect-worker",
                "prefect",
                "deployment",
                "run",
                "emdist-pipeline/emdist-scheduled",
                "--param",
                "config_path=/data/compose-job.yaml",
            )
            found = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
            assert found is not None, out
            run_id = UUID(found.group(1))

            def finished() -> Any:
                with SyncPrefectClient(ports.api_url) as c:
                    state = c.read_flow_run(run_id).state
                return state if state is not None and state.is_final() else None

            state = wait_for(finished, 600, "the flow run to finish", 2.0, compose.logs)
            timed("flow run", started, figures)
            assert state.is_completed(), f"{state!r}\n{compose.logs()}"
            check_outputs(data / "runs" / "compose")
            with SyncPrefectClient(ports.api_url) as c:
                deployment = c.read_deployment(c.read_flow_run(run_id).deployment_id)
            assert deployment.name == "emdist-scheduled"
            assert deployment.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/emdist"}}
            ]
        finally:
            started = time.monotonic()
            compose("down", "--volumes", "--remove-orphans", "--timeout", "30", timeout=300)
            timed("stack down", started, figures)
        left = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert left == [], left
    assert not Path("/sys/class/net/docker0").exists() or engine.daemon is None
    print(figures)
