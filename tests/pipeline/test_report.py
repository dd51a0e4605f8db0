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

from emdist.io.ingest import ingest
from emdist.io.synthetic import open_synthetic
from pipeline.config import parse_config
from pipeline.report import adjusted_rand_index, inline_images, truth_agreement, write_report
from pipeline.steps import fit_model, label_data, prepare_data
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
