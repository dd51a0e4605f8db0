"""The ``emdist`` command, run as a user runs it: a separate process per command.

Each command runs once as ``python -m flows.cli`` with this interpreter (so CI's virtualenv
is used), on a small generated dataset, in a scratch folder with relative paths. ``run``
starts Prefect's embedded server and a LocalCluster in the child process; the test checks
that neither outlives the command. A user's mistake must give exit status 2 and a readable
message without a traceback. Further cases of the same commands (more mistakes, ``--help``
of every subcommand) call the same ``main`` in this process: a process start costs seconds
on a busy machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr

import emdist
from emdist.io.checkpoint import CheckpointStore
from emdist.io.synthetic import open_synthetic
from emdist.registry import model_families
from flows.cli import build_cli, help_text, main
from tests.markers import service_fixture
from tests.prefect_fixtures import (  # noqa: F401 - prefect_harness is a fixture
    prefect_harness,
    processes_with_env,
    subprocess_environment,
    wait_until_gone,
)

N_SAMPLES, N_FEATURES, TRUE_K, CHUNK_ROWS = 20_000, 4, 3, 4_000
COMMANDS = (
    "generate",
    "ingest",
    "fit",
    "predict",
    "report",
    "run",
    "demo",
    "select-k",
    "serve",
    "deploy",
)


@dataclass(frozen=True)
class Workspace:
    dir: Path
    env: dict[str, str]

    def emdist(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", *args],
            cwd=cwd or self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def user_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert a readable failure (status 2, no traceback); return stderr on one line."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1, proc.stderr
    # rich wraps long lines at 80 columns when stderr is not a terminal: unwrap to check.
    return " ".join(proc.stderr.split())


def in_process(
    args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """Run ``emdist ARGS`` in this process (the same ``main``, minus a process start)."""
    monkeypatch.chdir(cwd)
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


@service_fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("cli")
    return Workspace(root, subprocess_environment(root / "prefect-home"))


@pytest.fixture(scope="module")
def generated(ws: Workspace) -> subprocess.CompletedProcess[str]:
    return ws.emdist(
        "generate",
        "g.zarr",
        "--n-samples",
        str(N_SAMPLES),
        "--n-features",
        str(N_FEATURES),
        "--n-components",
        str(TRUE_K),
        "--chunk-rows",
        str(CHUNK_ROWS),
        "--seed",
        "3",
    )


def test_generate(
    ws: Workspace,
    generated: subprocess.CompletedProcess[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ok(generated)
    assert f"wrote {N_SAMPLES:,} x {N_FEATURES}" in generated.stdout
    data = zarr.open_array(str(ws.dir / "g.zarr" / "data"), mode="r")
    assert data.shape == (N_SAMPLES, N_FEATURES)
    assert data.chunks == (CHUNK_ROWS, N_FEATURES)
    dataset = open_synthetic(ws.dir / "g.zarr")
    assert (dataset.n_components, dataset.seed) == (TRUE_K, 3)
    # Without --overwrite an existing dataset is kept and the user told.
    code, _, err = in_process(
        ["generate", "g.zarr", "--n-samples", "10"], ws.dir, monkeypatch, capsys
    )
    assert code == 2 and "g.zarr exists" in err
    # In the command line's words.
    assert "--overwrite" in err and "overwrite=True" not in err
    assert zarr.open_array(str(ws.dir / "g.zarr" / "data"), mode="r").shape[0] == N_SAMPLES


def test_generate_and_ingest_take_dtype_and_compressor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", "g.zarr", "--n-samples", "600", "--n-features", "3", "--chunk-rows", "200"]
    code, _, err = in_process(
        [*args, "--dtype", "float32", "--compressor", "lz4"], tmp_path, monkeypatch, capsys
    )
    assert code == 0, err
    data = zarr.open_array(str(tmp_path / "g.zarr" / "data"), mode="r")
    assert data.dtype == np.float32
    assert type(data.compressors[0]).__name__ == "BloscCodec"
    assert open_synthetic(tmp_path / "g.zarr").dtype == "float32"
    code, _, err = in_process(
        ["ingest", "g.zarr/data", "i.zarr", "--compressor", "zstd", "--dtype", "float64"],
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    ingested = zarr.open_array(str(tmp_path / "i.zarr"), mode="r")
    assert ingested.dtype == np.float64
    assert type(ingested.compressors[0]).__name__ == "ZstdCodec"
    np.testing.assert_array_equal(ingested[...], data[...].astype(np.float64))
    # A codec the command does not offer is a usage error naming the option, nothing written.
    code, _, err = in_process(
        ["generate", "h.zarr", "--compressor", "gzip"], tmp_path, monkeypatch, capsys
    )
    assert code == 2 and "--compressor" in err
    assert not (tmp_path / "h.zarr").exists()


def test_ingest_npy(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    X = np.random.default_rng(4).normal(size=(2_500, 3))
    np.save(ws.dir / "x.npy", X)
    proc = ok(ws.emdist("ingest", "x.npy", "x.zarr"))
    assert "ingested 2,500 x 3 (npy)" in proc.stdout
    np.testing.assert_array_equal(zarr.open_array(str(ws.dir / "x.zarr"), mode="r")[...], X)
    code, _, err = in_process(["ingest", "x.npy", "x.zarr"], ws.dir, monkeypatch, capsys)
    assert code == 2 and "x.zarr exists" in err
    assert "--overwrite" in err and "overwrite=True" not in err
    X2 = X[::2]
    np.save(ws.dir / "x.npy", X2)
    code, _, _ = in_process(
        ["ingest", "x.npy", "x.zarr", "--overwrite"], ws.dir, monkeypatch, capsys
    )
    assert code == 0
    np.testing.assert_array_equal(zarr.open_array(str(ws.dir / "x.zarr"), mode="r")[...], X2)


def test_ingest_bad_data_is_a_user_error(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (ws.dir / "bad.csv").write_text("a,b\n1,2\n3,oops\n")
    code, _, err = in_process(["ingest", "bad.csv", "bad.zarr"], ws.dir, monkeypatch, capsys)
    assert code == 2
    assert err.startswith("error:") and "bad.csv" in err
    assert not (ws.dir / "bad.zarr").exists()


def test_ingest_refusing_to_replace_a_file_is_a_user_error(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (ws.dir / "notes.txt").write_text("keep me\n")
    np.save(ws.dir / "y.npy", np.ones((10, 2)))
    args = ["ingest", "y.npy", "notes.txt", "--overwrite"]
    code, _, err = in_process(args, ws.dir, monkeypatch, capsys)
    assert code == 2 and "notes.txt" in err
    assert (ws.dir / "notes.txt").read_text() == "keep me\n"


# -- fit and predict --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(
    ws: Workspace, generated: subprocess.CompletedProcess[str]
) -> subprocess.CompletedProcess[str]:
    ok(generated)
    return ws.emdist(
        "fit", "g.zarr/data", "-k", str(TRUE_K), "--checkpoint", "ck.zarr", "--out", "m.zarr"
    )


def test_fit_prints_a_summary_and_checkpoints(
    ws: Workspace, fitted: subprocess.CompletedProcess[str]
) -> None:
    ok(fitted)
    summary = json.loads(fitted.stdout)
    model = emdist.load_model(ws.dir / "m.zarr")
    assert summary["model_path"] == str(ws.dir / "m.zarr")
    assert summary["n_components"] == TRUE_K == model.n_components
    assert summary["n_iter"] == model.n_iter_ >= 1
    assert summary["converged"] is True
    assert summary["lower_bound"] == model.lower_bounds_[-1]
    assert summary["bic"] == pytest.approx(model.bic(ws.dir / "g.zarr" / "data"), rel=1e-9)
    # --checkpoint is a folder of checkpoints, one per version of DATA.
    assert (version_checkpoint(ws.dir / "ck.zarr") / "zarr.json").is_file()
    # The progress bar (on stderr) reached the last iteration.
    assert f"{summary['n_iter']}/100" in fitted.stderr


def test_fit_with_another_k_on_the_same_checkpoint(
    ws: Workspace,
    fitted: subprocess.CompletedProcess[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ok(fitted)
    clash = ws.emdist("fit", "g.zarr/data", "-k", "4", "--checkpoint", "ck.zarr", "--out", "m.zarr")
    message = user_error(clash)
    assert clash.stdout == ""
    assert "belongs to another run" in message
    assert "n_components: checkpoint has 3, this run has 4" in message
    # The model of the first fit is untouched.
    assert emdist.load_model(ws.dir / "m.zarr").n_components == TRUE_K

    args = ["fit", "g.zarr/data", "-k", "4", "--checkpoint", "ck.zarr", "--out", "m4.zarr"]
    code, out, _ = in_process([*args, "--restart"], ws.dir, monkeypatch, capsys)
    assert code == 0
    assert json.loads(out)["n_components"] == 4
    assert emdist.load_model(ws.dir / "m4.zarr").n_components == 4


def test_checkpoint_clash_names_the_cli_option(
    ws: Workspace,
    fitted: subprocess.CompletedProcess[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ok(fitted)
    args = ["fit", "g.zarr/data", "-k", "5", "--checkpoint", "ck.zarr", "--out", "m5.zarr"]
    code, _, err = in_process(args, ws.dir, monkeypatch, capsys)
    assert code == 2 and "belongs to another run" in err
    assert "--restart" in err


def test_error_keeps_a_long_path_on_one_line(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    missing = ws.dir / ("a-long-folder-name-" * 5) / "job.yaml"
    monkeypatch.chdir(ws.dir)
    assert main(["report", "--config", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_fit_ingests_a_file_as_its_help_says(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(ws.dir / "f.npy", np.random.default_rng(5).normal(size=(500, 2)))
    args = ["fit", "f.npy", "-k", "2", "--out", "fnpy/m.zarr"]
    code, _, err = in_process(args, ws.dir, monkeypatch, capsys)
    assert code == 0, err
    assert emdist.load_model(ws.dir / "fnpy" / "m.zarr").n_components == 2


def test_predict_writes_labels(ws: Workspace, fitted: subprocess.CompletedProcess[str]) -> None:
    ok(fitted)
    proc = ok(ws.emdist("predict", "m.zarr", "g.zarr/data", "labels.zarr"))
    assert "labels.zarr" in proc.stdout
    labels = np.asarray(zarr.open_array(str(ws.dir / "labels.zarr" / "labels"), mode="r")[:])
    assert labels.shape == (N_SAMPLES,)
    X = np.asarray(zarr.open_array(str(ws.dir / "g.zarr" / "data"), mode="r")[:])
    np.testing.assert_array_equal(labels, emdist.load_model(ws.dir / "m.zarr").predict(X))
    assert sorted(np.unique(labels).tolist()) == list(range(TRUE_K))


# -- the whole job: run, then report ----------------------------------------------------------


@dataclass(frozen=True)
class Run:
    proc: subprocess.CompletedProcess[str]
    config: Path
    out: Path
    leftovers: set[int]


@pytest.fixture(scope="module")
def ran(ws: Workspace) -> Run:
    project = ws.dir / "project"
    project.mkdir()
    config = project / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "cli-run",
                "input": {
                    "generate": {
                        "n_samples": N_SAMPLES,
                        "n_features": N_FEATURES,
                        "n_components": TRUE_K,
                        "chunk_rows": CHUNK_ROWS,
                    }
                },
                "model": {"n_components": TRUE_K},
                "output": {"dir": "out"},
                "cluster": {"n_workers": 1, "processes": True},
            }
        )
    )
    # From another folder: relative paths in the file resolve against the file's folder.
    proc = ws.emdist("run", "--config", str(config), cwd=ws.dir)
    home = ws.env["PREFECT_HOME"]
    leftovers = wait_until_gone(lambda: processes_with_env("PREFECT_HOME", home))
    return Run(proc, config, project / "out", leftovers)


def test_run_executes_the_whole_flow(ran: Run) -> None:
    ok(ran.proc)
    summary = json.loads((ran.out / "summary.json").read_text())
    fit = summary["fit"]
    match = re.search(
        r"fitted (\d+) iterations \((converged|not converged)\), lower bound (\S+); "
        r"cluster sizes \[([\d, ]+)\]",
        ran.proc.stdout,
    )
    assert match is not None, ran.proc.stdout
    assert int(match.group(1)) == fit["n_iter"]
    assert match.group(2) == "converged"
    assert float(match.group(3)) == pytest.approx(fit["lower_bounds"][-1], abs=5e-7)
    counts = [int(c) for c in match.group(4).split(",")]
    assert counts == summary["predictions"]["counts"]
    assert sum(counts) == N_SAMPLES
    report = ran.out / "report" / "report.md"
    assert f"report: {report}" in ran.proc.stdout
    assert report.is_file()
    assert emdist.load_model(ran.out / "model.zarr").n_iter_ == fit["n_iter"]


def test_run_leaves_no_server_or_worker_behind(ran: Run) -> None:
    ok(ran.proc)
    assert ran.leftovers == set(), "processes of the run (Prefect server, Dask) outlived it"


def test_report_rewrites_the_report_from_disk(ws: Workspace, ran: Run) -> None:
    ok(ran.proc)
    report_dir = ran.out / "report"
    for path in report_dir.iterdir():
        path.unlink()
    report_dir.rmdir()
    proc = ok(ws.emdist("report", "--config", str(ran.config)))
    assert f"report: {report_dir / 'report.md'}" in proc.stdout
    n_iter = json.loads((ran.out / "summary.json").read_text())["fit"]["n_iter"]
    assert f"iterations: {n_iter} (converged)" in (report_dir / "report.md").read_text()
    for png in ("lower_bound.png", "clusters.png"):
        assert (report_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_select_k_after_run_never_leaves_a_mixed_output_folder(ws: Workspace, ran: Run) -> None:
    ok(ran.proc)
    report = (ran.out / "report" / "report.md").read_text()
    summary = (ran.out / "summary.json").read_text()
    labels = np.asarray(zarr.open_array(str(ran.out / "predictions.zarr" / "labels"))[:])
    # Without the true K among the candidates, the pick differs from the run's K.
    proc = ok(ws.emdist("select-k", "--config", str(ran.config), "--k", "2", "4"))
    best = int(re.search(r"best K by bic: (\d+)", proc.stdout).group(1))  # type: ignore[union-attr]
    assert best != TRUE_K
    # The run's folder is the run's, whole: model, labels, report and summary of K = TRUE_K.
    assert emdist.load_model(ran.out / "model.zarr").n_components == TRUE_K
    np.testing.assert_array_equal(
        zarr.open_array(str(ran.out / "predictions.zarr" / "labels"))[:], labels
    )
    assert (ran.out / "report" / "report.md").read_text() == report
    assert (ran.out / "summary.json").read_text() == summary
    # The selection's are in select-k/, all of the best K.
    chosen = ran.out / "select-k"
    picked = emdist.load_model(chosen / f"k{best}" / "model.zarr")
    assert picked.n_components == best
    chosen_labels = zarr.open_array(str(chosen / "predictions.zarr" / "labels"))[:]
    assert int(np.max(chosen_labels)) == best - 1
    assert f"K = {best}" in (chosen / "report" / "report.md").read_text()
    assert json.loads((chosen / "summary.json").read_text())["fit"]["n_components"] == best
    assert f"report: {chosen / 'report' / 'report.md'}" in proc.stdout
    # The table: one row per candidate, K, BIC, AIC, bound and convergence, as fitted.
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["K", "BIC", "AIC", "lower", "bound", "converged"], proc.stdout
    for k, line in zip((2, 4), lines[1:3], strict=True):
        model = emdist.load_model(chosen / f"k{k}" / "model.zarr")
        fields = line.split()
        assert int(fields[0]) == k
        assert float(fields[1].replace(",", "")) == pytest.approx(
            model.bic(ran.out / "dataset.zarr" / "data"), abs=0.01
        )
        assert float(fields[3]) == pytest.approx(model.lower_bounds_[-1], abs=5e-7)
        assert fields[4] == ("yes" if model.converged_ else "no")


def test_report_before_any_run_is_a_user_error(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ws.dir / "fresh" / "job.toml"
    config.parent.mkdir()
    config.write_text('[input]\npath = "x.npy"\n')
    code, _, err = in_process(["report", "--config", str(config)], ws.dir, monkeypatch, capsys)
    assert code == 2
    assert "summary.json" in err and "run the job" in err


# -- help and bad configurations --------------------------------------------------------------


def test_top_level_help_lists_commands_and_examples(ws: Workspace) -> None:
    proc = ok(ws.emdist("--help"))
    assert proc.stdout.startswith("Usage: emdist")
    assert "examples:" in proc.stdout
    for command in COMMANDS:
        assert command in proc.stdout
    examples = proc.stdout.split("examples:")[1]
    for command in ("run", "generate", "ingest", "fit", "predict", "report", "select-k"):
        assert f"emdist {command} " in examples


def test_console_script_is_installed(ws: Workspace) -> None:
    script = Path(sys.executable).with_name("emdist")
    assert script.is_file(), "the emdist console script is not installed next to python"
    proc = subprocess.run(
        [str(script), "--help"], env=ws.env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: emdist")


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("generate", ["DEST", "--n-samples", "--n-features", "--chunk-rows", "--overwrite"]),
        ("ingest", ["SOURCE", "DEST", "--format", "[auto|npy|csv|parquet|hdf5|zarr]"]),
        (
            "fit",
            ["--model", "[" + "|".join(model_families()) + "]", "-k", "--checkpoint", "--restart"],
        ),
        ("predict", ["MODEL", "DATA", "DEST", "--responsibilities", "--missing", "--scheduler"]),
        ("report", ["--config"]),
        ("run", ["--config"]),
        ("demo", ["--out", "--n-samples"]),
        ("select-k", ["--config", "--k"]),
        ("serve", ["--config", "--cron", "--name", "--flow", "[pipeline|select-k]"]),
        ("deploy", ["--config", "--cron", "--pool", "--flow"]),
    ],
)
def test_subcommand_help_lists_its_options(
    command: str, options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Usage: emdist {command}")
    for option in options:
        assert option in out
    assert "-h, --help" in out


def test_every_command_is_documented() -> None:
    text = help_text(build_cli())
    for command in COMMANDS:
        assert re.search(rf"^\s+{re.escape(command)}\s+\S", text, re.M), command


BAD_CONFIGS = {
    "run-bad-fields": (
        {"bad.yaml": "input:\n  path: x.npy\nmodel:\n  family: dbscan\n  n_comps: 3\n"},
        ["run", "--config", "bad.yaml"],
        ["model.family", "allowed values", "'gmm'", "'kmeans'", "model.n_comps", "unknown"],
    ),
    "fit-bad-choice": (
        {},
        ["fit", "nowhere.zarr", "--covariance-type", "ful"],
        ["--covariance-type", "'ful'", "is not one of", "'full'", "'spherical'"],
    ),
    "fit-acceleration-of-incremental-em": (
        {},
        ["fit", "nowhere.zarr", "--acceleration", "squarem", "--updates", "incremental"],
        ["--acceleration squarem needs --updates batch; got incremental"],
    ),
    "report-invalid-yaml": (
        {"broken.yaml": "input: [\n"},
        ["report", "--config", "broken.yaml"],
        ["broken.yaml is not valid YAML"],
    ),
    "run-missing-config": (
        {},
        ["run", "--config", "missing.toml"],
        ["missing.toml does not exist"],
    ),
    "select-k-bad-address": (
        {"job.toml": '[input]\npath = "x.npy"\n[cluster]\naddress = "host:8786"\n'},
        ["select-k", "--config", "job.toml", "--k", "2", "3"],
        ["cluster.address", "tcp://host:port"],
    ),
}


def _bad_config_folder(ws: Workspace, case: str, where: str) -> Path:
    files = BAD_CONFIGS[case][0]
    folder = ws.dir / f"bad-{where}-{case}"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("case", ["run-bad-fields", "fit-bad-choice"])
def test_bad_configuration_is_a_readable_user_error(ws: Workspace, case: str) -> None:
    """As a separate process: exit status 2, the field named, no traceback."""
    folder = _bad_config_folder(ws, case, "subprocess")
    proc = ws.emdist(*BAD_CONFIGS[case][1], cwd=folder)
    message = user_error(proc)
    assert proc.stdout == ""
    for text in BAD_CONFIGS[case][2]:
        assert text in message


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_configuration_in_process(
    ws: Workspace, case: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same check on the same ``main``, without starting a process per case."""
    _, args, expected = BAD_CONFIGS[case]
    folder = _bad_config_folder(ws, case, "in-process")
    code, out, err = in_process(args, folder, monkeypatch, capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("error:")
    for text in expected:
        assert text in err


# -- no silent overwrites ---------------------------------------------------------------------


def files(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes: equal before and after means untouched."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_fit_does_not_ingest_over_a_dataset_that_stood_there(
    ws: Workspace,
    generated: subprocess.CompletedProcess[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ok(generated)
    d2 = ws.dir / "d2"
    shutil.copytree(ws.dir / "g.zarr", d2 / "data.zarr")
    before = files(d2 / "data.zarr")
    np.savetxt(ws.dir / "mine.csv", np.random.default_rng(6).normal(size=(600, 2)), delimiter=",")

    code, out, err = in_process(
        ["fit", "mine.csv", "-k", "2", "--out", "d2/m.zarr"], ws.dir, monkeypatch, capsys
    )
    assert code == 2 and out == ""
    # An ingested copy never replaces a generated dataset (another kind of emdist output,
    # with its truth and labels), --overwrite or not: said before anything is read.
    assert str(d2 / "data.zarr") in err and "emdist synthetic output" in err
    assert "overwrite=True" not in err and "output.overwrite" not in err
    assert files(d2 / "data.zarr") == before
    assert not (d2 / "m.zarr").exists()

    # Where the user says, and nothing else is touched.
    args = ["fit", "mine.csv", "-k", "2", "--out", "d2/m.zarr", "--ingest-to", "d2/mine.zarr"]
    code, _, err = in_process(args, ws.dir, monkeypatch, capsys)
    assert code == 0, err
    assert emdist.load_model(d2 / "m.zarr").n_components == 2
    assert zarr.open_array(str(d2 / "mine.zarr"), mode="r").shape == (600, 2)
    assert files(d2 / "data.zarr") == before
    # The same command again replaces its own model (it wrote it).
    code, _, err = in_process(args, ws.dir, monkeypatch, capsys)
    assert code == 0, err


def test_fit_does_not_replace_a_data_array_with_a_model(
    ws: Workspace,
    generated: subprocess.CompletedProcess[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ok(generated)
    X = np.asarray(zarr.open_array(str(ws.dir / "g.zarr" / "data"), mode="r")[:500])
    zarr.create_array(str(ws.dir / "existing.zarr"), data=X, zarr_format=3)
    before = files(ws.dir / "existing.zarr")
    data_before = files(ws.dir / "g.zarr")

    # A data array is not a model: refused before the fit, and --overwrite would not help
    # (so the message does not suggest it).
    args = ["fit", "g.zarr/data", "-k", "3", "--out", "existing.zarr"]
    code, _, err = in_process(args, ws.dir, monkeypatch, capsys)
    assert code == 2 and "existing.zarr: it is not an emdist output" in err
    assert "--overwrite" not in err and "EM restart" not in err
    assert files(ws.dir / "existing.zarr") == before
    # The input itself is never the output, --overwrite or not.
    args = ["fit", "g.zarr/data", "-k", "3", "--out", "g.zarr/data", "--overwrite"]
    code, _, err = in_process(args, ws.dir, monkeypatch, capsys)
    assert code == 2 and "would overwrite the input" in err
    assert files(ws.dir / "g.zarr") == data_before
    # --overwrite replaces only an emdist model: a data array is never replaced by a model,
    # and this is said before the fit runs.
    args = ["fit", "g.zarr/data", "-k", "3", "--out", "existing.zarr", "--overwrite"]
    code, _, err = in_process(args, ws.dir, monkeypatch, capsys)
    assert code == 2 and "existing.zarr: it is not an emdist output" in err
    assert "EM restart" not in err, "refused only after fitting"
    assert files(ws.dir / "existing.zarr") == before


def test_predict_does_not_replace_without_overwrite(
    ws: Workspace,
    fitted: subprocess.CompletedProcess[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ok(fitted)
    (ws.dir / "keep.zarr").mkdir()
    (ws.dir / "keep.zarr" / "notes.txt").write_text("keep me\n")
    args = ["predict", "m.zarr", "g.zarr/data", "keep.zarr"]
    code, _, err = in_process(args, ws.dir, monkeypatch, capsys)
    assert code == 2 and "keep.zarr exists" in err and "--overwrite" in err
    assert (ws.dir / "keep.zarr" / "notes.txt").read_text() == "keep me\n"


# -- user errors: one line, status 2, at once ----------------------------------------------------


def test_a_bad_config_key_is_reported_before_prefect_is_imported(ws: Workspace) -> None:
    folder = ws.dir / "bad-key"
    folder.mkdir()
    (folder / "job.yaml").write_text("input:\n  path: x.npy\nmodel:\n  famly: gmm\n")
    probe = (
        "import sys, time; t = time.perf_counter(); from flows.cli import main; "
        "code = main(['run', '--config', 'job.yaml']); "
        "print(code, 'prefect' in sys.modules, round(time.perf_counter() - t, 2))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=folder, env=ws.env, capture_output=True, text=True
    )
    code, prefect_imported, seconds = proc.stdout.split()
    assert (code, prefect_imported) == ("2", "False"), proc.stderr
    assert "model.famly: unknown field" in proc.stderr and "Traceback" not in proc.stderr
    print(f"bad config key reported in {seconds} s after the interpreter started")


def test_select_k_with_a_bad_candidate_is_one_line(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = ws.dir / "bad-k"
    folder.mkdir()
    (folder / "job.toml").write_text('[input]\npath = "x.npy"\n')
    code, out, err = in_process(
        ["select-k", "--config", "job.toml", "--k", "0", "3"], folder, monkeypatch, capsys
    )
    assert code == 2 and out == ""
    assert err.count("error:") == 1 and "--k" in err and "0 is not in the range" in err


def test_an_unreachable_scheduler_is_one_line_naming_it(
    ws: Workspace, generated: subprocess.CompletedProcess[str]
) -> None:
    ok(generated)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    start = time.perf_counter()
    proc = ws.emdist("fit", "g.zarr/data", "-k", "3", "--out", "mu.zarr", "--scheduler", address)
    seconds = time.perf_counter() - start
    message = user_error(proc)
    assert f"no Dask scheduler answered at {address} within 5 s" in message
    assert "check the address and port" in message
    assert "EM restart" not in proc.stderr  # no empty progress bar above the line
    assert not (ws.dir / "mu.zarr").exists()
    print(f"unreachable scheduler reported in {seconds:.1f} s (process start included)")


def test_ctrl_c_on_a_checkpointed_fit_says_how_to_resume(
    ws: Workspace, generated: subprocess.CompletedProcess[str]
) -> None:
    ok(generated)
    checkpoints = ws.dir / "ctrlc-ck.zarr"
    # tol 0: never converges, so the fit is still running when interrupted.
    args = ["fit", "g.zarr/data", "-k", "3", "--max-iter", "100000", "--tol", "0"]
    args += ["--checkpoint", str(checkpoints), "--out", "ctrlc.zarr"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=ws.dir,
        env=ws.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    done = interrupt_after_first_commit(proc, checkpoints)
    checkpoint = version_checkpoint(checkpoints)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    match = re.search(
        r"interrupted: after iteration (\d+): checkpoint saved in (\S+); "
        r"rerun the same command to resume",
        " ".join(done.stderr.split()),
    )
    assert match is not None, done.stderr
    assert Path(match.group(2)) == checkpoint
    saved = CheckpointStore(checkpoint).load()
    assert saved is not None and saved.iteration >= int(match.group(1)) >= 1


@service_fixture()
def dask_scheduler(ws: Workspace) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real ``dask scheduler`` and one worker on 127.0.0.1, as separate processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).with_name("dask"))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": ws.env}
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port)]
        + ["--dashboard-address", "127.0.0.1:0"],
        **quiet,  # type: ignore[call-overload]
    )
    worker = subprocess.Popen(
        [dask, "worker", address, "--nthreads", "1", "--memory-limit", "1GiB"],
        **quiet,  # type: ignore[call-overload]
    )
    try:
        yield address, scheduler
    finally:
        for proc in (worker, scheduler):
            proc.kill()
            proc.wait()


@pytest.mark.service
def test_a_lost_scheduler_is_one_line_and_the_checkpoint_resumes(
    ws: Workspace,
    generated: subprocess.CompletedProcess[str],
    dask_scheduler: tuple[str, subprocess.Popen[bytes]],
) -> None:
    ok(generated)
    address, scheduler = dask_scheduler
    checkpoints = ws.dir / "lost-ck.zarr"
    args = ["fit", "g.zarr/data", "-k", "3", "--max-iter", "100000", "--tol", "0"]
    args += ["--checkpoint", str(checkpoints), "--out", "lost.zarr", "--scheduler", address]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=ws.dir,
        env=ws.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while proc.poll() is None and committed_checkpoint(checkpoints) is None:
            time.sleep(0.2)
        scheduler.kill()
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    message = user_error(subprocess.CompletedProcess(args, proc.returncode, stdout, stderr))
    match = re.search(
        rf"lost the Dask scheduler at {re.escape(address)} after iteration (\d+); "
        r"the checkpoint is saved; rerun to resume",
        message,
    )
    assert match is not None, stderr
    saved = CheckpointStore(version_checkpoint(checkpoints)).load()
    assert saved is not None and saved.iteration >= int(match.group(1)) >= 1


@pytest.mark.service
def test_a_missing_input_in_a_flow_is_one_line_and_not_retried(ws: Workspace) -> None:
    folder = ws.dir / "missing-input"
    folder.mkdir()
    (folder / "job.yaml").write_text(
        "input:\n  path: nowhere/measurements.csv\noutput:\n  dir: out\ncluster:\n  n_workers: 1\n"
    )
    start = time.perf_counter()
    proc = ws.emdist("run", "--config", "job.yaml", cwd=folder)
    seconds = time.perf_counter() - start
    message = user_error(proc)
    assert str(folder / "nowhere" / "measurements.csv") in message
    assert "Retrying" not in proc.stderr and "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "measurements.csv" in line]
    assert len(error_lines) == 1, proc.stderr
    print(f"missing input in a flow reported in {seconds:.1f} s (Prefect's server included)")


def version_checkpoint(checkpoints: Path) -> Path:
    """The one checkpoint under a job's checkpoint folder (one per version of its data)."""
    found = sorted(checkpoints.glob("*/checkpoint.zarr"))
    assert len(found) == 1, found
    return found[0]


def committed_checkpoint(checkpoints: Path) -> Path | None:
    """A checkpoint under ``checkpoints`` holding a committed iteration, if any."""
    for path in checkpoints.glob("*/checkpoint.zarr"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            if json.loads((path / "zarr.json").read_text())["attributes"].get("committed"):
                return path
    return None


def interrupt_after_first_commit(
    proc: subprocess.Popen[str], checkpoints: Path, *, group: bool = False
) -> subprocess.CompletedProcess[str]:
    """Send SIGINT (Ctrl-C) once a checkpoint under ``checkpoints`` holds an iteration.

    ``group``: to ``proc``'s whole process group (started with ``start_new_session``), as
    a terminal does.
    """
    try:
        while proc.poll() is None and committed_checkpoint(checkpoints) is None:
            time.sleep(0.2)
        if group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.service
@pytest.mark.parametrize(
    "cluster",
    [{"n_workers": 1, "processes": False}, {"n_workers": 2, "processes": True}],
    ids=["threads", "two-worker-processes"],
)
def test_ctrl_c_on_a_flow_run_says_how_to_resume(
    ws: Workspace,
    prefect_harness: str,  # noqa: F811 - the fixture imported above
    cluster: dict[str, Any],
) -> None:
    folder = ws.dir / f"ctrlc-run-{cluster['n_workers']}"
    folder.mkdir()
    (folder / "job.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "ctrl-c",
                "input": {
                    "generate": {
                        "n_samples": N_SAMPLES,
                        "n_features": N_FEATURES,
                        "n_components": TRUE_K,
                        "chunk_rows": CHUNK_ROWS,
                    }
                },
                # tol 0: never converges, so the fit is still running when interrupted.
                "model": {"n_components": TRUE_K, "tol": 0.0, "max_iter": 100_000},
                "output": {"dir": "out"},
                "cluster": cluster,
            }
        )
    )
    # Against a running Prefect server, as a user with many runs has one (a terminal's
    # Ctrl-C reaches every process of its group, and would stop a temporary server too).
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", "job.yaml"],
        cwd=folder,
        env={**ws.env, "PREFECT_API_URL": prefect_harness},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    # As a terminal's Ctrl-C: SIGINT to the command and the worker processes it started.
    done = interrupt_after_first_commit(proc, folder / "out" / "checkpoints", group=True)
    checkpoint = version_checkpoint(folder / "out" / "checkpoints")
    assert done.returncode == 130, done.stderr
    for noise in ("Traceback", "KeyboardInterrupt", "CommClosedError", "ERROR"):
        assert noise not in done.stderr, done.stderr
    match = re.search(
        r"interrupted: after iteration (\d+): checkpoint saved in (\S+); "
        r"rerun the same command to resume",
        " ".join(done.stderr.split()),
    )
    assert match is not None, done.stderr
    assert Path(match.group(2)) == checkpoint
    saved = CheckpointStore(checkpoint).load()
    assert saved is not None and saved.iteration >= int(match.group(1)) >= 1


# -- what a new user meets first ----------------------------------------------------------------


def test_version_and_scikit_learn_spellings_of_k(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = in_process(["--version"], tmp_path, monkeypatch, capsys)
    assert (code, out.strip(), err) == (0, f"emdist {emdist.__version__}", "")
    from flows.cli import parse_args

    for spelling in ("-k", "--n-components", "--n-clusters"):
        name, params = parse_args(["fit", "d.zarr", spelling, "7"])
        assert (name, params["k"]) == ("fit", 7), spelling
    assert "--n-components" in help_text(build_cli(), "fit")


def test_a_new_model_starts_cold_even_over_the_one_it_replaces(
    ws: Workspace,
    generated: subprocess.CompletedProcess[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ok(generated)
    args = ["fit", "g.zarr/data", "-k", "4", "--out", "cold.zarr", "--max-iter", "2", "--json"]
    code, out, err = in_process(args, ws.dir, monkeypatch, capsys)
    assert code == 0, err
    first = json.loads(out)
    code, out, err = in_process([*args, "--overwrite"], ws.dir, monkeypatch, capsys)
    assert code == 0, err
    again = json.loads(out)
    # The same fit from the same cold start, not a continuation of the model it replaced.
    assert not again["warm_started"] and "warm start" not in err
    assert again["lower_bounds"] == first["lower_bounds"]
    # Asked for, the warm start continues from the model at --out.
    code, out, err = in_process([*args, "--overwrite", "--warm-start"], ws.dir, monkeypatch, capsys)
    assert code == 0, err
    warm = json.loads(out)
    assert warm["warm_started"] and "warm start from the previous model" in err
    assert warm["lower_bounds"][0] != first["lower_bounds"][0]


def test_a_fit_that_did_not_converge_says_so_in_one_line_of_the_cli(
    ws: Workspace, generated: subprocess.CompletedProcess[str]
) -> None:
    ok(generated)
    proc = ok(ws.emdist("fit", "g.zarr/data", "-k", "4", "--out", "nc.zarr", "--max-iter", "2"))
    bounds = emdist.load_model(ws.dir / "nc.zarr").lower_bounds_
    assert "Warning" not in proc.stderr and ".py:" not in proc.stderr
    line = " ".join(proc.stderr.split())
    change = abs(bounds[-1] - bounds[-2])
    assert (
        f"note: not converged after --max-iter 2 iterations (last change {change:.1e} >= "
        "--tol 0.001); rerun with a larger --max-iter" in line
    ), proc.stderr
    # --tol 0 never stops before --max-iter: said so, not "above tol=0.0".
    args = ["fit", "g.zarr/data", "-k", "4", "--out", "nc0.zarr", "--max-iter", "2", "--tol", "0"]
    proc = ok(ws.emdist(*args))
    line = " ".join(proc.stderr.split())
    assert "Warning" not in proc.stderr and "above tol" not in proc.stderr
    assert "note: not converged after --max-iter 2 iterations: --tol 0 never stops early" in line


def test_predict_with_something_that_is_not_a_model_says_so(
    ws: Workspace,
    generated: subprocess.CompletedProcess[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ok(generated)
    (ws.dir / "notes.md").write_text("not a model\n")
    for not_a_model in ("g.zarr/data", "notes.md", "nothing-here.zarr"):
        args = ["predict", not_a_model, "g.zarr/data", "p-nm.zarr"]
        code, out, err = in_process(args, ws.dir, monkeypatch, capsys)
        assert code == 2 and out == ""
        what = "does not exist" if "nothing" in not_a_model else "is not an emdist model"
        assert err == f"error: {not_a_model} {what} (MODEL is the --out of `emdist fit`)", err
        assert not (ws.dir / "p-nm.zarr").exists()


@pytest.mark.parametrize("command", ["run", "select-k"])
def test_a_missing_input_is_reported_before_prefect_starts(ws: Workspace, command: str) -> None:
    folder = ws.dir / f"missing-before-{command}"
    folder.mkdir()
    (folder / "job.yaml").write_text(
        "input:\n  path: nowhere/measurements.csv\nselect_k: [2, 3]\noutput:\n  dir: out\n"
    )
    probe = (
        "import sys; from flows.cli import main; "
        f"code = main([{command!r}, '--config', 'job.yaml']); "
        "print(code, 'prefect' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=folder, env=ws.env, capture_output=True, text=True
    )
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    message = " ".join(proc.stderr.split())
    assert message == (
        f"error: input.path: {folder / 'nowhere' / 'measurements.csv'} does not exist "
        f"(in {Path('job.yaml')})"
    ), proc.stderr
    assert not (folder / "out").exists()


@pytest.mark.service
def test_ctrl_c_on_an_idle_serve_is_one_line_and_status_130(
    ws: Workspace,
    prefect_harness: str,  # noqa: F811 - the fixture imported above
) -> None:
    folder = ws.dir / "serve-idle"
    folder.mkdir()
    (folder / "job.yaml").write_text("input:\n  path: data.zarr\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--config", "job.yaml", "--cron", "0 2 * * *"],
        cwd=folder,
        env={**ws.env, "PREFECT_API_URL": prefect_harness},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # serving once it says so
            if "is being served" in line:
                break
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    for noise in ("Traceback", "ERROR", "Crash"):
        assert noise not in stderr, stderr
    stopped = [line for line in stderr.splitlines() if line.startswith("stopped:")]
    assert stopped == ["stopped: no more scheduled runs of emdist-scheduled from this process"], (
        stderr
    )
