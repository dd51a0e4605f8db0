"""The Dask cluster a job runs on: a scheduler address from config, or an embedded one.

The embedded default is a LocalCluster of worker *processes* bound to 127.0.0.1, sized to
the machine (one single-threaded worker per core: our kernels call BLAS with one thread per
Dask thread, and processes sidestep the GIL for the Python parts of a kernel). Whatever is
started here is closed on exit, also when the job fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import dask
from distributed import Client, LocalCluster

from pipeline.config import ClusterConfig

__all__ = ["dask_client", "worker_environment"]


def worker_environment() -> dict[str, int]:
    """Environment for worker processes.

    distributed's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` by default, which slowed our
    kernels 16–70% (docs/design.md, "Out-of-core"); we keep its one-thread BLAS settings
    and drop that.
    """
    return {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}


@contextlib.contextmanager
def dask_client(config: ClusterConfig) -> Iterator[Client]:
    """Connect to ``config.address``, or start (and later stop) a LocalCluster.

    Yields
    ------
    distributed.Client
        Set as the default client for the duration.
    """
    if config.address is not None:
        with Client(config.address, set_as_default=True) as client:
            yield client
        return
    # INFO from the scheduler and nannies drowns the job's own log lines.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    cores = os.cpu_count() or 1
    threads = config.threads_per_worker or 1
    workers = config.n_workers or max(1, cores // threads)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environment()}):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=config.processes,
            # In-process clusters default to the inproc transport, which takes no host.
            protocol="tcp://",
            memory_limit=config.memory_limit,
            host="127.0.0.1",
            # Even "no dashboard" serves HTTP (on 8787 by default, clashing with other
            # clusters): a free port unless the dashboard's usual one is asked for.
            dashboard_address="127.0.0.1:8787" if config.dashboard else "127.0.0.1:0",
        )
    try:
        with Client(cluster, set_as_default=True) as client:
            yield client
    finally:
        cluster.close()
