"""Restarts side by side: one pass per iteration feeds every running restart.

The reference is the restarts run one after another with the plain EM loop
(:func:`emdist.engine.em.run_em`), from the starts and seeds the estimator derives
(``emdist._random``: the fit seed's second child spawns one seed per restart). The shared
run must give every restart the same bound history and keep the same restart, bit for bit;
reads are counted on the store.
"""

from __future__ import annotations

import functools
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import zarr

import emdist
from emdist._random import child_seeds, resolve_seed
from emdist.engine.data import compute_context, prepare_fit_data
from emdist.engine.em import EMResult, run_em
from emdist.engine.lockstep import shared_pass
from emdist.engine.reduce import map_reduce
from emdist.io import as_dask_array
from emdist.io.checkpoint import CheckpointStore
from emdist.kernels.gaussian import compute_precision_cholesky
from emdist.kernels.kmeans import KMeansParams
from emdist.kernels.mixture import MixtureParams
from emdist.models.gaussian_mixture import GaussianMixtureFamily
from emdist.models.kmeans import KMeansFamily, _needs_final_pass
from tests.conftest import overlapping_data
from tests.helpers import open_counted

CHUNK_ROWS = 64


class Crash(Exception):
    """Raised by an observer to interrupt a fit right after a pass was committed."""


@pytest.fixture(scope="module")
def data_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """600 x 3, three overlapping clusters, in 10 chunks of 64 rows (the last partial)."""
    X = overlapping_data(0, 200)
    path = tmp_path_factory.mktemp("shared") / "x.zarr"
    zarr.create_array(str(path), data=X, chunks=(CHUNK_ROWS, 3), zarr_format=3)
    return str(path)


MAKERS: dict[str, Any] = {
    # Restarts that converge after different numbers of iterations, some out of iterations.
    "kmeans": functools.partial(
        emdist.KMeans, 3, init="random", n_init=5, max_iter=12, tol=1e-6, random_state=1
    ),
    "gmm": functools.partial(
        emdist.GaussianMixture,
        3,
        n_init=3,
        init_params="random_from_data",
        max_iter=25,
        tol=1e-4,
        random_state=2,
    ),
    "bgmm": functools.partial(
        emdist.BayesianGaussianMixture,
        n_components=4,
        n_init=3,
        init_params="random_from_data",
        max_iter=25,
        tol=1e-4,
        random_state=3,
        # Without the fit on the sample, the restarts run for different numbers of passes
        # over the data (with it they all converge in two), which is what is under test.
        prefit_on_sample=False,
    ),
}


def sequential(est: Any, X: Any) -> tuple[list[EMResult[Any, Any]], list[float], int]:
    """The restarts one after another: results, scores, and the kept restart (first best)."""
    seed = resolve_seed(est.random_state)
    sample_seed, restarts_seed = child_seeds(seed, 2)
    n_init = est._n_init()
    results, scores = [], []
    with compute_context():
        data = prepare_fit_data(
            X,
            n_clusters=int(getattr(est, est._n_components_param)),
            seed=sample_seed,
            sample_size=est.init_sample_size,
            what=est._n_components_param,
        )
        plan = est._plan(data, False)
        for r, s in enumerate(child_seeds(restarts_seed, n_init)):
            result = run_em(
                data.X, plan.family, plan.make_start(r, s), tol=plan.tol, max_iter=est.max_iter
            )
            results.append(result)
            scores.append(float(plan.score(result)))
    best = 0
    for r, value in enumerate(scores):
        if value > scores[best]:
            best = r
    return results, scores, best


def params_of(model: Any) -> dict[str, np.ndarray]:
    if isinstance(model, emdist.KMeans):
        return {"centers": model.cluster_centers_}
    return dict(model._params().arrays())


def assert_params_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert np.array_equal(got[key], want[key]), key


def fit_quietly(model: Any, X: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        return model.fit(X)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_shared_restarts_equal_sequential_runs(data_path: str, kind: str) -> None:
    histories: dict[int, list[float]] = defaultdict(list)
    in_pass: list[int] = []

    def observer(state: Any) -> None:
        histories[state.restart].append(state.lower_bound)
        in_pass.append(state.in_pass)

    # Compared with run_em, plain EM: the mixtures' default acceleration left out.
    plain = {} if kind == "kmeans" else {"acceleration": None}
    model = fit_quietly(MAKERS[kind](observer=observer, **plain), data_path)
    results, scores, best = sequential(MAKERS[kind](**plain), data_path)
    # Every restart ran exactly its sequential iterations, bit for bit.
    assert {r: tuple(h) for r, h in histories.items()} == {
        r: res.lower_bounds for r, res in enumerate(results)
    }
    lengths = {len(res.lower_bounds) for res in results}
    assert len(lengths) > 1  # restarts that stop at different iterations: some drop out
    assert max(in_pass) == len(results) and min(in_pass) < len(results)
    kept = results[best]
    assert model.n_iter_ == kept.n_iter and model.converged_ == kept.converged
    assert model.lower_bounds_ == list(kept.lower_bounds)
    want = dict(kept.params.arrays())
    # K-means' reference points (what its sums are taken about) are the fit's, not the model's.
    want.pop("reference", None)
    assert_params_equal(params_of(model), want)
    if kind == "kmeans":
        assert model.inertia_ == -scores[best]
        assert len(set(scores)) > 1  # the comparison mattered


@pytest.mark.parametrize("kind", ["kmeans", "gmm"])
def test_restarts_read_each_chunk_once_per_pass(data_path: str, kind: str) -> None:
    arr, store = open_counted(data_path)
    # Counted against run_em's iterations, plain EM: the mixtures' default acceleration
    # left out.
    plain = {} if kind == "kmeans" else {"acceleration": None}
    fit_quietly(MAKERS[kind](**plain), arr)
    results, _, _ = sequential(MAKERS[kind](**plain), data_path)
    # The scan, then one pass per iteration of the longest restart; a K-means restart whose
    # last pass ran under other centres needs one more (its final assignment), shared with
    # the iterations of the others when they still run.
    final = [int(kind == "kmeans" and _needs_final_pass(r)) for r in results]
    passes = 1 + max(r.n_iter + f for r, f in zip(results, final, strict=True))
    n_chunks = arr.nchunks
    assert store.chunk_reads() == {f"c/{i}/0": passes for i in range(n_chunks)}
    # ...where one after another they would read the data once per iteration of every one.
    assert passes < 1 + sum(r.n_iter + f for r, f in zip(results, final, strict=True))


def crash_at(restart: int, iteration: int) -> Any:
    def observer(state: Any) -> None:
        if (state.restart, state.iteration) == (restart, iteration):
            raise Crash(f"crash after restart {restart} iteration {iteration}")

    return observer


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("every", [1, 3])
def test_resume_mid_group_is_bit_identical(
    tmp_path: Path, data_path: str, kind: str, every: int
) -> None:
    # The kills are placed by run_em's iterations, plain EM: the mixtures' default
    # acceleration left out.
    plain = {} if kind == "kmeans" else {"acceleration": None}
    reference = fit_quietly(MAKERS[kind](**plain), data_path)
    results, _, _ = sequential(MAKERS[kind](**plain), data_path)
    shortest = min(r.n_iter for r in results)
    longest = max(r.n_iter for r in results)
    ckpt = tmp_path / "ckpt"
    # Kills while every restart runs, after some finished, and in the last restart's run.
    last = max(range(len(results)), key=lambda r: results[r].n_iter)
    for restart, iteration in [(1, every + 1), (last, shortest + 1), (last, longest - 1)]:
        store = CheckpointStore(ckpt, every=every)
        with pytest.raises(Crash):
            fit_quietly(
                MAKERS[kind](checkpoint=store, observer=crash_at(restart, iteration), **plain),
                data_path,
            )
        store.close()
        state = CheckpointStore(ckpt).load()
        assert state is not None and not state.done
        # Every restart not finished is in the state; the finished ones are in `best`.
        assert sorted([r.restart for r in state.running] + list(state.finished)) == list(
            range(len(results))
        )
        assert iteration - every < state.iteration <= iteration
    resumed_iterations: list[tuple[int, int]] = []
    resumed = fit_quietly(
        MAKERS[kind](
            checkpoint=CheckpointStore(ckpt, every=every),
            observer=lambda s: resumed_iterations.append((s.restart, s.iteration)),
            **plain,
        ),
        data_path,
    )
    assert resumed_iterations and min(i for _, i in resumed_iterations) > longest - 1 - every
    assert resumed.n_iter_ == reference.n_iter_
    assert resumed.lower_bounds_ == reference.lower_bounds_
    assert resumed.converged_ == reference.converged_
    assert_params_equal(params_of(resumed), params_of(reference))
    if kind == "kmeans":
        assert resumed.inertia_ == reference.inertia_


def test_version_1_checkpoint_is_refused_with_what_to_do(tmp_path: Path, data_path: str) -> None:
    ckpt = tmp_path / "old"
    model = MAKERS["gmm"](checkpoint=ckpt, max_iter=2)
    fit_quietly(model, data_path)
    meta = ckpt / "zarr.json"
    meta.write_text(meta.read_text().replace('"version": 2', '"version": 1'))
    with pytest.raises(emdist.io.checkpoint.CheckpointError) as info:
        MAKERS["gmm"](checkpoint=ckpt, max_iter=2).fit(data_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(ckpt) in message and "version 1" in message and "overwrite=True" in message


def test_shared_passes_are_the_same_on_a_distributed_cluster(
    data_path: str, dask_client: Any
) -> None:
    # The shared E-step and the criteria kernels travel to worker processes (pickled).
    clustered = fit_quietly(MAKERS["kmeans"](), data_path)
    sweep = emdist.select_n_components(data_path, MAKERS["gmm"](), n_components=[2, 3])
    assert len(dask_client.scheduler_info()["workers"]) == 2
    with dask.config.set(scheduler="synchronous"):  # the references, in this process
        local = fit_quietly(MAKERS["kmeans"](), data_path)
        alone = {
            k: fit_quietly(MAKERS["gmm"]().set_params(n_components=k), data_path) for k in (2, 3)
        }
        bics = {k: m.information_criteria(data_path)["bic"] for k, m in alone.items()}
    assert clustered.inertia_ == local.inertia_
    assert_params_equal(params_of(clustered), params_of(local))
    for k, model, row in zip(sweep.n_components, sweep.estimators, sweep.criteria, strict=True):
        assert_params_equal(params_of(model), params_of(alone[k]))
        assert row["bic"] == bics[k]


def test_kmeans_runs_of_a_shared_pass_walk_each_block_once_with_their_lone_statistics(
    data_path: str,
) -> None:
    # K-means runs of two sizes go to one walk per block (KMeansFamily.estep_many), a
    # mixture run beside them to its own kernel; every run's reduced statistics equal, bit
    # for bit, those of its pass alone.
    X = as_dask_array(data_path)
    rows = np.asarray(X)
    rng = np.random.default_rng(5)
    kmeans = KMeansFamily()
    assert callable(kmeans.estep_many)
    steps: list[tuple[Any, Any]] = [
        (kmeans, KMeansParams(rows[rng.choice(len(rows), k, replace=False)])) for k in (3, 5, 3)
    ]
    cov = np.ones((2, 3))
    mixture = MixtureParams(
        np.full(2, 0.5), rows[:2].copy(), cov, compute_precision_cholesky(cov, "diag")
    )
    steps.insert(1, (GaussianMixtureFamily("diag", 1e-6), mixture))
    shared = shared_pass(X, steps)
    for (family, params), got in zip(steps, shared, strict=True):
        alone = map_reduce(X, family.estep_chunk, params)
        assert type(got) is type(alone)
        for name, value in vars(alone).items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(getattr(got, name), value, err_msg=name)
            elif isinstance(value, float | int):
                assert getattr(got, name) == value, name
