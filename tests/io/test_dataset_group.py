"""A dataset group (as ``emdist generate`` / ``make_gaussian_mixture`` write) as input.

``fit("data.zarr")`` on a group means its ``data`` array: the same model as fitting
``data.zarr/data``; a group without a ``data`` array is refused, naming what it holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from numpy.testing import assert_array_equal

import emdist
from emdist.io.synthetic import make_gaussian_mixture


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("group") / "data.zarr"
    make_gaussian_mixture(path, 2_000, 3, 3, chunk_rows=500, random_state=1)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda: emdist.GaussianMixture(3, covariance_type="diag", random_state=0),
        lambda: emdist.KMeans(3, random_state=0),
        lambda: emdist.BayesianGaussianMixture(3, max_iter=300, random_state=0),
    ],
    ids=["gmm", "kmeans", "bayesian"],
)
def test_group_path_fits_its_data_array(dataset: Path, make: object) -> None:
    assert callable(make)
    by_group = make().fit(str(dataset))
    by_array = make().fit(str(dataset / "data"))
    assert by_group.n_iter_ == by_array.n_iter_
    assert by_group.lower_bounds_ == by_array.lower_bounds_
    labels = by_group.predict(dataset)  # a Path works as well as a str
    assert_array_equal(labels.compute(), by_array.predict(str(dataset / "data")).compute())
    assert len(np.unique(labels.compute())) == 3


def test_group_object_fits_its_data_array(dataset: Path) -> None:
    group = zarr.open_group(str(dataset), mode="r")
    gm = emdist.GaussianMixture(3, random_state=0).fit(group)
    reference = emdist.GaussianMixture(3, random_state=0).fit(str(dataset / "data"))
    assert gm.lower_bounds_ == reference.lower_bounds_


def test_write_predictions_from_group(dataset: Path, tmp_path: Path) -> None:
    gm = emdist.GaussianMixture(3, random_state=0).fit(str(dataset))
    out = emdist.write_predictions(gm, str(dataset), tmp_path / "labels.zarr")
    labels = zarr.open_group(str(out), mode="r")["labels"]
    assert isinstance(labels, zarr.Array)
    assert_array_equal(labels[...], gm.predict(zarr.open_array(str(dataset / "data"))[...]))


def test_group_without_data_array_names_its_arrays(tmp_path: Path) -> None:
    path = tmp_path / "other.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("x", shape=(10, 2), dtype="f8")
    group.create_array("y", shape=(10, 2), dtype="f8")
    with pytest.raises(
        emdist.InvalidDataError,
        match=r"is a Zarr group, not an array, and has no 'data' array \(it holds the "
        r"arrays \['x', 'y'\]\); pass the path of the array to use, e.g. '.*other.zarr/x'",
    ):
        emdist.KMeans(2).fit(str(path))


def test_empty_group(tmp_path: Path) -> None:
    path = tmp_path / "empty.zarr"
    zarr.open_group(str(path), mode="w")
    with pytest.raises(emdist.InvalidDataError, match=r"it holds no array"):
        emdist.GaussianMixture(1).fit(path)


def test_group_whose_data_is_a_group(tmp_path: Path) -> None:
    # 'data' must be an array: a subgroup of that name is not guessed into.
    path = tmp_path / "nested.zarr"
    zarr.open_group(str(path), mode="w").create_group("data")
    with pytest.raises(emdist.InvalidDataError, match=r"has no 'data' array"):
        emdist.GaussianMixture(1).fit(path)
