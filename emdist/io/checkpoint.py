"""Crash-safe checkpoints of a fit in a Zarr group: arrays and JSON attributes, no pickle.

Layout of a checkpoint directory::

    <path>/zarr.json            root attributes: format, config, fingerprint, ``committed``
    <path>/<name>/              one group per committed state, e.g. ``s000012``
        r<i>/params/<array>     parameters of running restart ``i`` after its last M-step
        r<i>/lower_bounds       its lower bound per iteration
        r<i>/carry/<array>      what else running restart ``i`` needs to continue exactly
                                (incremental EM: its shard statistics), if anything
        best/<array>            parameters of the best finished restart (if any)
        best_lower_bounds
        zarr.json               attributes: running restarts, finished ones, best, checksums

The restarts of a fit run side by side, sharing each pass over the data
(:mod:`emdist.engine.lockstep`), so a state holds every restart still running; the
finished ones are folded into ``best``. Incremental EM runs its restarts one after another
(:mod:`emdist.engine.incremental`): its states hold one running restart, with its shard
statistics as that restart's ``carry``. Version 1 checkpoints (one restart at a time) are
refused with a message that says to start over.

Commit protocol (docs/design.md, "Checkpoints"): a state is written completely into a new
group, then *one* key — the root's ``zarr.json`` — is rewritten to point at it. Each key
write is atomic (temp file + rename), so a crash at any instant leaves the previous pointer
and the group it names intact. Readers follow the pointer and verify a SHA-256 of every
array (Zarr silently returns the fill value for a missing chunk); a state that fails its
check falls back to the previous kept state, never to a silently wrong model. Groups that no
pointer names (a crash mid-write) and stray ``*.partial`` files are removed when the store
is opened for writing.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import shutil
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from emdist._typing import AnyArray, FloatArray
from emdist.exceptions import EmdistError, EmdistWarning, InvalidParameterError
from emdist.io.disk import disk_full_error, is_disk_full
from emdist.io.integrity import (
    UnsafeNameError,
    check_contained,
    check_declared_size,
    safe_child,
    safe_name,
)
from emdist.io.integrity import array_digest as _digest
from emdist.io.locks import WriterLock, WriterLockedError
from emdist.registry import estimator_class

__all__ = [
    "BestState",
    "RestartState",
    "CheckpointError",
    "CheckpointFallbackWarning",
    "CheckpointMismatchError",
    "CheckpointStore",
    "FitState",
    "WriterLockedError",
]

FORMAT = "emdist-checkpoint"
VERSION = 2
# The only names save() gives state groups: anything else in `committed` was not written by
# emdist, and nothing else in the folder is ever deleted as a stray.
_STATE_NAME = re.compile(r"s[0-9]{6,}")
# Group of a running restart inside a state.
_RUN_NAME = "r{}"
#: Most committed states a checkpoint keeps (``keep``): a longer ``committed`` list is damage,
#: refused before any of its names is looked at.
MAX_KEEP = 1000
#: Most arrays a state may list (parameters, bounds and carry of every running restart): a
#: state of the largest ``n_init`` holds a few per restart.
MAX_ARRAYS = 100_000
#: Times a reader follows a pointer that moved while it read (a fit commits every pass).
_READ_ATTEMPTS = 20
#: Most restarts a state may list when the configuration does not say ``n_init``.
MAX_RESTARTS = 100_000
# Seeds are non-negative 64-bit integers, stored as decimal strings.
_SEED = re.compile(r"[0-9]{1,20}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class CheckpointError(EmdistError, RuntimeError):
    """A checkpoint cannot be read (corrupted beyond its kept fallbacks)."""


class CheckpointMismatchError(EmdistError, ValueError):
    """A checkpoint belongs to another configuration or dataset."""


class CheckpointFallbackWarning(EmdistWarning):
    """The newest checkpoint state was damaged; an older committed one is used."""


@dataclass(frozen=True)
class BestState:
    """The best restart finished so far.

    Attributes
    ----------
    restart : int
    params : dict of str to ndarray
    lower_bounds : ndarray
    n_iter : int
    converged : bool
    score : float
        What restarts are compared by (larger is better: lower bound, or minus inertia).
    """

    restart: int
    params: dict[str, AnyArray]
    lower_bounds: FloatArray
    n_iter: int
    converged: bool
    score: float


@dataclass(frozen=True)
class RestartState:
    """One restart that has not been compared with the others yet.

    Attributes
    ----------
    restart : int
        Index of the restart.
    params : dict of str to ndarray
        Parameters after its last M-step.
    lower_bounds : ndarray
        Lower bound per iteration (its length is the iteration count).
    converged : bool
    carry : dict of str to ndarray
        Arrays the restart needs besides its parameters to continue bit for bit
        (incremental EM keeps its shard statistics here; batch EM nothing); checksummed
        like the parameters, and their names listed in the state so that none goes missing
        unnoticed.
    """

    restart: int
    params: dict[str, AnyArray]
    lower_bounds: FloatArray
    converged: bool
    carry: dict[str, AnyArray] = field(default_factory=dict)

    @property
    def iteration(self) -> int:
        """Iterations done by this restart."""
        return len(self.lower_bounds)


@dataclass(frozen=True)
class FitState:
    """Everything needed to continue a fit exactly where it stopped.

    Attributes
    ----------
    running : tuple of RestartState
        The restarts not finished yet, by index. A restart whose EM is over (converged or
        out of iterations) stays here until it has been compared (K-means: after its
        final assignment pass).
    finished : tuple of int
        The restarts over and folded into ``best``.
    best : BestState or None
        Best restart finished so far.
    extra : dict
        JSON-able extras.
    """

    running: tuple[RestartState, ...]
    finished: tuple[int, ...] = ()
    best: BestState | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def iteration(self) -> int:
        """Iterations done by the furthest running restart (0 when none runs)."""
        return max((r.iteration for r in self.running), default=0)

    @property
    def done(self) -> bool:
        """Whether no restart is running.

        The fit is over, or (incremental EM, whose restarts run one after another) between
        two restarts.
        """
        return not self.running


def _json_safe(obj: Any) -> Any:
    """Plain-JSON version of a config (numpy scalars and arrays made explicit)."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"ndarray_sha256": _digest(obj), "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return repr(obj)


def _file_kind(path: Path) -> str:
    """What ``path`` is, in words (for errors about a location that is not a directory)."""
    mode = path.stat().st_mode
    for test, words in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return words
    return "not a directory"


def _diff(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            out += _diff(saved.get(key), current.get(key), f"{prefix}{key}.")
        return out
    if saved != current:
        return [f"{prefix.rstrip('.')}: checkpoint has {saved!r}, this run has {current!r}"]
    return []


def _int_field(
    attrs: Mapping[str, Any], key: str, low: int, high: int | None, prefix: str = ""
) -> int:
    """An integer attribute within ``[low, high]``, or CheckpointError naming the field."""
    value = attrs.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"field '{prefix}{key}' is {_short(value)}, not an integer")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise CheckpointError(f"field '{prefix}{key}' is {value}, outside {bound}")
    return value


def _bool_field(attrs: Mapping[str, Any], key: str, prefix: str = "") -> bool:
    value = attrs.get(key)
    if not isinstance(value, bool):
        raise CheckpointError(f"field '{prefix}{key}' is {_short(value)}, not a boolean")
    return value


def _list_field(attrs: Mapping[str, Any], key: str, longest: int, prefix: str = "") -> list[Any]:
    """A list attribute of at most ``longest`` entries (checked before any entry is used)."""
    value = attrs.get(key)
    if not isinstance(value, list):
        raise CheckpointError(f"field '{prefix}{key}' is {_short(value)}, not a list")
    if len(value) > longest:
        raise CheckpointError(
            f"field '{prefix}{key}' lists {len(value):,} entries; at most {longest:,} are possible"
        )
    return value


def _short(value: Any) -> str:
    """``repr`` of a stored value, cut short (a hostile field may be megabytes long)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({type(value).__name__})"


def _float_array(arrays: Mapping[str, AnyArray], key: str, ndim: int) -> FloatArray:
    value = arrays.get(key)
    if value is None or value.dtype.kind != "f" or value.ndim != ndim:
        raise CheckpointError(f"field {key!r} is missing or not a {ndim}-D float array")
    if not np.all(np.isfinite(value)):
        raise CheckpointError(f"field {key!r} holds NaN or infinity")
    return value


class CheckpointStore:
    """A checkpoint location for a fit.

    Parameters
    ----------
    path : str or path
        Directory of the Zarr group (created when needed).
    every : int, default=1
        Commit after every ``every``-th iteration (and always when a restart ends).
    keep : int, default=2
        Committed states kept; older ones are pruned. Keeping more than one gives a fallback
        when the newest is damaged.
    overwrite : bool, default=False
        Start over: discard whatever the location holds instead of resuming (and instead of
        refusing a checkpoint of another configuration or dataset).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        every: int = 1,
        keep: int = 2,
        overwrite: bool = False,
    ) -> None:
        for name, value, high in (("every", every, None), ("keep", keep, MAX_KEEP)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise InvalidParameterError(f"{name} must be an int >= 1; got {value!r}")
            if high is not None and value > high:
                raise InvalidParameterError(f"{name} must be at most {high}; got {value!r}")
        self.path = Path(path)
        self.every = int(every)
        self.keep = int(keep)
        self.overwrite = bool(overwrite)
        self._root: zarr.Group | None = None
        self._counter = 0
        self._lock: WriterLock | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A copy (deepcopy, pickle) is a new writer: it takes its own lock when opened.
        return {**self.__dict__, "_lock": None}

    def close(self) -> None:
        """Release the writer lock taken by :meth:`open` (a later ``open`` takes it again)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __repr__(self) -> str:
        return (
            f"CheckpointStore({str(self.path)!r}, every={self.every}, keep={self.keep}, "
            f"overwrite={self.overwrite})"
        )

    # -- opening ---------------------------------------------------------------------------

    def stored_seed(self) -> int | None:
        """The seed recorded by the fit this checkpoint belongs to (``None`` if none).

        A fit with ``random_state=None`` draws a fresh seed; resuming it must reuse the
        recorded one so that the resumed fit equals the uninterrupted one.
        """
        if self.overwrite or not (self.path / "zarr.json").exists() or self._is_bare_group():
            return None
        seed = self._open_root(mode="r").attrs.get("seed")
        if seed is None:
            return None
        if not isinstance(seed, str) or not _SEED.fullmatch(seed) or int(seed) >= 2**64:
            raise CheckpointError(
                f"the checkpoint at {self.path} is damaged: field 'seed' is {_short(seed)}, not "
                f"a non-negative 64-bit integer as a decimal string; start over with "
                f"overwrite=True"
            )
        return int(seed)

    def open(
        self, config: Mapping[str, Any], fingerprint: Mapping[str, Any], seed: int = 0
    ) -> FitState | None:
        """Open for a fit: return the state to resume from, or ``None`` to start afresh.

        Parameters
        ----------
        config : mapping
            The model's configuration (JSON-able; arrays are hashed).
        fingerprint : mapping
            A fingerprint of the data.
        seed : int, default=0
            The fit's seed, recorded for :meth:`stored_seed`.

        Returns
        -------
        FitState or None

        Raises
        ------
        CheckpointMismatchError
            If the location holds a checkpoint of another configuration or dataset (unless
            ``overwrite``); the message lists what differs.
        CheckpointError
            If the location holds something that is not a readable checkpoint.
        WriterLockedError
            If another live process has this checkpoint open for writing.
        """
        config_j = _json_safe(dict(config))
        fingerprint_j = _json_safe(dict(fingerprint))
        if self.path.exists() and not self.path.is_dir():
            raise CheckpointError(
                f"the checkpoint location {self.path} is {_file_kind(self.path)}, not a "
                f"directory; choose a directory (it is created when missing)"
            )
        # One writer per checkpoint, taken before anything is deleted or written. Held until
        # close(), or until this store is garbage-collected or the process exits.
        if self._lock is None:
            self._lock = WriterLock(self.path, "checkpoint").acquire()
        if self.overwrite and self.path.exists():
            if not self._is_checkpoint_or_empty():
                raise CheckpointError(
                    f"{self.path} is not an emdist checkpoint; refusing to delete it to start "
                    f"over. Choose another checkpoint location."
                )
            shutil.rmtree(self.path)
            self.overwrite = False  # only the first open of this fit starts over
        if self._is_bare_group():
            # Left by a writer killed between creating the group and naming it (older
            # versions wrote the two separately): nothing was ever committed.
            shutil.rmtree(self.path)
        if not (self.path / "zarr.json").exists():
            if self.path.exists() and any(self.path.iterdir()):
                raise CheckpointError(
                    f"{self.path} exists but is not an emdist checkpoint; choose another "
                    f"location or delete it"
                )
            self._root = self._create_root(config_j, fingerprint_j, seed)
            return None
        root = self._open_root(mode="r+")
        attrs = root.attrs.asdict()
        problems = _diff(attrs.get("config"), config_j, "config.") + _diff(
            attrs.get("fingerprint"), fingerprint_j, "data."
        )
        if problems:
            raise CheckpointMismatchError(
                f"The checkpoint at {self.path} belongs to another run:\n  - "
                + "\n  - ".join(problems)
                + "\nUse a new checkpoint location, or start over with overwrite=True."
            )
        self._root = root
        self._clean_strays()
        return self.load()

    def _is_bare_group(self) -> bool:
        meta = self.path / "zarr.json"
        if not meta.is_file() or any(p.is_dir() for p in self.path.iterdir()):
            return False
        try:
            doc = json.loads(meta.read_text())
        except (OSError, ValueError):
            return False
        return bool(doc.get("node_type") == "group" and not doc.get("attributes"))

    def _is_checkpoint_or_empty(self) -> bool:
        if not any(self.path.iterdir()):
            return True
        try:
            self._open_root(mode="r")
        except CheckpointError as exc:
            # A damaged checkpoint of ours may be discarded; a foreign directory may not.
            return "is not an emdist checkpoint" not in str(exc)
        return True

    def _open_root(self, mode: str) -> zarr.Group:
        try:
            root = zarr.open_group(str(self.path), mode=mode, use_consolidated=False)  # type: ignore[arg-type]
            attrs = root.attrs.asdict()
        except Exception as exc:  # zarr raises many kinds on a damaged document
            raise CheckpointError(
                f"the checkpoint at {self.path} cannot be read ({type(exc).__name__}: {exc}); "
                f"delete it or start over with overwrite=True"
            ) from exc
        if attrs.get("format") != FORMAT:
            raise CheckpointError(f"{self.path} is not an emdist checkpoint")
        if attrs.get("version") == 1:
            # Restarts ran one after another then; their states do not say which restarts
            # are running side by side, and the few iterations they hold are cheap to redo.
            raise CheckpointError(
                f"{self.path} is a version 1 checkpoint (restarts one after another); this "
                f"emdist runs restarts side by side and reads version {VERSION}: start over "
                f"with overwrite=True (CLI: --restart) or use a new checkpoint location"
            )
        if attrs.get("version") != VERSION:
            raise CheckpointError(
                f"{self.path} is a version {attrs.get('version')} checkpoint; this emdist "
                f"reads version {VERSION}"
            )
        return root

    def _committed(self) -> list[str]:
        """The committed state names, each checked to be a state group inside the store."""
        assert self._root is not None
        attrs = self._root.attrs
        names = attrs.get("committed", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names[:MAX_KEEP]):
            raise CheckpointError(
                f"the checkpoint at {self.path} is damaged: field 'committed' must be a list "
                f"of state names; got {_short(names)}"
            )
        if len(names) > MAX_KEEP:
            raise CheckpointError(
                f"the checkpoint at {self.path} is damaged: field 'committed' lists "
                f"{len(names):,} states; at most {MAX_KEEP} are ever kept"
            )
        # Absent in checkpoints written before the count was kept.
        commits = attrs.get("commits", len(names))
        if isinstance(commits, bool) or not isinstance(commits, int) or commits < len(names):
            raise CheckpointError(
                f"the checkpoint at {self.path} is damaged: field 'commits' is "
                f"{_short(commits)}, not an integer >= {len(names)} (the committed states)"
            )
        if not names and commits != 0:
            # Reading on would discard (and prune) every state the checkpoint holds.
            raise CheckpointError(
                f"the checkpoint at {self.path} is damaged: field 'committed' is empty but "
                f"{commits} commits were made; refusing to discard its states"
            )
        for name in names:
            try:
                safe_child(self.path, name, f"checkpoint field 'committed' of {self.path}")
            except UnsafeNameError as exc:
                raise CheckpointError(str(exc)) from None
            if not _STATE_NAME.fullmatch(name):
                raise CheckpointError(
                    f"the checkpoint at {self.path} is damaged: field 'committed' names "
                    f"{name!r}, which is not a state emdist writes"
                )
        return list(names)

    def _check_contained(self) -> None:
        try:
            check_contained(self.path, "checkpoint")
        except UnsafeNameError as exc:
            raise CheckpointError(str(exc)) from None

    def _clean_strays(self) -> None:
        keep = set(self._committed())
        self._check_contained()
        for child in self.path.iterdir():
            # Only groups named as save() names them: never a folder emdist did not write.
            if child.name in keep or not _STATE_NAME.fullmatch(child.name):
                continue
            if child.is_symlink():
                child.unlink()
            elif child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
        for stray in self.path.rglob("*.partial"):
            stray.unlink(missing_ok=True)
        numbers = [int(n[1:]) for n in keep]
        self._counter = max(numbers, default=-1) + 1

    # -- reading ---------------------------------------------------------------------------

    def load(self) -> FitState | None:
        """The newest committed state that verifies, or ``None`` if nothing is committed.

        A reader may run beside the fit writing the checkpoint (a progress message, a
        report): when a state it was reading is pruned by a newer commit, it follows the new
        pointer instead of calling the pruned state damaged.
        """
        for _ in range(_READ_ATTEMPTS):
            if self._root is None:
                self._root = self._open_root(mode="r")
            names = self._committed()
            self._check_contained()
            errors = []
            moved = False
            for i, name in enumerate(reversed(names)):
                try:
                    state = self._read_state(name)
                except Exception as exc:  # any damage: try the previous committed state
                    if self._pointer_moved(names):
                        moved = True
                        break
                    errors.append(f"{name}: {type(exc).__name__}: {exc}")
                    continue
                if i > 0:
                    warnings.warn(
                        f"checkpoint state {names[-1]} at {self.path} is damaged "
                        f"({errors[0]}); resuming from the older state {name}",
                        CheckpointFallbackWarning,
                        stacklevel=2,
                    )
                return state
            if moved:
                continue
            if errors:
                # One line: the CLI prints it as the whole error.
                raise CheckpointError(
                    f"no committed state of the checkpoint at {self.path} is intact ("
                    + "; ".join(errors)
                    + "); start over with overwrite=True"
                )
            return None
        raise CheckpointError(
            f"the checkpoint at {self.path} moved on {_READ_ATTEMPTS} times while it was "
            f"read; read it again once its fit stops committing"
        )

    def _pointer_moved(self, names: list[str]) -> bool:
        """Whether another process committed since ``names`` was read (then re-point)."""
        if self._lock is not None:
            return False  # this store is the writer: nobody else commits
        try:
            root = self._open_root(mode="r")
        except CheckpointError:
            return False
        if root.attrs.get("committed") == names:
            return False
        self._root = root
        return True

    def _read_arrays(self, group: zarr.Group, checksums: Any) -> dict[str, AnyArray]:
        out = {}
        if not isinstance(checksums, Mapping):
            raise CheckpointError(f"field 'checksums' is {_short(checksums)}, not a mapping")
        if len(checksums) > MAX_ARRAYS:
            raise CheckpointError(
                f"field 'checksums' lists {len(checksums):,} arrays; at most {MAX_ARRAYS:,} "
                f"are possible"
            )
        for name, expected in checksums.items():
            if not isinstance(expected, str) or not _SHA256.fullmatch(expected):
                raise CheckpointError(f"field 'checksums.{name}' is not a SHA-256 digest")
            node = group[safe_name(name, "checkpoint field 'checksums'")]
            if not isinstance(node, zarr.Array):
                raise CheckpointError(f"{name} is not an array")
            # Bounded before it is read: an edited header must not allocate TiBs.
            check_declared_size(tuple(node.shape), node.dtype, f"array {name}")
            arr = np.asarray(node[...])
            if _digest(arr) != expected:
                raise CheckpointError(f"array {name} does not match its checksum")
            out[name] = arr
        return out

    def _config(self) -> Mapping[str, Any]:
        assert self._root is not None
        config = self._root.attrs.get("config")
        return config if isinstance(config, Mapping) else {}

    def _config_int(self, key: str) -> int | None:
        value = self._config().get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _n_init(self) -> int | None:
        return self._config_int("n_init")

    def _check_params(self, params: dict[str, AnyArray], where: str) -> None:
        """Value checks of a stored restart's parameters, as a saved model's (by its estimator).

        The estimator named by the configuration checks shapes against the configuration
        and the data's width, finiteness, weights on the simplex, positive definite
        covariances and precisions that invert them. Without a known estimator, every
        parameter must at least be a finite float array.
        """
        for key, value in params.items():
            # Parameters are float arrays (means, covariances, centres, weights...):
            # anything else would fail deep inside EM, or worse, be silently cast.
            if value.dtype.kind != "f" or not np.all(np.isfinite(value)):
                raise CheckpointError(f"field '{where}/{key}' is not a finite float array")
        assert self._root is not None
        config = self._config()
        cls = estimator_class(str(config.get("estimator")))
        fingerprint = self._root.attrs.get("fingerprint")
        n_features = fingerprint.get("n_features") if isinstance(fingerprint, Mapping) else None
        check = getattr(cls, "check_state_params", None)
        if check is None or not isinstance(n_features, int) or isinstance(n_features, bool):
            return
        try:
            check(params, config, n_features)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"the parameters in '{where}' cannot be a model: {exc}") from None

    def _read_state(self, name: str) -> FitState:
        group = zarr.open_group(str(self.path / name), mode="r", use_consolidated=False)
        attrs: dict[str, Any] = dict(group.attrs.asdict())
        if attrs.get("complete") is not True:
            raise CheckpointError("state was not completely written")
        n_init = self._n_init()
        high = None if n_init is None else n_init - 1
        most = MAX_RESTARTS if n_init is None else n_init
        max_iter = self._config_int("max_iter")
        arrays = self._read_arrays(group, attrs.get("checksums"))
        entries = _list_field(attrs, "running", most)
        finished_raw = _list_field(attrs, "finished", most)
        finished = tuple(_int_field({"finished": v}, "finished", 0, high) for v in finished_raw)
        running: list[RestartState] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise CheckpointError(f"field 'running[{i}]' is {_short(entry)}, not a mapping")
            prefix = f"running[{i}]."
            restart = _int_field(entry, "restart", 0, high, prefix)
            converged = _bool_field(entry, "converged", prefix)
            run = _RUN_NAME.format(restart)
            params = {
                k.removeprefix(f"{run}/params/"): v
                for k, v in arrays.items()
                if k.startswith(f"{run}/params/")
            }
            if not params:
                raise CheckpointError(f"restart {restart} has no parameters")
            self._check_params(params, f"{run}/params")
            lower_bounds = _float_array(arrays, f"{run}/lower_bounds", ndim=1)
            _int_field(entry, "iteration", len(lower_bounds), len(lower_bounds), prefix)
            if max_iter is not None and len(lower_bounds) > max_iter:
                raise CheckpointError(
                    f"field '{prefix}iteration' is {len(lower_bounds)}, beyond max_iter={max_iter}"
                )
            carry = {
                k.removeprefix(f"{run}/carry/"): v
                for k, v in arrays.items()
                if k.startswith(f"{run}/carry/")
            }
            # The listed names must be exactly the checksummed arrays: an entry dropped from
            # both 'checksums' and the group would otherwise pass as a smaller carry.
            listed = entry.get("carry", [])
            if (
                not isinstance(listed, list)
                or len(listed) > MAX_ARRAYS
                or not all(isinstance(n, str) for n in listed)
                or sorted(listed) != sorted(carry)
            ):
                raise CheckpointError(
                    f"field '{prefix}carry' is {_short(listed)}; the state holds "
                    f"{_short(sorted(carry))} for restart {restart}"
                )
            running.append(RestartState(restart, params, lower_bounds, converged, carry))
        indices = [r.restart for r in running] + list(finished)
        if len(set(indices)) != len(indices):
            raise CheckpointError(f"restarts {indices} are listed twice (running, finished)")
        best = None
        if attrs.get("best") is not None:
            b = attrs["best"]
            if not isinstance(b, dict):
                raise CheckpointError(f"field 'best' is {_short(b)}, not a mapping")
            best_params = {
                k.removeprefix("best/"): v for k, v in arrays.items() if k.startswith("best/")
            }
            if not best_params:
                raise CheckpointError("field 'best' has no parameters")
            self._check_params(best_params, "best")
            for run_state in running:
                for key, value in run_state.params.items():
                    other = best_params.get(key)
                    if other is None or other.shape != value.shape:
                        raise CheckpointError(
                            f"field 'best/{key}' does not match the running restart "
                            f"{run_state.restart}'s '{key}' in shape"
                        )
            score = b.get("score")
            if (
                isinstance(score, bool)
                or not isinstance(score, int | float)
                or not math.isfinite(score)
            ):
                raise CheckpointError(f"field 'best.score' is {_short(score)}, not a finite number")
            best_bounds = _float_array(arrays, "best_lower_bounds", ndim=1)
            # n_iter is the kept restart's iteration count: one bound per iteration.
            n_iter = _int_field(b, "n_iter", max(1, len(best_bounds)), len(best_bounds), "best.")
            if max_iter is not None and n_iter > max_iter:
                raise CheckpointError(
                    f"field 'best.n_iter' is {n_iter}, beyond max_iter={max_iter}"
                )
            best = BestState(
                restart=_int_field(b, "restart", 0, high, "best."),
                params=best_params,
                lower_bounds=best_bounds,
                n_iter=n_iter,
                converged=_bool_field(b, "converged", "best."),
                score=float(score),
            )
            if best.restart not in finished:
                raise CheckpointError(f"field 'best.restart' ({best.restart}) is not finished")
        elif finished:
            raise CheckpointError(f"restarts {list(finished)} are finished but 'best' is missing")
        extra = attrs.get("extra", {})
        if not isinstance(extra, dict):
            raise CheckpointError(f"field 'extra' is {_short(extra)}, not a mapping")
        return FitState(
            running=tuple(sorted(running, key=lambda r: r.restart)),
            finished=tuple(sorted(finished)),
            best=best,
            extra=dict(extra),
        )

    # -- writing ---------------------------------------------------------------------------

    def _create_root(self, config_j: Any, fingerprint_j: Any, seed: int) -> zarr.Group:
        """Create the root group of a new checkpoint; a full disk is one line, nothing left."""
        existed = self.path.exists()
        try:
            # Created with its attributes in one metadata write: a kill can't leave a root
            # group that says nothing (which the next run would refuse as foreign).
            return zarr.open_group(
                str(self.path),
                mode="w",
                use_consolidated=False,
                attributes={
                    "format": FORMAT,
                    "version": VERSION,
                    "config": config_j,
                    "fingerprint": fingerprint_j,
                    "committed": [],
                    # How many commits were made: `committed` may be empty only while this
                    # is 0, so an emptied list is damage, not a fresh checkpoint.
                    "commits": 0,
                    # As a string: JSON numbers may lose 64-bit integers in other readers.
                    "seed": str(seed),
                },
            )
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            error = disk_full_error(self.path, None)
            if not existed:  # an empty folder was checked above; a new one is removed
                shutil.rmtree(self.path, ignore_errors=True)
            raise error from None

    def save(self, state: FitState) -> None:
        """Commit ``state`` atomically, then prune old states.

        Parameters
        ----------
        state : FitState
        """
        if self._root is None:
            raise CheckpointError("open() the checkpoint store before saving")
        name = f"s{self._counter:06d}"
        self._counter += 1
        try:
            self._save(name, state)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            needed = 2 * sum(
                np.asarray(v).nbytes
                for run in state.running
                for v in (*run.params.values(), *run.carry.values())
            )
            error = disk_full_error(self.path, needed)
            # The new state was never committed: the previous one stays the one to resume.
            shutil.rmtree(self.path / name, ignore_errors=True)
            raise error from None

    def _save(self, name: str, state: FitState) -> None:
        assert self._root is not None
        group = zarr.open_group(str(self.path / name), mode="w", use_consolidated=False)
        arrays: dict[str, AnyArray] = {}
        running: list[dict[str, Any]] = []
        for run in state.running:
            name_r = _RUN_NAME.format(int(run.restart))
            arrays.update({f"{name_r}/params/{k}": v for k, v in run.params.items()})
            arrays[f"{name_r}/lower_bounds"] = np.asarray(run.lower_bounds, dtype=np.float64)
            carry = sorted(run.carry)
            for key in carry:
                # Checked here too: a name the reader would refuse must not be committed.
                safe_name(key, f"carry of restart {run.restart}")
                arrays[f"{name_r}/carry/{key}"] = np.asarray(run.carry[key])
            running.append(
                {
                    "restart": int(run.restart),
                    "iteration": int(run.iteration),
                    "converged": bool(run.converged),
                    "carry": carry,
                }
            )
        best_attrs = None
        if state.best is not None:
            arrays.update({f"best/{k}": v for k, v in state.best.params.items()})
            arrays["best_lower_bounds"] = np.asarray(state.best.lower_bounds, dtype=np.float64)
            best_attrs = {
                "restart": state.best.restart,
                "n_iter": state.best.n_iter,
                "converged": state.best.converged,
                "score": float(state.best.score),
            }
        checksums = {}
        for key, value in arrays.items():
            value = np.ascontiguousarray(value)
            # fill_value NaN: a chunk lost later reads as NaN, and fails its checksum anyway.
            fill = np.nan if value.dtype.kind == "f" else 0
            target = group.create_array(
                key, shape=value.shape, dtype=value.dtype, fill_value=fill, compressors=None
            )
            target[...] = value
            checksums[key] = _digest(value)
        group.update_attributes(
            {
                "running": running,
                "finished": [int(r) for r in state.finished],
                "best": best_attrs,
                "extra": _json_safe(state.extra),
                "checksums": checksums,
                "complete": True,
            }
        )
        committed = [*self._committed(), name]
        commits = self._root.attrs.get("commits", 0)
        # The commit: one atomic rewrite of the root's metadata document. (Not
        # ``attrs.update``: that rewrites the document once per key, and a kill between the
        # two writes left a pointer that disagreed with its count, refused as damage.)
        self._root = self._root.update_attributes(
            {
                "committed": committed[-self.keep :],
                "commits": (commits if isinstance(commits, int) else 0) + 1,
            }
        )
        for old in committed[: -self.keep]:
            # Names checked by _committed(): state groups inside this store, not links.
            shutil.rmtree(self.path / old, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for reports and the CLI)."""
        root = self._root or self._open_root(mode="r")
        attrs = root.attrs.asdict()
        return {
            "path": str(self.path),
            "committed": attrs.get("committed"),
            **json.loads(
                json.dumps({"config": attrs.get("config"), "fingerprint": attrs.get("fingerprint")})
            ),
        }
