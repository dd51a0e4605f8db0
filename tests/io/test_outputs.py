"""Per-sample outputs written out of core to Zarr, atomically.

Real Zarr stores under ``tmp_path``; failures are real (a NaN in a late chunk of the data
makes the per-block check raise while the output is being stored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import zarr

import emdist
from emdist.exceptions import InvalidDataError
from emdist.io.atomic import OutputExistsError
from tests.conftest import overlapping_data
from tests.helpers import tree_digest, write_zarr

N, CHUNK = 4000, 250


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return overlapping_data(0, 1334)[:N]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def X_zarr(X: np.ndarray, data_dir: Path) -> str:
    return write_zarr(data_dir / "X.zarr", X, CHUNK)


@pytest.fixture(scope="module")
def X_nan(X: np.ndarray, data_dir: Path) -> str:
    """The same data with one NaN in the last chunk."""
    bad = X.copy()
    bad[N - 7, 2] = np.nan
    return write_zarr(data_dir / "X_nan.zarr", bad, CHUNK)


@pytest.fixture(scope="module")
def gmm(X_zarr: str) -> emdist.GaussianMixture:
    return emdist.GaussianMixture(3, init_params="k-means++", random_state=0).fit(X_zarr)


@pytest.fixture(scope="module")
def kmeans(X_zarr: str) -> emdist.KMeans:
    return emdist.KMeans(3, random_state=0).fit(X_zarr)


def computed(value: Any) -> np.ndarray:
    return np.asarray(value.compute() if hasattr(value, "compute") else value)


def leftovers(dest: Path) -> list[str]:
    """Hidden siblings of ``dest`` a write may leave: ``.partial-*`` or ``.old-*``."""
    return sorted(p.name for p in dest.parent.glob(f"{dest.name}.*"))


def read(dest: Path, name: str) -> zarr.Array:
    return zarr.open_array(str(dest / name), mode="r")


# --------------------------------------------------------------------------------------------
# contents
# --------------------------------------------------------------------------------------------


def test_mixture_outputs_equal_predictions_and_are_chunked_like_the_data(
    tmp_path: Path, X: np.ndarray, X_zarr: str, gmm: emdist.GaussianMixture
) -> None:
    dest = tmp_path / "predictions.zarr"
    got = emdist.write_predictions(
        gmm, X_zarr, dest, responsibilities=True, log_likelihood=True
    )  # from a path: read block by block
    assert got == dest
    labels, resp, loglik = (read(dest, n) for n in ("labels", "responsibilities", "log_likelihood"))
    assert labels.shape == (N,) and labels.chunks == (CHUNK,) and labels.dtype == np.int64
    assert resp.shape == (N, 3) and resp.chunks == (CHUNK, 3) and resp.dtype == np.float64
    assert loglik.shape == (N,) and loglik.chunks == (CHUNK,) and loglik.dtype == np.float64
    assert np.array_equal(labels[...], computed(gmm.predict(X_zarr)))
    assert np.array_equal(resp[...], computed(gmm.predict_proba(X_zarr)))
    assert np.array_equal(loglik[...], computed(gmm.score_samples(X_zarr)))
    # ... and they agree with in-memory predictions.
    assert np.array_equal(labels[...], gmm.predict(X))
    np.testing.assert_allclose(resp[...], gmm.predict_proba(X), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(loglik[...], gmm.score_samples(X), rtol=1e-12)
    attrs = zarr.open_group(str(dest), mode="r").attrs.asdict()
    assert attrs["estimator"] == "GaussianMixture" and attrs["n_samples"] == N
    assert attrs["source"] == X_zarr
    assert leftovers(dest) == []


def test_only_labels_unless_asked(tmp_path: Path, X_zarr: str, gmm: emdist.GaussianMixture) -> None:
    dest = tmp_path / "labels.zarr"
    emdist.write_predictions(gmm, X_zarr, dest)
    assert sorted(k for k, _ in zarr.open_group(str(dest), mode="r").arrays()) == ["labels"]
    dest2 = tmp_path / "ll.zarr"
    emdist.write_predictions(gmm, X_zarr, dest2, log_likelihood=True)
    names = sorted(k for k, _ in zarr.open_group(str(dest2), mode="r").arrays())
    assert names == ["labels", "log_likelihood"]


def test_kmeans_labels(tmp_path: Path, X: np.ndarray, X_zarr: str, kmeans: emdist.KMeans) -> None:
    dest = tmp_path / "km.zarr"
    emdist.write_predictions(kmeans, zarr.open_array(X_zarr, mode="r"), dest)  # a zarr.Array
    labels = read(dest, "labels")
    assert labels.chunks == (CHUNK,)
    assert np.array_equal(labels[...], computed(kmeans.labels_))
    assert np.array_equal(labels[...], kmeans.predict(X))
    with pytest.raises(ValueError, match="responsibilities"):
        emdist.write_predictions(kmeans, X_zarr, tmp_path / "km2.zarr", responsibilities=True)
    assert not (tmp_path / "km2.zarr").exists() and leftovers(tmp_path / "km2.zarr") == []


def test_numpy_and_dask_input(tmp_path: Path, X: np.ndarray, gmm: emdist.GaussianMixture) -> None:
    emdist.write_predictions(gmm, X, tmp_path / "np.zarr", responsibilities=True)
    assert np.array_equal(read(tmp_path / "np.zarr", "labels")[...], gmm.predict(X))
    Xd = da.from_array(X, chunks=(500, 3))
    emdist.write_predictions(gmm, Xd, tmp_path / "dask.zarr", log_likelihood=True)
    out = read(tmp_path / "dask.zarr", "log_likelihood")
    assert out.chunks == (500,)
    assert np.array_equal(out[...], computed(gmm.score_samples(Xd)))


def test_dask_input_with_irregular_row_chunks(
    tmp_path: Path, X: np.ndarray, gmm: emdist.GaussianMixture
) -> None:
    """Dask blocks of uneven sizes (e.g. from ``da.concatenate``) must not share a Zarr chunk
    between concurrent unlocked writers: every label must come out right."""
    rng = np.random.default_rng(5)
    X4 = np.concatenate([X] * 4)
    sizes: list[int] = []
    while sum(sizes) < len(X4):
        sizes.append(min(int(rng.integers(60, 240)), len(X4) - sum(sizes)))
    Xd = da.from_array(X4, chunks=(tuple(sizes), 3))
    dest = tmp_path / "irregular.zarr"
    emdist.write_predictions(gmm, Xd, dest, responsibilities=True)
    want = gmm.predict(X4)
    got = read(dest, "labels")[...]
    assert np.array_equal(got, want), f"{int((got != want).sum())} of {len(want)} labels wrong"
    np.testing.assert_allclose(
        read(dest, "responsibilities")[...], gmm.predict_proba(X4), rtol=1e-12, atol=1e-15
    )


# --------------------------------------------------------------------------------------------
# atomicity
# --------------------------------------------------------------------------------------------


# A failing store races with the blocks still in flight on other threads; the properties
# must hold every time, so each failure is tried several times.
ATTEMPTS = 6


@pytest.mark.parametrize("model", ["gmm", "kmeans"])
def test_failure_mid_write_leaves_no_output(
    tmp_path: Path, X_nan: str, model: str, request: pytest.FixtureRequest
) -> None:
    estimator = request.getfixturevalue(model)
    extra = {"responsibilities": True, "log_likelihood": True} if model == "gmm" else {}
    for attempt in range(ATTEMPTS):
        dest = tmp_path / f"out{attempt}.zarr"
        with pytest.raises(InvalidDataError, match=f"row {N - 7}, column 2"):
            emdist.write_predictions(estimator, X_nan, dest, **extra)
        assert not dest.exists()
        assert leftovers(dest) == [], f"attempt {attempt}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model", ["gmm", "kmeans"])
def test_failed_overwrite_keeps_the_previous_output_unchanged(
    tmp_path: Path, X_zarr: str, X_nan: str, model: str, request: pytest.FixtureRequest
) -> None:
    estimator = request.getfixturevalue(model)
    extra = {"log_likelihood": True} if model == "gmm" else {}
    dest = tmp_path / "out.zarr"
    emdist.write_predictions(estimator, X_zarr, dest, **extra)
    before = tree_digest(dest)
    assert any(k.startswith("labels/c") for k in before)  # chunks were written
    for attempt in range(ATTEMPTS):
        with pytest.raises(InvalidDataError):
            emdist.write_predictions(estimator, X_nan, dest, overwrite=True, **extra)
        assert tree_digest(dest) == before
        assert leftovers(dest) == [], f"attempt {attempt}"
    assert np.array_equal(read(dest, "labels")[...], computed(estimator.predict(X_zarr)))


def test_existing_output_needs_overwrite(
    tmp_path: Path, X: np.ndarray, X_zarr: str, gmm: emdist.GaussianMixture, kmeans: emdist.KMeans
) -> None:
    dest = tmp_path / "out.zarr"
    emdist.write_predictions(gmm, X_zarr, dest, responsibilities=True)
    before = tree_digest(dest)
    with pytest.raises(OutputExistsError):
        emdist.write_predictions(kmeans, X_zarr, dest)
    assert tree_digest(dest) == before
    assert leftovers(dest) == []

    # With overwrite the new output replaces the old one whole (no stale arrays merged in).
    emdist.write_predictions(kmeans, X_zarr, dest, overwrite=True)
    group = zarr.open_group(str(dest), mode="r")
    assert sorted(k for k, _ in group.arrays()) == ["labels"]
    assert group.attrs["estimator"] == "KMeans"
    assert np.array_equal(read(dest, "labels")[...], kmeans.predict(X))
    assert leftovers(dest) == []


def test_crash_between_the_two_renames_is_recovered(
    tmp_path: Path, X_zarr: str, gmm: emdist.GaussianMixture
) -> None:
    """A crash after the old output was moved aside and before the new one was moved in
    leaves ``<dest>.old-*`` (and a ``.partial-*``): the next write puts the old one back."""
    dest = tmp_path / "out.zarr"
    emdist.write_predictions(gmm, X_zarr, dest)
    before = tree_digest(dest)
    dest.rename(dest.with_name("out.zarr.old-0123456789ab"))
    partial = dest.with_name("out.zarr.partial-0123456789ab")
    partial.mkdir()
    (partial / "zarr.json").write_text("{}")
    with pytest.raises(OutputExistsError):
        emdist.write_predictions(gmm, X_zarr, dest)
    assert tree_digest(dest) == before
    assert leftovers(dest) == []
