"""K-means passes with Hamerly's bounds kept beside the row blocks, against plain passes.

Each pass takes every block with the bounds the previous pass left for it and scores only
the rows whose bounds fail; the statistics (centre sums, counts, inertia, far rows) must
equal, bit for bit, those of the plain pass at every iteration — on several chunkings, with
weights, with restarts side by side, from a Zarr store and on a two-process LocalCluster —
and a fit must end with the same centres, inertia and labels, which are scikit-learn's
from the same start. A fit's passes leave unread the blocks whose kept bounds prove every
label: such fits must equal, bit for bit, fits that read every block, and a late pass
must read only the blocks whose labels may change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import distributed
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.cluster import KMeans as SKKMeans
from sklearn.datasets import make_blobs

import emdist
from emdist.engine.em import _kept_pass
from emdist.engine.kept import KeptState
from emdist.engine.lockstep import shared_pass
from emdist.engine.reduce import Rows
from emdist.kernels.kmeans import (
    KMeansBounds,
    KMeansParams,
    KMeansStats,
    kmeans_estep_bounded,
    kmeans_estep_many,
    kmeans_mstep,
)
from emdist.kernels.kmeans_clean import block_reach, block_stays
from emdist.kernels.rows import RowBlock
from emdist.models.kmeans import KMeansFamily
from tests.helpers import open_counted

FAMILY = KMeansFamily()


def _assert_identical(got: Sequence[KMeansStats], want: Sequence[KMeansStats]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.inertia == b.inertia
        assert_array_equal(a.counts, b.counts)
        assert_array_equal(a.sx, b.sx)
        assert_array_equal(a.far_row, b.far_row)
        assert_array_equal(a.far_dist, b.far_dist)
        assert_array_equal(a.far_x, b.far_x)


def _starts(X: np.ndarray, K: int, n: int, seed: int = 0) -> list[KMeansParams]:
    rng = np.random.default_rng(seed)
    return [KMeansParams(X[rng.choice(len(X), K, replace=False)]) for _ in range(n)]


def _iterate(rows: Rows, starts: list[KMeansParams], iterations: int) -> KeptState:
    """Lloyd's iterations, each pass with bounds checked against the plain pass."""
    kept = KeptState(FAMILY.kept_bytes_per_row)
    params = starts
    tags = list(range(len(params)))
    for _ in range(iterations):
        plain = shared_pass(rows, [(FAMILY, p) for p in params])
        bounded = kept.run(rows, FAMILY.estep_kept, params, tags)
        _assert_identical(bounded, plain)
        params = [kmeans_mstep(s)[0] for s in plain]
    return kept


def _scored(kept: KeptState) -> int:
    states = kept.block_states()
    assert all(isinstance(s, KMeansBounds) for s in states)
    return sum(s.scored for s in states)


@pytest.mark.parametrize("chunk_rows", [30_000, 7_000, 4_096])
@pytest.mark.parametrize("weighted", [False, True])
def test_bounded_passes_equal_plain_passes_at_every_iteration(
    chunk_rows: int, weighted: bool
) -> None:
    X, _ = make_blobs(n_samples=30_000, n_features=7, centers=6, random_state=3)
    x = da.from_array(X, chunks=(chunk_rows, 7))
    per_row = {}
    if weighted:
        w = np.random.default_rng(4).uniform(0.0, 2.0, len(X))
        w[::97] = 0.0  # rows of weight 0 are no far rows
        per_row["weights"] = da.from_array(w, chunks=chunk_rows)
    kept = _iterate(Rows(x, per_row), _starts(X, 6, 3), iterations=10)
    # The bounds did their work: the last pass scored a small part of the rows.
    assert _scored(kept) < 0.2 * 3 * len(X)


def test_bounded_passes_from_a_zarr_store_equal_plain_passes(
    write_zarr: Callable[..., str],
) -> None:
    X, _ = make_blobs(n_samples=20_000, n_features=5, centers=4, random_state=5)
    x = emdist.io.as_dask_array(write_zarr(X.astype(np.float32), 3_000))
    kept = _iterate(Rows(x), _starts(X, 4, 2, seed=1), iterations=8)
    assert _scored(kept) < 0.2 * 2 * len(X)


@pytest.mark.parametrize(
    ("offset", "dtype", "step"),
    [
        pytest.param(1e9, np.float64, 2.0**-10, id="1e9-float64"),
        pytest.param(1e6, np.float32, 2.0**-3, id="1e6-float32"),
    ],
)
def test_bounded_passes_far_from_the_origin_equal_plain_passes(
    offset: float, dtype: Any, step: float
) -> None:
    # Far from the origin the scores' rounding band dwarfs the gaps between centres: a
    # bound drawn from the scores is then below zero, and must be no bound at all (0), not
    # one that lets a row keep a label another centre has taken.
    X, _ = make_blobs(n_samples=6_000, n_features=3, centers=4, cluster_std=4.0, random_state=13)
    X = np.round(X / step) * step
    far = (X + offset).astype(dtype)
    assert_array_equal(far.astype(np.float64) - offset, X)  # the same points, moved
    rows = Rows(da.from_array(far, chunks=(1_700, 3)))
    kept = _iterate(rows, _starts(far.astype(np.float64), 4, 2, seed=4), iterations=8)
    assert kept.passes == 8


def test_restarts_joining_and_leaving_keep_their_own_bounds() -> None:
    # A restart new to the pass starts without bounds; one that left is forgotten; the
    # others keep theirs. Every pass still equals the plain one.
    X, _ = make_blobs(n_samples=12_000, n_features=4, centers=5, random_state=6)
    rows = Rows(da.from_array(X, chunks=(5_000, 4)))
    current = dict(enumerate(_starts(X, 5, 3, seed=2)))
    kept = KeptState(FAMILY.kept_bytes_per_row)
    for tags in ([0, 1], [1, 2], [2]):
        for _ in range(3):
            params = [current[t] for t in tags]
            plain = shared_pass(rows, [(FAMILY, p) for p in params])
            _assert_identical(kept.run(rows, FAMILY.estep_kept, params, tags), plain)
            for t, stats in zip(tags, plain, strict=True):
                current[t] = kmeans_mstep(stats)[0]
    assert all(s.tags == (2,) for s in kept.block_states())


def test_bounded_passes_on_a_local_cluster_keep_the_bounds_on_the_workers(
    dask_client: distributed.Client,
) -> None:
    X, _ = make_blobs(n_samples=16_000, n_features=6, centers=4, random_state=7)
    x = da.from_array(X, chunks=(4_000, 6)).persist()
    kept = _iterate(Rows(x), _starts(X, 4, 2, seed=3), iterations=6)
    # The kept states are held by the cluster's workers, not by this process.
    states = kept._states
    assert states is not None
    keys = [key for (key,) in states.__dask_keys__()]
    assert all(isinstance(states.dask[key], distributed.Future) for key in keys)
    held = dask_client.who_has()
    assert all(held.get(key) for key in keys)
    assert _scored(kept) < 0.3 * 2 * len(X)


@pytest.mark.parametrize("source", ["dask", "zarr"])
@pytest.mark.parametrize("weighted", [False, True])
def test_fit_with_bounds_equals_the_fit_without(
    source: str, weighted: bool, write_zarr: Callable[..., str]
) -> None:
    X, _ = make_blobs(n_samples=15_000, n_features=5, centers=5, random_state=8)
    data: Any = da.from_array(X, chunks=(4_000, 5)) if source == "dask" else write_zarr(X, 3_500)
    w = np.random.default_rng(9).uniform(0.5, 2.0, len(X)) if weighted else None
    kw = {"n_clusters": 5, "n_init": 3, "init": "random", "tol": 0.0, "random_state": 0}
    fits = []
    for budget in (0, None):
        settings = {} if budget is None else {"emdist.kept-state-bytes": budget}
        with dask.config.set(settings):
            fits.append(emdist.KMeans(**kw).fit(data, sample_weight=w))
    plain, bounded = fits
    assert_array_equal(bounded.cluster_centers_, plain.cluster_centers_)
    assert bounded.inertia_ == plain.inertia_
    assert bounded.lower_bounds_ == plain.lower_bounds_
    assert bounded.n_iter_ == plain.n_iter_
    assert_array_equal(np.asarray(bounded.labels_), np.asarray(plain.labels_))


@pytest.mark.filterwarnings("ignore:KMeans did not converge")
def test_fit_with_bounds_gives_scikit_learns_labels_from_the_same_start() -> None:
    X, _ = make_blobs(n_samples=8_000, n_features=4, centers=6, random_state=10)
    start = X[np.random.default_rng(11).choice(len(X), 6, replace=False)]
    for max_iter in (1, 3, 300):
        ours = emdist.KMeans(6, init=start, n_init=1, tol=0.0, max_iter=max_iter).fit(
            da.from_array(X, chunks=(1_500, 4))
        )
        ref = SKKMeans(6, init=start, n_init=1, tol=0.0, max_iter=max_iter, algorithm="lloyd")
        ref.fit(X)
        assert_array_equal(np.asarray(ours.labels_), ref.labels_)
        assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-12, atol=1e-12)
        assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-12)


def test_passes_run_without_bounds_beyond_the_memory_budget() -> None:
    X, _ = make_blobs(n_samples=1_000, n_features=3, centers=3, random_state=12)
    rows = Rows(da.from_array(X, chunks=(400, 3)))
    steps = [(FAMILY, p) for p in _starts(X, 3, 2)]
    exact = 1_000 * 2 * FAMILY.kept_bytes_per_row
    for limit, used in ((exact, True), (exact - 1, False)):
        kept = {"state": KeptState(FAMILY.kept_bytes_per_row, limit=limit)}
        got = _kept_pass(rows, steps, [(0, 0), (0, 1)], kept)
        assert (got is not None) is used
        assert (kept["state"].passes == 1) is used
    # The budget is read from dask's config; 0 turns the kept state off.
    with dask.config.set({"emdist.kept-state-bytes": 0}):
        assert not KeptState(FAMILY.kept_bytes_per_row).fits(1, 1)
    with dask.config.set({"emdist.kept-state-bytes": "1 MiB"}):
        assert KeptState(FAMILY.kept_bytes_per_row).limit == 1 << 20


def _fresh(block: RowBlock, params: list[KMeansParams], tags: list[int]) -> KMeansBounds:
    """The bounds and statistics a block's first pass (no kept state) makes."""
    return kmeans_estep_bounded(block, params, tags, None)[1]


def test_kept_segment_statistics_equal_a_fresh_computation_after_many_passes() -> None:
    # Each pass sums again only the clusters whose rows in a segment changed and keeps the
    # others' statistics: after many passes with labels changing, the kept values must be
    # those a pass without kept state computes, bit for bit, and so must the statistics.
    X, _ = make_blobs(n_samples=20_000, n_features=6, centers=8, cluster_std=2.5, random_state=21)
    w = np.random.default_rng(22).uniform(0.0, 2.0, len(X))
    w[::53] = 0.0
    for weights in (None, w):
        block = RowBlock(X, 1_000, weights=weights)
        params = _starts(X, 8, 2, seed=23)
        tags = [0, 1]
        kept: KMeansBounds | None = None
        swept = []
        for _ in range(12):
            stats, kept = kmeans_estep_bounded(block, params, tags, kept)
            _assert_identical(stats, kmeans_estep_many(block, params))
            fresh = _fresh(block, params, tags)
            for got, want in zip(kept.moments, fresh.moments, strict=True):
                assert_array_equal(got.counts, want.counts)
                assert_array_equal(got.sx, want.sx)
                assert_array_equal(got.sq, want.sq)
            assert_array_equal(kept.labels, fresh.labels)
            swept.append(kept.swept)
            params = [kmeans_mstep(s)[0] for s in stats]
        # Labels kept changing, yet the later passes summed only part of the rows again.
        assert 0 < swept[-1] < 0.9 * 2 * len(X)


def test_a_pass_under_unchanged_centres_sums_nothing_again_and_keeps_the_far_rows() -> None:
    # Under the same centres every row keeps its label on its bounds: no statistics are
    # summed again and no row is scored, yet the far rows (measured only where an upper
    # bound reaches the farthest ones) are the plain pass's.
    X, _ = make_blobs(n_samples=12_000, n_features=5, centers=6, random_state=24)
    rows = Rows(da.from_array(X, chunks=(2_500, 5)))
    params = _starts(X, 6, 2, seed=25)
    for _ in range(4):
        plain = shared_pass(rows, [(FAMILY, p) for p in params])
        params = [kmeans_mstep(s)[0] for s in plain]
    kept = KeptState(FAMILY.kept_bytes_per_row)
    plain = shared_pass(rows, [(FAMILY, p) for p in params])
    for _ in range(2):
        _assert_identical(kept.run(rows, FAMILY.estep_kept, params, [0, 1]), plain)
    states = kept.block_states()
    assert sum(s.swept for s in states) == 0
    assert sum(s.scored for s in states) == 0


def test_a_pass_where_a_cluster_empties_equals_the_plain_pass() -> None:
    # A centre sent far from every row loses all its rows on a pass with bounds kept: the
    # far rows that re-seed it, and so the next centres, are the plain pass's.
    X, _ = make_blobs(n_samples=9_000, n_features=4, centers=5, random_state=26)
    rows = Rows(da.from_array(X, chunks=(2_000, 4)))
    params = _starts(X, 5, 1, seed=27)[0]
    kept = KeptState(FAMILY.kept_bytes_per_row)
    for _ in range(3):
        plain = shared_pass(rows, [(FAMILY, params)])
        _assert_identical(kept.run(rows, FAMILY.estep_kept, [params], [0]), plain)
        params = kmeans_mstep(plain[0])[0]
    centers = params.centers.copy()
    centers[2] = X.max(axis=0) + 1e3
    params = KMeansParams(centers, params.reference)
    plain = shared_pass(rows, [(FAMILY, params)])
    bounded = kept.run(rows, FAMILY.estep_kept, [params], [0])
    _assert_identical(bounded, plain)
    assert plain[0].counts[2] == 0
    (want, n_want), (got, n_got) = kmeans_mstep(plain[0]), kmeans_mstep(bounded[0])
    assert n_want == n_got == 1
    assert_array_equal(got.centers, want.centers)
    assert_array_equal(got.reference, want.reference)
    # The next pass (the re-seeded cluster's reference moved) still equals the plain one.
    _assert_identical(
        kept.run(rows, FAMILY.estep_kept, [want], [0]), shared_pass(rows, [(FAMILY, want)])
    )


def test_inertia_falls_back_to_distances_where_the_moments_would_cancel() -> None:
    # Sums about reference points far from the centres (1e7 against a spread of ~1): the
    # moments Q - 2 δ·S + n ‖δ‖² would cancel every digit; the inertia must still be the sum
    # of the distances, in plain and bounded passes alike.
    X, _ = make_blobs(n_samples=6_000, n_features=3, centers=3, random_state=28)
    rng = np.random.default_rng(29)
    centers = X[rng.choice(len(X), 3, replace=False)]
    reference = centers + 1e7
    block = RowBlock(X, 0)
    params = [KMeansParams(centers, reference)]
    stats = kmeans_estep_many(block, params)[0]
    labels = np.argmin(((X[:, None, :] - centers[None]) ** 2).sum(axis=2), axis=1)
    diff = X.astype(np.longdouble) - centers[labels].astype(np.longdouble)
    want = float(np.sum(diff * diff))
    assert stats.inertia == pytest.approx(want, rel=1e-13)
    kept = None
    for _ in range(3):
        bounded, kept = kmeans_estep_bounded(block, params, [0], kept)
        _assert_identical(bounded, [stats])
    # Near the references the moments hold, and agree with the distances as closely.
    near = kmeans_estep_many(block, [KMeansParams(centers, centers + 1e-3)])[0]
    assert near.inertia == pytest.approx(want, rel=1e-13)


@pytest.mark.parametrize(("n_clusters", "n_features"), [(3, 2), (16, 32), (64, 40)])
def test_the_kept_state_takes_no_more_than_the_budget_counts(
    n_clusters: int, n_features: int
) -> None:
    # The budget counts kept_bytes_per_row per row and restart: the bounds and the
    # segments' statistics beside them together stay within it.
    X = np.random.default_rng(30).normal(size=(50_000, n_features))
    params = _starts(X, n_clusters, 2, seed=31)
    _, kept = kmeans_estep_bounded(RowBlock(X, 0), params, [0, 1], None)
    assert kept.nbytes <= 2 * len(X) * FAMILY.kept_bytes_per_row
    assert all(m.counts.shape[1] == n_clusters for m in kept.moments)


# --- Blocks left unread: every row's label proved by the block's kept bounds ---------------


def _assert_same_sums(got: Sequence[KMeansStats], want: Sequence[KMeansStats]) -> None:
    # All but the far rows, which an unread block does not give.
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.inertia == b.inertia
        assert_array_equal(a.counts, b.counts)
        assert_array_equal(a.sx, b.sx)


def _assert_same_fit(a: Any, b: Any) -> None:
    assert_array_equal(b.cluster_centers_, a.cluster_centers_)
    assert b.inertia_ == a.inertia_
    assert b.n_iter_ == a.n_iter_
    assert b.lower_bounds_ == a.lower_bounds_
    assert_array_equal(np.asarray(b.labels_), np.asarray(a.labels_))


@pytest.fixture
def kept_states(monkeypatch: pytest.MonkeyPatch) -> list[KeptState]:
    """Every KeptState a fit makes, to read how many blocks its passes read."""
    made: list[KeptState] = []
    init = KeptState.__init__

    def record(self: KeptState, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(KeptState, "__init__", record)
    return made


def _fit_both(data: Any, kept_states: list[KeptState], w: Any = None, **kw: Any) -> list[int]:
    """Fits without and with unread blocks: equal bit for bit; the latter's blocks read."""
    fits = []
    for skip in (False, True):
        kept_states.clear()
        with dask.config.set({"emdist.kept-skip": skip}):
            fits.append(emdist.KMeans(**kw).fit(data, sample_weight=w))
        # The fit's passes (those of its starts on the scan sample come first).
        read = kept_states[-1].blocks_read
    _assert_same_fit(*fits)
    return read


def _moving_and_still(seed: int) -> np.ndarray:
    """12 000 rows: two overlapping blobs (6 000 rows), then two tight blobs far away.

    Centres in the overlapping blobs move for many iterations, those of the far blobs
    settle at once: the blocks of far rows are then left unread.
    """
    rng = np.random.default_rng(seed)
    near = [rng.normal(0.0, 1.0, (3_000, 3)), rng.normal(1.5, 1.0, (3_000, 3))]
    far = [rng.normal(300.0, 1.0, (3_000, 3)), rng.normal(-300.0, 1.0, (3_000, 3))]
    return np.concatenate(
        [rng.permutation(np.concatenate(near)), rng.permutation(np.concatenate(far))]
    )


@pytest.mark.parametrize("chunk_rows", [4_000, 2_500, 1_100])
@pytest.mark.parametrize("weighted", [False, True])
def test_fit_leaving_unchanged_blocks_unread_equals_the_fit_reading_every_block(
    chunk_rows: int, weighted: bool, kept_states: list[KeptState]
) -> None:
    X = _moving_and_still(41)
    x = da.from_array(X, chunks=(chunk_rows, 3))
    w = np.random.default_rng(42).uniform(0.0, 2.0, len(X)) if weighted else None
    kw = {"n_clusters": 4, "n_init": 3, "init": "k-means++", "tol": 0.0, "random_state": 1}
    read = _fit_both(x, kept_states, w, **kw)
    # Once the far blobs' centres settled, only the blocks of the overlapping ones were read.
    assert read[0] == x.numblocks[0]
    assert -(-6_000 // chunk_rows) in read
    assert min(read) <= -(-6_000 // chunk_rows)


@pytest.mark.parametrize(
    ("offset", "dtype", "step"),
    [
        pytest.param(1e9, np.float64, 2.0**-10, id="1e9-float64"),
        pytest.param(1e6, np.float32, 2.0**-3, id="1e6-float32"),
    ],
)
def test_fit_leaving_blocks_unread_far_from_the_origin_equals_the_fit_reading_every_block(
    offset: float, dtype: Any, step: float, kept_states: list[KeptState]
) -> None:
    X = np.round(_moving_and_still(43) / step) * step
    far = (X + offset).astype(dtype)
    assert_array_equal(far.astype(np.float64) - offset, X)  # the same points, moved
    x = da.from_array(far, chunks=(1_700, 3))
    kw = {"n_clusters": 4, "n_init": 2, "init": "k-means++", "tol": 0.0, "random_state": 2}
    read = _fit_both(x, kept_states, **kw)
    assert min(read) < x.numblocks[0]


def _grouped(rows_per_block: int, seed: int) -> np.ndarray:
    """Blocks 0-1: two overlapping blobs; blocks 2-3: a tight blob far from both."""
    rng = np.random.default_rng(seed)
    near = np.concatenate(
        [rng.normal(0.0, 1.0, (rows_per_block, 3)), rng.normal(1.5, 1.0, (rows_per_block, 3))]
    )
    return np.concatenate([rng.permutation(near), rng.normal(500.0, 1.0, (2 * rows_per_block, 3))])


def test_a_late_pass_reads_only_the_blocks_whose_labels_may_change(
    write_zarr: Callable[..., str],
) -> None:
    # Two overlapping blobs in the first two blocks keep moving their centres for many
    # iterations; the blob of the last two blocks is far from both and its centre stays:
    # after the first pass those blocks are not read again, and every other block is read
    # once per pass.
    X = _grouped(1_000, seed=44)
    arr, store = open_counted(write_zarr(X, 1_000))
    rows = Rows(emdist.io.as_dask_array(arr, chunk_rows=1_000))
    assert rows.x.numblocks[0] == 4
    params = KMeansParams(X[[0, 1, 2_500]])
    kept = KeptState(FAMILY.kept_bytes_per_row)
    skip = FAMILY.kept_skip
    store.counts.clear()
    for i in range(6):
        before = dict(store.chunk_reads())
        got = kept.run(rows, FAMILY.estep_kept, [params], [0], skip=skip)
        plain = shared_pass(Rows(da.from_array(X, chunks=(1_000, 3))), [(FAMILY, params)])
        _assert_same_sums(got, plain)
        reads = {k: v - before.get(k, 0) for k, v in store.chunk_reads().items()}
        read_now = {k for k, v in reads.items() if v}
        assert all(v <= 1 for v in reads.values())  # at most once per pass
        assert len(read_now) == kept.blocks_read[-1]
        if i > 0:
            assert read_now == {"c/0/0", "c/1/0"}, (i, reads)
        new = kmeans_mstep(plain[0])[0]
        assert not np.array_equal(new.centers[:2], params.centers[:2])  # still moving
        params = new
    assert kept.blocks_read == [4, 2, 2, 2, 2, 2]


def test_a_fit_from_a_store_reads_fewer_blocks_leaving_unchanged_ones_unread(
    write_zarr: Callable[..., str],
) -> None:
    X = _grouped(1_000, seed=45)
    path = write_zarr(X, 1_000)
    kw = {"n_clusters": 3, "init": X[[0, 1, 2_500]], "n_init": 1, "tol": 0.0}
    reads, fits = [], []
    for skip in (False, True):
        arr, store = open_counted(path)
        with dask.config.set({"emdist.kept-skip": skip, "emdist.block-size": 1_000 * 3 * 8}):
            fits.append(emdist.KMeans(**kw).fit(arr))
        reads.append(store.chunk_reads())
    _assert_same_fit(*fits)
    every, fewer = reads
    passes = 1 + fits[0].n_iter_  # the scan pass, then one per iteration
    assert set(every.values()) <= {passes, passes + 1}  # (+1: a final assignment pass)
    assert all(fewer[k] <= every[k] for k in every)
    # The far blob's blocks were read by the scan pass, the first and the final passes.
    assert fewer["c/2/0"] < every["c/2/0"] and fewer["c/3/0"] < every["c/3/0"]


def test_a_pass_whose_cluster_empties_after_unread_blocks_reads_every_block_again() -> None:
    # Three tight blobs, one per group of blocks. The second pass under the same centres
    # reads nothing; then one centre is sent far away, every row leaves it, and the pass
    # leaves the other blobs' blocks unread: with a cluster empty it is run again reading
    # every block, so its far rows (which re-seed the cluster) are the plain pass's.
    rng = np.random.default_rng(46)
    means = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    X = np.concatenate(
        [rng.normal(m, 1.0, (n, 2)) for m, n in zip(means, (2_000, 1_000, 1_000), strict=True)]
    )
    rows = Rows(da.from_array(X, chunks=(1_000, 2)))
    fitted = np.stack([X[:2_000].mean(0), X[2_000:3_000].mean(0), X[3_000:].mean(0)])
    params = KMeansParams(fitted, fitted.copy())  # sums about fixed references
    kept = KeptState(FAMILY.kept_bytes_per_row)
    for _ in range(2):
        got = kept.run(rows, FAMILY.estep_kept, [params], [0], skip=FAMILY.kept_skip)
        _assert_same_sums(got, shared_pass(rows, [(FAMILY, params)]))
    assert kept.blocks_read == [4, 0]
    centers = params.centers.copy()
    centers[2] = [1e4, 1e4]
    moved = KMeansParams(centers, params.reference)
    got = kept.run(rows, FAMILY.estep_kept, [moved], [0], skip=FAMILY.kept_skip)
    plain = shared_pass(rows, [(FAMILY, moved)])
    assert plain[0].counts[2] == 0
    _assert_identical(got, plain)
    # The pass read the moved cluster's block, found the cluster empty, and read all again.
    assert kept.blocks_read[2:] == [1, 4] and kept.passes_read_again == 1
    (want, _), (new, _) = kmeans_mstep(plain[0]), kmeans_mstep(got[0])
    assert_array_equal(new.centers, want.centers)
    assert_array_equal(new.reference, want.reference)
    # The next pass (a reference moved) still equals the plain one.
    got = kept.run(rows, FAMILY.estep_kept, [want], [0], skip=FAMILY.kept_skip)
    _assert_identical(got, shared_pass(rows, [(FAMILY, want)]))


class _Stop(Exception):
    pass


def test_a_resumed_fit_leaving_blocks_unread_equals_the_uninterrupted_one(
    tmp_path: Any, kept_states: list[KeptState]
) -> None:
    # The checkpoint holds no kept state: a resumed fit starts without bounds, reads every
    # block in its first pass, and ends as the uninterrupted fit.
    X = _moving_and_still(47)
    x = da.from_array(X, chunks=(2_000, 3))
    start = np.concatenate([X[:2], np.full((1, 3), 300.0), np.full((1, 3), -300.0)])
    whole = emdist.KMeans(4, init=start, n_init=1, tol=0.0).fit(x)
    assert whole.n_iter_ > 4

    def stop(it: Any) -> None:
        if it.iteration == 3:
            raise _Stop

    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(_Stop):
        emdist.KMeans(4, init=start, n_init=1, tol=0.0, checkpoint=ckpt, observer=stop).fit(x)
    kept_states.clear()
    resumed = emdist.KMeans(4, init=start, n_init=1, tol=0.0, checkpoint=ckpt).fit(x)
    _assert_same_fit(whole, resumed)
    read = kept_states[-1].blocks_read
    assert read[0] == x.numblocks[0] and min(read) < x.numblocks[0]


def test_a_sweep_over_k_leaving_blocks_unread_equals_the_sweep_reading_every_block(
    kept_states: list[KeptState],
) -> None:
    # Restarts of several K share every pass (and every block's kept state): each K's
    # reach is its own, and a block is left unread only where it is for every one.
    X = _moving_and_still(49)
    x = da.from_array(X, chunks=(1_500, 3))
    sweeps = []
    for skip in (False, True):
        kept_states.clear()
        with dask.config.set({"emdist.kept-skip": skip}):
            template = emdist.KMeans(init="k-means++", tol=0.0, random_state=5)
            sweeps.append(emdist.select_n_components(x, template, [2, 3, 4, 5]))
        read = kept_states[-1].blocks_read
    for a, b in zip(*(s.estimators for s in sweeps), strict=True):
        _assert_same_fit(a, b)
    assert min(read) < x.numblocks[0]


def test_unread_blocks_on_a_local_cluster_equal_reading_every_block(
    dask_client: distributed.Client,
) -> None:
    # The clean blocks' statistics come from their states where the workers hold them;
    # the states of unread blocks stay there.
    X = _moving_and_still(50)
    x = da.from_array(X, chunks=(2_000, 3)).persist()
    rows = Rows(x)
    params = [
        KMeansParams(np.concatenate([X[:2], np.full((1, 3), 300.0), np.full((1, 3), -300.0)]))
    ]
    kept = KeptState(FAMILY.kept_bytes_per_row)
    for _ in range(6):
        got = kept.run(rows, FAMILY.estep_kept, params, [0], skip=FAMILY.kept_skip)
        plain = shared_pass(rows, [(FAMILY, p) for p in params])
        _assert_same_sums(got, plain)
        params = [kmeans_mstep(plain[0])[0]]
    assert kept.blocks_read[0] == 6 and min(kept.blocks_read) == 3
    states = kept._states
    assert states is not None
    keys = [key for (key,) in states.__dask_keys__()]
    assert all(isinstance(states.dask[key], distributed.Future) for key in keys)


def test_a_block_stays_only_if_it_does_for_the_restarts_of_every_k() -> None:
    # Restarts of K = 2 and K = 4 keep their bounds in one state; the K = 4 centres stay,
    # the K = 2 ones move across the rows: the block must be read.
    X = _moving_and_still(51)[:2_000]
    four = KMeansParams(X[[0, 1, 2, 3]])
    two = KMeansParams(X[[4, 5]])
    _, bounds = kmeans_estep_bounded(RowBlock(X, 0), [two, four], ["two", "four"], None)
    reach = block_reach(bounds)
    assert block_stays(reach, [two, four], ["two", "four"])  # the same centres
    moved = KMeansParams(two.centers[::-1].copy())
    assert not block_stays(reach, [moved, four], ["two", "four"])
    assert not block_stays(reach, [four, four], ["four", "other"])  # one without bounds
