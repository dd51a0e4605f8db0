"""SIGKILL through the CLI at seeded random moments, for every model family.

``emdist fit ... --checkpoint`` is killed (SIGKILL, no chance to clean up) after a random
number of committed iterations plus a random delay, then the same command is run again: it
must resume and end with the model, bit for bit, that an uninterrupted run saves.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import emdist
from emdist.registry import model_families
from tests.conftest import overlapping_data
from tests.prefect_fixtures import subprocess_environment

pytestmark = [pytest.mark.slow, pytest.mark.service]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100,000 x 3 overlapping clusters in 10 chunks: EM needs many passes on them."""
    path = tmp_path_factory.mktemp("resume") / "data.zarr"
    X = overlapping_data(0, 100_000 // 3 + 1)[:100_000]
    zarr.create_array(str(path), data=X, chunks=(10_000, 3), zarr_format=3)
    return path


def fit_args(data: Path, family: str, updates: str, checkpoint: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flows.cli",
        "fit",
        str(data),
        "--model",
        family,
        "-k",
        "4",
        "--max-iter",
        "40",
        "--tol",
        "0",
        "--seed",
        "3",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--updates",
        updates,
    ]


def commits(checkpoints: Path) -> int:
    """Committed states so far of the fit's checkpoint (0 before the first commit).

    ``--checkpoint`` names a folder with one checkpoint per version of the data.
    """
    for root in checkpoints.glob("*/checkpoint.zarr"):
        try:
            meta = json.loads((root / "zarr.json").read_text())
        except (OSError, ValueError):
            return 0
        return int((meta.get("attributes") or {}).get("commits", 0) or 0)
    return 0


def same_model(a: Path, b: Path) -> None:
    ma, mb = emdist.load_model(a), emdist.load_model(b)
    assert ma.n_iter_ == mb.n_iter_ and ma.lower_bounds_ == mb.lower_bounds_
    for name, value in vars(ma).items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, getattr(mb, name)), name


@pytest.mark.parametrize("updates", ["batch", "incremental"])
@pytest.mark.parametrize("family", list(model_families()))
def test_fit_killed_at_a_random_moment_resumes_to_the_uninterrupted_model(
    tmp_path: Path, data: Path, family: str, updates: str
) -> None:
    # Incremental EM keeps its shard statistics in the checkpoint: they must resume too.
    env = subprocess_environment(tmp_path / "prefect-home")
    rng = random.Random(f"emdist-cli-kill-{family}-{updates}")
    reference = subprocess.run(
        fit_args(data, family, updates, tmp_path / "ref-ckpt.zarr", tmp_path / "ref.zarr"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert reference.returncode == 0, reference.stderr
    args = fit_args(data, family, updates, tmp_path / "ckpt.zarr", tmp_path / "model.zarr")
    target, delay = rng.randint(2, 6), rng.uniform(0.0, 0.05)
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while commits(tmp_path / "ckpt.zarr") < target and proc.poll() is None:
        time.sleep(0.002)
    time.sleep(delay)
    assert proc.poll() is None, "the fit ended before it could be killed: make it longer"
    proc.kill()
    proc.wait()
    assert not (tmp_path / "model.zarr").exists(), "no model before the fit ends"
    resumed = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    same_model(tmp_path / "ref.zarr", tmp_path / "model.zarr")


@pytest.mark.parametrize("family", ["kmeans", "gmm"])
def test_fit_killed_as_its_model_appears_reruns_to_the_same_model(
    tmp_path: Path, data: Path, family: str
) -> None:
    """The model is claimed by the job in the rename that makes it appear.

    It used to be claimed by a second write after the rename: a kill in between left a
    model the re-run refused to replace ("not written by this job"), or a torn zarr.json.
    """
    env = subprocess_environment(tmp_path / "prefect-home")
    reference = subprocess.run(
        fit_args(data, family, "batch", tmp_path / "ref-ckpt.zarr", tmp_path / "ref.zarr"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "model.zarr"
    args = fit_args(data, family, "batch", tmp_path / "ckpt.zarr", out)
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while not out.exists() and proc.poll() is None:
        time.sleep(0.0005)
    proc.kill()
    proc.wait()
    assert out.exists(), "the fit ended before its model appeared"
    # Whatever instant the kill hit, the model that appeared is whole and the job's.
    meta = json.loads((out / "zarr.json").read_text())
    assert meta["attributes"].get("emdist_job"), "the model appeared unclaimed"
    rerun = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    same_model(tmp_path / "ref.zarr", out)
