"""The estimators' ``updates='incremental'``: same optimum as batch EM, its parameters checked.

On separated data, incremental EM from the same start converges to batch EM's optimum: the
final bounds agree within 1e-6 per sample, whatever the shard count and the chunking
(which change the shards, hence the path, but not where it ends).
"""

from __future__ import annotations

import functools
from typing import Any

import dask.array as da
import numpy as np
import pytest
from numpy.testing import assert_allclose

import emdist
from emdist.exceptions import InvalidParameterError
from emdist.io.checkpoint import CheckpointMismatchError
from tests.conftest import COVARIANCE_TYPES, gmm_init, make_blobs
from tests.helpers import estimator_classes

CENTRES = [[0.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 7.0, -2.0], [5.0, 6.0, 5.0]]


@functools.cache
def _separated() -> np.ndarray:
    X, _ = make_blobs(300, CENTRES, scale=1.0, seed=3)
    return X


def _chunked(chunks: Any = 100) -> da.Array:
    return da.from_array(_separated(), chunks=(chunks, 3))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gmm_converges_to_batch_bound(covariance_type: str) -> None:
    X = _chunked()
    # The same start: k-means++ on the scan sample of the same seed.
    kw: dict[str, Any] = {"covariance_type": covariance_type, "tol": 1e-9, "max_iter": 500}
    kw.update(init_params="k-means++", random_state=1)
    batch = emdist.GaussianMixture(4, **kw).fit(X)
    inc = emdist.GaussianMixture(4, **kw, updates="incremental", n_shards=6).fit(X)
    assert batch.converged_ and inc.converged_
    assert abs(inc.lower_bound_ - batch.lower_bound_) < 1e-6
    order = np.lexsort(batch.means_.T), np.lexsort(inc.means_.T)
    assert_allclose(inc.means_[order[1]], batch.means_[order[0]], atol=1e-4)
    # The final batch pass: lower_bound_ is the exact bound of the last parameters...
    assert inc.lower_bound_ == pytest.approx(inc.score(X), abs=0.05)
    # ...and the history never decreases, its last value that pass's.
    assert np.all(np.diff(inc.lower_bounds_) >= -1e-12)
    assert inc.lower_bounds_[-1] == inc.lower_bound_


@pytest.mark.parametrize(("n_shards", "chunks"), [(2, 100), (8, 100), (4, (37, 500, 13, 1, 649))])
def test_shard_count_and_chunking_do_not_change_the_optimum(n_shards: int, chunks: Any) -> None:
    start = gmm_init(_separated(), 4, "full", seed=1)  # not the scan sample: chunking-free
    kw: dict[str, Any] = {"tol": 1e-9, "max_iter": 500, **start}
    batch = emdist.GaussianMixture(4, **kw).fit(_chunked())
    inc = emdist.GaussianMixture(4, **kw, updates="incremental", n_shards=n_shards)
    inc.fit(_chunked(chunks))
    assert inc.converged_
    assert abs(inc.lower_bound_ - batch.lower_bound_) < 1e-6


def test_kmeans_converges_to_batch_inertia() -> None:
    init = _separated()[[0, 1, 2, 3]] * 0 + np.asarray(CENTRES) + 0.7
    batch = emdist.KMeans(4, init=init, tol=1e-12).fit(_chunked())
    inc = emdist.KMeans(4, init=init, tol=1e-12, updates="incremental", n_shards=6).fit(_chunked())
    assert inc.converged_
    assert inc.inertia_ == pytest.approx(batch.inertia_, rel=1e-9)
    assert (inc.n_iter_, batch.n_iter_) != (0, 0)


def test_kmeans_reseeds_an_empty_cluster_in_incremental_mode() -> None:
    # Two identical starting centres: one cluster is empty after the first pass and is
    # re-seeded from the farthest point, as in batch Lloyd; the fit still finds the four.
    init = np.asarray(CENTRES, dtype=float)
    init[3] = init[2]
    inc = emdist.KMeans(4, init=init, tol=1e-12, updates="incremental", n_shards=6).fit(_chunked())
    batch = emdist.KMeans(4, init=init, tol=1e-12).fit(_chunked())
    assert len(np.unique(inc.cluster_centers_, axis=0)) == 4
    assert inc.inertia_ == pytest.approx(batch.inertia_, rel=1e-6)


@pytest.mark.parametrize("prior_type", ["dirichlet_process", "dirichlet_distribution"])
def test_variational_incremental_prunes_like_batch(prior_type: str) -> None:
    kw: dict[str, Any] = {
        "weight_concentration_prior_type": prior_type,
        "max_iter": 1000,
        "tol": 1e-7,
        "random_state": 0,
        "init_params": "k-means++",
        # The pruning on the data itself: the fit on the sample would leave both only a
        # couple of passes, where the final batch pass of incremental EM costs one more.
        "prefit_on_sample": False,
    }
    X = _chunked()
    # Against plain batch EM (SQUAREM, the default of batch EM, needs about as few passes).
    batch = emdist.BayesianGaussianMixture(10, **kw, acceleration=None).fit(X)
    inc = emdist.BayesianGaussianMixture(10, **kw, updates="incremental", n_shards=6).fit(X)
    assert inc.converged_
    assert (inc.weights_ > 1e-2).sum() == (batch.weights_ > 1e-2).sum() == 4
    assert abs(inc.lower_bound_ - batch.lower_bound_) < 1e-4
    assert inc.n_iter_ < batch.n_iter_


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"updates": "online"}, "updates must be one of ('batch', 'incremental'); got 'online'"),
        ({"n_shards": 0}, "n_shards must be a positive int; got 0"),
        ({"n_shards": 2.5}, "n_shards must be a positive int; got 2.5"),
    ],
)
@pytest.mark.parametrize("estimator", [cls.__name__ for cls in estimator_classes()])
def test_bad_update_schedule_is_a_clear_error(
    estimator: str, params: dict[str, Any], message: str
) -> None:
    est = getattr(emdist, estimator)(2, **params)
    with pytest.raises(InvalidParameterError) as info:
        est.fit(_separated())
    assert str(info.value) == message


@pytest.mark.filterwarnings("ignore::emdist.ConvergenceWarning")  # max_iter=3
def test_a_checkpoint_of_the_other_schedule_is_refused(tmp_path: Any) -> None:
    X = _chunked()
    emdist.GaussianMixture(2, max_iter=3, tol=0.0, checkpoint=str(tmp_path / "c")).fit(X)
    with pytest.raises(CheckpointMismatchError, match="updates"):
        emdist.GaussianMixture(
            2, max_iter=3, tol=0.0, checkpoint=str(tmp_path / "c"), updates="incremental"
        ).fit(X)
