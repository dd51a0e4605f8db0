"""Shared fixtures for the core-library tests: data makers, Zarr stores and schedulers.

Everything here is real: Zarr arrays are written to ``tmp_path`` on disk and the distributed
scheduler is a real two-process ``LocalCluster`` on 127.0.0.1, started once per session and
only when a test asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import distributed
import numpy as np
import pytest
import zarr

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
        zarr.create_array(
            str(path), data=X, chunks=(chunk_rows, X.shape[1]), zarr_format=3, overwrite=True
        )
        return str(path)

    return write


@pytest.fixture(scope="session")
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


# Test modules that start services: Prefect's server (flows, the CLI's Prefect commands),
# emdist processes, Dask schedulers. `make test-quick` (`-m "not slow and not service"`)
# leaves them out; marking them here keeps the list in one place.
SERVICE_MODULES = frozenset({"test_cli", "test_flows", "test_real_services"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of :data:`SERVICE_MODULES` as ``service``."""
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.rsplit(".", 1)[-1] in SERVICE_MODULES:
            item.add_marker(pytest.mark.service)
