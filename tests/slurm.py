"""A real one-node SLURM cluster on 127.0.0.1 for the deployment tests (as root).

:func:`slurm_cluster` writes a munge key and a ``slurm.conf`` into a fresh temporary folder,
starts ``munged``, ``slurmctld`` and ``slurmd`` from Debian's ``munge`` and ``slurm-wlm``
packages (each in the foreground, as a :class:`tests.services.Service`), waits until the
node is idle, and on exit cancels every job, stops the daemons, kills whatever the jobs
left (found by a marker in their environment) and removes the folder. Nothing is mocked.

Clients (``sbatch``, ``squeue``, dask-jobqueue) find the cluster through ``SLURM_CONF``,
which :attr:`Slurm.env` sets; the daemons bind their own free ports, so a site's real SLURM
(if any) is never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.services import HOST, Services, free_port, wait_for, wait_gone

__all__ = ["Slurm", "slurm_cluster"]

NODE = "emdist0"
#: What the node advertises. More than this machine has (SlurmdParameters=config_overrides):
#: the flow job asks for 2 CPUs and 8G as on a real site, next to the worker jobs.
NODE_CPUS = 8
NODE_MEMORY_MB = 16_000
MARKER = "EMDIST_TEST_SLURM"


def slurm_conf(root: Path, ctld_port: int, slurmd_port: int, munge_socket: Path) -> str:
    """A minimal ``slurm.conf``: one node on 127.0.0.1, no cgroups, no accounting."""
    return f"""\
ClusterName=emdisttest
SlurmctldHost=localhost({HOST})
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
# No cgroups (a container may not delegate them): processes are tracked by parentage.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
# Keep finished jobs visible to `scontrol show job` for the test's whole length.
MinJobAge=3600
NodeName={NODE} NodeAddr={HOST} NodeHostname=localhost CPUs={NODE_CPUS} \
RealMemory={NODE_MEMORY_MB} State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class Slurm:
    """A running one-node cluster: its folder, ``SLURM_CONF`` and client helpers."""

    root: Path
    conf: Path
    services: Services
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *argv: str, cwd: Path | None = None, timeout: float = 60) -> str:
        """Run a SLURM client command against this cluster; its stdout (fails on error)."""
        done = subprocess.run(
            argv,
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
        return done.stdout

    def job_state(self, job_id: str) -> str:
        """``JobState`` of a job (``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``...)."""
        found = re.search(r"\bJobState=(\S+)", self.run("scontrol", "show", "job", job_id))
        assert found is not None, job_id
        return found.group(1)

    def jobs(self, name: str) -> list[str]:
        """IDs of the queued or running jobs named ``name``."""
        return self.run("squeue", "-h", "-n", name, "-o", "%i").split()

    def logs(self) -> str:
        """The daemons' logs, for failure messages."""
        parts = [self.services.logs()]
        for log in sorted((self.root / "log").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-30:]
            parts.append(f"--- {log.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)


def _leftovers(marker: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``MARKER=marker`` (jobs, slurmstepd)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            if proc.pid != os.getpid() and proc.environ().get(MARKER) == marker:
                found.append(proc)
    return found


def _require_tools() -> None:
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(t)]
    assert not missing, (
        f"{missing} not found: run tools/ensure-debian-packages as root (make test does)"
    )
    assert os.geteuid() == 0, "the SLURM daemons run as root here"


@contextlib.contextmanager
def slurm_cluster(base_env: dict[str, str]) -> Iterator[Slurm]:
    """Start munge + slurmctld + slurmd on 127.0.0.1; stop all of it (and its jobs) at exit.

    ``base_env`` is the environment of the daemons and clients; jobs inherit it (sbatch
    exports the submitter's environment), so set ``PYTHONPATH`` or ``TMPDIR`` there.
    """
    _require_tools()
    # A short path: munge's socket path must fit in a sockaddr_un (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="emdist-slurm-"))
    services = Services(root)
    try:
        for sub in ("state", "spool", "log", "munge"):
            (root / sub).mkdir(mode=0o700)
        root.chmod(0o755)  # munge wants its socket's folders searchable by everyone
        key = root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        socket_path = root / "munge" / "munge.socket"
        conf = root / "slurm.conf"
        conf.write_text(slurm_conf(root, free_port(), free_port(), socket_path))
        env = base_env | {"SLURM_CONF": str(conf), MARKER: str(root)}
        slurm = Slurm(root, conf, services, env)

        munge = root / "munge"
        services.start(
            "munged",
            ["munged", "--foreground", "--force", f"--socket={socket_path}"]
            + [f"--key-file={key}", f"--log-file={munge}/munged.log"]
            + [f"--pid-file={munge}/munged.pid", f"--seed-file={munge}/seed", f"--origin={HOST}"],
            env,
        )
        wait_for(socket_path.exists, 30, "munged's socket", diagnose=slurm.logs)
        services.start("slurmctld", ["slurmctld", "-D", "-f", str(conf)], env)
        services.start("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(conf)], env)

        def idle() -> bool:
            for service in services.started:
                assert service.running, f"{service.name} exited\n{slurm.logs()}"
            done = subprocess.run(
                ["sinfo", "-h", "-n", NODE, "-o", "%t"], env=env, capture_output=True, text=True
            )
            return done.returncode == 0 and done.stdout.strip() == "idle"

        wait_for(idle, 60, "the SLURM node to be idle", 0.5, slurm.logs)
        yield slurm
    finally:
        try:
            if services.started:
                subprocess.run(
                    ["scancel", "--full", "--partition=debug"],
                    env=base_env | {"SLURM_CONF": str(root / "slurm.conf")},
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
            services.stop_all()
            # slurmstepd and job processes are not the daemons' children any more.
            left = _leftovers(str(root))
            for proc in left:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(signal.SIGKILL)
            assert wait_gone(left, 30) == [], f"processes of the SLURM jobs survived: {left}"
        finally:
            shutil.rmtree(root, ignore_errors=True)
