"""The pipeline against real services: a Prefect server and worker, a Dask scheduler and workers.

Every test starts the processes it needs (``tests/services.py``) on 127.0.0.1, with its own
``PREFECT_HOME`` and ``TMPDIR`` under pytest's tmp folder and telemetry off, and stops them
— process groups, then any stray descendant by PID — also when it fails. Nothing is mocked:

* a cron deployment on a process work pool, run by a ``prefect worker``;
* a Dask worker process SIGKILLed in the middle of a fit on a real ``dask scheduler``;
* a flow run SIGKILLed mid-fit (its LocalCluster with it), resumed by a new run.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import distributed
import numpy as np
import psutil
import pytest
import yaml
import zarr
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

import emdist
from emdist.exceptions import ConvergenceWarning
from emdist.io.checkpoint import CheckpointStore
from emdist.io.synthetic import make_gaussian_mixture
from pipeline.steps import data_version
from tests.services import (
    BIN,
    PrefectServer,
    Services,
    alive,
    run_command,
    start_dask_scheduler,
    start_dask_worker,
    wait_for,
    wait_gone,
)

pytestmark = pytest.mark.slow

GMM_ARRAYS = ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_")


def assert_same_model(a: Any, b: Any, what: str) -> None:
    """Two fitted Gaussian mixtures are equal bit for bit (parameters and bound history)."""
    for name in GMM_ARRAYS:
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert x.shape == y.shape, f"{what}: {name} shape {x.shape} != {y.shape}"
        assert np.array_equal(x, y), (
            f"{what}: {name} differs (max abs diff {np.max(np.abs(x - y)):.3e})"
        )
    assert a.n_iter_ == b.n_iter_, f"{what}: n_iter_ {a.n_iter_} != {b.n_iter_}"
    assert list(a.lower_bounds_) == list(b.lower_bounds_), f"{what}: lower bounds differ"


def client(server: PrefectServer) -> SyncPrefectClient:
    """A client of the test's server (no settings of this process are touched)."""
    return SyncPrefectClient(server.api_url)


def write_job(path: Path, out: Path, data: dict[str, Any], model: dict[str, Any]) -> Path:
    """A YAML run configuration: ``data`` is its ``input`` section, ``model`` its model."""
    job = {
        "name": "real-services",
        "input": data,
        "model": model,
        "output": {"dir": str(out)},
        "checkpoint": {"every": 1, "keep": 2},
        "cluster": {"n_workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB"},
    }
    path.write_text(yaml.safe_dump(job))
    return path


def cli(*args: str) -> list[str]:
    """``python -m flows.cli ARGS`` with this virtualenv's interpreter."""
    return [sys.executable, "-m", "flows.cli", *args]


def flow_runs(server: PrefectServer, **filters: Any) -> list[Any]:
    """Flow runs on the server matching the given client filters."""
    with client(server) as c:
        return list(c.read_flow_runs(**filters))


# -- a scheduled deployment on a process work pool, run by a worker ----------------------------


def test_cron_deployment_on_a_process_pool_runs_on_a_real_worker(
    prefect_server: PrefectServer, services: Services, tmp_path: Path
) -> None:
    """Create a process work pool, deploy the pipeline with a cron schedule, see the server
    schedule runs, trigger one now, and let a real ``prefect worker`` run it to Completed
    with the model, predictions and report on disk."""
    env = prefect_server.env(tmp_path / "client")
    out = tmp_path / "out"
    job = write_job(
        tmp_path / "job.yaml",
        out,
        {
            "generate": {
                "n_samples": 20_000,
                "n_features": 4,
                "n_components": 3,
                "chunk_rows": 5_000,
                "random_state": 1,
            }
        },
        {"family": "gmm", "n_components": 3, "max_iter": 30, "random_state": 0},
    )
    # Daily, 12 hours from now: the scheduled runs are far in the future, so the worker only
    # runs the one triggered below.
    hour = (datetime.now(UTC).hour + 12) % 24
    cron = f"0 {hour} * * *"

    code, output = run_command(
        services,
        "work-pool-create",
        [str(BIN / "prefect"), "work-pool", "create", "emdist-process", "--type", "process"],
        env,
        300,
    )
    assert code == 0, output
    # The worker starts while the deployment is created (it only polls the pool).
    worker = services.start(
        "prefect-worker",
        [
            str(BIN / "prefect"),
            "worker",
            "start",
            "--pool",
            "emdist-process",
            "--name",
            "emdist-test-worker",
        ],
        env | {"PREFECT_WORKER_QUERY_SECONDS": "2"},
        interrupts=2,
    )
    code, output = run_command(
        services,
        "emdist-deploy",
        cli("deploy", "--config", str(job), "--cron", cron, "--pool", "emdist-process"),
        env,
        300,
    )
    assert code == 0, output
    found = re.search(r"^deployment ([0-9a-f-]{36}) on work pool", output, re.MULTILINE)
    assert found is not None, output
    deployment_id = UUID(found.group(1))

    with client(prefect_server) as c:
        deployment = c.read_deployment(deployment_id)
        assert deployment.name == "emdist-scheduled"
        assert deployment.work_pool_name == "emdist-process"
        assert deployment.parameters == {"config_path": str(job.resolve())}
        assert [s.schedule.cron for s in deployment.schedules] == [cron]
        assert all(s.active for s in deployment.schedules)
        zone = ZoneInfo(deployment.schedules[0].schedule.timezone or "UTC")
        assert c.read_work_pool("emdist-process").type == "process"

    by_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    scheduled_filter = FlowRunFilter(
        state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Scheduled"]))
    )

    def scheduled() -> list[Any]:
        return flow_runs(
            prefect_server, deployment_filter=by_deployment, flow_run_filter=scheduled_filter
        )

    runs = wait_for(
        scheduled,
        180,
        "the server to schedule runs of the deployment",
        1.0,
        prefect_server.service.log_tail,
    )
    assert isinstance(runs, list)
    assert len(runs) >= 3  # the scheduler's minimum number of future runs
    starts = sorted(r.expected_start_time for r in runs)
    now = datetime.now(UTC)
    assert all(t > now for t in starts), starts
    local = [t.astimezone(zone) for t in starts]
    assert all((t.hour, t.minute, t.second) == (hour, 0, 0) for t in local), local
    assert all((b.date() - a.date()).days == 1 for a, b in itertools.pairwise(local)), local
    assert all(r.deployment_id == deployment_id for r in runs)

    with client(prefect_server) as c:
        run = c.create_flow_run_from_deployment(deployment_id)

    def finished() -> Any:
        if not worker.running:
            raise AssertionError(f"the worker exited\n{worker.log_tail()}")
        with client(prefect_server) as c:
            state = c.read_flow_run(run.id).state
        return state if state is not None and state.is_final() else None

    state = wait_for(finished, 400, "the triggered flow run to finish", 1.0, worker.log_tail)
    assert state.is_completed(), f"{state!r}\n{worker.log_tail()}"
    assert (out / "model.zarr" / "zarr.json").is_file()
    assert (out / "predictions.zarr" / "labels" / "zarr.json").is_file()
    report = out / "report" / "report.md"
    assert report.is_file() and report.stat().st_size > 0
    model = emdist.load_model(out / "model.zarr")
    assert model.means_.shape == (3, 4)
    labels = zarr.open_array(str(out / "predictions.zarr" / "labels"), mode="r")
    assert labels.shape == (20_000,)
    assert f"submitting flow run '{run.id}'" in worker.log_text()
    assert "Starting temporary server" not in worker.log_text()
    # The worker ran only the triggered run: the cron runs are still waiting.
    assert {r.id for r in scheduled()} >= {r.id for r in runs[:3]}

    # Stop the worker the way an operator does: it ignores the first SIGINT.
    descendants = worker.descendants()
    worker.stop()
    assert not worker.running
    assert wait_gone(descendants, 30) == []


# -- a Dask worker killed mid-fit --------------------------------------------------------------


def fixed_init(data_path: Path, k: int) -> dict[str, np.ndarray]:
    """A fixed starting point: K spread-out data rows as means, the data covariance."""
    X = np.asarray(zarr.open_array(str(data_path), mode="r")[:20_000])
    rows = np.random.default_rng(11).choice(len(X), k, replace=False)
    precision = np.linalg.inv(np.cov(X, rowvar=False))
    return {
        "weights_init": np.full(k, 1.0 / k),
        "means_init": X[rows].copy(),
        "precisions_init": np.stack([precision] * k),
    }


def test_dask_worker_sigkilled_mid_fit_gives_the_same_model(
    services: Services, tmp_path: Path
) -> None:
    """A real scheduler and two 1-thread workers; one worker process is SIGKILLed while it is
    computing EM iteration 3 or later; the nanny restarts it, lost tasks rerun, and the fit
    ends with exactly the model of an uninterrupted fit on the same cluster."""
    address, _ = start_dask_scheduler(services, tmp_path)
    workers = [start_dask_worker(services, address, f"w{i}", tmp_path) for i in range(2)]
    k, max_iter = 8, 12
    dataset = make_gaussian_mixture(
        tmp_path / "blobs.zarr",
        200_000,
        16,
        k,
        separation=2.5,
        chunk_rows=20_000,
        random_state=5,
    )
    init = fixed_init(dataset.data_path, k)

    def fit(observer: Any = None) -> emdist.GaussianMixture:
        model = emdist.GaussianMixture(
            k, covariance_type="full", tol=0.0, max_iter=max_iter, observer=observer, **init
        )
        # tol=0 never converges: every fit runs exactly max_iter iterations.
        with pytest.warns(ConvergenceWarning):
            return model.fit(str(dataset.data_path))

    with distributed.Client(address, set_as_default=True, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
        info = client.scheduler_info()["workers"]
        assert {w["name"] for w in info.values()} == {"w0", "w1"}
        assert all(a.startswith("tcp://127.0.0.1:") for a in info)

        reference = fit()
        assert reference.n_iter_ == max_iter

        # The victim: the worker process under the nanny of w1 (--pid-file has the nanny).
        victim_addr = next(a for a, w in info.items() if w["name"] == "w1")
        victim = psutil.Process(client.run(os.getpid, workers=[victim_addr])[victim_addr])
        assert victim.ppid() == workers[1].nanny_pid, "the worker is not the nanny's child"
        killed: dict[str, Any] = {}
        seen: list[int] = []

        def kill_when_busy() -> None:
            # Wait until the scheduler has tasks of this fit running on the victim, then kill.
            def busy() -> bool:
                return bool(client.processing(workers=[victim_addr]).get(victim_addr))

            try:
                wait_for(busy, 60, "tasks on the victim worker", interval=0.005)
                killed["during_iteration"] = len(seen) + 1
                victim.send_signal(signal.SIGKILL)
            except BaseException as exc:  # reported by the assertions below
                killed["error"] = repr(exc)

        killer = threading.Thread(target=kill_when_busy, daemon=True)

        def observer(state: Any) -> None:
            seen.append(state.iteration)
            if state.iteration == 2:
                killer.start()

        interrupted = fit(observer)
        killer.join(30)
        assert "error" not in killed, killed.get("error")
        assert 3 <= killed["during_iteration"] <= max_iter, killed
        assert wait_gone([victim], 10) == [], "the SIGKILLed worker process still runs"
        nanny_log = workers[1].service.log_text()
        assert f"Worker process {victim.pid} was killed by signal 9" in nanny_log, nanny_log
        assert seen == list(range(1, max_iter + 1))

        # The nanny brought up a new worker process; the cluster has two workers again.
        def restarted() -> bool:
            workers = client.scheduler_info()["workers"]
            names = {a: w["name"] for a, w in workers.items()}
            if sorted(names.values()) != ["w0", "w1"]:
                return False
            pids = client.run(os.getpid)
            return {names[a]: p for a, p in pids.items()}.get("w1") not in (None, victim.pid)

        wait_for(restarted, 120, "the nanny to restart w1", diagnose=services.logs)

    assert_same_model(interrupted, reference, "fit with a worker killed vs uninterrupted")


# -- a flow run SIGKILLed mid-fit, resumed by a new run ----------------------------------------


def committed_states(checkpoint: Path) -> list[str]:
    """The ``committed`` pointer list in the checkpoint root's ``zarr.json`` (read-only)."""
    try:
        meta = json.loads((checkpoint / "zarr.json").read_text())
    except (OSError, ValueError):  # not created yet
        return []
    committed = meta.get("attributes", {}).get("committed", [])
    return [str(n) for n in committed] if isinstance(committed, list) else []


def test_flow_run_sigkilled_mid_fit_is_resumed_by_a_new_run(
    prefect_server: PrefectServer, services: Services, tmp_path: Path
) -> None:
    """``emdist run`` (a flow run on the real server, an embedded 2-process LocalCluster,
    a checkpoint every iteration) is SIGKILLed with its whole process group after two
    committed iterations; no process of it survives; a new run of the same configuration
    resumes from the checkpoint and saves bit for bit the model of an uninterrupted run."""
    env = prefect_server.env(tmp_path / "client")
    max_iter = 20
    dataset = make_gaussian_mixture(
        tmp_path / "data.zarr",
        150_000,
        8,
        6,
        separation=2.0,
        chunk_rows=25_000,
        random_state=2,
    )
    data = {"path": str(dataset.data_path), "format": "zarr"}
    model = {
        "family": "gmm",
        "n_components": 6,
        "covariance_type": "full",
        "tol": 0.0,
        "max_iter": max_iter,
        "init_params": "random_from_data",
        "random_state": 4,
    }
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", out, data, model)
    # One checkpoint per version of the input data: this data's, under output/checkpoints.
    checkpoint = out / "checkpoints" / data_version(dataset.data_path) / "checkpoint.zarr"

    # 1. Run, and SIGKILL the process group once two iterations are committed.
    run = services.start("emdist-run-killed", cli("run", "--config", str(job)), env)

    def two_committed() -> bool:
        if not run.running:
            raise AssertionError(f"the run ended before it was killed\n{run.log_tail()}")
        run.descendants()  # remember the LocalCluster's processes while they are children
        return len(committed_states(checkpoint)) >= 2

    wait_for(two_committed, 300, "two committed checkpoint states", 0.02, run.log_tail)
    family = [psutil.Process(run.pid), *run.descendants()]
    assert len(family) >= 3, f"expected the flow process and 2 Dask workers: {family}"
    run.signal_group(signal.SIGKILL)
    assert run.wait(30) == -signal.SIGKILL
    assert wait_gone(family, 30) == [], "processes of the killed run survived"
    assert alive(run.descendants()) == []

    # It was killed mid-fit: an unfinished state is committed and no model was saved.
    state = CheckpointStore(checkpoint).load()
    assert state is not None and not state.finished
    assert 2 <= state.iteration < max_iter, state.iteration
    assert not (out / "model.zarr").exists()
    killed_output = run.log_text()
    assert "Starting temporary server" not in killed_output  # it used the real server

    # 2. A new run of the same configuration resumes and completes; meanwhile (3.) an
    # uninterrupted run of the same configuration in another folder.
    out_ref = tmp_path / "reference"
    job_ref = write_job(tmp_path / "job-ref.yaml", out_ref, data, model)
    reference = services.start("emdist-run-reference", cli("run", "--config", str(job_ref)), env)
    code, resumed_output = run_command(
        services, "emdist-run-resumed", cli("run", "--config", str(job)), env, 400
    )
    assert code == 0, resumed_output
    assert f"resumed after {state.iteration} checkpointed iterations" in resumed_output
    summary = json.loads((out / "summary.json").read_text())["fit"]
    assert summary["resumed_iterations"] == state.iteration
    assert summary["n_iter"] == max_iter

    code = reference.wait(400)
    reference_output = reference.log_text()
    assert code == 0, reference_output
    reference_summary = json.loads((out_ref / "summary.json").read_text())["fit"]
    assert reference_summary["resumed_iterations"] == 0
    assert summary["lower_bounds"] == reference_summary["lower_bounds"]
    assert_same_model(
        emdist.load_model(out / "model.zarr"),
        emdist.load_model(out_ref / "model.zarr"),
        "resumed run vs uninterrupted run",
    )
    for output in (resumed_output, reference_output):
        assert "Starting temporary server" not in output

    # Both completed runs are on the test's server.
    runs = flow_runs(
        prefect_server,
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))
        ),
    )
    completed = {
        r.parameters.get("config_path")
        for r in runs
        if r.state is not None and r.state.is_completed()
    }
    assert {str(job), str(job_ref)} <= completed, completed


# -- a scheduled job whose input grew: warm start, its own checkpoint, SIGKILL, resume ---------


def test_run_on_grown_data_sigkilled_mid_fit_resumes_its_own_checkpoint(
    prefect_server: PrefectServer, services: Services, tmp_path: Path
) -> None:
    """The nightly case: a job ran on 10 000 rows; the input grew by 20%; the next run
    (warm-started from the first run's model, in a new checkpoint of its own) is SIGKILLed
    mid-fit. The previous model and labels are intact; a new run resumes the grown data's
    checkpoint and ends equal, bit for bit, to an uninterrupted warm run on the same data."""
    env = prefect_server.env(tmp_path / "client")
    n_before, n_after, max_iter = 10_000, 12_000, 40
    dataset = make_gaussian_mixture(
        tmp_path / "source.zarr",
        n_samples=n_after,
        n_features=4,
        n_components=5,
        separation=1.5,
        chunk_rows=2_000,
        random_state=0,
    )
    rows = np.asarray(zarr.open_array(str(dataset.data_path), mode="r")[:])
    source = tmp_path / "input.zarr"
    zarr.create_array(str(source), shape=(n_before, 4), chunks=(2_000, 4), dtype="f8")[:] = rows[
        :n_before
    ]
    data = {"path": str(source), "format": "zarr"}
    # tol 0: the second fit is still running when it is killed, and runs exactly max_iter.
    model = {"family": "gmm", "n_components": 5, "tol": 0.0, "max_iter": max_iter}
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", out, data, {**model, "random_state": 4})

    # 1. The first run, on the data as it was.
    code, first_output = run_command(
        services, "emdist-run-first", cli("run", "--config", str(job)), env, 400
    )
    assert code == 0, first_output
    first_model = emdist.load_model(out / "model.zarr")
    first_labels = np.asarray(zarr.open_array(str(out / "predictions.zarr" / "labels"))[:])
    old_checkpoint = out / "checkpoints" / data_version(source) / "checkpoint.zarr"
    assert (old_checkpoint / "zarr.json").is_file()

    # 2. The input grows; the next run gets a checkpoint of its own and is SIGKILLed after
    # two committed iterations.
    zarr.open_array(str(source), mode="r+").append(rows[n_before:])
    checkpoint = out / "checkpoints" / data_version(source) / "checkpoint.zarr"
    assert checkpoint != old_checkpoint
    run = services.start("emdist-run-grown", cli("run", "--config", str(job)), env)

    def two_committed() -> bool:
        if not run.running:
            raise AssertionError(f"the run ended before it was killed\n{run.log_tail()}")
        run.descendants()
        return len(committed_states(checkpoint)) >= 2

    wait_for(two_committed, 300, "two committed checkpoint states", 0.02, run.log_tail)
    family = [psutil.Process(run.pid), *run.descendants()]
    run.signal_group(signal.SIGKILL)
    assert run.wait(30) == -signal.SIGKILL
    assert wait_gone(family, 30) == [], "processes of the killed run survived"
    state = CheckpointStore(checkpoint).load()
    assert state is not None and not state.finished and 2 <= state.iteration < max_iter

    # The previous model and labels are intact; the warm start's model is kept beside the
    # new checkpoint; the first run's checkpoint is still there.
    np.testing.assert_array_equal(emdist.load_model(out / "model.zarr").means_, first_model.means_)
    labels = np.asarray(zarr.open_array(str(out / "predictions.zarr" / "labels"))[:])
    np.testing.assert_array_equal(labels, first_labels)
    assert_same_model(
        emdist.load_model(checkpoint.parent / "start.zarr"), first_model, "kept start model"
    )
    assert (old_checkpoint / "zarr.json").is_file()

    # 3. An uninterrupted warm run on the grown data from the same previous model (a copy
    # of it at its output.model), and the resumed run.
    out_ref = tmp_path / "reference"
    out_ref.mkdir()
    emdist.save_model(first_model, out_ref / "model.zarr")
    job_ref = write_job(tmp_path / "job-ref.yaml", out_ref, data, {**model, "random_state": 4})
    ref_job = yaml.safe_load(job_ref.read_text())
    ref_job["output"]["overwrite"] = True  # the copied model is not that job's own
    job_ref.write_text(yaml.safe_dump(ref_job))
    reference = services.start("emdist-run-reference", cli("run", "--config", str(job_ref)), env)
    code, resumed_output = run_command(
        services, "emdist-run-resumed", cli("run", "--config", str(job)), env, 400
    )
    assert code == 0, resumed_output
    assert f"resumed after {state.iteration} checkpointed iterations" in resumed_output
    assert "warm start from the previous model" in resumed_output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["n_samples"] == n_after
    assert summary["fit"]["warm_started"] is True
    assert summary["fit"]["resumed_iterations"] == state.iteration
    assert summary["fit"]["n_iter"] == max_iter

    assert reference.wait(400) == 0, reference.log_text()
    reference_summary = json.loads((out_ref / "summary.json").read_text())["fit"]
    assert reference_summary["warm_started"] is True
    assert reference_summary["resumed_iterations"] == 0
    assert summary["fit"]["lower_bounds"] == reference_summary["lower_bounds"]
    assert_same_model(
        emdist.load_model(out / "model.zarr"),
        emdist.load_model(out_ref / "model.zarr"),
        "resumed warm run vs uninterrupted warm run",
    )
    labels = np.asarray(zarr.open_array(str(out / "predictions.zarr" / "labels"))[:])
    assert labels.shape == (n_after,)
