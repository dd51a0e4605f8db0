"""Shared fixtures: data makers, Zarr stores, schedulers and servers; and the test markers.

Everything here is real: Zarr arrays are written to ``tmp_path`` on disk, the distributed
scheduler is a real two-process ``LocalCluster`` on 127.0.0.1, started once per session and
only when a test asks for it, and the Prefect server is a real ``prefect server`` process.
Which tests are ``service`` tests, and which are skipped for want of root or Debian
packages, is decided in ``tests/markers.py`` and applied by the hooks at the end.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import distributed
import numpy as np
import pytest

from tests import helpers
from tests.markers import (
    REQUIRE_ENV,
    ROOT_FIXTURES,
    SERVICE_FIXTURES,
    host_gap,
    missing_debian_packages,
    service_fixture,
    verdict,
)
from tests.services import PrefectServer, Services, start_prefect_server

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def make_blobs(
    n_per_cluster: int,
    centers: np.ndarray | list[list[float]],
    *,
    scale: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic Gaussian blobs around ``centers``, rows shuffled, with their true labels."""
    rng = np.random.default_rng(seed)
    centers = np.asarray(centers, dtype=np.float64)
    X = np.concatenate(
        [c + scale * rng.standard_normal((n_per_cluster, centers.shape[1])) for c in centers]
    )
    y = np.repeat(np.arange(len(centers)), n_per_cluster)
    order = rng.permutation(len(X))
    return X[order], y[order]


def overlapping_data(seed: int = 0, n_per_cluster: int = 200) -> np.ndarray:
    """Three overlapping, anisotropic clusters in 3-D: EM needs many iterations on them."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 0.0], [0.0, 2.5, 2.0]])
    parts = []
    for k, c in enumerate(centers):
        A = rng.standard_normal((3, 3)) * 0.5 + np.eye(3) * (0.6 + 0.2 * k)
        parts.append(c + rng.standard_normal((n_per_cluster, 3)) @ A)
    X = np.concatenate(parts)
    return X[rng.permutation(len(X))]


def gmm_init(
    X: np.ndarray, n_components: int, covariance_type: str, seed: int = 0
) -> dict[str, np.ndarray]:
    """Explicit, non-degenerate starting parameters (``weights_init`` etc.) for a mixture."""
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    weights = rng.uniform(0.5, 1.5, n_components)
    weights /= weights.sum()
    means = X[rng.choice(len(X), n_components, replace=False)]
    if covariance_type == "full":
        covs = []
        for _ in range(n_components):
            A = rng.standard_normal((d, d)) * 0.3
            covs.append(A @ A.T + np.eye(d))
        precisions = np.stack([np.linalg.inv(c) for c in covs])
    elif covariance_type == "tied":
        A = rng.standard_normal((d, d)) * 0.3
        precisions = np.linalg.inv(A @ A.T + np.eye(d))
    elif covariance_type == "diag":
        precisions = 1.0 / rng.uniform(0.5, 2.0, (n_components, d))
    else:
        precisions = 1.0 / rng.uniform(0.5, 2.0, n_components)
    return {"weights_init": weights, "means_init": means, "precisions_init": precisions}


@pytest.fixture
def blobs() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """The :func:`make_blobs` factory."""
    return make_blobs


@pytest.fixture
def write_zarr(tmp_path: Path) -> Callable[..., str]:
    """Write a numpy array as a Zarr v3 array under ``tmp_path``; return its path."""
    counter = iter(range(1_000_000))

    def write(X: np.ndarray, chunk_rows: int, name: str | None = None) -> str:
        path = tmp_path / (name or f"x{next(counter)}.zarr")
        return helpers.write_zarr(path, X, chunk_rows, compressors="auto")

    return write


@service_fixture(scope="session")
def local_cluster() -> Iterator[distributed.LocalCluster]:
    """One real two-process LocalCluster on 127.0.0.1 for the whole session.

    Started as a job starts its embedded cluster (``pipeline.cluster.local_cluster``: the
    same worker environment, without ``MALLOC_TRIM_THRESHOLD_``).
    """
    from pipeline.cluster import local_cluster

    with local_cluster(2, 1, processes=True, memory_limit="1GiB") as cluster:
        yield cluster


@pytest.fixture
def dask_client(local_cluster: distributed.LocalCluster) -> Iterator[distributed.Client]:
    """A Client on the session cluster, the default client only for this test."""
    with distributed.Client(local_cluster) as client:
        yield client


@service_fixture()
def services(tmp_path: Path) -> Iterator[Services]:
    """Processes started by one test, all stopped at its end (pass or fail)."""
    started = Services(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@service_fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """One real ``prefect server`` on a free 127.0.0.1 port for one module's tests."""
    root = tmp_path_factory.mktemp("prefect-server")
    started = Services(root)
    try:
        yield start_prefect_server(started, root / "home")
    finally:
        started.stop_all()


# -- markers -----------------------------------------------------------------------------------

_MUST_FAIL = pytest.StashKey[str]()
_HOST_MARKERS = ("real_deploy", "needs_root")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Markers by fixture (``service``, ``needs_root``); skip (or fail) what this host can't run."""
    required = os.environ.get(REQUIRE_ENV) == "1"
    is_root = os.geteuid() == 0
    missing = functools.cache(missing_debian_packages)
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SERVICE_FIXTURES:
            item.add_marker(pytest.mark.service)
        for name in sorted(fixtures & ROOT_FIXTURES.keys()):
            item.add_marker(pytest.mark.needs_root(ROOT_FIXTURES[name]))
        markers = {m.name: m.args for m in item.iter_markers() if m.name in _HOST_MARKERS}
        if not markers:
            continue
        gap = host_gap(markers, is_root=is_root, missing_packages=missing)
        action, reason = verdict(gap, required=required)
        if action == "skip":
            item.add_marker(pytest.mark.skip(reason=reason))
        elif action == "fail":
            item.stash[_MUST_FAIL] = reason


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail, before any fixture starts, a test that must run here but cannot."""
    reason = item.stash.get(_MUST_FAIL, None)
    if reason is not None:
        pytest.fail(reason, pytrace=False)
