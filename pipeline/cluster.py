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

import asyncio
import contextlib
import logging
import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import dask
from distributed import Client, LocalCluster
from distributed.client import AllExit
from distributed.comm.core import connect as comm_connect

from emdist.exceptions import EmdistError
from pipeline.config import ClusterConfig
from pipeline.errors import silence_cancelled_work

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "SchedulerLostError",
    "SchedulerUnreachableError",
    "connect",
    "dask_client",
    "local_cluster",
    "probe_scheduler",
    "scheduler_answers",
    "unreachable_message",
    "worker_environment",
    "worker_spawn_environment",
]

DEFAULT_CONNECT_TIMEOUT = ClusterConfig.model_fields["connect_timeout"].default


class SchedulerUnreachableError(EmdistError, ConnectionError):
    """No Dask scheduler answered at the configured address."""


class SchedulerLostError(EmdistError, ConnectionError):
    """The Dask scheduler went away while the job was using it."""


#: The variable distributed's nanny sets to 65536 in every worker by default.
MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"


def worker_environment() -> dict[str, int]:
    """Environment for worker processes (``distributed.nanny.pre-spawn-environ``).

    distributed's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` by default, which slowed our
    kernels 16–70% and reading a store about 3x (docs/design.md, "malloc trimming"); we
    keep its one-thread BLAS settings and drop that.
    """
    return {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}


@contextlib.contextmanager
def worker_spawn_environment() -> Iterator[None]:
    """Spawn worker processes inside with :func:`worker_environment`, no malloc trimming.

    Worker processes started inside get no ``MALLOC_TRIM_THRESHOLD_``. Leaving it out of
    distributed's configuration is not enough: a worker process inherits this process's
    environment, and every nanny writes its settings into this process's ``os.environ``
    before it spawns (so a LocalCluster started earlier with distributed's defaults, in a
    test session or a notebook, leaves 65536 behind); the nanny also prefers a value
    already in ``os.environ`` to its configuration. So the variable is taken out of
    ``os.environ`` while the workers run (a restarted worker is spawned again) and put back
    afterwards. This process's own allocator read it when it started and is not affected.
    """
    saved = os.environ.pop(MALLOC_TRIM, None)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environment()}):
            yield
    finally:
        # Whatever a nanny wrote meanwhile goes too; the caller's own value comes back.
        os.environ.pop(MALLOC_TRIM, None)
        if saved is not None:
            os.environ[MALLOC_TRIM] = saved


@contextlib.contextmanager
def _children_ignore_ctrl_c(processes: bool) -> Iterator[None]:
    """Spawn worker processes that ignore SIGINT; this process keeps its Ctrl-C.

    A terminal's Ctrl-C reaches every process of its group: each worker would raise
    KeyboardInterrupt inside distributed's nanny and print a traceback (and its peers a
    ``CommClosedError`` each) above the one line the command prints. The workers need not
    hear it: this process closes the cluster when it stops. A disposition of "ignore"
    survives the spawn's exec, and Python installs its KeyboardInterrupt handler only over
    the default one. Only the main thread may set a handler; elsewhere nothing changes.
    """
    if not processes or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def local_cluster(
    n_workers: int,
    threads_per_worker: int,
    *,
    processes: bool = True,
    memory_limit: str | float | None = "auto",
    dashboard_address: str = "127.0.0.1:0",
) -> Iterator[LocalCluster]:
    """A LocalCluster on 127.0.0.1 whose workers run in :func:`worker_spawn_environment`.

    The one way emdist, its tests and its benchmarks start a local cluster, so that they all
    measure and run what a job runs.

    Parameters
    ----------
    n_workers, threads_per_worker : int
    processes : bool, default=True
        Worker processes (each with a nanny), or threads in this process.
    memory_limit : str, float or None, default="auto"
        Per worker, as :class:`distributed.LocalCluster` takes it.
    dashboard_address : str, default="127.0.0.1:0"
        Even "no dashboard" serves HTTP (on 8787 by default, clashing with other
        clusters): a free port unless another address is asked for.

    Yields
    ------
    distributed.LocalCluster
        Closed on exit.
    """
    with worker_spawn_environment():
        with _children_ignore_ctrl_c(processes):
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                processes=processes,
                # In-process clusters default to the inproc transport, which takes no host.
                protocol="tcp://",
                memory_limit=memory_limit,
                host="127.0.0.1",
                dashboard_address=dashboard_address,
            )
        try:
            yield cluster
        finally:
            cluster.close()


def unreachable_message(address: str, timeout: float) -> str:
    """What to tell a user whose scheduler at ``address`` did not answer."""
    return (
        f"no Dask scheduler answered at {address} within {timeout:g} s: check the address "
        "and port, that a scheduler runs there (`dask scheduler --host HOST --port PORT`), "
        "and that this machine can reach it"
    )


async def _identity(address: str, timeout: float) -> Any:
    comm = await asyncio.wait_for(comm_connect(address, timeout=timeout), timeout)
    try:
        await asyncio.wait_for(comm.write({"op": "identity"}), timeout)
        return await asyncio.wait_for(comm.read(), timeout)
    finally:
        comm.abort()


def probe_scheduler(address: str, timeout: float) -> None:
    """Check, within ``timeout`` seconds in all, that a Dask scheduler answers at ``address``.

    distributed's ``Client(timeout=...)`` bounds the TCP connection only: a peer that
    accepts it but never speaks Dask's protocol (an HTTP server, a wrong port) keeps the
    client waiting for its handshake indefinitely, and an unroutable address ends in
    distributed's own traceback. The probe asks the scheduler for its identity on a
    separate thread's event loop (whatever loop the caller runs) with one deadline for the
    connection, the handshake and the answer.

    Raises
    ------
    SchedulerUnreachableError
        One line naming the address and the timeout.
    """
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(asyncio.run(_identity(address, timeout)))
        except BaseException as exc:  # reported below as "no scheduler answered"
            outcome.append(exc)

    # A daemon thread: a peer that ignores even the deadline cannot keep the process alive.
    thread = threading.Thread(target=run, name="emdist-scheduler-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    answer = outcome[0] if outcome else None
    if not (isinstance(answer, dict) and answer.get("type") == "Scheduler"):
        raise SchedulerUnreachableError(unreachable_message(address, timeout))


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


class _DropDetachedDashboardSessions(logging.Filter):
    """Drop bokeh's traceback for a dashboard tab closed while a message was in flight.

    Closing the tab detaches the bokeh session; a message still being handled then reads
    ``ServerConnection.session``, whose ``assert`` fails, and bokeh's websocket handler logs
    that AssertionError with its traceback (into a flow run's log too). The job is
    unaffected and the user closed the tab on purpose; bokeh's other errors stay.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, AssertionError):
            return True
        frames = traceback.extract_tb(error.__traceback__)
        return not any(f.filename.endswith("bokeh/server/connection.py") for f in frames)


_DASHBOARD_FILTER = _DropDetachedDashboardSessions()


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
    probe_scheduler(address, timeout)
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
    logging.getLogger("bokeh.server.views.ws").addFilter(_DASHBOARD_FILTER)
    # INFO from distributed (the scheduler, nannies, closed connections with their
    # tracebacks) drowns the job's own log lines.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if config.address is not None:
        with connect(config.address, timeout=config.connect_timeout) as client:
            assert client is not None
            if config.dashboard and announce is not None:
                announce(f"Dask dashboard: {client.dashboard_link}")
            yield client
        return
    cores = os.cpu_count() or 1
    threads = config.threads_per_worker or 1
    workers = config.n_workers or max(1, cores // threads)
    with (
        local_cluster(
            workers,
            threads,
            processes=config.processes,
            memory_limit=config.memory_limit,
            dashboard_address="127.0.0.1:8787" if config.dashboard else "127.0.0.1:0",
        ) as cluster,
        Client(cluster, set_as_default=True) as client,
    ):
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
