"""Real services for the integration tests: a Prefect server, a Dask scheduler and workers.

Everything is a real process started with the project's own virtualenv, bound to 127.0.0.1
only, in its own session (process group), with its output in a log file. :class:`Services`
remembers what it started and stops all of it — process group first, then any descendant
that left the group — also when a test fails. Nothing here is a mock.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "BIN",
    "HOST",
    "DaskWorker",
    "PrefectServer",
    "Service",
    "Services",
    "alive",
    "free_port",
    "run_command",
    "service_env",
    "start_dask_scheduler",
    "start_dask_worker",
    "start_prefect_server",
    "wait_for",
    "wait_gone",
]

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def service_env(home: Path, api_url: str | None = None, **extra: str) -> dict[str, str]:
    """Environment of a child process: no inherited ``PREFECT_*``, telemetry off, own homes.

    Parameters
    ----------
    home : pathlib.Path
        Folder for ``PREFECT_HOME`` (``home/prefect``) and ``TMPDIR`` (``home/tmp``).
    api_url : str, optional
        ``PREFECT_API_URL`` of a real server (so no temporary server is ever started).
    **extra
        More variables.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        TMPDIR=str(home / "tmp"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
        PREFECT_UI_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


def alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The processes of ``procs`` that still run (zombies count as dead)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` seconds for ``procs`` to end; return those still running."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        left = alive(procs)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def wait_for(
    condition: Callable[[], object],
    timeout: float,
    what: str,
    interval: float = 0.2,
    diagnose: Callable[[], str] | None = None,
) -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{diagnose()}" if diagnose is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


class Service:
    """One started process (and its process group), its log, and how to stop it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        log: Path,
        cwd: Path,
        interrupts: int = 0,
    ) -> None:
        self.name = name
        self.interrupts = interrupts
        self.argv = list(argv)
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg reaches its children
        )
        self.pid = self.proc.pid
        self._known: dict[int, psutil.Process] = {}
        self.stopped = False

    def __repr__(self) -> str:
        return f"<Service {self.name} pid={self.pid}>"

    @property
    def running(self) -> bool:
        """Whether the process itself has not exited."""
        return self.proc.poll() is None

    def descendants(self) -> list[psutil.Process]:
        """Its live descendants (remembered, so that stop() finds them after reparenting)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.pid).children(recursive=True):
                self._known.setdefault(child.pid, child)
        return alive(self._known.values())

    def log_text(self) -> str:
        """Everything it has printed so far."""
        if not self._log_handle.closed:
            self._log_handle.flush()
        return self.log.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        """The end of its output, for failure messages."""
        tail = self.log_text().splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.name} ({self.log}) ---\n" + "\n".join(tail)

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to its process group (if the group still exists)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def wait(self, timeout: float) -> int | None:
        """Its exit code, or ``None`` if it is still running after ``timeout`` s."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, interrupts: int | None = None, grace: float = 10.0) -> None:
        """Stop it: SIGINT to the group ``interrupts`` times (``grace`` s apart; default: as
        given at start), then SIGKILL to the group.

        Whatever survives — in the group, or descendants that made their own group — is
        killed by PID. Idempotent.
        """
        if self.stopped:
            return
        self.descendants()  # remember the children before they are reparented
        for _ in range(self.interrupts if interrupts is None else interrupts):
            if not self.running:
                break
            self.signal_group(signal.SIGINT)
            self.wait(grace)
        self.signal_group(signal.SIGKILL)
        self.wait(30)
        for p in alive(self._known.values()):
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        wait_gone(self._known.values(), 10)
        self._log_handle.close()
        self.stopped = True


class Services:
    """Starts services under one folder and stops every one of them (reverse order)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Service] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        cwd: Path | None = None,
        interrupts: int = 0,
    ) -> Service:
        """Start ``argv`` as a :class:`Service` logging to ``root/logs/<name>.log``.

        ``interrupts`` is how many SIGINTs :meth:`Service.stop` sends before SIGKILL.
        """
        log = self.root / "logs" / f"{name}.log"
        service = Service(name, argv, env, log, cwd or PROJECT_ROOT, interrupts)
        self.started.append(service)
        return service

    def stop_all(self) -> None:
        """Stop everything started (also the ones that already exited: their children)."""
        errors = []
        for service in reversed(self.started):
            try:
                service.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{service}: {exc!r}")
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))

    def logs(self) -> str:
        """The tails of all logs, for failure messages."""
        return "\n".join(s.log_tail(40) for s in self.started)


# -- Prefect ---------------------------------------------------------------------------------


@dataclass
class PrefectServer:
    """A running ``prefect server`` on 127.0.0.1."""

    service: Service
    port: int
    home: Path

    @property
    def api_url(self) -> str:
        """Its ``PREFECT_API_URL``."""
        return f"http://{HOST}:{self.port}/api"

    def healthy(self) -> bool:
        """Whether ``/api/health`` answers ``true``."""
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=5) as resp:
                return resp.status == 200 and json.loads(resp.read()) is True
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """Environment of a client process of this server (own ``PREFECT_HOME``)."""
        return service_env(home, api_url=self.api_url, **extra)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST ``body`` (JSON) to ``path`` of its API; its JSON answer."""
        request = urllib.request.Request(
            f"{self.api_url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.load(resp)


def start_prefect_server(services: Services, home: Path, timeout: float = 180.0) -> PrefectServer:
    """Start ``prefect server start`` on a free port and wait until it is healthy."""
    port = free_port()
    service = services.start(
        "prefect-server",
        [
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            HOST,
            "--port",
            str(port),
            "--analytics-off",
        ],
        service_env(home, PREFECT_SERVER_LOGGING_LEVEL="WARNING"),
        interrupts=1,
    )
    server = PrefectServer(service, port, home)

    def ready() -> bool:
        if not service.running:
            raise AssertionError(f"prefect server exited early\n{service.log_tail()}")
        return server.healthy()

    wait_for(ready, timeout, "the Prefect server's /api/health", 0.5, service.log_tail)
    return server


# -- Dask ------------------------------------------------------------------------------------


def start_dask_scheduler(services: Services, home: Path) -> tuple[str, Service]:
    """Start ``dask scheduler`` on free ports; return its address once it accepts clients."""
    port, dashboard = free_port(), free_port()
    service = services.start(
        "dask-scheduler",
        [
            str(BIN / "dask"),
            "scheduler",
            "--host",
            HOST,
            "--port",
            str(port),
            "--dashboard-address",
            f"{HOST}:{dashboard}",
            "--no-show",
            "--pid-file",
            str(home / "scheduler.pid"),
        ],
        service_env(home),
    )

    def listening() -> bool:
        if not service.running:
            raise AssertionError(f"dask scheduler exited early\n{service.log_tail()}")
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex((HOST, port)) == 0

    wait_for(listening, 60, "the Dask scheduler's port", 0.2, service.log_tail)
    return f"tcp://{HOST}:{port}", service


@dataclass
class DaskWorker:
    """A ``dask worker`` (a nanny and its worker process)."""

    service: Service
    name: str
    pid_file: Path

    @property
    def nanny_pid(self) -> int:
        """The nanny's PID, from ``--pid-file``."""
        return int(self.pid_file.read_text().strip())


def start_dask_worker(services: Services, address: str, name: str, home: Path) -> DaskWorker:
    """Start ``dask worker`` (1 thread, 1 GiB) against ``address``, bound to 127.0.0.1."""
    pid_file = home / f"{name}.pid"
    local = home / f"{name}-space"
    local.mkdir(parents=True, exist_ok=True)
    service = services.start(
        f"dask-{name}",
        [
            str(BIN / "dask"),
            "worker",
            address,
            "--host",
            HOST,
            "--nthreads",
            "1",
            "--memory-limit",
            "1GiB",
            "--name",
            name,
            "--no-dashboard",
            "--pid-file",
            str(pid_file),
            "--local-directory",
            str(local),
        ],
        service_env(home),
    )
    return DaskWorker(service, name, pid_file)


def run_command(
    services: Services,
    name: str,
    argv: Sequence[str],
    env: dict[str, str],
    timeout: float,
) -> tuple[int, str]:
    """Run a command to its end as a service (killed with its group if it hangs).

    Returns
    -------
    (int, str)
        Its exit code and everything it printed.
    """
    service = services.start(name, argv, env)
    code = service.wait(timeout)
    if code is None:
        service.stop()
        raise AssertionError(f"{name} did not finish in {timeout:.0f} s\n{service.log_tail()}")
    service.stop()  # its children too, if it left any
    return code, service.log_text()
