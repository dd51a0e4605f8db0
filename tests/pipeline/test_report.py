"""The report's pieces: truth agreement, feature names, tables, plots and embedded images.

Real fits on real Zarr stores, written by the pipeline's own steps (threaded scheduler).
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import zarr
from sklearn.metrics import adjusted_rand_score

from emdist import ConvergenceWarning
from emdist.io.ingest import ingest
from emdist.io.synthetic import open_synthetic
from pipeline.config import parse_config
from pipeline.report import (
    adjusted_rand_index,
    inline_images,
    lower_bound_figure,
    selection_figure,
    truth_agreement,
    write_report,
)
from pipeline.steps import FitSummary, SelectionResult, fit_model, label_data, prepare_data
from tests.pipeline.test_pipeline_steps import PNG_SIGNATURE, assert_png, generated_config


@pytest.mark.parametrize("seed", range(4))
def test_adjusted_rand_index_equals_sklearns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, 500)
    pred = np.where(rng.random(500) < 0.7, truth, rng.integers(0, 5, 500))
    table = np.zeros((4, 5))
    np.add.at(table, (truth, pred), 1)
    assert adjusted_rand_index(table) == pytest.approx(adjusted_rand_score(truth, pred), abs=1e-12)


@pytest.mark.slow
def test_generated_data_report_states_the_agreement_with_the_truth(tmp_path: Path) -> None:
    config = generated_config(tmp_path / "out", model={"family": "kmeans", "n_components": 3})
    data = prepare_data(config)
    fit = fit_model(config, data)
    predictions = label_data(config, data, fit.model_path)
    ari = truth_agreement(data, predictions)
    assert data.truth is not None
    truth = open_synthetic(data.truth).load_labels()
    labels = np.asarray(zarr.open_array(predictions.path + "/labels", mode="r")[...])
    assert ari == pytest.approx(adjusted_rand_score(truth, labels), abs=1e-12)
    report = write_report("ari", data, fit, predictions, tmp_path / "report")
    assert f"adjusted Rand index): {ari:.4f}" in report.markdown
    # K-means has no weights: no empty "weight" column, no "None" anywhere.
    assert "weight" not in report.markdown and "None" not in report.markdown
    for image in report.images:
        assert_png(image)


def test_report_tables_use_the_ingested_feature_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (300, 3)), rng.normal(8, 1, (300, 3))])
    csv = tmp_path / "m.csv"
    np.savetxt(csv, X, delimiter=",", header="height,weight_kg,age", comments="")
    ingest(csv, tmp_path / "m.zarr")
    config = parse_config(
        {
            "input": {"path": str(tmp_path / "m.zarr")},
            "model": {"family": "gmm", "n_components": 2},
            "output": {"dir": str(tmp_path / "out")},
        }
    )
    data = prepare_data(config)
    fit = fit_model(config, data)
    predictions = label_data(config, data, fit.model_path)
    report = write_report("names", data, fit, predictions, tmp_path / "report")
    assert "height=" in report.markdown and "weight_kg=" in report.markdown
    assert "age=" in report.markdown
    assert all(row.get("share", "").endswith("%") for row in report.rows)


def test_inline_images_embeds_the_plots_for_the_prefect_artifact(tmp_path: Path) -> None:
    config = generated_config(tmp_path / "out")
    data = prepare_data(config)
    fit = fit_model(config, data)
    report = write_report("inline", data, fit, None, tmp_path / "report")
    inlined = inline_images(report.markdown, report.dir)
    assert "](lower_bound.png)" not in inlined and "](clusters.png)" not in inlined
    payloads = inlined.split("](data:image/png;base64,")[1:]
    assert len(payloads) == 2
    for payload in payloads:
        assert base64.b64decode(payload.split(")")[0])[:8] == PNG_SIGNATURE


def test_report_says_why_the_final_bound_and_the_log_likelihood_differ(tmp_path: Path) -> None:
    # Stopped after one iteration from random responsibilities, so that its M-step gains
    # something visible (the default start on separated clusters is already the optimum).
    config = generated_config(
        tmp_path / "out", model={"max_iter": 1, "tol": 0.0, "init_params": "random"}
    )
    data = prepare_data(config)
    with pytest.warns(ConvergenceWarning):
        fit = fit_model(config, data)
    report = write_report("bound", data, fit, None, tmp_path / "report")
    text = " ".join(report.markdown.split())
    assert fit.score is not None and fit.score > fit.lower_bounds[-1]
    assert "of the parameters before the last M-step" in text
    assert f"the last M-step gained {fit.score - fit.lower_bounds[-1]:.2e}" in text


def _summary(lower_bounds: list[float]) -> FitSummary:
    return FitSummary(
        model_path="unused.zarr",
        family="gmm",
        n_components=2,
        n_iter=len(lower_bounds),
        converged=False,
        lower_bounds=lower_bounds,
        iteration_seconds=[0.1] * len(lower_bounds),
        fit_seconds=1.0,
        resumed_iterations=0,
    )


def test_the_change_plot_draws_zero_changes_as_markers_with_no_line_into_them() -> None:
    bounds = [-12.0, -11.0, -10.9, -10.9, -10.9, -10.85, -10.85]
    change = np.abs(np.diff(bounds))
    fig = lower_bound_figure(_summary(bounds), "mean log-likelihood per sample", 1e-3)
    ax_change = fig.axes[1]
    (line,) = [ln for ln in ax_change.get_lines() if len(ln.get_xdata()) == len(change)]
    y = np.asarray(line.get_ydata(), dtype=float)
    zero = change == 0
    assert np.isnan(y[zero]).all()
    np.testing.assert_allclose(y[~zero], change[~zero])
    (markers,) = [c for c in ax_change.collections if c.get_label() == "exactly 0"]
    at = np.asarray(markers.get_offsets())
    np.testing.assert_array_equal(at[:, 0], np.arange(2, len(bounds) + 1)[zero])
    assert (at[:, 1] < min(change[~zero].min(), 1e-3)).all()


def test_the_selection_plot_labels_bic_and_aic_on_their_own_axes() -> None:
    rows = [{"k": k, "bic": 1e5 + 10 * k, "aic": 9e4 - 50 * k, "inertia": None} for k in (2, 3, 4)]
    selection = SelectionResult(rows, 2, "bic", _summary([-3.0, -2.0]))
    fig = selection_figure(selection)
    labelled = {ax.get_ylabel(): ax for ax in fig.axes}
    assert set(labelled) == {"BIC", "AIC"}
    for name, ax in labelled.items():
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == name]
        np.testing.assert_array_equal(line.get_ydata(), [r[name.lower()] for r in rows])
        low, high = ax.get_ylim()
        # Each curve spans its own axis rather than being flattened against the other.
        assert high - low < 2 * np.ptp([r[name.lower()] for r in rows])
