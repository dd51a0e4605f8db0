"""One read per chunk per iteration, counted on the store itself (docs/design.md).

A Zarr v3 array is written to disk and opened through a store wrapper that counts every
``get`` of every key. A fit reads the data in exactly these passes:

- 1 scan pass (validation, moments and the seeding sample, all at once);
- 1 pass per EM iteration (the lower bound of θ_t comes out of the pass that gives θ_t+1);
- K-means only: 1 final assignment pass when the last pass ran under centres other than
  the final ones (``emdist.models.kmeans._final_inertia``: labels and inertia must belong to
  the final centres).

A K-means pass leaves unread the blocks whose kept bounds prove every label
(``emdist.engine.kept``); the K-means counts here are taken with that off
(``emdist.kept-skip``), so that every pass reads every chunk. With it on a pass reads each
chunk at most once, and a late pass only the blocks that may change
(tests/engine/test_kept_bounds.py).

With explicit initial parameters, or a start drawn from the scan sample (K-means on it,
k-means++, random rows, the variational fit on it), nothing else reads; a variational
mixture with a full or tied covariance prior reads one more pass for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dask
import numpy as np
import pytest
import zarr
from numpy.testing import assert_array_equal
from zarr.storage import LocalStore

import emdist
from tests.conftest import gmm_init, make_blobs
from tests.helpers import CountingStore

CHUNK_ROWS = 64
N_ROWS = 600  # 10 chunks, the last one partial (600 = 9 * 64 + 24)
N_CHUNKS = 10


def _chunk_keys() -> set[str]:
    return {f"c/{i}/0" for i in range(N_CHUNKS)}


@pytest.fixture
def counted(tmp_path: Any) -> tuple[zarr.Array, CountingStore, np.ndarray]:
    """A 10-chunk Zarr v3 array on disk, opened through a counting store."""
    X, _ = make_blobs(200, [[0.0, 0.0, 0.0], [4.0, 4.0, 0.0], [0.0, 4.0, 4.0]], seed=3)
    path = tmp_path / "x.zarr"
    zarr.create_array(str(path), data=X, chunks=(CHUNK_ROWS, 3), zarr_format=3)
    store = CountingStore(LocalStore(str(path), read_only=True))
    arr = zarr.open_array(store, mode="r")
    assert arr.shape == (N_ROWS, 3) and arr.nchunks == N_CHUNKS
    store.counts.clear()
    return arr, store, X


def _assert_each_chunk_read(store: CountingStore, n_passes: int) -> None:
    reads = store.chunk_reads()
    assert set(reads) == _chunk_keys(), sorted(reads)
    assert reads == dict.fromkeys(_chunk_keys(), n_passes)


class _Recorder:
    def __init__(self) -> None:
        self.states: list[Any] = []

    def __call__(self, state: Any) -> None:
        self.states.append(state)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("max_iter", [1, 4])
def test_gmm_reads_each_chunk_once_per_iteration(
    counted: tuple[zarr.Array, CountingStore, np.ndarray], max_iter: int, covariance_type: str
) -> None:
    arr, store, X = counted
    init = gmm_init(X, 3, covariance_type, seed=1)
    gm = emdist.GaussianMixture(
        n_components=3, covariance_type=covariance_type, tol=0.0, max_iter=max_iter, **init
    )
    with pytest.warns(emdist.ConvergenceWarning):
        gm.fit(arr)
    assert gm.n_iter_ == max_iter
    scan_passes = 1
    em_passes = gm.n_iter_  # one per iteration, lower bound included
    _assert_each_chunk_read(store, scan_passes + em_passes)


def test_gmm_converged_fit_reads_each_chunk_once_per_iteration(
    counted: tuple[zarr.Array, CountingStore, np.ndarray],
) -> None:
    arr, store, X = counted
    gm = emdist.GaussianMixture(n_components=3, tol=1e-3, **gmm_init(X, 3, "full", seed=2))
    gm.fit(arr)
    assert gm.converged_ and gm.n_iter_ >= 2
    # Convergence is detected from the bound that arrives with the statistics: no extra pass.
    _assert_each_chunk_read(store, 1 + gm.n_iter_)


def test_gmm_sample_seeding_reads_nothing_extra(
    counted: tuple[zarr.Array, CountingStore, np.ndarray],
) -> None:
    arr, store, _ = counted
    gm = emdist.GaussianMixture(n_components=3, init_params="k-means++", random_state=0)
    gm.fit(arr)
    # k-means++ runs on the sample drawn in the scan pass: 1 scan + n_iter_ EM passes.
    _assert_each_chunk_read(store, 1 + gm.n_iter_)


@pytest.fixture
def every_block_read() -> Iterator[None]:
    """K-means passes read every block (none left unread on its kept bounds)."""
    with dask.config.set({"emdist.kept-skip": False}):
        yield


def _kmeans_final_pass(init: np.ndarray, recorder: _Recorder) -> int:
    """1 if the last pass ran under centres other than the final ones (see the docstring)."""
    centres = [init] + [s.params.centers for s in recorder.states]
    ran_under, final = centres[-2], centres[-1]
    return 0 if np.array_equal(ran_under, final) else 1


def test_kmeans_not_converged_reads_scan_iterations_and_one_final_pass(
    counted: tuple[zarr.Array, CountingStore, np.ndarray], every_block_read: None
) -> None:
    arr, store, X = counted
    init = X[[0, 1, 2]].copy()
    recorder = _Recorder()
    km = emdist.KMeans(n_clusters=3, init=init, max_iter=2, observer=recorder)
    with pytest.warns(emdist.ConvergenceWarning):
        km.fit(arr)
    assert km.n_iter_ == 2
    assert _kmeans_final_pass(init, recorder) == 1  # the centres moved in the last M-step
    _assert_each_chunk_read(store, 1 + 2 + 1)


def test_kmeans_strictly_converged_needs_no_final_pass(
    tmp_path: Any, every_block_read: None
) -> None:
    # Integer points with power-of-two cluster sizes: every mean is exact, so once the
    # labels stop changing the centres are bitwise fixed and the last pass already ran
    # under the final centres.
    square = np.array([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    X = np.concatenate([np.tile(square, (16, 1)), np.tile(square + 100.0, (16, 1))])
    path = tmp_path / "exact.zarr"
    zarr.create_array(str(path), data=X, chunks=(16, 2), zarr_format=3)
    store = CountingStore(LocalStore(str(path), read_only=True))
    arr = zarr.open_array(store, mode="r")
    store.counts.clear()
    init = np.array([[1.0, 1.0], [99.0, 99.0]])
    recorder = _Recorder()
    km = emdist.KMeans(n_clusters=2, init=init, observer=recorder).fit(arr)
    assert km.converged_
    assert_array_equal(km.cluster_centers_, [[0.0, 0.0], [100.0, 100.0]])
    assert _kmeans_final_pass(init, recorder) == 0
    n_passes = 1 + km.n_iter_ + 0
    assert store.chunk_reads() == {f"c/{i}/0": n_passes for i in range(8)}


def test_kmeans_default_seeding_reads_scan_iterations_and_final_pass(
    counted: tuple[zarr.Array, CountingStore, np.ndarray], every_block_read: None
) -> None:
    arr, store, _ = counted
    recorder = _Recorder()
    km = emdist.KMeans(n_clusters=3, random_state=0, observer=recorder).fit(arr)
    # Seeding is k-means++ on the scan sample (no pass of its own). Whether a final pass
    # ran depends on the last two centre sets, which the observer saw.
    centres = [s.params.centers for s in recorder.states]
    assert len(centres) == km.n_iter_ >= 2
    final_pass = 0 if np.array_equal(centres[-2], centres[-1]) else 1
    _assert_each_chunk_read(store, 1 + km.n_iter_ + final_pass)


def test_lazy_prediction_reads_each_chunk_once(
    counted: tuple[zarr.Array, CountingStore, np.ndarray],
) -> None:
    arr, store, X = counted
    gm = emdist.GaussianMixture(n_components=3, random_state=0).fit(X)
    labels = gm.predict(arr)
    assert store.chunk_reads() == {}  # nothing read until computed
    assert_array_equal(labels.compute(), gm.predict(X))
    _assert_each_chunk_read(store, 1)


def test_sharded_store_reads_each_shard_once_per_pass(tmp_path: Any) -> None:
    # With Zarr shards, a Dask block is one shard (emdist.io.sources): one get per shard per pass,
    # not one per inner chunk.
    X, _ = make_blobs(200, [[0.0, 0.0, 0.0], [4.0, 4.0, 0.0], [0.0, 4.0, 4.0]], seed=4)
    path = tmp_path / "sharded.zarr"
    zarr.create_array(str(path), data=X, chunks=(50, 3), shards=(200, 3), zarr_format=3)
    store = CountingStore(LocalStore(str(path), read_only=True))
    arr = zarr.open_array(store, mode="r")
    store.counts.clear()
    init = gmm_init(X, 3, "diag")
    gm = emdist.GaussianMixture(n_components=3, covariance_type="diag", tol=0.0, max_iter=3, **init)
    with pytest.warns(emdist.ConvergenceWarning):
        gm.fit(arr)
    n_passes = 1 + gm.n_iter_
    assert store.chunk_reads() == {f"c/{i}/0": n_passes for i in range(3)}


@pytest.mark.parametrize("n_init", [1, 3])
def test_gmm_default_kmeans_init_reads_nothing_extra(
    counted: tuple[zarr.Array, CountingStore, np.ndarray], n_init: int
) -> None:
    # init_params="kmeans" (the default) runs K-means on the scan sample in memory and the
    # restarts share every pass: a fit reads the scan pass and its EM iterations, whatever
    # the number of restarts.
    arr, store, _ = counted
    max_iter = 3
    gm = emdist.GaussianMixture(
        n_components=3, n_init=n_init, tol=0.0, max_iter=max_iter, random_state=0
    )
    assert gm.init_params == "kmeans"
    with pytest.warns(emdist.ConvergenceWarning):
        gm.fit(arr)
    assert gm.n_iter_ == max_iter
    _assert_each_chunk_read(store, 1 + max_iter)


@pytest.mark.parametrize(("covariance_type", "prior_pass"), [("diag", 0), ("full", 1)])
def test_bayesian_default_fit_reads_scan_prior_and_iterations(
    counted: tuple[zarr.Array, CountingStore, np.ndarray], covariance_type: str, prior_pass: int
) -> None:
    # At the defaults the K-means start and the fit on the sample run in memory; a full
    # covariance prior (the data's covariance matrix) costs one pass of its own.
    arr, store, _ = counted
    model = emdist.BayesianGaussianMixture(
        n_components=6, covariance_type=covariance_type, random_state=0
    ).fit(arr)
    assert model.converged_
    _assert_each_chunk_read(store, 1 + prior_pass + model.n_iter_)
