"""`emdist fit --sample-weight PATH`: the weighted fit end to end, and bad weights in one line.

Starts the CLI as a process (``service`` tests, as tests/pipeline/test_cli.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr

import emdist
from tests.conftest import overlapping_data
from tests.helpers import write_zarr
from tests.markers import service_fixture
from tests.prefect_fixtures import subprocess_environment


@dataclass(frozen=True)
class Workspace:
    dir: Path
    env: dict[str, str]
    weights: np.ndarray

    def emdist(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )


@service_fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("cli-weights")
    X = overlapping_data(0, 1000)
    write_zarr(root / "data.zarr", X, 500)
    w = np.random.default_rng(0).uniform(0.0, 3.0, len(X))
    zarr.create_array(str(root / "w.zarr"), data=w, chunks=(700,), zarr_format=3)
    np.save(root / "w.npy", w)
    zarr.create_array(str(root / "short.zarr"), data=w[:-1], chunks=(700,), zarr_format=3)
    return Workspace(root, subprocess_environment(root / "prefect-home"), w)


def _fit(ws: Workspace, out: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return ws.emdist(
        "fit", "data.zarr", "--model", "kmeans", "-k", "3", "--seed", "1", "--out", out, *extra
    )


def test_fit_with_sample_weight_is_the_weighted_library_fit(ws: Workspace) -> None:
    proc = _fit(ws, "m.zarr", "--sample-weight", "w.zarr", "--checkpoint", "ck")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    model = emdist.load_model(ws.dir / "m.zarr")
    library = emdist.KMeans(3, random_state=1, max_iter=100, n_init=1)
    library.fit(ws.dir / "data.zarr", sample_weight=ws.weights)
    np.testing.assert_array_equal(model.cluster_centers_, library.cluster_centers_)
    assert model.inertia_ == library.inertia_
    criteria = library.information_criteria(ws.dir / "data.zarr", sample_weight=ws.weights)
    assert summary["bic"] == pytest.approx(criteria["bic"], rel=1e-12)
    # The .npy form gives the same model; the unweighted fit another one.
    npy = _fit(ws, "npy.zarr", "--sample-weight", "w.npy")
    assert npy.returncode == 0, npy.stderr
    same = emdist.load_model(ws.dir / "npy.zarr")
    np.testing.assert_array_equal(same.cluster_centers_, model.cluster_centers_)
    plain = _fit(ws, "plain.zarr")
    assert plain.returncode == 0, plain.stderr
    other = emdist.load_model(ws.dir / "plain.zarr")
    assert not np.array_equal(other.cluster_centers_, model.cluster_centers_)
    # Re-run on its checkpoint with other weights: refused, naming sample_weight.
    refused = _fit(ws, "m2.zarr", "--sample-weight", "w.npy", "--checkpoint", "ck", "--seed", "1")
    assert refused.returncode == 0  # the same weights from another file: same fingerprint
    changed = ws.weights.copy()
    changed[0] += 1.0
    np.save(ws.dir / "changed.npy", changed)
    bad = _fit(ws, "m3.zarr", "--sample-weight", "changed.npy", "--checkpoint", "ck")
    assert bad.returncode == 2, bad.stderr
    assert "sample_weight" in bad.stderr and "Traceback" not in bad.stderr


def test_weights_of_another_length_are_one_line_naming_the_flag(ws: Workspace) -> None:
    proc = _fit(ws, "short-model.zarr", "--sample-weight", "short.zarr")
    assert proc.returncode == 2, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1, proc.stderr
    assert "--sample-weight has shape (2999,); expected (3000,)" in err
    assert not (ws.dir / "short-model.zarr").exists()
