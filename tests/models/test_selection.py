"""K sweeps that share every pass: ``select_n_components`` and ``fit_shared``.

Each fit of a sweep must equal its own separate ``fit`` bit for bit (the sweep's seed set
as ``random_state``), and the sweep must read each stored chunk once per pass for all K.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import zarr

import emdist
from emdist.exceptions import InvalidParameterError
from tests.conftest import overlapping_data
from tests.helpers import CountingStore, open_counted

KS = [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def data_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """600 x 3, three overlapping clusters, in 10 chunks of 64 rows."""
    path = tmp_path_factory.mktemp("sweep") / "x.zarr"
    zarr.create_array(str(path), data=overlapping_data(0, 200), chunks=(64, 3), zarr_format=3)
    return str(path)


TEMPLATES: dict[str, Any] = {
    "kmeans": functools.partial(emdist.KMeans, init="random", n_init=3, max_iter=30),
    "gmm": functools.partial(
        emdist.GaussianMixture, init_params="k-means++", n_init=2, max_iter=30, tol=1e-4
    ),
    "bgmm": functools.partial(
        emdist.BayesianGaussianMixture, init_params="random_from_data", max_iter=30, tol=1e-4
    ),
}


def quietly(fn: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        return fn(*args, **kwargs)


def params_of(model: Any) -> dict[str, np.ndarray]:
    if isinstance(model, emdist.KMeans):
        return {"centers": model.cluster_centers_, "inertia": np.asarray(model.inertia_)}
    return dict(model._params().arrays())


def assert_same_model(got: Any, want: Any) -> None:
    assert got.n_iter_ == want.n_iter_ and got.converged_ == want.converged_
    assert got.lower_bounds_ == want.lower_bounds_
    a, b = params_of(got), params_of(want)
    assert sorted(a) == sorted(b)
    for key in b:
        assert np.array_equal(a[key], b[key]), key


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_sweep_equals_separate_fits_per_k(data_path: str, kind: str) -> None:
    criterion = "lower_bound" if kind == "bgmm" else "bic"
    template = TEMPLATES[kind](random_state=4)
    selection = quietly(
        emdist.select_n_components, data_path, template, [5, 1, 3, 2, 4, 3], criterion=criterion
    )
    assert selection.n_components == KS
    assert [e.get_params()[e._n_components_param] for e in selection.estimators] == KS
    for k, model, row in zip(KS, selection.estimators, selection.criteria, strict=True):
        separate = quietly(TEMPLATES[kind](k, random_state=4).fit, data_path)
        assert_same_model(model, separate)
        assert row["lower_bound"] == separate.lower_bounds_[-1]
        if kind != "bgmm":
            # The criteria of all K come from one shared pass, equal to each model's own.
            assert {key: row[key] for key in ("score", "bic", "aic")} == (
                separate.information_criteria(data_path)
            )
    values = [row[criterion] for row in selection.criteria]
    best = (max if criterion == "lower_bound" else min)(values)
    assert selection.criteria[selection.best_index][criterion] == best
    assert selection.best_estimator is selection.estimators[selection.best_index]
    if kind == "gmm":
        assert selection.best_n_components == 3  # three (overlapping, anisotropic) clusters


def _passes(store: CountingStore) -> int:
    reads = set(store.chunk_reads().values())
    assert len(reads) == 1, store.chunk_reads()  # every chunk read equally often
    return reads.pop()


@pytest.mark.parametrize("kind", ["kmeans", "gmm"])
def test_sweep_reads_each_chunk_once_per_pass_for_all_k(data_path: str, kind: str) -> None:
    # Passes counted as reads of every chunk: K-means passes read every block here (none
    # left unread on its kept bounds, emdist.engine.kept).
    with dask.config.set({"emdist.kept-skip": False}):
        _sweep_reads_each_chunk_once_per_pass(data_path, kind)


def _sweep_reads_each_chunk_once_per_pass(data_path: str, kind: str) -> None:
    separate = []
    for k in KS:
        arr, store = open_counted(data_path)
        quietly(TEMPLATES[kind](k, random_state=4).fit, arr)
        separate.append(_passes(store))  # the scan and one pass per iteration of the fit
    arr, store = open_counted(data_path)
    quietly(emdist.select_n_components, arr, TEMPLATES[kind](random_state=4), KS)
    # One scan, the passes of the longest fit (all others run in them), one criteria pass.
    assert _passes(store) == 1 + max(p - 1 for p in separate) + 1
    assert _passes(store) < sum(separate)


class Crash(Exception):
    pass


@pytest.mark.slow
def test_fit_shared_with_checkpoints_resumes_bit_for_bit(tmp_path: Path, data_path: str) -> None:
    def make(k: int, **kw: Any) -> Any:
        return TEMPLATES["gmm"](k, random_state=7, **kw)

    reference = [quietly(make(k).fit, data_path) for k in (2, 3, 4)]

    def crash(state: Any) -> None:
        if state.iteration == 4:
            raise Crash

    stores = [emdist.CheckpointStore(tmp_path / f"k{k}") for k in (2, 3, 4)]
    models = [make(k, checkpoint=s) for k, s in zip((2, 3, 4), stores, strict=True)]
    models[1].set_params(observer=crash)
    with pytest.raises(Crash):
        quietly(emdist.fit_shared, models, data_path)
    for s in stores:
        s.close()
    seen: list[int] = []
    resumed = [
        make(k, checkpoint=tmp_path / f"k{k}", observer=lambda s: seen.append(s.iteration))
        for k in (2, 3, 4)
    ]
    quietly(emdist.fit_shared, resumed, data_path)
    assert seen and min(seen) == 5  # every fit committed iteration 4 before the crash
    for got, want in zip(resumed, reference, strict=True):
        assert_same_model(got, want)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda X: emdist.select_n_components(X, emdist.KMeans(), []), "at least one"),
        (lambda X: emdist.select_n_components(X, emdist.KMeans(), [0, 2]), "integers >= 1"),
        (lambda X: emdist.select_n_components(X, emdist.KMeans(), criterion="x"), "criterion"),
        (
            lambda X: emdist.select_n_components(X, emdist.BayesianGaussianMixture()),
            "criterion='lower_bound'",
        ),
        (
            lambda X: emdist.select_n_components(X, emdist.KMeans(checkpoint="ckpt")),
            "fit_shared",
        ),
        (lambda X: emdist.fit_shared([], X), "at least one"),
        (lambda X: emdist.fit_shared([m := emdist.KMeans(), m], X), "distinct"),
    ],
)
def test_bad_sweeps_are_one_line_errors(data_path: str, call: Any, match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match) as info:
        call(data_path)
    assert "\n" not in str(info.value)
