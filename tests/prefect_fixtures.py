"""One Prefect test harness per pytest session, and the environment Prefect runs in.

Use it from a test module with::

    from tests.prefect_fixtures import prefect_harness  # noqa: F401

Importing this module points ``PREFECT_HOME`` and ``TMPDIR`` at a scratch folder, turns
Prefect's telemetry off and gives its servers a 90 s startup timeout (the 20-30 s
defaults are too tight on two busy cores). The harness also sets these as Prefect
settings, in case Prefect was imported (and read the environment) before this module.
This process keeps its own temporary directory, so pytest's ``tmp_path`` folders stay
where they always are; child processes (Prefect's server, Dask workers) write their
scratch space under ``TMPDIR``.

pytest creates one fixture definition per module that imports a fixture, so a
session-scoped fixture imported into two modules runs twice (checked with pytest 9.2). The
harness is therefore a reference-counted singleton: the first user starts it, the last
teardown (at the end of the session) stops it, and :data:`HARNESS_STARTS` counts starts.

Also here: the process checks the flow, job and CLI tests share ("did anything we started
outlive its run?").
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import psutil

from tests.markers import service_fixture

# Pin this process's temporary directory before TMPDIR changes (tempfile caches it).
tempfile.gettempdir()
SCRATCH = Path(tempfile.mkdtemp(prefix="emdist-prefect-"))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)

STARTUP_TIMEOUT_SECONDS = 90

TELEMETRY_OFF = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}


def prefect_environment(home: Path) -> dict[str, str]:
    """Variables for a process running Prefect with its home (and scratch) under ``home``."""
    tmp = home / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {
        "PREFECT_HOME": str(home),
        "TMPDIR": str(tmp),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(STARTUP_TIMEOUT_SECONDS),
        **TELEMETRY_OFF,
    }


def subprocess_environment(home: Path) -> dict[str, str]:
    """This process's environment for a child that must start its own Prefect server.

    Drops ``PREFECT_API_URL`` (the child must not talk to the harness) and any
    ``PREFECT_API_*`` key or profile the developer's shell may carry.
    """
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "PREFECT_PROFILE"))
    }
    env.update(prefect_environment(home))
    return env


os.environ.update(prefect_environment(SCRATCH / "home"))

HARNESS_STARTS = 0
_stack: ExitStack | None = None
_users = 0
_api_url: str | None = None


def _start() -> str:
    global HARNESS_STARTS, _stack, _api_url
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    stack = ExitStack()
    # The same values as the environment above, also when another module imported
    # Prefect (and so read its settings) before this one was imported.
    stack.enter_context(
        temporary_settings(
            updates={
                PREFECT_HOME: os.environ["PREFECT_HOME"],
                PREFECT_SERVER_ANALYTICS_ENABLED: False,
                PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: STARTUP_TIMEOUT_SECONDS,
            }
        )
    )
    stack.enter_context(prefect_test_harness(server_startup_timeout=STARTUP_TIMEOUT_SECONDS))
    HARNESS_STARTS += 1
    _stack = stack
    _api_url = str(PREFECT_API_URL.value())
    return _api_url


@service_fixture(scope="session")
def prefect_harness() -> Iterator[str]:
    """Prefect's test harness (a temporary server on 127.0.0.1); yields its API URL."""
    global _users, _stack
    url = _api_url if _stack is not None else _start()
    _users += 1
    try:
        yield url
    finally:
        _users -= 1
        if _users == 0 and _stack is not None:
            stack, _stack = _stack, None
            stack.close()


# -- leftover processes ---------------------------------------------------------------------


def dask_worker_processes() -> set[int]:
    """PIDs of this process's descendants started by multiprocessing spawn (Dask workers)."""
    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                pids.add(child.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return pids


def processes_with_env(name: str, value: str) -> set[int]:
    """PIDs of live processes whose environment has ``name=value`` (any parent)."""
    pids = set()
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(name) == value:
                pids.add(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return pids


def wait_until_gone(find: Callable[[], set[int]], patience: float = 30.0) -> set[int]:
    """Poll ``find`` until it returns nothing or ``patience`` seconds pass; return the last.

    Closing a cluster gives its workers a few seconds to exit, so a check right after a
    run would race them; nothing here asserts on time.
    """
    deadline = time.monotonic() + patience
    while True:
        left = find()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)
