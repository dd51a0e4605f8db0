"""The statistics of the training data after a fit: from the fit's last pass where the math allows.

K-means' information criteria need the cluster sizes under the final centres: the fit's
last pass ran under them (its final assignment pass, or a last iteration whose labels did
not change), so the criteria of the array just fitted read nothing more, and equal those a
pass of their own gives. A Gaussian mixture's criteria need the log-likelihood under the
final parameters, which no EM pass computes (each runs under the parameters before its
M-step): they take one pass, which can be the labels' pass (``write_predictions(...,
criteria=True)``). Reads are counted on the store.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

import emdist
from emdist.exceptions import InvalidParameterError
from emdist.io.sources import as_dask_array
from tests.conftest import make_blobs
from tests.helpers import CountingStore


@pytest.fixture
def counted(tmp_path: Any) -> tuple[Any, CountingStore, np.ndarray]:
    """600 x 3 in 10 chunks, opened once through a counting store, as a Dask array."""
    X, _ = make_blobs(200, [[0.0, 0.0, 0.0], [4.0, 4.0, 0.0], [0.0, 4.0, 4.0]], seed=3)
    path = tmp_path / "x.zarr"
    zarr.create_array(str(path), data=X, chunks=(64, 3), zarr_format=3)
    store = CountingStore(LocalStore(str(path), read_only=True))
    Xd = as_dask_array(zarr.open_array(store, mode="r"))
    store.counts.clear()
    return Xd, store, X


def _passes(store: CountingStore) -> int:
    reads = set(store.chunk_reads().values())
    assert len(reads) == 1, store.chunk_reads()  # every chunk read alike
    return reads.pop()


@pytest.mark.parametrize("max_iter", [2, 300])
def test_kmeans_criteria_of_the_fitted_array_read_nothing_more(
    counted: tuple[Any, CountingStore, np.ndarray], max_iter: int
) -> None:
    # max_iter=2 stops with centres that moved (a final assignment pass ran); 300 converges.
    Xd, store, X = counted
    km = emdist.KMeans(n_clusters=3, init=X[[0, 1, 2]].copy(), max_iter=max_iter)
    with pytest.warns(emdist.ConvergenceWarning) if max_iter == 2 else nullcontext():
        km.fit(Xd)
    assert km.converged_ == (max_iter == 300)
    after_fit = _passes(store)
    got = km.summary_statistics(Xd)
    assert _passes(store) == after_fit
    # The same figures as a pass of their own over the same rows (in memory here).
    assert got == {"inertia": float(km.inertia_), **km.information_criteria(X)}


def test_kmeans_criteria_of_other_data_take_their_pass(
    counted: tuple[Any, CountingStore, np.ndarray],
) -> None:
    Xd, store, X = counted
    km = emdist.KMeans(n_clusters=3, init=X[[0, 1, 2]].copy()).fit(Xd)
    after_fit = _passes(store)
    km.information_criteria(Xd[:300])
    assert set(store.chunk_reads().values()) != {after_fit}  # the first half read once more


def test_gmm_criteria_take_one_pass(counted: tuple[Any, CountingStore, np.ndarray]) -> None:
    Xd, store, X = counted
    gm = emdist.GaussianMixture(n_components=3, init_params="k-means++", random_state=0)
    gm.fit(Xd)
    after_fit = _passes(store)
    got = gm.summary_statistics(Xd)
    assert _passes(store) == after_fit + 1
    assert got["score"] == pytest.approx(gm.score(X), rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_gmm_criteria_come_with_the_labels_pass(
    counted: tuple[Any, CountingStore, np.ndarray], tmp_path: Any, weighted: bool
) -> None:
    # The labels' pass runs under the final parameters: the criteria come from its reads,
    # equal to those of a pass of their own, bit for bit.
    Xd, store, X = counted
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(X)) if weighted else None
    gm = emdist.GaussianMixture(n_components=3, init_params="k-means++", random_state=0)
    gm.fit(Xd, sample_weight=w)
    after_fit = _passes(store)
    dest = emdist.write_predictions(
        gm, Xd, tmp_path / "p.zarr", log_likelihood=True, criteria=True, sample_weight=w
    )
    assert _passes(store) == after_fit + 1
    group = zarr.open_group(str(dest), mode="r")
    # A pass of their own over the same blocks (what fit steps do without labels).
    assert group.attrs["criteria"] == gm.information_criteria(Xd, sample_weight=w)
    labels = zarr.open_array(str(dest / "labels"), mode="r")[:]
    log_lik = zarr.open_array(str(dest / "log_likelihood"), mode="r")[:]
    np.testing.assert_array_equal(np.asarray(labels), gm.predict(X))
    np.testing.assert_allclose(np.asarray(log_lik), gm.score_samples(X), rtol=1e-12)


def test_criteria_with_the_labels_only_where_they_take_a_pass(
    counted: tuple[Any, CountingStore, np.ndarray], tmp_path: Any
) -> None:
    Xd, _, X = counted
    km = emdist.KMeans(n_clusters=3, init=X[[0, 1, 2]].copy()).fit(Xd)
    with pytest.raises(InvalidParameterError, match="criteria=False"):
        emdist.write_predictions(km, Xd, tmp_path / "p.zarr", criteria=True)
    assert not (tmp_path / "p.zarr").exists()
