"""emdist.io.synthetic: reproducible, chunk-by-chunk Gaussian mixtures with their truth.

Real Zarr groups on disk; the estimators fit the generated path and must find the truth.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

import emdist
from emdist.exceptions import EmdistError
from emdist.io.atomic import OutputExistsError
from emdist.io.synthetic import (
    GENERATION_BLOCK_ROWS,
    SyntheticDataset,
    make_gaussian_mixture,
    open_synthetic,
    sample_gaussian_mixture,
)

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
N = 2 * GENERATION_BLOCK_ROWS + 1234  # three generation blocks, the last one partial


@pytest.mark.parametrize("chunk_rows", [GENERATION_BLOCK_ROWS, 3001, N, None])
def test_same_seed_same_data_whatever_the_chunking(chunk_rows: int | None, tmp_path: Path) -> None:
    X, y, truth = sample_gaussian_mixture(N, 3, 4, random_state=11)
    ds = make_gaussian_mixture(tmp_path / "d.zarr", N, 3, 4, chunk_rows=chunk_rows, random_state=11)
    arr = ds.open_data()
    assert arr.chunks == (ds.chunk_rows, 3)
    if chunk_rows is not None:
        assert ds.chunk_rows == chunk_rows
    np.testing.assert_array_equal(arr[...], X, strict=True)
    np.testing.assert_array_equal(ds.load_labels(), y)
    np.testing.assert_array_equal(ds.truth.means, truth.means)
    np.testing.assert_array_equal(ds.truth.covariances, truth.covariances)


def test_the_seed_matters_and_is_recorded(tmp_path: Path) -> None:
    a, _, ta = sample_gaussian_mixture(100, 2, 2, random_state=1)
    b, _, tb = sample_gaussian_mixture(100, 2, 2, random_state=2)
    assert not np.array_equal(a, b) and not np.array_equal(ta.means, tb.means)
    # random_state=None draws a seed, and the stored seed regenerates the same data.
    ds = make_gaussian_mixture(tmp_path / "d.zarr", 500, 2, 3)
    X, _, _ = sample_gaussian_mixture(500, 2, 3, random_state=ds.seed)
    np.testing.assert_array_equal(ds.open_data()[...], X)
    assert zarr.open_group(str(ds.path)).attrs["synthetic"]["seed"] == ds.seed


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_stored_truth_is_what_was_sampled(covariance_type: str, tmp_path: Path) -> None:
    K, d = 3, 4
    ds = make_gaussian_mixture(
        tmp_path / "d.zarr",
        60_000,
        d,
        K,
        covariance_type=covariance_type,
        random_state=5,
        center=100.0,
    )
    back = open_synthetic(ds.path)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(getattr(back.truth, name), getattr(ds.truth, name))
    assert back.truth.covariance_type == covariance_type
    expected_shape = {"full": (K, d, d), "tied": (d, d), "diag": (K, d), "spherical": (K,)}
    assert ds.truth.covariances.shape == expected_shape[covariance_type]
    assert (
        zarr.open_array(str(ds.path / "truth" / "covariances")).shape
        == (expected_shape[covariance_type])
    )

    X = ds.open_data()[...]
    y = ds.load_labels()
    covs = ds.truth.full_covariances()
    for k in range(K):
        Xk = X[y == k]
        nk = len(Xk)
        # Label frequencies: binomial, 5 standard errors.
        w = ds.truth.weights[k]
        assert abs(nk / len(X) - w) < 5 * np.sqrt(w * (1 - w) / len(X))
        # Sample mean: within 5 standard errors per coordinate.
        se = np.sqrt(np.diag(covs[k]) / nk)
        assert np.all(np.abs(Xk.mean(axis=0) - ds.truth.means[k]) < 5 * se)
        # Sample covariance: relative Frobenius error of a few percent at this n.
        S = np.cov(Xk, rowvar=False)
        assert np.linalg.norm(S - covs[k]) / np.linalg.norm(covs[k]) < 0.05


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("separation", [0.5, 3.0, 6.0])
def test_separation_is_honoured(covariance_type: str, separation: float) -> None:
    _, _, truth = sample_gaussian_mixture(
        1, 2, 8, covariance_type=covariance_type, separation=separation, random_state=3
    )
    covs = truth.full_covariances()
    assert np.all(np.linalg.eigvalsh(covs) > 0)
    sigma = np.sqrt(np.linalg.eigvalsh(covs).max())
    dist = np.linalg.norm(truth.means[:, None] - truth.means[None], axis=-1)
    assert dist[np.triu_indices(8, 1)].min() >= separation * sigma


def test_float32_is_the_float64_draw_rounded(tmp_path: Path) -> None:
    X64, _, _ = sample_gaussian_mixture(1000, 3, 2, random_state=4)
    ds = make_gaussian_mixture(tmp_path / "d.zarr", 1000, 3, 2, random_state=4, dtype="float32")
    assert ds.open_data().dtype == np.float32
    np.testing.assert_array_equal(ds.open_data()[...], X64.astype(np.float32))


def test_labels_optional_and_explicit_weights(tmp_path: Path) -> None:
    ds = make_gaussian_mixture(
        tmp_path / "d.zarr", 10_000, 2, 2, weights=[3, 1], labels=False, random_state=0
    )
    assert ds.labels_path is None and not (ds.path / "labels").exists()
    np.testing.assert_allclose(ds.truth.weights, [0.75, 0.25])
    with pytest.raises(FileNotFoundError):
        ds.load_labels()


def test_overwrite_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    make_gaussian_mixture(path, 100, 2, 2, random_state=0)
    with pytest.raises(OutputExistsError):
        make_gaussian_mixture(path, 100, 2, 2, random_state=1)
    assert open_synthetic(path).seed == 0
    make_gaussian_mixture(path, 50, 2, 2, random_state=1, overwrite=True)
    assert open_synthetic(path).seed == 1 and open_synthetic(path).n_samples == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a Zarr store"):
        make_gaussian_mixture(precious, 50, 2, 2, overwrite=True)
    assert (precious / "todo.txt").read_text() == "keep me"
    precious.joinpath("todo.txt").unlink()
    precious.rmdir()
    for bad in (
        {"covariance_type": "banana"},
        {"weights": [1.0, -1.0]},
        {"separation": -1.0},
        {"dtype": np.int32},
        {"chunk_rows": 0},
    ):
        with pytest.raises(ValueError):
            make_gaussian_mixture(tmp_path / "x.zarr", 100, 2, 2, **bad)
        assert not (tmp_path / "x.zarr").exists()


def test_memory_is_one_chunk_not_the_dataset(tmp_path: Path) -> None:
    n, d = 200_000, 16  # 25.6 MB of data
    tracemalloc.start()
    try:
        make_gaussian_mixture(
            tmp_path / "d.zarr", n, d, 4, chunk_rows=GENERATION_BLOCK_ROWS, random_state=0
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * d * 8 / 4, f"peak {peak / 1e6:.1f} MB for {n * d * 8 / 1e6:.1f} MB of data"


def _matched_means(fitted: np.ndarray, true: np.ndarray) -> np.ndarray:
    cost = np.linalg.norm(fitted[:, None] - true[None], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return fitted[rows[np.argsort(cols)]]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    path = tmp_path_factory.mktemp("synthetic") / "mix.zarr"
    return make_gaussian_mixture(
        path, 40_000, 5, 4, chunk_rows=GENERATION_BLOCK_ROWS, separation=5.0, random_state=2
    )


def test_gaussian_mixture_recovers_the_truth_from_the_path(dataset: SyntheticDataset) -> None:
    gm = emdist.GaussianMixture(4, random_state=0).fit(str(dataset.data_path))
    labels = np.asarray(gm.predict(str(dataset.data_path)))
    assert adjusted_rand_score(dataset.load_labels(), labels) > 0.95
    means = _matched_means(gm.means_, dataset.truth.means)
    np.testing.assert_allclose(means, dataset.truth.means, atol=0.1)
    np.testing.assert_allclose(np.sort(gm.weights_), np.sort(dataset.truth.weights), atol=0.02)


def test_kmeans_recovers_the_truth_from_the_path(dataset: SyntheticDataset) -> None:
    km = emdist.KMeans(4, random_state=0).fit(dataset.data_path)
    labels = np.asarray(km.predict(dataset.data_path))
    assert adjusted_rand_score(dataset.load_labels(), labels) > 0.95


@pytest.mark.parametrize("compressor", ["zstd", "lz4"])
def test_compressed_dataset_holds_the_same_rows(compressor: str, tmp_path: Path) -> None:
    plain = make_gaussian_mixture(tmp_path / "p.zarr", 1000, 3, 2, random_state=4, chunk_rows=250)
    packed = make_gaussian_mixture(
        tmp_path / "c.zarr", 1000, 3, 2, random_state=4, chunk_rows=300, compressor=compressor
    )
    data = packed.open_data()
    np.testing.assert_array_equal(data[...], plain.open_data()[...])
    codecs = [type(c).__name__ for c in data.compressors]
    assert codecs[0] == ("ZstdCodec" if compressor == "zstd" else "BloscCodec")
    assert [type(c).__name__ for c in plain.open_data().compressors] == ["Crc32cCodec"]
    settings = zarr.open_group(str(tmp_path / "c.zarr"), mode="r").attrs["synthetic"]
    assert settings["compressor"] == ("zstd" if compressor == "zstd" else "blosc-lz4")
    with pytest.raises(EmdistError, match="compressor must be"):
        make_gaussian_mixture(tmp_path / "x.zarr", 10, 2, 1, compressor="gzip")  # type: ignore[arg-type]
    assert not (tmp_path / "x.zarr").exists()
