"""A scheduled job whose input grows between runs: warm start, one checkpoint per data version.

The job runs as the CLI runs it (:func:`pipeline.job.run_job`, an embedded Dask cluster,
Zarr on disk); the Prefect flow and the SIGKILL-resume of the same case are in
``tests/flows/test_flows.py`` and ``tests/system/test_real_services.py``.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import emdist
from emdist.engine.em import IterationState
from emdist.io.synthetic import make_gaussian_mixture
from pipeline.config import ConfigError, RunConfig, parse_config
from pipeline.job import run_job
from pipeline.steps import checkpoint_for, data_version, prune_checkpoints
from tests.helpers import estimator_classes

# Overlapping clusters (separation 1.5, K=5): a cold fit needs ~17 EM iterations, so the
# warm start's saving is visible. The input grows by 20%, as a nightly export does.
N_BEFORE, N_AFTER, N_FEATURES, K, CHUNK_ROWS = 10_000, 12_000, 4, 5, 2_000


def grown_input(folder: Path) -> tuple[Path, np.ndarray]:
    """A user's Zarr array holding the first ``N_BEFORE`` rows, and all ``N_AFTER`` rows."""
    ds = make_gaussian_mixture(
        folder / "source.zarr",
        n_samples=N_AFTER,
        n_features=N_FEATURES,
        n_components=K,
        separation=1.5,
        chunk_rows=CHUNK_ROWS,
        random_state=0,
    )
    rows = np.asarray(zarr.open_array(str(ds.data_path), mode="r")[:])
    path = folder / "input.zarr"
    arr = zarr.create_array(
        str(path), shape=(N_BEFORE, N_FEATURES), chunks=(CHUNK_ROWS, N_FEATURES), dtype="f8"
    )
    arr[:] = rows[:N_BEFORE]
    return path, rows


def grow(path: Path, rows: np.ndarray) -> None:
    """Append the new rows in place, as a producer appending to the array would."""
    zarr.open_array(str(path), mode="r+").append(rows[N_BEFORE:])


def job_config(path: Path, out: Path, **model: Any) -> RunConfig:
    return parse_config(
        {
            "name": "nightly",
            "input": {"path": str(path)},
            "model": {
                "family": "gmm",
                "n_components": K,
                "tol": 1e-4,
                "max_iter": 500,
                "random_state": 0,
                **model,
            },
            "output": {"dir": str(out)},
            "cluster": {"n_workers": 1, "threads_per_worker": 1, "processes": False},
        }
    )


def summary(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "summary.json").read_text()))


@pytest.mark.service
def test_second_run_on_grown_data_warm_starts_and_keeps_the_old_outputs_until_done(
    tmp_path: Path,
) -> None:
    path, rows = grown_input(tmp_path)
    out = tmp_path / "out"
    config = job_config(path, out)
    first = run_job(config)
    assert first.fit.converged and not first.fit.warm_started
    assert "cold start (no previous model" in first.fit.start
    old_model = emdist.load_model(out / "model.zarr")
    old_labels = np.asarray(zarr.open_array(str(out / "predictions.zarr" / "labels"))[:])
    assert old_labels.shape == (N_BEFORE,)

    grow(path, rows)
    seen: list[int] = []

    def previous_outputs_intact(state: IterationState[Any]) -> None:
        # During the new fit, the previous model and labels are whole and unchanged.
        model = emdist.load_model(out / "model.zarr")
        np.testing.assert_array_equal(model.means_, old_model.means_)
        assert model.n_iter_ == old_model.n_iter_
        labels = zarr.open_array(str(out / "predictions.zarr" / "labels"))[:]
        np.testing.assert_array_equal(labels, old_labels)
        seen.append(state.iteration)

    second = run_job(config, observer=previous_outputs_intact)
    assert seen, "the observer never ran"
    # It fitted the new rows, from the previous model, to convergence.
    assert second.data.n_samples == N_AFTER and summary(out)["data"]["n_samples"] == N_AFTER
    assert second.fit.warm_started, second.fit.start
    assert second.fit.start.startswith("warm start from the previous model")
    assert second.fit.converged and second.fit.resumed_iterations == 0
    new_model = emdist.load_model(out / "model.zarr")
    assert not np.array_equal(new_model.means_, old_model.means_)
    labels = zarr.open_array(str(out / "predictions.zarr" / "labels"))[:]
    assert labels.shape == (N_AFTER,)

    # A cold fit of the same grown data from the same seed takes more iterations.
    cold = run_job(job_config(path, tmp_path / "cold", warm_start=False))
    assert cold.fit.converged and not cold.fit.warm_started
    assert cold.fit.start == "cold start (model.warm_start is off)"
    assert second.fit.n_iter < cold.fit.n_iter, (second.fit.n_iter, cold.fit.n_iter)
    # Same optimum, up to the tolerance (the two starts end at the same clusters).
    assert second.fit.lower_bounds[-1] == pytest.approx(cold.fit.lower_bounds[-1], abs=1e-3)

    # One checkpoint per data version: the first run's and the second's.
    versions = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(versions) == 2
    assert checkpoint_for(config, path).parent.name in versions
    # The start model is kept beside the new checkpoint (a resume starts from it).
    start = emdist.load_model(checkpoint_for(config, path).parent / "start.zarr")
    np.testing.assert_array_equal(start.means_, old_model.means_)

    # A rerun on the same data resumes its finished checkpoint: nothing is refitted.
    third = run_job(config)
    assert third.fit.resumed_iterations == third.fit.n_iter == second.fit.n_iter
    np.testing.assert_array_equal(emdist.load_model(out / "model.zarr").means_, new_model.means_)


@pytest.mark.service
def test_an_incompatible_previous_model_means_a_cold_start_that_says_why(tmp_path: Path) -> None:
    path, rows = grown_input(tmp_path)
    out = tmp_path / "out"
    run_job(job_config(path, out, n_components=3))
    grow(path, rows)
    fit = run_job(job_config(path, out)).fit  # K=5 now
    assert not fit.warm_started
    assert fit.start == "cold start (the previous model has n_components=3, this fit 5)"
    assert emdist.load_model(out / "model.zarr").n_components == K


def test_data_version_changes_with_the_data_and_old_checkpoints_are_pruned(
    tmp_path: Path,
) -> None:
    path, rows = grown_input(tmp_path)
    before = data_version(path)
    assert data_version(path) == before  # cheap and stable: no data read, same key
    grow(path, rows)
    assert data_version(path) != before

    root = tmp_path / "checkpoints"
    keys = [f"{i:016x}" for i in range(5)]
    for i, key in enumerate(keys):
        (root / key).mkdir(parents=True)
        # Oldest first by modification time.
        os.utime(root / key, ns=(10**18 + i, 10**18 + i))
    (root / "mine").mkdir()  # not a data version: never touched
    deleted = prune_checkpoints(root, 3, current=root / keys[0])
    assert sorted(p.name for p in deleted) == keys[1:3]
    assert sorted(p.name for p in root.iterdir()) == sorted([keys[0], keys[3], keys[4], "mine"])


@pytest.mark.parametrize("estimator", estimator_classes(), ids=lambda c: c.family_name)
def test_warm_start_from_saves_iterations_in_every_family(tmp_path: Path, estimator: Any) -> None:
    k = {next(iter(inspect.signature(estimator).parameters)): K}  # n_clusters, n_components
    _, rows = grown_input(tmp_path)
    tol: dict[str, Any] = {} if estimator is emdist.KMeans else {"tol": 1e-4}
    if estimator is emdist.BayesianGaussianMixture:
        # Its default cold start fits the scan sample in memory first and then needs ~2
        # passes, as few as a warm start: compare with the cold start that iterates on the
        # data (scikit-learn's), where the passes a warm start saves show.
        tol["prefit_on_sample"] = False
    previous = estimator(**k, random_state=0, max_iter=500, **tol).fit(rows[:N_BEFORE])
    cold = estimator(**k, random_state=0, max_iter=500, **tol).fit(rows)
    warm = estimator(**k, random_state=0, max_iter=500, **tol)
    assert warm.warm_start_from(previous, N_FEATURES) is None
    warm.fit(rows)
    assert warm.converged_ and cold.converged_
    assert warm.n_iter_ < cold.n_iter_, (warm.n_iter_, cold.n_iter_)
    # Another width, K or family is refused with the reason; the estimator is unchanged.
    other = estimator(**k)
    assert "features" in str(other.warm_start_from(previous, N_FEATURES + 1))
    assert other._start_from is None and not isinstance(getattr(other, "init", ""), np.ndarray)
    fewer = {name: K - 1 for name in k}
    assert f"{next(iter(k))}={K}" in str(estimator(**fewer).warm_start_from(previous))
    assert "not a" in str(emdist.KMeans(K).warm_start_from(emdist.GaussianMixture(K)))


@pytest.mark.slow
def test_choosing_k_again_on_grown_data_warm_starts_every_candidate(tmp_path: Path) -> None:
    from pipeline.steps import prepare_data, select_components

    path, rows = grown_input(tmp_path)
    config = job_config(path, tmp_path / "out")
    first = select_components(config, prepare_data(config), [4, 5])
    assert [r["k"] for r in first.rows] == [4, 5]
    grow(path, rows)
    # Before: "checkpoint has 10000, this run has 12000". Now each K has a checkpoint per
    # data version and starts from its own previous model.
    again = select_components(config, prepare_data(config), [4, 5])
    assert again.best_fit.warm_started and again.best_k == first.best_k == K
    for k in (4, 5):
        model = emdist.load_model(tmp_path / "out" / "select-k" / f"k{k}" / "model.zarr")
        assert model.n_components == k
        versions = list((tmp_path / "out" / "select-k" / f"k{k}" / "checkpoints").iterdir())
        assert len(versions) == 2


def test_an_old_single_checkpoint_at_the_checkpoint_path_is_refused(tmp_path: Path) -> None:
    path, _ = grown_input(tmp_path)
    config = job_config(path, tmp_path / "out")
    old = config.checkpoint_path
    zarr.open_group(str(old), mode="w")  # what an earlier emdist left there
    with pytest.raises(ConfigError, match="single checkpoint"):
        checkpoint_for(config, path)
