"""Missing values on the command line and in a run configuration.

``emdist fit --missing marginalize`` fits NaN as missing values (a file ingested first keeps
its NaN), ``emdist ingest --allow-missing`` keeps them, and the refusals say which flag
allows them, in one line. The CLI runs as a process, as a user starts it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import emdist
from pipeline.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[2]


def _emdist(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _data() -> np.ndarray:
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (200, 2)), rng.normal(6, 1, (200, 2))])
    X[rng.random(X.shape) < 0.1] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.5
    return X


def _write_csv(path: Path, X: np.ndarray) -> None:
    with path.open("w") as f:
        f.write("a,b\n")
        for row in X:
            f.write(",".join("" if np.isnan(v) else repr(float(v)) for v in row) + "\n")


def test_fit_missing_marginalize_on_a_csv_with_empty_fields(tmp_path: Path) -> None:
    X = _data()
    _write_csv(tmp_path / "x.csv", X)
    refused = _emdist(tmp_path, "fit", "x.csv", "-k", "2", "--out", "m0.zarr")
    assert refused.returncode == 2
    assert "--missing marginalize" in refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert not (tmp_path / "m0.zarr").exists()
    done = _emdist(
        tmp_path,
        "fit",
        "x.csv",
        "-k",
        "2",
        "--seed",
        "3",
        "--acceleration",
        "none",
        "--missing",
        "marginalize",
        "--out",
        "m.zarr",
        "--ingest-to",
        "d.zarr",
    )
    assert done.returncode == 0, done.stderr
    model = emdist.load_model(tmp_path / "m.zarr")
    assert model.missing == "marginalize"
    library = emdist.GaussianMixture(
        2, random_state=3, acceleration=None, missing="marginalize"
    ).fit(str(tmp_path / "d.zarr"))
    np.testing.assert_allclose(model.means_, library.means_, rtol=1e-10)
    # The ingested copy kept the NaN where the CSV had empty fields.
    import zarr

    kept = zarr.open_array(str(tmp_path / "d.zarr"), mode="r")[:]
    assert np.array_equal(np.isnan(kept), np.isnan(X))


def test_ingest_allow_missing_and_the_refusal_that_names_it(tmp_path: Path) -> None:
    X = _data()
    np.save(tmp_path / "x.npy", X)
    refused = _emdist(tmp_path, "ingest", "x.npy", "d.zarr")
    assert refused.returncode == 2
    assert "--allow-missing" in refused.stderr and "allow_missing=True" not in refused.stderr
    assert not (tmp_path / "d.zarr").exists()
    done = _emdist(tmp_path, "ingest", "x.npy", "d.zarr", "--allow-missing")
    assert done.returncode == 0, done.stderr
    fit_refused = _emdist(tmp_path, "fit", "d.zarr", "-k", "2", "--out", "m.zarr")
    assert fit_refused.returncode == 2
    assert "pass --missing marginalize to fit with missing values" in fit_refused.stderr
    kmeans = _emdist(tmp_path, "fit", "d.zarr", "--model", "kmeans", "--missing", "marginalize")
    assert kmeans.returncode == 2
    assert "missing='marginalize' needs a family that fits missing values" in kmeans.stderr
    X[3, 1] = np.inf
    np.save(tmp_path / "inf.npy", X)
    inf = _emdist(tmp_path, "ingest", "inf.npy", "i.zarr", "--allow-missing")
    assert inf.returncode == 2
    assert "data row index 3, column 1: non-finite value inf" in inf.stderr


def test_model_missing_in_a_run_configuration() -> None:
    base = {"input": {"path": "x.zarr"}}
    config = parse_config({**base, "model": {"missing": "marginalize"}}, "test")
    assert config.model.missing == "marginalize"
    assert parse_config(base, "test").model.missing == emdist.GaussianMixture().missing
    for family in ("gmm", "bayesian_gmm"):
        chosen = parse_config(
            {**base, "model": {"family": family, "missing": "marginalize"}}, "test"
        )
        params = chosen.model.model_dump(exclude={"family", "warm_start"})
        estimator = emdist.family_class(family).from_config(params)
        assert estimator.missing == "marginalize"
    with pytest.raises(ConfigError, match="model.missing"):
        parse_config({**base, "model": {"missing": "impute"}}, "test")
    with pytest.raises(ConfigError, match="needs a family that fits missing values"):
        parse_config({**base, "model": {"family": "kmeans", "missing": "marginalize"}}, "test")
