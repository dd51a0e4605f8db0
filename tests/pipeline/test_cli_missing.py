"""Missing values on the command line and in a run configuration.

``emdist fit --missing marginalize`` fits NaN as missing values (a file ingested first keeps
its NaN), ``emdist ingest --allow-missing`` keeps them, ``emdist predict`` labels them as
the model was fitted (or as its ``--missing`` says), so does a job's label step, and the
refusals say which flag allows them, in one line. The CLI runs as a process, as a user
starts it.
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
    # In the command line's words: no Python argument or configuration field.
    assert (
        "--missing marginalize needs a --model that fits missing values (gmm, bayesian_gmm); "
        "got kmeans"
    ) in kmeans.stderr
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
    fits_missing = "model.missing marginalize needs a model.family that fits missing values"
    with pytest.raises(ConfigError, match=fits_missing):
        parse_config({**base, "model": {"family": "kmeans", "missing": "marginalize"}}, "test")


def _files(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_predict_on_nan_follows_the_model_or_its_missing_flag(tmp_path: Path) -> None:
    import zarr

    X = _data()
    zarr.create_array(str(tmp_path / "d.zarr"), data=X, chunks=(150, 2))
    complete = X[~np.isnan(X).any(axis=1)]
    emdist.save_model(
        emdist.GaussianMixture(2, random_state=0, missing="marginalize").fit(X), tmp_path / "m"
    )
    emdist.save_model(emdist.GaussianMixture(2, random_state=0).fit(complete), tmp_path / "e")
    emdist.save_model(emdist.KMeans(2, random_state=0).fit(complete), tmp_path / "k")

    def labels(dest: str) -> np.ndarray:
        return np.asarray(zarr.open_group(str(tmp_path / dest), mode="r")["labels"][:])

    # A model fitted with missing values labels and scores NaN data as it was fitted.
    done = _emdist(tmp_path, "predict", "m", "d.zarr", "pm.zarr", "--log-likelihood")
    assert done.returncode == 0, done.stderr
    marginal = emdist.load_model(tmp_path / "m")
    assert np.array_equal(labels("pm.zarr"), marginal.predict(X))
    scores = zarr.open_group(str(tmp_path / "pm.zarr"), mode="r")["log_likelihood"][:]
    np.testing.assert_allclose(scores, marginal.score_samples(X), rtol=1e-12)
    # A model fitted without: refused in the command's words, one line, nothing written...
    refused = _emdist(tmp_path, "predict", "e", "d.zarr", "pe.zarr")
    assert refused.returncode == 2
    assert "set --missing marginalize to score rows with missing values" in refused.stderr
    assert "missing='marginalize'" not in refused.stderr and "model.missing" not in refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert not (tmp_path / "pe.zarr").exists()
    # ...unless --missing marginalize says so: its marginals, as the library's.
    done = _emdist(tmp_path, "predict", "e", "d.zarr", "pe.zarr", "--missing", "marginalize")
    assert done.returncode == 0, done.stderr
    fitted = emdist.load_model(tmp_path / "e").set_params(missing="marginalize")
    assert np.array_equal(labels("pe.zarr"), fitted.predict(X))
    # --missing error refuses NaN whatever the model; a good output it would replace stays.
    before = _files(tmp_path / "pe.zarr")
    strict = _emdist(
        tmp_path, "predict", "m", "d.zarr", "pe.zarr", "--missing", "error", "--overwrite"
    )
    # (Blocks are checked in parallel: the row named is the first NaN of some block.)
    assert strict.returncode == 2 and "contains NaN or infinity at row" in strict.stderr
    assert strict.stderr.count("\n") == 1, strict.stderr
    assert _files(tmp_path / "pe.zarr") == before
    # K-means scores no row with missing values: the flag is refused before any read.
    kmeans = _emdist(tmp_path, "predict", "k", "d.zarr", "pk.zarr", "--missing", "marginalize")
    assert kmeans.returncode == 2
    assert kmeans.stderr.startswith("error: --missing marginalize: MODEL is a KMeans")
    assert kmeans.stderr.count("\n") == 1, kmeans.stderr
    nan = _emdist(tmp_path, "predict", "k", "d.zarr", "pk.zarr")
    assert nan.returncode == 2 and "contains NaN" in nan.stderr
    assert nan.stderr.count("\n") == 1, nan.stderr
    assert not (tmp_path / "pk.zarr").exists()


def test_the_label_step_labels_nan_as_the_job_fitted(tmp_path: Path) -> None:
    from pipeline.steps import fit_model, label_data, prepare_data

    X = _data()
    _write_csv(tmp_path / "x.csv", X)
    config = parse_config(
        {
            "input": {"path": str(tmp_path / "x.csv")},
            "model": {"n_components": 2, "missing": "marginalize"},
            "output": {"dir": str(tmp_path / "out"), "log_likelihood": True},
        },
        "test",
    )
    data = prepare_data(config)
    fit = fit_model(config, data, scheduler=None)
    predictions = label_data(config, data, fit.model_path, scheduler=None)
    assert sum(predictions.counts) == len(X)
    import zarr

    group = zarr.open_group(predictions.path, mode="r")
    model = emdist.load_model(fit.model_path)
    assert np.array_equal(np.asarray(group["labels"][:]), model.predict(X))
    assert np.isfinite(group["log_likelihood"][:]).all()
