"""Crash-safe checkpoints and exact resume.

Everything is real: Zarr stores on disk under ``tmp_path``, fits killed with SIGKILL in
subprocesses (``tests/_fit_worker.py``), checkpoints damaged by hand with file operations.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import emdist
from emdist.exceptions import ConvergenceWarning, InvalidParameterError
from emdist.io.checkpoint import (
    CheckpointError,
    CheckpointFallbackWarning,
    CheckpointMismatchError,
    CheckpointStore,
)
from emdist.io.integrity import array_digest
from tests.conftest import overlapping_data
from tests.helpers import tree_digest, write_zarr
from tests.markers import service_fixture

WORKER = Path(__file__).parents[1] / "_fit_worker.py"
EMDIST_SRC = Path(emdist.__file__).parent

# --------------------------------------------------------------------------------------------
# data and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> str:
    """3000 x 3 in six 500-row chunks on disk (read-only: tests that modify data copy it)."""
    X = overlapping_data(0, 1000)
    return write_zarr(tmp_path_factory.mktemp("small") / "small.zarr", X, 500)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> str:
    """20000 x 8 (four overlapping clusters) in eight 2500-row chunks on disk."""
    rng = np.random.default_rng(12345)
    n, d, k = 20000, 8, 4
    means = rng.normal(0, 1.2, size=(k, d))
    X = means[rng.integers(0, k, n)] + rng.normal(size=(n, d)) * rng.uniform(0.5, 1.5, d)
    return write_zarr(tmp_path_factory.mktemp("big") / "data.zarr", X, 2500)


class Crash(Exception):
    """Raised by an observer to interrupt a fit right after an iteration was committed."""


def crash_at(restart: int, iteration: int) -> Callable[[Any], None]:
    def observer(it: Any) -> None:
        if (it.restart, it.iteration) == (restart, iteration):
            raise Crash(f"crash after restart {restart} iteration {iteration}")

    return observer


def fitted(model: Any) -> dict[str, np.ndarray]:
    """Every public fitted attribute as an array (lazy labels computed)."""
    out = {}
    for key, value in vars(model).items():
        if key.endswith("_") and not key.startswith("_"):
            out[key] = np.asarray(value.compute() if hasattr(value, "compute") else value)
    return out


def assert_same_fit(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Bit-for-bit equality of two fits: every array, the bound history, n_iter_, converged_."""
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert got[key].shape == want[key].shape, key
        assert np.array_equal(got[key], want[key]), f"{key} differs"
    assert "lower_bounds_" in want and "n_iter_" in want and "converged_" in want


@contextlib.contextmanager
def no_convergence_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def root_attrs(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / "zarr.json").read_text())["attributes"]


def committed(ckpt: Path) -> list[str]:
    return list(root_attrs(ckpt)["committed"])


def state_attrs(ckpt: Path, name: str) -> dict[str, Any]:
    return json.loads((ckpt / name / "zarr.json").read_text())["attributes"]


def state_iteration(ckpt: Path, name: str) -> int:
    """The furthest iteration of the restarts running in state ``name`` (0 if none)."""
    return max((r["iteration"] for r in state_attrs(ckpt, name)["running"]), default=0)


def state_dirs(ckpt: Path) -> set[str]:
    return {p.name for p in ckpt.iterdir() if p.is_dir()}


# Converges after 9 iterations on ``small``.
GMM = functools.partial(
    emdist.GaussianMixture,
    n_components=3,
    covariance_type="full",
    init_params="k-means++",
    random_state=0,
)


# --------------------------------------------------------------------------------------------
# SIGKILL at random moments, then resume == uninterrupted
# --------------------------------------------------------------------------------------------

# The restarts run side by side: a state is tagged (furthest iteration, restarts finished,
# all done) by tests/_fit_worker.py.
TAG = re.compile(r"^(save-begin|save-end) (\d+) (\d+) (\d)$")
StateTag = tuple[int, int, bool]


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(EMDIST_SRC.parent), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


def save_tags(lines: list[str], kind: str) -> list[StateTag]:
    """``(iteration, finished, done)`` of every ``save-begin`` or ``save-end`` marker."""
    tags = [m.groups() for m in map(TAG.match, lines) if m]
    return [(int(i), int(f), d == "1") for k, i, f, d in tags if k == kind]


@dataclass(frozen=True)
class Target:
    """Kill ``delay`` seconds after the ``nth`` marker line matching ``pattern`` (counted from
    the first line matching ``after``, if given)."""

    pattern: str
    nth: int
    delay: float
    after: str | None = None


@dataclass(frozen=True)
class Kill:
    """What one SIGKILL interrupted, read from the worker's markers and the checkpoint."""

    target: Target
    last_marker: str
    committed: StateTag
    uncommitted_groups: frozenset[str]
    iteration: int

    @property
    def mid_write(self) -> bool:
        return self.last_marker.startswith(("array", "save-begin"))

    @property
    def mid_estep(self) -> bool:
        return self.last_marker == "estep-begin"


class Zygote:
    """``_fit_worker.py --serve``: imports once, then forks one fitting child per command."""

    def __init__(self, log: Path) -> None:
        self.log = log
        with log.open("wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-X", "faulthandler", str(WORKER), "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=fh,
                env=worker_env(),
            )
        self._buffer = b""
        self.exits: dict[int, int] = {}

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def _read(self, timeout: float) -> bool:
        """Read whatever the server said within ``timeout``; False if it said nothing."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, timeout))
        if not ready:
            return False
        chunk = os.read(self.proc.stdout.fileno(), 4096)
        assert chunk, f"the worker server died:\n{self.tail()}"
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            words = line.decode().split()
            if words[0] == "exit":
                self.exits[int(words[1])] = int(words[2])
            else:
                assert words[0] == "pid", line
                self.exits.setdefault(int(words[1]), -1)
        return True

    def run(self, argv: list[str]) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(argv) + "\n").encode())
        self.proc.stdin.flush()
        known = set(self.exits)
        deadline = time.monotonic() + 300  # the first command waits for the imports
        while not set(self.exits) - known:
            assert time.monotonic() < deadline, f"no child forked:\n{self.tail()}"
            self._read(deadline - time.monotonic())
        (pid,) = set(self.exits) - known
        return pid

    def status(self, pid: int) -> int | None:
        """The child's raw wait status, or None while it runs."""
        while self._read(0):
            pass
        return None if self.exits[pid] == -1 else self.exits[pid]

    def wait(self, pid: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.exits[pid] == -1:
            assert time.monotonic() < deadline, f"child {pid} still running:\n{self.tail()}"
            self._read(deadline - time.monotonic())
        return self.exits[pid]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@service_fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    server = Zygote(tmp_path_factory.mktemp("zygote") / "server.log")
    yield server
    server.close()


@dataclass
class KillRun:
    """Fits of one model in ``tmp/ckpt``, killed and restarted."""

    tmp: Path
    data: str
    kind: str
    write_delay: float
    zygote: Zygote
    kills: list[Kill] = field(default_factory=list)

    @property
    def ckpt(self) -> Path:
        return self.tmp / "ckpt"

    def argv(self, markers: Path, *, delays: bool) -> list[str]:
        argv = [self.data, str(self.ckpt), str(self.tmp / "out.npz"), self.kind]
        argv += ["--markers", str(markers)]
        return argv + (["--write-delay", str(self.write_delay)] if delays else [])

    def committed_state(self) -> StateTag | None:
        """The newest committed state; a fallback warning would fail the test (it's an error)."""
        if not (self.ckpt / "zarr.json").exists():
            return None
        state = CheckpointStore(self.ckpt).load()
        return None if state is None else (state.iteration, len(state.finished), state.done)

    def kill_at(self, target: Target, cycle: int) -> Kill:
        before = self.committed_state()
        markers = self.tmp / f"markers-{cycle}.txt"
        markers.touch()
        pid = self.zygote.run(self.argv(markers, delays=True))
        pattern = re.compile(target.pattern)
        after = None if target.after is None else re.compile(target.after)
        deadline = time.monotonic() + 300
        seen = 0
        try:
            with markers.open() as fh:
                pending = ""
                while seen < target.nth:
                    assert self.zygote.status(pid) is None, (
                        f"worker ended before {target}:\n{self.zygote.tail()}"
                    )
                    assert time.monotonic() < deadline, f"no {target} in 300 s"
                    pending += fh.read()
                    *complete, pending = pending.split("\n")
                    for line in complete:
                        if after is not None and after.search(line):
                            after = None
                        elif after is None and pattern.search(line):
                            seen += 1
                    time.sleep(0.002)
            time.sleep(target.delay)
            assert self.zygote.status(pid) is None, "worker ended before the kill"
        finally:
            if self.zygote.status(pid) is None:
                os.kill(pid, signal.SIGKILL)
            status = self.zygote.wait(pid, 60)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        lines = markers.read_text().splitlines()
        check_resumed_from(before, lines)

        # The newest committed state is whole and is the last one written completely, or the
        # one whose write the kill interrupted after its commit: at most one is lost.
        now = self.committed_state()
        assert now is not None
        allowed = {
            *(save_tags(lines, "save-end")[-1:] or [before]),
            *save_tags(lines, "save-begin")[-1:],
        }
        assert now in allowed, f"checkpoint holds {now}; the markers allow only {allowed}"
        iters = [line for line in lines if line.startswith("iter ")]
        kill = Kill(
            target=target,
            last_marker=lines[-1],
            committed=now,
            uncommitted_groups=frozenset(state_dirs(self.ckpt) - set(committed(self.ckpt))),
            iteration=int(iters[-1].split()[2]) if iters else now[0],
        )
        self.kills.append(kill)
        return kill

    def final(self) -> dict[str, np.ndarray]:
        before = self.committed_state()
        markers = self.tmp / "markers-final.txt"
        pid = self.zygote.run(self.argv(markers, delays=False))
        status = self.zygote.wait(pid, 600)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, self.zygote.tail()
        lines = markers.read_text().splitlines()
        check_resumed_from(before, lines)
        assert lines[-1] == "done"
        return load_npz(self.tmp / "out.npz")


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def uninterrupted(tmp: Path, data: str, kind: str) -> subprocess.Popen[bytes]:
    """The plain command line, without a checkpoint, in a process of its own."""
    out = tmp / "reference.npz"
    with (tmp / "reference.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-X", "faulthandler", str(WORKER), data, "-", str(out), kind],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=worker_env(),
        )


def check_resumed_from(before: StateTag | None, lines: list[str]) -> None:
    """The first state a run commits continues the one it found: nothing is redone or lost."""
    begins = save_tags(lines, "save-begin")
    got = begins[0] if begins else None
    if before is None:
        ok = got is not None and got[0] == 1 and got[1] == 0  # the first pass
    elif before[2]:  # every restart finished: nothing is left to do
        ok = got is None
    else:
        # The next pass (every running restart one iteration further), or restarts folded
        # into the best (after a final pass, or because their EM was already over).
        ok = got is not None and (
            (got[0] == before[0] + 1 and got[1] >= before[1]) or got[1] > before[1]
        )
    assert ok, f"resumed from {before} but first committed {got}"


def kill_and_resume(
    tmp: Path, data: str, kind: str, targets: list[Target], write_delay: float, zygote: Zygote
) -> KillRun:
    """Kill at every target in turn, then finish; compare with an uninterrupted run."""
    reference = uninterrupted(tmp, data, kind)  # alongside: the killed fits mostly sleep
    run = KillRun(tmp, data, kind, write_delay, zygote)
    for cycle, target in enumerate(targets):
        run.kill_at(target, cycle)
    resumed = run.final()
    rc = reference.wait(timeout=600)
    assert rc == 0, (tmp / "reference.log").read_text(errors="replace")[-3000:]
    assert_same_fit(resumed, load_npz(tmp / "reference.npz"))

    summary = [(k.last_marker, k.committed) for k in run.kills]
    assert len(run.kills) == len(targets)
    assert any(k.mid_write for k in run.kills), summary
    assert any(k.mid_estep for k in run.kills), summary
    # A write torn by a kill left a group that no pointer names; the resume ignored it (the
    # committed state was the previous one) and cleaned it up.
    assert any(k.uncommitted_groups for k in run.kills), summary
    assert state_dirs(run.ckpt) == set(committed(run.ckpt))
    assert not list(run.ckpt.rglob("*.partial"))
    return run


def test_sigkill_gmm_full_resumes_bit_for_bit(tmp_path: Path, big: str, zygote: Zygote) -> None:
    # One restart of 24 iterations; kills anywhere, mid-write, in an E-step, after a commit.
    rng = random.Random(20261122)
    wd = 0.015
    targets = [
        Target(r"^iter 0 ", rng.randint(1, 3), rng.uniform(0.0, 0.5)),
        Target(r"^array ", rng.randint(2, 12), rng.uniform(0.0, wd)),
        Target(r"^estep-begin$", rng.randint(2, 5), rng.uniform(0.0, 0.004)),
        Target(r"^save-end ", rng.randint(1, 3), rng.uniform(0.0, 0.01)),
        Target(r"^array ", rng.randint(2, 12), rng.uniform(0.0, wd)),
    ]
    run = kill_and_resume(tmp_path, big, "gmm", targets, wd, zygote)
    assert run.kills[-1].committed[0] > 1


def test_sigkill_kmeans_restarts_resumes_bit_for_bit(
    tmp_path: Path, big: str, zygote: Zygote
) -> None:
    # Restarts of 20 (max_iter), 20 (max_iter) and 18 (converged) iterations, side by side.
    rng = random.Random(7)
    wd = 0.015
    targets = [
        Target(r"^iter \d ", rng.randint(3, 18), rng.uniform(0.0, 0.3)),
        Target(r"^estep-begin$", rng.randint(2, 5), rng.uniform(0.0, 0.004)),
        # During the write that folds restart 2 in (its final pass shared with iteration 19).
        Target(r"^save-begin \d+ 1 0$", 1, rng.uniform(0.0, wd)),
        # During the last write: every restart finished.
        Target(r"^save-begin \d+ 3 1$", 1, rng.uniform(0.0, wd)),
    ]
    run = kill_and_resume(tmp_path, big, "kmeans", targets, wd, zygote)
    assert max(k.committed[1] for k in run.kills) >= 1  # a kill after restarts finished


def test_sigkill_gmm_restarts_resumes_bit_for_bit(tmp_path: Path, big: str, zygote: Zygote) -> None:
    # Restarts of 12 (max_iter), 12 (max_iter) and 11 (converged) iterations, side by side.
    rng = random.Random(11)
    wd = 0.01
    targets = [
        Target(r"^iter \d ", rng.randint(1, 12), rng.uniform(0.0, 0.3)),
        Target(r"^save-begin ", rng.randint(2, 4), rng.uniform(0.0, wd)),
        Target(r"^estep-begin$", rng.randint(1, 3), rng.uniform(0.0, 0.004)),
        # During the write that folds restart 2 in (converged at 11).
        Target(r"^save-begin 11 1 0$", 1, rng.uniform(0.0, wd)),
    ]
    run = kill_and_resume(tmp_path, big, "gmm-restarts", targets, wd, zygote)
    assert run.kills[-1].committed[0] >= 10


# --------------------------------------------------------------------------------------------
# checkpoints damaged by hand
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(small: str) -> dict[str, np.ndarray]:
    """The uninterrupted fit of ``GMM()`` on ``small``."""
    ref = fitted(GMM().fit(small))
    assert ref["n_iter_"] >= 8 and ref["converged_"]  # an interruption at 4 is mid-way
    return ref


@pytest.fixture(scope="module")
def interrupted_once(tmp_path_factory: pytest.TempPathFactory, small: str) -> Path:
    """A checkpoint of a fit interrupted after iteration 4, made once per module.

    Tests damage or rewrite their checkpoint, so each gets a copy (``interrupted``): the fit
    is deterministic, so a copy is the checkpoint a fit of its own would have left, and
    copying costs a fraction of the fit.
    """
    ckpt = tmp_path_factory.mktemp("interrupted") / "ckpt"
    with pytest.raises(Crash):
        GMM(checkpoint=ckpt, observer=crash_at(0, 4)).fit(small)
    names = committed(ckpt)
    assert [state_iteration(ckpt, n) for n in names] == [3, 4]
    return ckpt


@pytest.fixture
def interrupted(
    tmp_path: Path, interrupted_once: Path, reference: dict[str, np.ndarray]
) -> tuple[Path, dict[str, np.ndarray]]:
    """This test's copy of the checkpoint interrupted after iteration 4, and the uninterrupted
    fit."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(interrupted_once, ckpt)
    return ckpt, reference


def delete_chunk(state: Path) -> None:
    chunks = [p for p in (state / "r0" / "params" / "means").rglob("*") if p.is_file()]
    chunks = [p for p in chunks if p.name != "zarr.json"]
    assert chunks
    chunks[0].unlink()


def flip_bytes(state: Path) -> None:
    (chunk,) = [
        p for p in (state / "r0" / "params" / "covariances" / "c").rglob("*") if p.is_file()
    ]
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))


def truncate_chunk(state: Path) -> None:
    (chunk,) = [p for p in (state / "r0" / "lower_bounds" / "c").rglob("*") if p.is_file()]
    chunk.write_bytes(chunk.read_bytes()[:5])


def garble_metadata(state: Path) -> None:
    (state / "zarr.json").write_bytes(b"\x00\xffnot json{{{" * 3)


def drop_metadata(state: Path) -> None:
    (state / "r0" / "params" / "weights" / "zarr.json").unlink()


DAMAGE = {
    "deleted-chunk": delete_chunk,
    "flipped-bytes": flip_bytes,
    "truncated-chunk": truncate_chunk,
    "garbage-zarr-json": garble_metadata,
    "missing-array-metadata": drop_metadata,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_state_falls_back_and_still_matches(
    interrupted: tuple[Path, dict[str, np.ndarray]], small: str, damage: str
) -> None:
    ckpt, reference = interrupted
    name = committed(ckpt)[-1]
    DAMAGE[damage](ckpt / name)
    with pytest.warns(CheckpointFallbackWarning, match=name):
        state = CheckpointStore(ckpt).load()
    assert state is not None and state.iteration == 3  # the previous committed iteration
    with pytest.warns(CheckpointFallbackWarning, match=f"(?s){name} .*older state"):
        model = GMM(checkpoint=ckpt).fit(small)
    assert_same_fit(fitted(model), reference)


def test_all_kept_states_damaged_is_a_clear_error(
    interrupted: tuple[Path, dict[str, np.ndarray]], small: str
) -> None:
    ckpt, _ = interrupted
    older, newer = committed(ckpt)
    delete_chunk(ckpt / newer)
    garble_metadata(ckpt / older)
    with pytest.raises(CheckpointError) as info:
        GMM(checkpoint=ckpt).fit(small)
    message = str(info.value)
    assert "no committed state" in message and str(ckpt) in message
    assert older in message and newer in message
    assert "overwrite=True" in message
    # Starting over explicitly works.
    GMM(checkpoint=CheckpointStore(ckpt, overwrite=True)).fit(small)


def test_corrupted_root_metadata_is_a_clear_error(
    interrupted: tuple[Path, dict[str, np.ndarray]], small: str
) -> None:
    ckpt, reference = interrupted
    (ckpt / "zarr.json").write_bytes(b"garbage \x00\x01\x02 {")
    with pytest.raises(CheckpointError, match="cannot be read") as info:
        GMM(checkpoint=ckpt).fit(small)
    assert str(ckpt) in str(info.value)
    model = GMM(checkpoint=CheckpointStore(ckpt, overwrite=True)).fit(small)
    assert_same_fit(fitted(model), reference)


def test_missing_root_metadata_is_a_clear_error(
    interrupted: tuple[Path, dict[str, np.ndarray]], small: str
) -> None:
    ckpt, _ = interrupted
    (ckpt / "zarr.json").unlink()
    with pytest.raises(CheckpointError, match="not an emdist checkpoint"):
        GMM(checkpoint=ckpt).fit(small)


def test_location_that_is_not_a_checkpoint_is_refused_and_untouched(
    tmp_path: Path, small: str
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("precious")
    (notes / "sub").mkdir()
    (notes / "sub" / "x.partial").write_text("also precious")
    group = tmp_path / "group.zarr"
    zarr.open_group(str(group), mode="w").attrs["what"] = "someone else's group"
    model = tmp_path / "model.zarr"
    # Plain EM converges within 3 iterations at this tol (SQUAREM tests only its EM passes).
    emdist.save_model(GMM(max_iter=3, tol=0.5, acceleration=None).fit(small), model)
    for location, match in [
        (notes, "not an emdist checkpoint"),
        (Path(small), "cannot be read|not an emdist checkpoint"),  # a Zarr array: the data!
        (group, "not an emdist checkpoint"),
        (model, "not an emdist checkpoint"),
    ]:
        before = tree_digest(location)
        with pytest.raises(CheckpointError, match=match):
            GMM(checkpoint=location).fit(small)
        assert tree_digest(location) == before, f"{location} was modified"


def test_kill_before_the_first_commit_does_not_block_the_rerun(
    tmp_path: Path, small: str, reference: dict[str, np.ndarray]
) -> None:
    """A kill between creating the root group and writing its attributes (the first two writes
    of ``CheckpointStore.open``) leaves a bare Zarr group with nothing committed: rerunning
    the same fit must simply start, not demand ``overwrite=True``."""
    ckpt = tmp_path / "ckpt"
    # Exactly what CheckpointStore.open writes first, before root.attrs.update(...).
    zarr.open_group(str(ckpt), mode="w", use_consolidated=False)
    assert json.loads((ckpt / "zarr.json").read_text())["attributes"] == {}
    model = GMM(checkpoint=ckpt).fit(small)
    assert_same_fit(fitted(model), reference)


# --------------------------------------------------------------------------------------------
# another configuration or dataset is refused
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n_components": 4}, "config.n_components"),
        ({"covariance_type": "diag"}, "config.covariance_type"),
        ({"tol": 1e-4}, "config.tol"),
        ({"random_state": 1}, "config.random_state"),
        ({"max_iter": 50}, "config.max_iter"),
        ({"reg_covar": 1e-5}, "config.reg_covar"),
    ],
)
def test_other_configuration_is_refused(
    interrupted: tuple[Path, dict[str, np.ndarray]], small: str, change: dict[str, Any], field: str
) -> None:
    ckpt, _ = interrupted
    before = tree_digest(ckpt)
    with pytest.raises(CheckpointMismatchError) as info:
        GMM(checkpoint=ckpt, **change).fit(small)
    message = str(info.value)
    assert field in message
    (value,) = change.values()
    assert repr(value) in message
    problems = [line for line in message.splitlines() if line.strip().startswith("- ")]
    assert len(problems) == 1, message  # only what differs is named
    assert "overwrite=True" in message
    assert tree_digest(ckpt) == before  # refused without touching the checkpoint


@pytest.mark.parametrize(
    ("change", "field"),
    [({"n_components": 4}, "config.n_components"), ({"random_state": 1}, "config.random_state")],
)
def test_overwrite_starts_over(
    interrupted: tuple[Path, dict[str, np.ndarray]], small: str, change: dict[str, Any], field: str
) -> None:
    ckpt, _ = interrupted
    # Starting over explicitly succeeds and gives the fresh fit of the new configuration.
    with no_convergence_warning():
        model = GMM(checkpoint=CheckpointStore(ckpt, overwrite=True), **change).fit(small)
        fresh = GMM(**change).fit(small)
    assert_same_fit(fitted(model), fitted(fresh))
    # The location now belongs to the new configuration: it resumes, the old one is refused.
    with no_convergence_warning():
        again = GMM(checkpoint=ckpt, **change).fit(small)
    assert_same_fit(fitted(again), fitted(fresh))
    with pytest.raises(CheckpointMismatchError, match=re.escape(field)):
        GMM(checkpoint=ckpt).fit(small)


def test_other_estimator_is_refused(
    interrupted: tuple[Path, dict[str, np.ndarray]], small: str
) -> None:
    ckpt, _ = interrupted
    with pytest.raises(CheckpointMismatchError, match="config.estimator"):
        emdist.KMeans(3, random_state=0, checkpoint=ckpt).fit(small)


def test_modified_dataset_is_refused(
    interrupted: tuple[Path, dict[str, np.ndarray]], small: str, tmp_path: Path
) -> None:
    ckpt, reference = interrupted
    before = tree_digest(ckpt)
    modified = tmp_path / "modified.zarr"
    shutil.copytree(small, modified)
    arr = zarr.open_array(str(modified), mode="r+")
    arr[2345, 1] = arr[2345, 1] + 0.5  # one value, in the fifth of six chunks
    with pytest.raises(CheckpointMismatchError) as info:
        GMM(checkpoint=ckpt).fit(str(modified))
    message = str(info.value)
    assert "data.moments_sha256" in message
    assert "config." not in message
    assert tree_digest(ckpt) == before

    fewer = write_zarr(tmp_path / "fewer.zarr", zarr.open_array(small)[:-1], 500)
    with pytest.raises(CheckpointMismatchError, match="data.n_samples"):
        GMM(checkpoint=ckpt).fit(fewer)
    rechunked = write_zarr(tmp_path / "rechunked.zarr", zarr.open_array(small)[...], 600)
    with pytest.raises(CheckpointMismatchError, match="data.row_chunks"):
        GMM(checkpoint=ckpt).fit(rechunked)
    # The original data still resumes, exactly.
    assert_same_fit(fitted(GMM(checkpoint=ckpt).fit(small)), reference)


def test_random_state_none_resumes_with_the_stored_seed(tmp_path: Path, small: str) -> None:
    make = functools.partial(
        emdist.GaussianMixture,
        3,
        n_init=3,
        max_iter=4,
        tol=0.0,
        init_params="random_from_data",
        random_state=None,
    )
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Crash):
        make(checkpoint=ckpt, observer=crash_at(0, 2)).fit(small)
    seed = CheckpointStore(ckpt).stored_seed()
    assert isinstance(seed, int)

    def recorder(log: list[tuple[int, int, float]]) -> Callable[[Any], None]:
        return lambda it: log.append((it.restart, it.iteration, it.lower_bound))

    resumed_log: list[tuple[int, int, float]] = []
    fresh_log: list[tuple[int, int, float]] = []
    other_log: list[tuple[int, int, float]] = []
    with no_convergence_warning():
        resumed = make(checkpoint=ckpt, observer=recorder(resumed_log)).fit(small)
        fresh = make(random_state=seed, observer=recorder(fresh_log)).fit(small)
        make(random_state=seed + 1, observer=recorder(other_log)).fit(small)
    assert_same_fit(fitted(resumed), fitted(fresh))
    # The restarts run side by side: all three resume at iteration 3, from the stored seed.
    assert resumed_log[0][:2] == (0, 3)
    assert resumed_log == [entry for entry in fresh_log if entry[1] >= 3]
    assert {r for r, _, _ in resumed_log} == {0, 1, 2}
    # ...and the seed matters: another one gives other restarts.
    assert [e for e in other_log if e[0] > 0] != [e for e in fresh_log if e[0] > 0]


@pytest.mark.parametrize("estimator", ["GaussianMixture", "KMeans"])
def test_checkpoint_records_the_seed_of_the_fit(tmp_path: Path, small: str, estimator: str) -> None:
    """``fit_seed`` takes a stored seed as the fit's own (``resolve_seed(random_state)``), so
    that is what the checkpoint must record, or a resumed fit draws other restarts."""
    ckpt = tmp_path / "ckpt"
    model = getattr(emdist, estimator)(3, random_state=5, max_iter=2, tol=0.0, checkpoint=ckpt)
    with no_convergence_warning():
        model.fit(small)
    assert CheckpointStore(ckpt).stored_seed() == 5


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_rng", [np.random.RandomState, np.random.default_rng], ids=["RandomState", "Generator"]
)
def test_seeded_generator_random_state_resumes(
    tmp_path: Path, small: str, make_rng: Callable[[int], Any]
) -> None:
    """The same script re-run after a crash builds an equal generator (a new object): the
    checkpoint must accept it as the same configuration, and resume exactly."""
    ckpt = tmp_path / "ckpt"
    first = make_rng(0)  # kept alive: the rerun's generator is another object, as in a new process
    with pytest.raises(Crash):
        GMM(random_state=first, checkpoint=ckpt, observer=crash_at(0, 4)).fit(small)
    again = make_rng(0)
    assert again is not first
    resumed = GMM(random_state=again, checkpoint=ckpt).fit(small)
    assert_same_fit(fitted(resumed), fitted(GMM(random_state=make_rng(0)).fit(small)))


def test_kmeans_interrupted_in_each_restart_resumes_exactly(tmp_path: Path, small: str) -> None:
    # Restarts of 10 (max_iter), 7 (converged) and 9 (converged) iterations, from random rows
    # (the default k-means|| start's restarts here all converge within a few iterations).
    make = functools.partial(
        emdist.KMeans, 3, n_init=3, tol=1e-3, max_iter=10, init="random", random_state=45
    )
    conv: dict[int, bool] = {}
    with no_convergence_warning():
        reference = fitted(
            make(observer=lambda it: conv.update({it.restart: it.converged})).fit(small)
        )
    assert conv == {0: False, 1: True, 2: True}
    ckpt = tmp_path / "ckpt"
    # The restarts run side by side: interruptions come in the order of their iterations.
    for restart, iteration in [(1, 2), (0, 3), (2, 5), (0, 8)]:
        with pytest.raises(Crash), no_convergence_warning():
            make(checkpoint=ckpt, observer=crash_at(restart, iteration)).fit(small)
        state = CheckpointStore(ckpt).load()
        assert state is not None
        assert state.iteration == iteration
        assert restart in {r.restart for r in state.running}
    assert state.finished == (1,)  # restart 1 converged at 7, and was compared
    with no_convergence_warning():
        assert_same_fit(fitted(make(checkpoint=ckpt).fit(small)), reference)
    # A finished checkpoint returns the same model without iterating.
    iterations: list[int] = []
    with no_convergence_warning():
        again = make(checkpoint=ckpt, observer=lambda it: iterations.append(it.iteration))
        again.fit(small)
    assert iterations == []
    assert_same_fit(fitted(again), reference)


# --------------------------------------------------------------------------------------------
# pruning, every=N, stray files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keep_prunes_old_states(tmp_path: Path, small: str, keep: int) -> None:
    ckpt = tmp_path / "ckpt"
    seen: list[list[str]] = []

    def observer(it: Any) -> None:
        names = committed(ckpt)
        assert state_dirs(ckpt) == set(names)
        assert len(names) <= keep
        seen.append(names)

    with no_convergence_warning():
        model = GMM(
            n_init=2, tol=0.0, max_iter=4, checkpoint=CheckpointStore(ckpt, keep=keep)
        ).set_params(observer=observer)
        model.fit(small)
    assert len(seen) == 8
    assert len(committed(ckpt)) == keep
    assert state_dirs(ckpt) == set(committed(ckpt))
    # The two restarts side by side: one commit per pass; the last one also ends both.
    numbers = [int(n[1:]) for n in committed(ckpt)]
    assert numbers == list(range(4 - keep, 4))
    last = state_attrs(ckpt, committed(ckpt)[-1])
    assert (last["running"], last["finished"]) == ([], [0, 1])


def test_a_commit_rewrites_the_root_document_once(
    tmp_path: Path, small: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pointer and its count in one write: a kill between two writes would leave a
    # pointer that disagrees with its count, which the next run refuses as damage.
    ckpt = tmp_path / "ckpt"
    writes: list[dict[str, Any]] = []
    real_set = zarr.storage.LocalStore.set

    async def recording_set(self: Any, key: str, value: Any) -> None:
        await real_set(self, key, value)
        if Path(self.root) == ckpt and key == "zarr.json":
            writes.append(root_attrs(ckpt))

    monkeypatch.setattr(zarr.storage.LocalStore, "set", recording_set)
    with no_convergence_warning():
        GMM(tol=0.0, max_iter=4, checkpoint=CheckpointStore(ckpt, keep=2)).fit(small)
    assert [w["commits"] for w in writes] == [0, 1, 2, 3, 4]
    for w in writes:
        assert len(w["committed"]) == min(w["commits"], 2)


def test_a_reader_beside_the_fit_follows_the_pointer_past_pruned_states(
    tmp_path: Path, small: str
) -> None:
    # One reader object kept across commits, as a progress message or a report beside a
    # running fit: the states it last saw are pruned (keep=1) by the time it reads again.
    ckpt = tmp_path / "ckpt"
    reader = CheckpointStore(ckpt)
    seen: list[int] = []

    def observer(it: Any) -> None:
        state = reader.load()
        assert state is not None
        seen.append(state.iteration if state.running else -1)

    with no_convergence_warning(), warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointFallbackWarning)  # nothing here is damaged
        GMM(tol=0.0, max_iter=5, checkpoint=CheckpointStore(ckpt, keep=1)).set_params(
            observer=observer
        ).fit(small)
    assert seen == [1, 2, 3, 4, -1]


def test_every_n_commits_every_nth_iteration_and_restart_ends(tmp_path: Path, small: str) -> None:
    ckpt = tmp_path / "ckpt"
    newest_after: list[tuple[int, int, int | str | None]] = []

    def observer(it: Any) -> None:
        names = committed(ckpt)
        top: int | str | None = None
        if names:
            a = state_attrs(ckpt, names[-1])
            top = state_iteration(ckpt, names[-1]) if a["running"] else "done"
        newest_after.append((it.restart, it.iteration, top))

    with no_convergence_warning():
        GMM(n_init=2, tol=0.0, max_iter=8, checkpoint=CheckpointStore(ckpt, every=3)).set_params(
            observer=observer
        ).fit(small)
    expected: list[tuple[int, int, int | str | None]] = []
    for i in range(1, 9):  # the two restarts side by side: both see each pass's commit
        top: int | str | None = None if i < 3 else i - i % 3
        if i == 8:
            top = "done"  # max_iter always commits; both restarts end there
        expected += [(0, i, top), (1, i, top)]
    assert newest_after == expected
    a = state_attrs(ckpt, committed(ckpt)[-1])
    assert (a["running"], a["finished"]) == ([], [0, 1])


def test_every_n_resume_redoes_at_most_n_iterations_exactly(
    tmp_path: Path, small: str, reference: dict[str, np.ndarray]
) -> None:
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Crash):
        GMM(checkpoint=CheckpointStore(ckpt, every=3), observer=crash_at(0, 8)).fit(small)
    iterations: list[int] = []
    model = GMM(checkpoint=CheckpointStore(ckpt, every=3)).set_params(
        observer=lambda it: iterations.append(it.iteration)
    )
    assert_same_fit(fitted(model.fit(small)), reference)
    assert iterations[0] == 7  # committed at 6, so 7 and 8 are redone


def test_converged_iteration_commits_even_between_every(
    tmp_path: Path, small: str, reference: dict[str, np.ndarray]
) -> None:
    n_iter = int(reference["n_iter_"])
    assert n_iter % 5 != 0
    ckpt = tmp_path / "ckpt"
    tops: list[tuple[int, bool, bool]] = []

    def observer(it: Any) -> None:
        if it.converged:
            a = state_attrs(ckpt, committed(ckpt)[-1])
            best = a["best"]
            tops.append((best["n_iter"], best["converged"], a["finished"]))

    GMM(checkpoint=CheckpointStore(ckpt, every=5), observer=observer).fit(small)
    # The converged restart is committed at once, compared and kept.
    assert tops == [(n_iter, True, [0])]


def test_stray_partial_files_and_unreferenced_groups_are_cleaned_on_open(
    interrupted: tuple[Path, dict[str, np.ndarray]], small: str
) -> None:
    ckpt, reference = interrupted
    top = committed(ckpt)[-1]
    strays = [
        ckpt / "s999999",  # a group whose write a crash interrupted
        ckpt / "zarr.json.partial",
        ckpt / top / "zarr.json.partial",
        ckpt / top / "r0" / "params" / "means" / "c" / "0.partial",
        ckpt / "s999999" / "lower_bounds" / "zarr.json.partial",
    ]
    (ckpt / "s999999" / "lower_bounds").mkdir(parents=True)
    (ckpt / "s999999" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    for p in strays[1:]:
        p.write_bytes(b"half a write")
    checked: list[bool] = []

    def observer(it: Any) -> None:
        if not checked:  # right after open (and the first commit of the resumed fit)
            checked.append(not any(p.exists() for p in strays))

    model = GMM(checkpoint=ckpt, observer=observer).fit(small)
    assert checked == [True]
    assert_same_fit(fitted(model), reference)
    assert not list(ckpt.rglob("*.partial"))
    assert state_dirs(ckpt) == set(committed(ckpt))


# --------------------------------------------------------------------------------------------
# no pickle anywhere
# --------------------------------------------------------------------------------------------

FORBIDDEN = {
    "pickle.load": re.compile(
        r"\b(c?pickle|dill|cloudpickle|joblib|marshal|shelve)\.(load|loads|open)\b"
    ),
    "np.load(allow_pickle=True)": re.compile(r"allow_pickle\s*=\s*True"),
    "unpickler": re.compile(r"\bUnpickler\b"),
    "from pickle import load": re.compile(
        r"from\s+(c?pickle|dill|cloudpickle)\s+import\s+.*\bloads?\b"
    ),
}


def test_source_never_unpickles() -> None:
    files = sorted(EMDIST_SRC.rglob("*.py"))
    assert len(files) > 10
    hits = []
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for what, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    hits.append(
                        f"{path.relative_to(EMDIST_SRC.parent)}:{n}: {what}: {line.strip()}"
                    )
    assert hits == []
    # The patterns do catch what they are meant to.
    for bad in ["pickle.loads(b)", "np.load(p, allow_pickle=True)", "from pickle import load"]:
        assert any(p.search(bad) for p in FORBIDDEN.values()), bad


def test_checkpoint_holds_only_zarr_metadata_and_raw_chunks(tmp_path: Path, small: str) -> None:
    ckpt = tmp_path / "ckpt"
    # Restarts of 10 (max_iter), 7 (converged) and 9 (converged) iterations from random rows:
    # at iteration 8 restart 1 is finished (best/) while restart 0 still runs.
    with pytest.raises(Crash), no_convergence_warning():
        emdist.KMeans(
            3,
            n_init=3,
            tol=1e-3,
            max_iter=10,
            init="random",
            random_state=45,
            checkpoint=ckpt,
            observer=crash_at(0, 8),
        ).fit(small)
    arrays = set()
    for meta in ckpt.rglob("zarr.json"):
        doc = json.loads(meta.read_text())  # strict JSON
        assert doc["zarr_format"] == 3
        if doc["node_type"] == "array":
            arrays.add(meta.parent)
            assert doc["data_type"] in ("float64", "int64", "int32", "bool"), doc["data_type"]
            assert [c["name"] for c in doc["codecs"]] == ["bytes"], doc["codecs"]
        else:
            assert doc["node_type"] == "group"
    top = ckpt / committed(ckpt)[-1]
    names = {str(a.relative_to(top)) for a in arrays if top in a.parents}
    assert {"r0/params/centers", "r0/lower_bounds", "best/centers", "best_lower_bounds"} <= names
    for path in ckpt.rglob("*"):
        if path.is_dir() or path.name == "zarr.json":
            continue
        owner = next((a for a in arrays if a in path.parents), None)
        assert owner is not None, f"{path} belongs to no array"
        rel = path.relative_to(owner).parts
        assert rel[0] == "c" and all(part.isdigit() for part in rel[1:]), path


# --------------------------------------------------------------------------------------------
# tampered states: fields edited and array checksums recomputed, as an attacker would
# --------------------------------------------------------------------------------------------


def replace_array(state: Path, key: str, value: np.ndarray) -> None:
    """Rewrite array ``key`` of a state with ``value`` and a checksum that matches it."""
    group = zarr.open_group(str(state), mode="r+", use_consolidated=False)
    del group[key]
    target = group.create_array(key, shape=value.shape, dtype=value.dtype, compressors=None)
    target[...] = value
    doc = json.loads((state / "zarr.json").read_text())
    doc["attributes"]["checksums"][key] = array_digest(value)
    (state / "zarr.json").write_text(json.dumps(doc))


def edit_state(state: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads((state / "zarr.json").read_text())
    edit(doc["attributes"])
    (state / "zarr.json").write_text(json.dumps(doc))


def read_array(state: Path, key: str) -> np.ndarray:
    return np.asarray(zarr.open_array(str(state / key), mode="r")[...])


def _negated_covariance(state: Path, run: str) -> None:
    cov = read_array(state, f"{run}/covariances").copy()
    cov[0] = -np.eye(cov.shape[-1])
    replace_array(state, f"{run}/covariances", cov)


def _weights(state: Path, run: str) -> None:
    replace_array(state, f"{run}/weights", np.array([0.9, 0.9, -0.8]))


def _means_wrong_shape_with_inf(state: Path, run: str) -> None:
    replace_array(state, f"{run}/means", np.full((5, 2), np.inf))


def _means_wrong_shape(state: Path, run: str) -> None:
    replace_array(state, f"{run}/means", np.zeros((5, 2)))


def _factor_of_another_covariance(state: Path, run: str) -> None:
    factor = read_array(state, f"{run}/precisions_cholesky").copy()
    replace_array(state, f"{run}/precisions_cholesky", 3 * factor)


TAMPERED_PARAMS: dict[str, tuple[Callable[[Path, str], None], str]] = {
    "covariance -I": (_negated_covariance, "covariances_"),
    "negative weights": (_weights, "weights_"),
    "means of a wrong shape with inf": (_means_wrong_shape_with_inf, "means"),
    "means of a wrong shape": (_means_wrong_shape, "means_"),
    "factor of another covariance": (_factor_of_another_covariance, "precisions_cholesky_"),
}


def every_state(ckpt: Path, edit: Callable[[Path], None]) -> None:
    for name in committed(ckpt):
        edit(ckpt / name)


def assert_refused(ckpt: Path, small: str, *words: str) -> None:
    before = tree_digest(ckpt)
    with pytest.raises(CheckpointError) as info:
        GMM(checkpoint=ckpt).fit(small)
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message
    assert tree_digest(ckpt) == before  # refused without touching the checkpoint


@pytest.mark.parametrize("case", sorted(TAMPERED_PARAMS))
def test_tampered_running_parameters_are_refused_naming_the_field(
    interrupted: tuple[Path, dict[str, np.ndarray]], small: str, case: str
) -> None:
    """Parameters are checked as a saved model's are: shapes against the configuration,
    finite, weights on the simplex, covariances positive definite, precisions inverse."""
    ckpt, _ = interrupted
    edit, field = TAMPERED_PARAMS[case]
    every_state(ckpt, lambda state: edit(state, "r0/params"))
    assert_refused(ckpt, small, field, "r0/params")


@pytest.fixture(scope="module")
def finished_once(tmp_path_factory: pytest.TempPathFactory, small: str) -> Path:
    """A checkpoint of a finished fit, made once per module (tests tamper with copies)."""
    ckpt = tmp_path_factory.mktemp("finished") / "ckpt"
    GMM(checkpoint=ckpt).fit(small)
    assert state_attrs(ckpt, committed(ckpt)[-1])["running"] == []
    return ckpt


@pytest.fixture
def finished(tmp_path: Path, finished_once: Path) -> Path:
    """This test's copy of a finished fit's checkpoint: its newest state holds only the best
    restart."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(finished_once, ckpt)
    return ckpt


@pytest.mark.parametrize("case", sorted(TAMPERED_PARAMS))
def test_tampered_best_parameters_are_refused_naming_the_field(
    finished: Path, small: str, case: str
) -> None:
    edit, field = TAMPERED_PARAMS[case]

    def tamper(state: Path) -> None:
        if state_attrs(state.parent, state.name).get("best") is not None:
            edit(state, "best")

    every_state(finished, tamper)
    newest = finished / committed(finished)[-1]
    assert newest.exists()
    with pytest.raises(CheckpointError, match=re.escape(field)):
        _read(finished)


def _read(ckpt: Path) -> Any:
    store = CheckpointStore(ckpt)
    store._root = zarr.open_group(str(ckpt), mode="r", use_consolidated=False)
    return store._read_state(committed(ckpt)[-1])


TAMPERED_FIELDS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "n_iter of another length": (lambda a: a["best"].update(n_iter=2), "best.n_iter"),
    "NaN score": (lambda a: a["best"].update(score=float("nan")), "best.score"),
    "converged not a bool": (lambda a: a["best"].update(converged="yes"), "best.converged"),
    "a million running": (lambda a: a.update(running=[{}] * 1_000_000), "running"),
    "a million finished": (lambda a: a.update(finished=[0] * 1_000_000), "finished"),
    "checksum not a digest": (
        lambda a: a["checksums"].update(best_lower_bounds="x" * 64),
        "checksums.best_lower_bounds",
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERED_FIELDS))
def test_tampered_state_fields_are_refused_naming_the_field(finished: Path, case: str) -> None:
    edit, field = TAMPERED_FIELDS[case]
    edit_state(finished / committed(finished)[-1], edit)
    with pytest.raises(CheckpointError, match=re.escape(f"'{field}'")) as info:
        _read(finished)
    assert len(str(info.value)) < 300


def test_nan_bound_of_a_running_restart_is_refused(
    interrupted: tuple[Path, dict[str, np.ndarray]], small: str
) -> None:
    ckpt, _ = interrupted

    def tamper(state: Path) -> None:
        bounds = read_array(state, "r0/lower_bounds").copy()
        bounds[-1] = np.nan
        replace_array(state, "r0/lower_bounds", bounds)

    every_state(ckpt, tamper)
    assert_refused(ckpt, small, "'r0/lower_bounds'")


def test_iterations_beyond_max_iter_are_refused(
    interrupted: tuple[Path, dict[str, np.ndarray]], small: str
) -> None:
    ckpt, _ = interrupted

    def tamper(state: Path) -> None:
        replace_array(state, "r0/lower_bounds", np.linspace(-5, -1, 500))
        edit_state(state, lambda a: a["running"][0].update(iteration=500))

    every_state(ckpt, tamper)
    assert_refused(ckpt, small, "'running[0].iteration'", "max_iter")


@pytest.mark.parametrize("seed", ["abc", "-1", "1e6", 12, "9" * 400])
def test_garbage_seed_is_one_line_naming_the_field(
    interrupted: tuple[Path, dict[str, np.ndarray]], small: str, seed: Any
) -> None:
    ckpt, _ = interrupted
    doc = json.loads((ckpt / "zarr.json").read_text())
    doc["attributes"]["seed"] = seed
    (ckpt / "zarr.json").write_text(json.dumps(doc))
    assert_refused(ckpt, small, "'seed'")


@pytest.mark.parametrize(
    "names",
    [
        pytest.param([f"s{i:06d}" for i in range(1_000_000)], id="a million states"),
        pytest.param(["s000001"] * 2000, id="two thousand repeats"),
    ],
)
def test_overlong_committed_list_is_refused_before_use(
    interrupted: tuple[Path, dict[str, np.ndarray]], small: str, names: list[str]
) -> None:
    ckpt, _ = interrupted
    doc = json.loads((ckpt / "zarr.json").read_text())
    doc["attributes"].update(committed=names, commits=len(names))
    (ckpt / "zarr.json").write_text(json.dumps(doc))
    assert_refused(ckpt, small, "'committed'", f"{len(names):,}")


@pytest.mark.parametrize("commits", [True, "3", -1, 1.5])
def test_commits_count_must_be_an_int(
    interrupted: tuple[Path, dict[str, np.ndarray]], small: str, commits: Any
) -> None:
    ckpt, _ = interrupted
    doc = json.loads((ckpt / "zarr.json").read_text())
    doc["attributes"]["commits"] = commits
    (ckpt / "zarr.json").write_text(json.dumps(doc))
    assert_refused(ckpt, small, "'commits'")


@pytest.mark.parametrize("path", ["/dev/null", "/dev/zero"])
def test_character_device_as_checkpoint_is_one_line(small: str, path: str) -> None:
    with pytest.raises(CheckpointError, match="character device") as info:
        GMM(checkpoint=path).fit(small)
    assert "\n" not in str(info.value)


def test_regular_file_as_checkpoint_is_one_line(tmp_path: Path, small: str) -> None:
    plain = tmp_path / "notes.txt"
    plain.write_text("mine")
    with pytest.raises(CheckpointError, match="regular file"):
        GMM(checkpoint=plain).fit(small)
    assert plain.read_text() == "mine"


@pytest.mark.parametrize("keep", [True, 0, 10**9, 2.0])
def test_keep_is_bounded(tmp_path: Path, keep: Any) -> None:
    with pytest.raises(InvalidParameterError, match="keep"):
        CheckpointStore(tmp_path / "ckpt", keep=keep)
