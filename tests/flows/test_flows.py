"""The Prefect flows end to end, on one session-wide ``prefect_test_harness``.

Everything is real: Prefect's temporary server on 127.0.0.1, Dask LocalClusters, Zarr on
disk. What the flows tell Prefect (artifacts, logs) is read back through the API client and
checked against the saved model and the data, not against the flow's own bookkeeping.

Clusters: the main run and the failing run start the flow's own embedded LocalCluster of
two (one) worker processes, as a user's job does; the re-run and the K selection connect
to one in-process LocalCluster of this module by address (``cluster.address``), which is
cheaper to start.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.prefect_fixtures are parameters here)

from __future__ import annotations

# Sets PREFECT_HOME, TMPDIR and the telemetry switches: keep it before Prefect's imports.
from tests.prefect_fixtures import prefect_harness  # noqa: F401

# isort: split

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
import pytest
import yaml
import zarr
from distributed import LocalCluster
from distributed.core import Status
from distributed.deploy.spec import SpecCluster
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler

import emdist
from emdist.exceptions import InvalidDataError
from flows.deployments import PROJECT_ROOT, entrypoint
from flows.pipeline_flow import FLOWS, choose_components, clustering_pipeline
from flows.tasks import TASKS
from pipeline.config import parse_config
from pipeline.job import STEPS, Steps, run_job, run_selection
from tests import prefect_fixtures
from tests.markers import service_fixture
from tests.prefect_fixtures import dask_worker_processes, wait_until_gone

N_SAMPLES, N_FEATURES, TRUE_K, CHUNK_ROWS = 20_000, 4, 3, 4_000
ITERATION_LINE = re.compile(
    r"restart (\d+) iteration (\d+): lower bound (\S+) \(change (\S+)\) in (\S+) s"
)


def job(out: str, cluster: dict[str, Any], **model: Any) -> dict[str, Any]:
    return {
        "name": "flow-test",
        "input": {
            "generate": {
                "n_samples": N_SAMPLES,
                "n_features": N_FEATURES,
                "n_components": TRUE_K,
                "chunk_rows": CHUNK_ROWS,
                "random_state": 0,
            }
        },
        "model": {"family": "gmm", "n_components": TRUE_K, **model},
        "output": {"dir": out},
        "cluster": cluster,
    }


def only_checkpoint(out: Path) -> Path:
    """The job's one checkpoint (``checkpoints/<data version>/checkpoint.zarr``)."""
    found = sorted((out / "checkpoints").glob("*/checkpoint.zarr"))
    assert len(found) == 1, found
    return found[0]


def open_clusters() -> set[int]:
    return {id(c) for c in SpecCluster._instances if c.status != Status.closed}


@dataclass(frozen=True)
class FlowRecord:
    """A finished flow run and what it told Prefect."""

    state: Any
    result: Any
    flow_run_id: UUID
    artifacts: dict[str, Any]
    logs: list[Any]
    leftover_workers: set[int]
    leftover_clusters: set[int]

    def messages(self) -> list[str]:
        return [log.message for log in self.logs]

    def iteration_lines(self) -> list[re.Match[str]]:
        return [m for m in map(ITERATION_LINE.search, self.messages()) if m]

    def table(self, key: str) -> list[dict[str, Any]]:
        import json

        data = self.artifacts[key].data
        return json.loads(data) if isinstance(data, str) else data


def flow_logs(flow_run_id: UUID, patience: float = 60.0) -> list[Any]:
    """The run's logs, once the engine's last line ("Finished in state ...") has arrived."""
    APILogHandler().flush()
    deadline = time.monotonic() + patience
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            done = any(
                log.task_run_id is None and log.message.startswith("Finished in state")
                for log in logs
            )
            if done or time.monotonic() > deadline:
                return logs
            time.sleep(0.5)


def flow_artifacts(flow_run_id: UUID) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    keys = [a.key for a in artifacts]
    assert len(keys) == len(set(keys)), f"an artifact key was created twice in one run: {keys}"
    return {a.key: a for a in artifacts}


def run_flow(flow: Callable[..., Any], **parameters: Any) -> FlowRecord:
    workers_before = dask_worker_processes()
    clusters_before = open_clusters()
    state = flow(**parameters, return_state=True)
    flow_run_id = state.state_details.flow_run_id
    return FlowRecord(
        state=state,
        result=state.result(raise_on_failure=False),
        flow_run_id=flow_run_id,
        artifacts=flow_artifacts(flow_run_id),
        logs=flow_logs(flow_run_id),
        leftover_workers=wait_until_gone(lambda: dask_worker_processes() - workers_before),
        leftover_clusters=open_clusters() - clusters_before,
    )


@service_fixture(scope="module")
def cluster_address() -> Iterator[str]:
    """A LocalCluster of threads in this process, on TCP so flows can connect by address."""
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        yield cluster.scheduler_address


# -- the whole pipeline -----------------------------------------------------------------------


@dataclass(frozen=True)
class FirstRun:
    record: FlowRecord
    config_path: Path
    out: Path
    means: np.ndarray
    checkpoint_root: bytes


@pytest.fixture(scope="module")
def first_run(prefect_harness: str, tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    """The flow from a YAML file with relative paths, on its own 2-process LocalCluster."""
    folder = tmp_path_factory.mktemp("flow")
    config_path = folder / "job.yaml"
    config_path.write_text(
        yaml.safe_dump(job("out", {"n_workers": 2, "threads_per_worker": 1, "processes": True}))
    )
    record = run_flow(clustering_pipeline, config_path=str(config_path))
    assert record.state.is_completed(), record.state.message
    out = folder / "out"
    return FirstRun(
        record,
        config_path,
        out,
        np.array(emdist.load_model(out / "model.zarr").means_),
        (only_checkpoint(out) / "zarr.json").read_bytes(),
    )


def test_pipeline_returns_paths_that_exist_and_right_numbers(first_run: FirstRun) -> None:
    result, out = first_run.record.result, first_run.out
    # Relative paths in the file resolve against the file's folder.
    assert result["data"] == str(out / "dataset.zarr" / "data")
    assert result["model"] == str(out / "model.zarr")
    assert result["predictions"] == str(out / "predictions.zarr")
    assert result["report"] == str(out / "report" / "report.md")
    for key in ("data", "model", "predictions", "report"):
        assert Path(result[key]).exists(), key

    model = emdist.load_model(result["model"])
    labels = np.asarray(zarr.open_array(str(out / "predictions.zarr" / "labels"), mode="r")[:])
    assert labels.shape == (N_SAMPLES,)
    assert result["n_iter"] == model.n_iter_
    assert result["converged"] is True and model.converged_
    assert result["lower_bound"] == model.lower_bounds_[-1]
    assert result["bic"] == pytest.approx(model.bic(result["data"]), rel=1e-9)
    assert result["counts"] == np.bincount(labels, minlength=TRUE_K).tolist()
    assert sum(result["counts"]) == N_SAMPLES
    assert (out / "summary.json").is_file()
    for png in ("lower_bound.png", "clusters.png"):
        assert (out / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pipeline_artifacts_say_the_right_numbers(first_run: FirstRun) -> None:
    record, result = first_run.record, first_run.record.result
    assert {"emdist-report", "emdist-summary", "emdist-components", "emdist-fit-progress"} <= set(
        record.artifacts
    )

    report = record.artifacts["emdist-report"]
    assert report.type == "markdown"
    assert f"BIC: {result['bic']:.2f}" in report.data
    assert f"iterations: {result['n_iter']} (converged)" in report.data
    assert f"final lower bound: {result['lower_bound']:.6f}" in report.data
    assert str(first_run.out / "report") in report.data

    assert record.artifacts["emdist-summary"].type == "table"
    summary = {row["quantity"]: row["value"] for row in record.table("emdist-summary")}
    assert summary["iterations"] == result["n_iter"]
    assert summary["converged"] is True
    assert summary["bic"] == pytest.approx(result["bic"], rel=1e-12)
    assert summary["lower_bound"] == pytest.approx(result["lower_bound"], rel=1e-12)
    assert summary["n_components"] == TRUE_K
    assert summary["family"] == "gmm"
    assert summary["fit_seconds"] > 0

    components = record.table("emdist-components")
    assert [row["component"] for row in components] == list(range(TRUE_K))
    assert [row["n_samples"] for row in components] == result["counts"]

    progress = record.artifacts["emdist-fit-progress"]
    assert progress.type == "progress"
    assert float(progress.data) == 100.0


def test_pipeline_logs_one_line_per_em_iteration(first_run: FirstRun) -> None:
    record = first_run.record
    lines = record.iteration_lines()
    model = emdist.load_model(record.result["model"])
    assert [int(m.group(2)) for m in lines] == list(range(1, model.n_iter_ + 1))
    assert {int(m.group(1)) for m in lines} == {0}
    np.testing.assert_allclose(
        [float(m.group(3)) for m in lines], model.lower_bounds_, rtol=1e-7, atol=1e-8
    )
    assert all(float(m.group(5)) >= 0 for m in lines)
    assert "converged" in lines[-1].string
    assert any(f"report written to {record.result['report']}" in m for m in record.messages())


def test_pipeline_leaves_no_cluster_behind(first_run: FirstRun) -> None:
    assert first_run.record.leftover_workers == set()
    assert first_run.record.leftover_clusters == set()


# -- re-running reuses the checkpoint ---------------------------------------------------------


@pytest.fixture(scope="module")
def rerun(first_run: FirstRun, cluster_address: str) -> FlowRecord:
    """The same job again (only the cluster differs: it is not part of the checkpoint)."""
    again = first_run.config_path.with_name("again.yaml")
    config = yaml.safe_load(first_run.config_path.read_text())
    config["cluster"] = {"address": cluster_address}
    again.write_text(yaml.safe_dump(config))
    record = run_flow(clustering_pipeline, config_path=str(again))
    assert record.state.is_completed(), record.state.message
    return record


def test_rerun_resumes_from_the_finished_checkpoint(first_run: FirstRun, rerun: FlowRecord) -> None:
    """What happens: the finished fit is restored; no EM iteration runs; same model."""
    first = first_run.record.result
    assert rerun.iteration_lines() == []
    assert rerun.result["n_iter"] == first["n_iter"]
    assert rerun.result["lower_bound"] == first["lower_bound"]
    assert rerun.result["bic"] == pytest.approx(first["bic"], rel=1e-9)
    assert rerun.result["counts"] == first["counts"]
    model = emdist.load_model(rerun.result["model"])
    np.testing.assert_array_equal(model.means_, first_run.means)
    # The checkpoint's commit pointer did not move: nothing new was committed.
    root = only_checkpoint(first_run.out) / "zarr.json"
    assert root.read_bytes() == first_run.checkpoint_root
    summary = {row["quantity"]: row["value"] for row in rerun.table("emdist-summary")}
    assert summary["iterations"] == first["n_iter"]


def test_rerun_progress_artifact_is_complete(rerun: FlowRecord) -> None:
    assert rerun.result["converged"] is True
    assert float(rerun.artifacts["emdist-fit-progress"].data) == 100.0


# -- choosing K -------------------------------------------------------------------------------


def test_scheduled_job_on_grown_input_fits_the_new_rows_warm_started(
    prefect_harness: str, cluster_address: str, tmp_path: Path
) -> None:
    """A job run twice, its Zarr input grown by 20% in between (a nightly export): the
    second flow run fits the new rows, warm-started from the first run's model, in a
    checkpoint of its own, and says so in its logs and summary artifact."""
    source = emdist.io.synthetic.make_gaussian_mixture(
        tmp_path / "source.zarr",
        n_samples=12_000,
        n_features=N_FEATURES,
        n_components=5,
        separation=1.5,
        chunk_rows=2_000,
        random_state=0,
    )
    rows = np.asarray(zarr.open_array(str(source.data_path), mode="r")[:])
    path = tmp_path / "input.zarr"
    zarr.create_array(
        str(path), shape=(10_000, N_FEATURES), chunks=(2_000, N_FEATURES), dtype="f8"
    )[:] = rows[:10_000]
    config = {
        "name": "nightly",
        "input": {"path": str(path)},
        "model": {"family": "gmm", "n_components": 5, "tol": 1e-4, "max_iter": 500},
        "output": {"dir": str(tmp_path / "out")},
        "cluster": {"address": cluster_address},
    }
    first = run_flow(clustering_pipeline, config=config)
    assert first.state.is_completed(), first.state.message
    assert any("cold start (no previous model" in m for m in first.messages())

    zarr.open_array(str(path), mode="r+").append(rows[10_000:])
    second = run_flow(clustering_pipeline, config=config)
    assert second.state.is_completed(), second.state.message
    assert second.result["n_samples"] == 12_000 != first.result["n_samples"]
    assert any(m.startswith("warm start from the previous model") for m in second.messages())
    assert second.result["converged"] is True
    assert second.result["n_iter"] < first.result["n_iter"]
    summary = {row["quantity"]: row["value"] for row in second.table("emdist-summary")}
    assert str(summary["start"]).startswith("warm start from the previous model")
    assert sum(second.result["counts"]) == 12_000
    versions = list((tmp_path / "out" / "checkpoints").glob("*/checkpoint.zarr"))
    assert len(versions) == 2


@pytest.fixture(scope="module")
def selection_run(
    prefect_harness: str, cluster_address: str, tmp_path_factory: pytest.TempPathFactory
) -> FlowRecord:
    """The K-selection flow over candidates 4, 2, 3, on the module's cluster."""
    out = tmp_path_factory.mktemp("select") / "out"
    config = job(str(out), {"address": cluster_address}, max_iter=50)
    return run_flow(choose_components, candidates=[4, 2, 3], config=config)


def test_choose_components_picks_the_true_k_and_tabulates(selection_run: FlowRecord) -> None:
    record = selection_run
    assert record.state.is_completed(), record.state.message
    result = record.result
    assert result["criterion"] == "bic"
    assert result["best_k"] == TRUE_K
    assert [row["k"] for row in result["rows"]] == [2, 3, 4]
    assert min(result["rows"], key=lambda r: r["bic"])["k"] == TRUE_K

    assert record.artifacts["emdist-select-k"].type == "table"
    table = record.table("emdist-select-k")
    assert [row["k"] for row in table] == [2, 3, 4]
    for row, fitted in zip(table, result["rows"], strict=True):
        assert row["bic"] == pytest.approx(fitted["bic"], rel=1e-12)
        assert row["aic"] == pytest.approx(fitted["aic"], rel=1e-12)
        model = emdist.load_model(fitted["model_path"])
        assert model.n_components == row["k"]
        assert row["n_iter"] == model.n_iter_
    summary = {row["quantity"]: row["value"] for row in record.table("emdist-summary")}
    assert summary["n_components"] == TRUE_K

    report = Path(result["report"])
    assert f"Best K by bic: **{TRUE_K}**" in report.read_text()
    assert (report.parent / "selection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each candidate's iterations are logged too.
    iterations = [int(m.group(2)) for m in record.iteration_lines()]
    assert iterations.count(1) == 3
    assert len(iterations) == sum(row["n_iter"] for row in table)


# -- one sequence of the same stages, with and without Prefect --------------------------------


def test_the_flow_tasks_are_the_plain_steps_decorated() -> None:
    from prefect import Task

    for stage in fields(Steps):
        wrapped = getattr(TASKS, stage.name)
        assert isinstance(wrapped, Task), stage.name
        assert wrapped.fn is getattr(STEPS, stage.name), stage.name


def flow_stages(flow_run_id: UUID) -> list[str]:
    """The :class:`Steps` fields whose tasks the flow run ran, in the order they started."""
    by_task_name = {getattr(TASKS, stage.name).name: stage.name for stage in fields(Steps)}
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    started = sorted((run.start_time, run.name) for run in runs if run.start_time is not None)
    assert len(started) == len(runs), "a task run of the finished flow never started"
    # A task run is named "<task name>-<3 random characters>".
    return [by_task_name[name.rsplit("-", 1)[0]] for _, name in started]


def recording(steps: Steps, calls: list[str]) -> Steps:
    """``steps`` with every call's field name appended to ``calls``."""

    def record(name: str, stage: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return stage(*args, **kwargs)

        return call

    return Steps(**{s.name: record(s.name, getattr(steps, s.name)) for s in fields(Steps)})


def tiny_job(out: Path) -> dict[str, Any]:
    config = job(str(out), {"n_workers": 1, "processes": False}, max_iter=20)
    config["input"]["generate"].update(n_samples=1_200, chunk_rows=400)
    return config


def test_the_local_job_and_the_flow_run_the_same_stages(
    first_run: FirstRun, tmp_path: Path
) -> None:
    calls: list[str] = []
    run_job(parse_config(tiny_job(tmp_path / "out")), steps=recording(STEPS, calls))
    assert calls == ["prepare", "fit", "label", "report"]
    assert flow_stages(first_run.record.flow_run_id) == calls


def test_the_local_selection_and_the_flow_run_the_same_stages(
    selection_run: FlowRecord, tmp_path: Path
) -> None:
    calls: list[str] = []
    config = parse_config(tiny_job(tmp_path / "out"))
    run_selection(config, [2, 3], steps=recording(STEPS, calls))
    assert calls == ["prepare", "select", "label", "report"]
    assert flow_stages(selection_run.flow_run_id) == calls


def test_the_tasks_inputs_are_hashed_without_errors(
    first_run: FirstRun, selection_run: FlowRecord
) -> None:
    # Prefect keys every task run by its inputs (the fit's observer among them): a key it
    # cannot compute is an error with a traceback in the run's logs.
    for record in (first_run.record, selection_run):
        assert not any("cache key" in m for m in record.messages())


# -- failures ---------------------------------------------------------------------------------


def test_nan_in_the_data_fails_clearly_and_stops_the_cluster(
    prefect_harness: str, tmp_path: Path
) -> None:
    X = np.random.default_rng(0).normal(size=(6_000, 3))
    X[4_321, 2] = np.nan
    source = tmp_path / "bad.zarr"
    zarr.create_array(str(source), data=X, chunks=(1_000, 3), zarr_format=3)
    config = job(str(tmp_path / "out"), {"n_workers": 1, "processes": True})
    config["input"] = {"path": str(source)}

    record = run_flow(clustering_pipeline, config=config)
    assert record.state.is_failed()
    assert isinstance(record.result, InvalidDataError)
    for text in ("NaN", "row 4321", "column 2"):
        assert text in record.state.message
    assert record.leftover_workers == set(), "a failed flow left Dask workers running"
    assert record.leftover_clusters == set(), "a failed flow left its LocalCluster open"
    assert not (tmp_path / "out" / "model.zarr").exists()
    assert "emdist-report" not in record.artifacts


def test_missing_input_fails_clearly(prefect_harness: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "measurements.csv"
    config = job(str(tmp_path / "out"), {"n_workers": 1})
    config["input"] = {"path": str(missing)}
    record = run_flow(clustering_pipeline, config=config)
    assert record.state.is_failed()
    assert isinstance(record.result, FileNotFoundError)
    assert str(missing) in record.state.message
    assert record.leftover_workers == set()
    assert record.leftover_clusters == set()
    # A user's mistake is not retried, and reaches the run's logs as one line.
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[record.flow_run_id]))
        )
    (prepare,) = [t for t in task_runs if t.name.startswith("prepare-data")]
    assert prepare.run_count == 1
    assert not any("Retry" in m for m in record.messages())
    assert not any("Traceback" in m for m in record.messages())
    errors = [m for m in record.messages() if m.startswith("FileNotFoundError: ")]
    assert errors and all(str(missing) in m and "\n" not in m for m in errors)


def test_bad_inline_config_fails_naming_the_field(prefect_harness: str, tmp_path: Path) -> None:
    config = job(str(tmp_path / "out"), {"address": "localhost:8786"})
    record = run_flow(clustering_pipeline, config=config)
    assert record.state.is_failed()
    assert "cluster.address" in record.state.message
    assert not (tmp_path / "out").exists()


def test_the_harness_started_once(prefect_harness: str) -> None:
    assert prefect_fixtures.HARNESS_STARTS == 1
    assert prefect_harness.startswith("http://127.0.0.1:")


def test_a_fit_that_did_not_converge_says_so_in_logs_and_summary(
    prefect_harness: str, cluster_address: str, tmp_path: Path
) -> None:
    config = job(str(tmp_path / "out"), {"address": cluster_address}, max_iter=2, tol=0.0)
    record = run_flow(clustering_pipeline, config=config)
    assert record.state.is_completed(), record.state.message
    assert record.result["converged"] is False
    warned = [m for m in record.messages() if m.startswith("ConvergenceWarning: ")]
    assert len(warned) == 1
    summary = {row["quantity"]: row["value"] for row in record.table("emdist-summary")}
    assert summary["converged"] is False
    assert summary["warnings"] == warned[0]
    assert record.artifacts["emdist-report"].data.startswith("**Not converged**")


def test_a_converged_fit_has_no_warnings(first_run: FirstRun) -> None:
    summary = {row["quantity"]: row["value"] for row in first_run.record.table("emdist-summary")}
    assert summary["warnings"] == "none"
    assert not any("Warning: " in m for m in first_run.record.messages())


def test_an_output_of_another_job_fails_the_flow_before_any_work(
    prefect_harness: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    zarr.create_array(str(out / "model.zarr"), data=np.arange(6.0).reshape(3, 2), zarr_format=3)
    record = run_flow(clustering_pipeline, config=job(str(out), {"n_workers": 1}))
    assert record.state.is_failed()
    assert "not an emdist output" in record.state.message
    assert np.array_equal(
        zarr.open_array(str(out / "model.zarr"), mode="r")[...], np.arange(6.0).reshape(3, 2)
    )
    assert sorted(p.name for p in out.iterdir()) == ["model.zarr"]


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_serve_and_deploy_reach_every_flow_by_its_entrypoint(name: str) -> None:
    from prefect.flows import load_flow_from_entrypoint

    flow = FLOWS[name]
    loaded = load_flow_from_entrypoint(str(PROJECT_ROOT / entrypoint(flow)))
    assert loaded.name == flow.name


def test_deploy_to_a_missing_work_pool_is_one_line_saying_how_to_create_it(
    prefect_harness: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flows.cli import main

    (tmp_path / "job.yaml").write_text("input:\n  path: data.zarr\n")
    monkeypatch.chdir(tmp_path)
    code = main(["deploy", "--config", "job.yaml", "--pool", "emdist-nowhere"])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    message = " ".join(err.split())
    assert message.count("error:") == 1, err
    assert "no work pool 'emdist-nowhere'" in message
    assert "prefect work-pool create emdist-nowhere --type process" in message
    with get_client(sync_client=True) as client:
        assert not client.read_deployments()
