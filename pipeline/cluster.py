"""The Dask cluster a job runs on: a scheduler address from config, or an embedded one.

This module is the one place that makes Dask clients. :func:`connect` joins a scheduler by
address (or uses Dask's local threads for ``None``); :func:`dask_client` gives a job its
cluster: the configured address, or an embedded LocalCluster of worker *processes* bound to
127.0.0.1, sized to the machine (one single-threaded worker per core: our kernels call BLAS
with one thread per Dask thread, and processes sidestep the GIL for the Python parts of a
kernel). Whatever is started here is closed on exit, also when the job fails.

A scheduler that does not answer is a user's problem to fix (a wrong address, a scheduler
not started), so it raises :class:`SchedulerUnreachableError` after ``connect_timeout``
seconds instead of distributed's 30 s and a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator

import dask
from distributed import Client, LocalCluster
from distributed.client import AllExit

from emdist.exceptions import EmdistError
from pipeline.config import ClusterConfig
from pipeline.errors import silence_cancelled_work

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "SchedulerLostError",
    "SchedulerUnreachableError",
    "connect",
    "dask_client",
    "scheduler_answers",
    "unreachable_message",
    "worker_environment",
]

DEFAULT_CONNECT_TIMEOUT = ClusterConfig.model_fields["connect_timeout"].default


class SchedulerUnreachableError(EmdistError, ConnectionError):
    """No Dask scheduler answered at the configured address."""


class SchedulerLostError(EmdistError, ConnectionError):
    """The Dask scheduler went away while the job was using it."""


def worker_environment() -> dict[str, int]:
    """Environment for worker processes.

    distributed's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` by default, which slowed our
    kernels 16–70% (docs/design.md, "Out-of-core"); we keep its one-thread BLAS settings
    and drop that.
    """
    return {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}


def unreachable_message(address: str, timeout: float) -> str:
    """What to tell a user whose scheduler at ``address`` did not answer."""
    return (
        f"no Dask scheduler answered at {address} within {timeout:g} s: check the address "
        "and port, that a scheduler runs there (`dask scheduler --host HOST --port PORT`), "
        "and that this machine can reach it"
    )


def scheduler_answers(address: str, timeout: float = 2.0) -> bool:
    """Whether a scheduler at ``address`` accepts a connection within ``timeout`` seconds."""
    try:
        with Client(address, timeout=timeout, set_as_default=False):
            return True
    except (OSError, TimeoutError):
        return False


class _DropUnretrievedAllExit(logging.Filter):
    """Drop asyncio's "Task exception was never retrieved" for distributed's ``AllExit``.

    ``AllExit`` is how the client's gather stops waiting early; when a pass is cancelled
    (Ctrl-C, a lost worker) the gather's leftover waiters raise it with nobody to retrieve
    it, and asyncio logs a traceback from the event loop's thread, at a moment no handler
    of ours controls. It never carries news for the user.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, AllExit)


_ALLEXIT_FILTER = _DropUnretrievedAllExit()


@contextlib.contextmanager
def connect(
    address: str | None, *, timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> Iterator[Client | None]:
    """A client of the scheduler at ``address``, or Dask's local threads for ``None``.

    Parameters
    ----------
    address : str or None
        A scheduler address such as ``tcp://127.0.0.1:8786``.
    timeout : float
        Seconds to wait for the scheduler to answer.

    Yields
    ------
    distributed.Client or None
        Set as the default client for the duration.

    Raises
    ------
    SchedulerUnreachableError
        If no scheduler answers within ``timeout`` seconds.
    """
    if address is None:
        yield None
        return
    try:
        client = Client(address, timeout=timeout, set_as_default=True)
    except (OSError, TimeoutError):
        raise SchedulerUnreachableError(unreachable_message(address, timeout)) from None
    with client:
        yield client


@contextlib.contextmanager
def dask_client(
    config: ClusterConfig, announce: Callable[[str], None] | None = None
) -> Iterator[Client]:
    """Connect to ``config.address``, or start (and later stop) a LocalCluster.

    Parameters
    ----------
    config : ClusterConfig
    announce : callable, optional
        Told one line for the user (the dashboard's link when ``config.dashboard``).

    Yields
    ------
    distributed.Client
        Set as the default client for the duration.
    """
    # Idempotent: a logger holds a filter once.
    logging.getLogger("asyncio").addFilter(_ALLEXIT_FILTER)
    if config.address is not None:
        with connect(config.address, timeout=config.connect_timeout) as client:
            assert client is not None
            if config.dashboard and announce is not None:
                announce(f"Dask dashboard: {client.dashboard_link}")
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
            if config.dashboard and announce is not None:
                # The real port: distributed picks another when 8787 is taken.
                announce(f"Dask dashboard: {client.dashboard_link}")
            try:
                yield client
            except KeyboardInterrupt:
                # Closing a cluster with a pass in flight makes distributed log the cancelled
                # futures with their tracebacks; the user pressed Ctrl-C and is told how to
                # resume, so those lines are noise.
                silence_cancelled_work()
                raise
    finally:
        cluster.close()
