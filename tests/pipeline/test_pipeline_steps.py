"""The job's steps as plain functions: prepare data, fit, label, report, choose K, run_job.

Real Zarr stores on disk, the local threaded scheduler (``scheduler=None``) for the steps,
and one real two-process LocalCluster for :func:`pipeline.job.run_job`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import logging
import os
import re
import socket
import threading
import tracemalloc
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
import zarr
from distributed.client import AllExit
from sklearn.metrics import adjusted_rand_score
from zarr.storage import LocalStore

import emdist
from emdist.io.atomic import OutputExistsError
from emdist.io.chunk_files import ChunkFiles
from emdist.io.synthetic import open_synthetic
from pipeline.cluster import MALLOC_TRIM, SchedulerUnreachableError, connect, dask_client
from pipeline.config import ClusterConfig, ConfigError, RunConfig, parse_config
from pipeline.errors import is_user_error
from pipeline.job import STEPS, JobResult, read_summary, run_job
from pipeline.outputs import job_id, owner
from pipeline.report import ReportRef, write_report
from pipeline.steps import (
    DatasetRef,
    FitSummary,
    PredictionsRef,
    cluster_sizes,
    fit_model,
    label_data,
    prepare_data,
    select_components,
)
from tests.markers import service_fixture
from tests.prefect_fixtures import dask_worker_processes, wait_until_gone

N_SAMPLES, N_FEATURES, TRUE_K, CHUNK_ROWS = 20_000, 4, 3, 4_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def generated_config(out: Path, **overrides: Any) -> RunConfig:
    """A small, well-separated generated dataset and a GMM with the true K."""
    data: dict[str, Any] = {
        "name": "steps",
        "input": {
            "generate": {
                "n_samples": N_SAMPLES,
                "n_features": N_FEATURES,
                "n_components": TRUE_K,
                "chunk_rows": CHUNK_ROWS,
                "random_state": 0,
            }
        },
        "model": {"family": "gmm", "n_components": TRUE_K},
        "output": {"dir": str(out)},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            data[section] = {**data.get(section, {}), **values}
        else:
            data[section] = values
    return parse_config(data)


def assert_png(path: str | Path) -> None:
    raw = Path(path).read_bytes()
    assert raw[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert raw[12:16] == b"IHDR"
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    # Not a blank canvas: a plot has more than one colour.
    assert np.unique(image.reshape(-1, image.shape[2]), axis=0).shape[0] > 2


def in_memory(path: str) -> np.ndarray:
    return np.asarray(zarr.open_array(path, mode="r")[...])


# -- prepare_data -----------------------------------------------------------------------------


def stamp(path: Path) -> tuple[int, int]:
    """Inode of the folder and mtime of its metadata: both change when it is rewritten."""
    return os.stat(path).st_ino, os.stat(path / "zarr.json").st_mtime_ns


def test_prepare_data_generates_then_reuses(tmp_path: Path) -> None:
    config = generated_config(tmp_path / "out")
    first = prepare_data(config)
    assert first == DatasetRef(
        path=str(config.synthetic_path / "data"),
        n_samples=N_SAMPLES,
        n_features=N_FEATURES,
        chunk_rows=CHUNK_ROWS,
        n_chunks=N_SAMPLES // CHUNK_ROWS,
        truth=str(config.synthetic_path),
    )
    arr = zarr.open_array(first.path, mode="r")
    assert arr.shape == (N_SAMPLES, N_FEATURES)
    assert open_synthetic(config.synthetic_path).n_components == TRUE_K
    before = stamp(Path(first.path))
    group_before = os.stat(config.synthetic_path).st_ino

    second = prepare_data(config)
    assert second == first
    assert stamp(Path(second.path)) == before, "the generated dataset was written again"
    assert os.stat(config.synthetic_path).st_ino == group_before


def test_prepare_data_regenerates_when_the_settings_change(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = prepare_data(generated_config(out))
    X0 = in_memory(first.path)
    changed = generated_config(out, input={"generate": {**_generate(), "random_state": 1}})
    second = prepare_data(changed)
    assert second.path == first.path
    assert not np.array_equal(in_memory(second.path), X0)
    assert open_synthetic(changed.synthetic_path).seed == 1


def _generate() -> dict[str, Any]:
    return {
        "n_samples": N_SAMPLES,
        "n_features": N_FEATURES,
        "n_components": TRUE_K,
        "chunk_rows": CHUNK_ROWS,
        "random_state": 0,
    }


def _write_source(path: Path, X: np.ndarray) -> None:
    if path.suffix == ".npy":
        np.save(path, X)
    else:
        header = ",".join(f"f{j}" for j in range(X.shape[1]))
        np.savetxt(path, X, delimiter=",", header=header, comments="", fmt="%.17g")


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_prepare_data_ingests_a_file(tmp_path: Path, suffix: str) -> None:
    X = np.random.default_rng(1).normal(size=(2_500, 3))
    source = tmp_path / f"measurements{suffix}"
    _write_source(source, X)
    config = parse_config({"input": {"path": str(source)}, "output": {"dir": str(tmp_path / "o")}})

    ref = prepare_data(config)
    assert ref.path == str(tmp_path / "o" / "data.zarr")
    assert (ref.n_samples, ref.n_features) == X.shape
    assert ref.n_chunks == -(-ref.n_samples // ref.chunk_rows)
    assert ref.truth is None
    np.testing.assert_array_equal(in_memory(ref.path), X)

    # An unchanged source is not ingested again...
    before = stamp(Path(ref.path))
    assert prepare_data(config) == ref
    assert stamp(Path(ref.path)) == before

    # ...a changed one is.
    X2 = X + 1.0
    _write_source(source, X2)
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    again = prepare_data(config)
    assert again.path == ref.path
    np.testing.assert_array_equal(in_memory(again.path), X2)


@pytest.mark.parametrize("name", ["measurements.zarr", "plain-folder"])
def test_prepare_data_opens_a_zarr_array_in_place(tmp_path: Path, name: str) -> None:
    X = np.random.default_rng(2).normal(size=(1_000, 2))
    source = tmp_path / name
    zarr.create_array(str(source), data=X, chunks=(300, 2), zarr_format=3)
    input_: dict[str, Any] = {"path": str(source)}
    if not name.endswith(".zarr"):
        input_["format"] = "zarr"
    out = tmp_path / "o"
    ref = prepare_data(parse_config({"input": input_, "output": {"dir": str(out)}}))
    assert ref == DatasetRef(str(source), 1_000, 2, 300, 4, None)
    assert not out.exists(), "a Zarr input must be fitted where it is, not copied"


def test_prepare_data_missing_source_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    config = parse_config({"input": {"path": str(missing)}, "output": {"dir": str(tmp_path)}})
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        prepare_data(config)


# -- fit, label, report on the threaded scheduler ---------------------------------------------


@dataclass(frozen=True)
class Fitted:
    config: RunConfig
    data: DatasetRef
    fit: FitSummary
    predictions: PredictionsRef
    report: ReportRef
    observed: list[int]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Fitted:
    config = generated_config(tmp_path_factory.mktemp("fitted") / "out")
    data = prepare_data(config)
    observed: list[int] = []
    fit = fit_model(config, data, scheduler=None, observer=lambda s: observed.append(s.iteration))
    predictions = label_data(config, data, fit.model_path, scheduler=None)
    report = write_report(config.name, data, fit, predictions, config.report_dir)
    return Fitted(config, data, fit, predictions, report, observed)


def test_fit_summary_matches_the_saved_model(fitted: Fitted) -> None:
    fit, data = fitted.fit, fitted.data
    model = emdist.load_model(fit.model_path)
    assert fit.model_path == str(fitted.config.model_path)
    assert (fit.family, fit.n_components) == ("gmm", TRUE_K)
    assert fit.converged and model.converged_
    assert fit.n_iter == model.n_iter_ == len(fit.lower_bounds) == len(fit.iteration_seconds)
    assert fitted.observed == list(range(1, fit.n_iter + 1))
    assert fit.resumed_iterations == 0
    np.testing.assert_array_equal(fit.lower_bounds, model.lower_bounds_)
    # EM never decreases the bound (up to rounding of a sum over 20k rows).
    assert np.all(np.diff(fit.lower_bounds) >= -1e-9 * np.abs(fit.lower_bounds[1:]))
    # Criteria recomputed independently from the saved model and the data on disk.
    assert fit.bic == pytest.approx(model.bic(data.path), rel=1e-10)
    assert fit.aic == pytest.approx(model.aic(data.path), rel=1e-10)
    assert fit.score == pytest.approx(model.score(data.path), rel=1e-10)
    np.testing.assert_allclose(fit.weights, model.weights_, rtol=0, atol=0)
    assert fit.inertia is None


def test_labels_count_every_sample_and_recover_the_truth(fitted: Fitted) -> None:
    preds = fitted.predictions
    assert preds.path == str(fitted.config.predictions_path)
    assert sum(preds.counts) == N_SAMPLES
    assert len(preds.counts) == TRUE_K
    labels = in_memory(str(Path(preds.path) / "labels"))
    assert labels.shape == (N_SAMPLES,)
    assert np.bincount(labels, minlength=TRUE_K).tolist() == preds.counts
    model = emdist.load_model(fitted.fit.model_path)
    np.testing.assert_array_equal(labels, model.predict(in_memory(fitted.data.path)))
    assert fitted.data.truth is not None
    truth = open_synthetic(fitted.data.truth).load_labels()
    assert adjusted_rand_score(truth, labels) > 0.99


def test_report_files_exist_and_are_pngs(fitted: Fitted) -> None:
    report_dir = fitted.config.report_dir
    assert Path(fitted.report.markdown_path) == report_dir / "report.md"
    assert (report_dir / "report.md").read_text() == fitted.report.markdown
    assert [Path(p).name for p in fitted.report.images] == ["lower_bound.png", "clusters.png"]
    for image in fitted.report.images:
        assert_png(image)
        assert f"]({Path(image).name})" in fitted.report.markdown, "the report links its plots"
    assert not list(report_dir.parent.glob("*.partial*")), "atomic write left a partial folder"


def test_report_numbers_equal_the_fit_summary(fitted: Fitted) -> None:
    fit, preds, data = fitted.fit, fitted.predictions, fitted.data
    text = (fitted.config.report_dir / "report.md").read_text()

    def number(pattern: str) -> float:
        match = re.search(pattern, text)
        assert match is not None, f"{pattern!r} not in the report"
        return float(match.group(1).replace(",", ""))

    assert number(r"K = (\d+)") == fit.n_components
    assert number(r"iterations: (\d+) \(converged\)") == fit.n_iter
    assert number(r"final lower bound: (\S+)") == pytest.approx(fit.lower_bounds[-1], abs=5e-7)
    assert number(r"BIC: ([-\d.]+)") == pytest.approx(fit.bic, abs=0.005)
    assert number(r"AIC: ([-\d.]+)") == pytest.approx(fit.aic, abs=0.005)
    assert number(r"mean log-likelihood: (\S+);") == pytest.approx(fit.score, abs=5e-7)
    assert number(r"([\d,]+) samples x") == data.n_samples
    assert number(r"samples x (\d+) features") == data.n_features
    assert number(r"(\d+) chunks of") == data.n_chunks

    table = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(table) == TRUE_K
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    header = [c.strip() for c in text.split("| component |")[1].splitlines()[0].split("|")]
    n_col = header.index("n_samples") + 1
    w_col = header.index("weight") + 1
    assert [int(row[n_col]) for row in cells] == preds.counts
    np.testing.assert_allclose([float(row[w_col]) for row in cells], fit.weights, atol=5e-7)


def test_refit_after_a_finished_checkpoint_runs_no_iteration(fitted: Fitted) -> None:
    """A finished checkpoint is the answer: no EM iteration, the same model."""
    before = emdist.load_model(fitted.fit.model_path)
    calls: list[int] = []
    again = fit_model(
        fitted.config, fitted.data, scheduler=None, observer=lambda s: calls.append(s.iteration)
    )
    assert calls == []
    assert again.n_iter == fitted.fit.n_iter
    assert again.converged
    assert again.lower_bounds == fitted.fit.lower_bounds
    assert again.bic == pytest.approx(fitted.fit.bic, rel=1e-12)
    after = emdist.load_model(again.model_path)
    np.testing.assert_array_equal(after.means_, before.means_)
    np.testing.assert_array_equal(after.covariances_, before.covariances_)
    np.testing.assert_array_equal(after.weights_, before.weights_)
    # What this run measured: no iteration timings (none ran).
    assert again.iteration_seconds == []


def test_refit_after_a_finished_checkpoint_reports_the_resumed_iterations(
    fitted: Fitted,
) -> None:
    again = fit_model(fitted.config, fitted.data, scheduler=None)
    assert again.resumed_iterations == again.n_iter


def test_fit_without_checkpoint_writes_none(tmp_path: Path) -> None:
    config = generated_config(
        tmp_path / "out", checkpoint={"enabled": False}, model={"max_iter": 3}
    )
    fit = fit_model(config, prepare_data(config))
    assert Path(fit.model_path).is_dir()
    assert not config.checkpoint_path.exists()
    assert fit.n_iter <= 3


# -- choosing K -------------------------------------------------------------------------------


@pytest.mark.slow
def test_select_components_picks_the_true_k_by_bic(tmp_path: Path) -> None:
    config = generated_config(tmp_path / "out", model={"max_iter": 50})
    data = prepare_data(config)
    selection = select_components(config, data, [3, 1, 2, 5, 4, 3])
    assert selection.criterion == "bic"
    assert [row["k"] for row in selection.rows] == [1, 2, 3, 4, 5]
    bics = [row["bic"] for row in selection.rows]
    assert selection.best_k == TRUE_K == selection.rows[int(np.argmin(bics))]["k"]
    assert selection.best_fit.n_components == TRUE_K
    assert selection.best_fit.bic == min(bics)
    for row in selection.rows:
        model = emdist.load_model(row["model_path"])
        assert model.n_components == row["k"]
        assert row["bic"] == pytest.approx(model.bic(data.path), rel=1e-10)
        assert (
            Path(row["model_path"]).parent == Path(config.output.dir) / "select-k" / f"k{row['k']}"
        )
        checkpoints = Path(row["model_path"]).parent / "checkpoints"
        assert len(list(checkpoints.glob("*/checkpoint.zarr/zarr.json"))) == 1

    report = write_report("select", data, selection.best_fit, None, tmp_path / "rep", selection)
    assert [Path(p).name for p in report.images][-1] == "selection.png"
    assert_png(tmp_path / "rep" / "selection.png")
    assert f"Best K by bic: **{TRUE_K}**" in report.markdown

    # A second run reuses every finished candidate: no EM iteration at all.
    calls: list[int] = []
    again = select_components(config, data, [1, 2, 3, 4, 5], observer=lambda s: calls.append(1))
    assert calls == []
    assert again.best_k == TRUE_K
    assert [r["bic"] for r in again.rows] == pytest.approx(bics, rel=1e-12)


def test_select_components_needs_candidates(tmp_path: Path) -> None:
    config = generated_config(tmp_path / "out")
    with pytest.raises(ValueError, match="at least one candidate"):
        select_components(config, prepare_data(config), [])


def test_select_components_kmeans_does_not_just_pick_the_largest_k(tmp_path: Path) -> None:
    config = generated_config(tmp_path / "out", model={"family": "kmeans"})
    selection = select_components(config, prepare_data(config), [1, 2, 3, 4, 5])
    assert selection.best_k == TRUE_K


# -- the whole job on a real LocalCluster -----------------------------------------------------


@service_fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobResult, set[int], RunConfig]:
    config = generated_config(
        tmp_path_factory.mktemp("job") / "out",
        cluster={"n_workers": 2, "threads_per_worker": 1, "processes": True},
    )
    before = dask_worker_processes()
    result = run_job(config)
    return result, wait_until_gone(lambda: dask_worker_processes() - before), config


def test_run_job_end_to_end_on_a_local_cluster(
    job: tuple[JobResult, set[int], RunConfig], fitted: Fitted
) -> None:
    result, leftover, config = job
    assert leftover == set(), "run_job left Dask worker processes running"
    assert result.data.n_samples == N_SAMPLES
    assert sum(result.predictions.counts) == N_SAMPLES
    assert result.fit.converged
    assert Path(result.fit.model_path).is_dir()
    assert Path(result.report.markdown_path).is_file()
    for image in result.report.images:
        assert_png(image)
    # The summary written for later reports round-trips.
    data, fit, preds = read_summary(config)
    assert (data, fit, preds) == (result.data, result.fit, result.predictions)
    # Same data, same seed: the cluster fits the model the threaded scheduler fits.
    assert result.fit.n_iter == fitted.fit.n_iter
    np.testing.assert_allclose(result.fit.lower_bounds, fitted.fit.lower_bounds, rtol=1e-9)
    assert result.predictions.counts == fitted.predictions.counts


@pytest.mark.service
def test_run_job_with_a_threaded_local_cluster(tmp_path: Path) -> None:
    config = generated_config(tmp_path / "out", cluster={"n_workers": 1, "processes": False})
    result = run_job(config)
    assert sum(result.predictions.counts) == N_SAMPLES


# -- outputs: a job replaces only what it wrote -----------------------------------------------


def files(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes: equal before and after means untouched."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("where", ["model.zarr", "predictions.zarr", "dataset.zarr"])
def test_run_job_refuses_an_output_it_did_not_write_before_any_work(
    tmp_path: Path, where: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    zarr.create_array(str(out / where), data=np.arange(12.0).reshape(6, 2), zarr_format=3)
    before = files(out)
    config = generated_config(out)
    with pytest.raises(OutputExistsError, match=re.escape(str(out / where))) as err:
        run_job(config)
    # A plain Zarr array is not an emdist output: even output.overwrite would not replace it,
    # so the message says what stands there rather than suggesting the flag.
    assert "not an emdist output" in str(err.value)
    assert "output.overwrite" not in str(err.value)
    assert files(out) == before, "the job wrote something although it refused to run"


@pytest.mark.service
def test_run_job_replaces_what_an_earlier_run_of_the_same_job_wrote(tmp_path: Path) -> None:
    config = generated_config(tmp_path / "out", cluster={"n_workers": 1, "processes": False})
    first = run_job(config)
    assert owner(Path(first.fit.model_path)) == job_id(config)
    assert owner(config.report_dir) == job_id(config)
    # Another K is the same job (same name, input and folder): its outputs are replaced.
    again = config.model_copy(update={"model": config.model.model_copy(update={"n_components": 2})})
    again = again.model_copy(
        update={"checkpoint": again.checkpoint.model_copy(update={"restart": True})}
    )
    second = run_job(again)
    assert emdist.load_model(second.fit.model_path).n_components == 2
    # Another job (another name) may not replace them ...
    other = again.model_copy(update={"name": "another-job"})
    with pytest.raises(OutputExistsError):
        run_job(other)
    # ... unless told to.
    told = other.model_copy(update={"output": other.output.model_copy(update={"overwrite": True})})
    assert run_job(told).fit.n_components == 2


def test_outputs_must_not_coincide_with_the_input(tmp_path: Path) -> None:
    source = tmp_path / "x.zarr"
    zarr.create_array(str(source), data=np.ones((10, 2)), zarr_format=3)
    config = parse_config(
        {
            "input": {"path": str(source)},
            "output": {"dir": str(tmp_path), "model": str(source), "overwrite": True},
        }
    )
    with pytest.raises(ConfigError, match="would overwrite the input"):
        run_job(config)
    np.testing.assert_array_equal(zarr.open_array(str(source), mode="r")[...], np.ones((10, 2)))


# -- the cluster ------------------------------------------------------------------------------


@pytest.mark.service
def test_dashboard_is_served_and_its_link_announced() -> None:
    lines: list[str] = []
    config = ClusterConfig(n_workers=1, processes=False, dashboard=True)
    with dask_client(config, announce=lines.append):
        (line,) = lines
        link = line.removeprefix("Dask dashboard: ")
        assert link.startswith("http://127.0.0.1:") and link.endswith("/status")
        with urllib.request.urlopen(link, timeout=30) as page:
            html = page.read().decode()
    assert page.status == 200
    assert "needs bokeh" not in html.lower()
    assert "<html" in html.lower()


@pytest.mark.service
def test_embedded_workers_start_without_malloc_trim_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What a LocalCluster started earlier with distributed's defaults leaves in this
    # process (its nanny writes its settings into os.environ), or a user's shell: the
    # embedded cluster's workers must not inherit it (docs/design.md, "malloc trimming").
    monkeypatch.setenv(MALLOC_TRIM, "65536")
    config = ClusterConfig(n_workers=2, threads_per_worker=1, processes=True)
    with dask_client(config) as client:
        # A lambda travels by value (cloudpickle) and reads the worker's own os.environ.
        seen = client.run(
            lambda: {k: os.environ.get(k) for k in (MALLOC_TRIM, "OPENBLAS_NUM_THREADS")}
        )
        assert len(seen) == 2
        for worker_env in seen.values():
            assert worker_env == {MALLOC_TRIM: None, "OPENBLAS_NUM_THREADS": "1"}
        # A restarted worker is spawned again, also without it.
        client.restart()
        restarted = client.run(lambda: os.environ.get(MALLOC_TRIM, "unset"))
        assert list(restarted.values()) == ["unset"] * 2
    assert os.environ[MALLOC_TRIM] == "65536"  # this process's value is given back


@pytest.mark.service
def test_a_cancelled_gather_leaves_no_allexit_traceback(caplog: pytest.LogCaptureFixture) -> None:
    # A cancelled pass leaves distributed's gather waiters raising AllExit with nobody to
    # retrieve it; asyncio logs that from the loop's thread, after Ctrl-C and before any
    # handler of ours runs. Any other unretrieved error must still be logged.
    async def leave_unretrieved(errors: list[Exception]) -> None:
        async def fail(error: Exception) -> None:
            raise error

        tasks = [asyncio.ensure_future(fail(error)) for error in errors]
        await asyncio.sleep(0.05)
        del tasks
        gc.collect()

    with dask_client(ClusterConfig(n_workers=1, processes=False)) as client:
        with caplog.at_level(logging.ERROR):
            client.sync(leave_unretrieved, [AllExit(), RuntimeError("a real fault")])
    unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert [str(r.exc_info[1]) for r in unretrieved if r.exc_info] == ["a real fault"]


def test_a_closed_dashboard_tab_leaves_no_bokeh_traceback(caplog: pytest.LogCaptureFixture) -> None:
    # A browser that closes the dashboard detaches the bokeh session while a message is in
    # flight; handling it then reads ServerConnection.session, which asserts, and bokeh
    # logs the AssertionError with its traceback. Other errors of bokeh's stay.
    from bokeh.server.connection import ServerConnection

    closed = ServerConnection.__new__(ServerConnection)
    closed._session = None
    try:
        closed.session  # noqa: B018 - the property's own assertion
    except AssertionError as exc:
        detached = exc
    ws_log = logging.getLogger("bokeh.server.views.ws")
    config = ClusterConfig(n_workers=1, processes=False, dashboard=True)
    with dask_client(config), caplog.at_level(logging.ERROR):
        for error in (detached, RuntimeError("a real fault")):
            try:
                raise error
            except Exception as e:
                ws_log.error(
                    "Handler or its work threw an exception: %r: %r", e, None, exc_info=True
                )
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert [type(e) for e in logged] == [RuntimeError]


def test_an_unreachable_scheduler_is_named_with_what_to_check() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    with pytest.raises(SchedulerUnreachableError) as err:
        with connect(address, timeout=1.0):
            pass
    assert address in str(err.value) and "dask scheduler" in str(err.value)
    assert is_user_error(err.value)


def test_cluster_sizes_never_gather_the_labels(tmp_path: Path) -> None:
    # The cluster sizes of the label step are summed block by block: the labels (n int64s,
    # 3 GB at 375M rows) never gather in one process, neither the client nor a worker.
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5, size=400_000)
    labels = zarr.create_array(
        str(tmp_path / "labels"), shape=values.shape, chunks=(10_000,), dtype=np.int64
    )
    labels[...] = values
    tracemalloc.start()
    try:
        counts = cluster_sizes(tmp_path / "labels", 6)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counts == np.bincount(values, minlength=6).tolist()
    assert counts[5] == 0 and sum(counts) == 400_000
    assert peak < labels.nbytes / 4, (peak, labels.nbytes)


# -- passes over the data of a whole job ------------------------------------------------------


def count_chunk_reads(monkeypatch: pytest.MonkeyPatch, root: Path) -> collections.Counter[str]:
    """Reads of every chunk of the Zarr array at ``root``, by any store opened on it.

    The job opens the data by path (its own ``LocalStore``s, in worker threads of this
    process): the reads are counted on ``LocalStore.get`` itself, which still reads, and
    on the direct read of a chunk file.
    """
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    get = LocalStore.get
    root = root.resolve()

    async def counted_get(self: LocalStore, key: str, *args: Any, **kwargs: Any) -> Any:
        if key.startswith("c/") and Path(self.root).resolve() == root:
            with lock:
                counts[key] += 1
        return await get(self, key, *args, **kwargs)

    # Row blocks are read from the chunk files themselves where the layout allows
    # (emdist.io.chunk_files): those reads are counted too.
    read_chunk = ChunkFiles._read_chunk

    def counted_read_chunk(self: ChunkFiles, index: int, *args: Any) -> bool:
        done = read_chunk(self, index, *args)
        if done and self.folder.resolve() == root:
            with lock:
                counts[f"c/{index}/0"] += 1
        return done

    monkeypatch.setattr(LocalStore, "get", counted_get)
    monkeypatch.setattr(ChunkFiles, "_read_chunk", counted_read_chunk)
    return counts


def test_a_mixture_job_scores_its_fit_in_the_labels_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Gaussian mixture's score, BIC and AIC need a pass under the final parameters; the
    # label step reads every row under them anyway, so the job takes them from that pass:
    # after the last iteration, every chunk is read once more (the labels'), not twice.
    config = generated_config(
        tmp_path / "out",
        model={"acceleration": "none"},
        cluster={"n_workers": 1, "threads_per_worker": 2, "processes": False},
    )
    data = prepare_data(config)
    counts = count_chunk_reads(monkeypatch, Path(data.path))
    at_last_iteration: collections.Counter[str] = collections.Counter()

    labelled: collections.Counter[str] = collections.Counter()

    def watch(state: Any) -> None:
        at_last_iteration.clear()
        at_last_iteration.update(counts)

    def label(*args: Any, **kwargs: Any) -> PredictionsRef:
        # The report reads a sample of the rows after it, for its plots.
        out = STEPS.label(*args, **kwargs)
        labelled.update(counts)
        return out

    result = run_job(config, watch, steps=dataclasses.replace(STEPS, label=label))
    assert result.fit.n_iter >= 2 and at_last_iteration
    after = labelled - at_last_iteration
    assert len(after) == -(-N_SAMPLES // CHUNK_ROWS)
    assert set(after.values()) == {1}, after
    # The same figures as the fit step's own pass gives (fit_model alone, `emdist fit`), and
    # as the saved model computes from the data on disk: bit for bit.
    monkeypatch.undo()
    model = emdist.load_model(result.fit.model_path)
    own = model.information_criteria(data.path)
    assert (result.fit.score, result.fit.bic, result.fit.aic) == (
        own["score"],
        own["bic"],
        own["aic"],
    )
    _, fit, _ = read_summary(config)
    assert (fit.score, fit.bic, fit.aic) == (own["score"], own["bic"], own["aic"])
    assert result.predictions.criteria == own


def test_the_fit_step_alone_still_scores_its_fit(fitted: Fitted) -> None:
    # Without a label step after it (`emdist fit`), the fit step gives the criteria itself;
    # the label step gives the same ones when asked.
    config, data = fitted.config, fitted.data
    assert fitted.fit.score is not None and fitted.predictions.criteria is None
    with_labels = label_data(
        config.model_copy(update={"output": config.output.model_copy(update={"overwrite": True})}),
        data,
        fitted.fit.model_path,
        criteria=True,
    )
    assert with_labels.criteria == {
        "score": fitted.fit.score,
        "bic": fitted.fit.bic,
        "aic": fitted.fit.aic,
    }
    assert with_labels.counts == fitted.predictions.counts
