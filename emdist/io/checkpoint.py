"""Crash-safe checkpoints of a fit in a Zarr group: arrays and JSON attributes, no pickle.

Layout of a checkpoint directory::

    <path>/zarr.json            root attributes: format, config, fingerprint, ``committed``
    <path>/<name>/              one group per committed state, e.g. ``s000012``
        params/<array>          parameters after the state's last M-step
        lower_bounds            lower bound per iteration of the running restart
        best/<array>            parameters of the best finished restart (if any)
        best_lower_bounds
        zarr.json               attributes: restart, iteration, flags, checksums

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

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from emdist._typing import AnyArray, FloatArray
from emdist.exceptions import EmdistError, EmdistWarning

__all__ = [
    "BestState",
    "CheckpointError",
    "CheckpointFallbackWarning",
    "CheckpointMismatchError",
    "CheckpointStore",
    "FitState",
]

FORMAT = "emdist-checkpoint"
VERSION = 1


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
class FitState:
    """Everything needed to continue a fit exactly where it stopped.

    Attributes
    ----------
    restart : int
        The restart this state belongs to.
    params : dict of str to ndarray
        Parameters after the last M-step of that restart.
    lower_bounds : ndarray
        Lower bound per iteration of that restart (its length is the iteration count).
    converged : bool
        Whether the restart has converged.
    finished : bool
        Whether the restart is over (converged or out of iterations) and folded into
        ``best``.
    best : BestState or None
        Best restart finished so far (including this one when ``finished``).
    """

    restart: int
    params: dict[str, AnyArray]
    lower_bounds: FloatArray
    converged: bool
    finished: bool
    best: BestState | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def iteration(self) -> int:
        """Iterations done in the current restart."""
        return len(self.lower_bounds)


def _digest(arr: AnyArray) -> str:
    a = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    h.update(str(a.dtype).encode())
    h.update(repr(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


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


def _diff(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            out += _diff(saved.get(key), current.get(key), f"{prefix}{key}.")
        return out
    if saved != current:
        return [f"{prefix.rstrip('.')}: checkpoint has {saved!r}, this run has {current!r}"]
    return []


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
        if every < 1:
            raise ValueError(f"every must be >= 1; got {every}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1; got {keep}")
        self.path = Path(path)
        self.every = int(every)
        self.keep = int(keep)
        self.overwrite = bool(overwrite)
        self._root: zarr.Group | None = None
        self._counter = 0

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
        return None if seed is None else int(str(seed))

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
        """
        config_j = _json_safe(dict(config))
        fingerprint_j = _json_safe(dict(fingerprint))
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
            # Created with its attributes in one metadata write: a kill can't leave a root
            # group that says nothing (which the next run would refuse as foreign).
            root = zarr.open_group(
                str(self.path),
                mode="w",
                use_consolidated=False,
                attributes={
                    "format": FORMAT,
                    "version": VERSION,
                    "config": config_j,
                    "fingerprint": fingerprint_j,
                    "committed": [],
                    # As a string: JSON numbers may lose 64-bit integers in other readers.
                    "seed": str(seed),
                },
            )
            self._root = root
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
        if attrs.get("version") != VERSION:
            raise CheckpointError(
                f"{self.path} is a version {attrs.get('version')} checkpoint; this emdist "
                f"reads version {VERSION}"
            )
        return root

    def _committed(self) -> list[str]:
        assert self._root is not None
        names = self._root.attrs.get("committed", [])
        return [str(n) for n in names] if isinstance(names, list) else []

    def _clean_strays(self) -> None:
        keep = set(self._committed())
        for child in self.path.iterdir():
            if child.is_dir() and child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)
        for stray in self.path.rglob("*.partial"):
            stray.unlink(missing_ok=True)
        numbers = [int(n[1:]) for n in keep if n[1:].isdigit()]
        self._counter = max(numbers, default=-1) + 1

    # -- reading ---------------------------------------------------------------------------

    def load(self) -> FitState | None:
        """The newest committed state that verifies, or ``None`` if nothing is committed."""
        if self._root is None:
            self._root = self._open_root(mode="r")
        names = self._committed()
        errors = []
        for i, name in enumerate(reversed(names)):
            try:
                state = self._read_state(name)
            except Exception as exc:  # any damage: try the previous committed state
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
        if errors:
            raise CheckpointError(
                f"no committed state of the checkpoint at {self.path} is intact:\n  - "
                + "\n  - ".join(errors)
                + "\nStart over with overwrite=True."
            )
        return None

    def _read_arrays(self, group: zarr.Group, checksums: Mapping[str, str]) -> dict[str, AnyArray]:
        out = {}
        for name, expected in checksums.items():
            node = group[name]
            if not isinstance(node, zarr.Array):
                raise CheckpointError(f"{name} is not an array")
            arr = np.asarray(node[...])
            if _digest(arr) != expected:
                raise CheckpointError(f"array {name} does not match its checksum")
            out[name] = arr
        return out

    def _read_state(self, name: str) -> FitState:
        group = zarr.open_group(str(self.path / name), mode="r", use_consolidated=False)
        attrs: dict[str, Any] = dict(group.attrs.asdict())
        if not attrs.get("complete"):
            raise CheckpointError("state was not completely written")
        checksums = attrs["checksums"]
        arrays = self._read_arrays(group, checksums)
        params = {
            k.removeprefix("params/"): v for k, v in arrays.items() if k.startswith("params/")
        }
        best = None
        if attrs.get("best") is not None:
            b = attrs["best"]
            best = BestState(
                restart=int(b["restart"]),
                params={
                    k.removeprefix("best/"): v for k, v in arrays.items() if k.startswith("best/")
                },
                lower_bounds=arrays["best_lower_bounds"],
                n_iter=int(b["n_iter"]),
                converged=bool(b["converged"]),
                score=float(b["score"]),
            )
        return FitState(
            restart=int(attrs["restart"]),
            params=params,
            lower_bounds=arrays["lower_bounds"],
            converged=bool(attrs["converged"]),
            finished=bool(attrs["finished"]),
            best=best,
            extra=dict(attrs.get("extra", {})),
        )

    # -- writing ---------------------------------------------------------------------------

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
        group = zarr.open_group(str(self.path / name), mode="w", use_consolidated=False)
        arrays: dict[str, AnyArray] = {f"params/{k}": v for k, v in state.params.items()}
        arrays["lower_bounds"] = np.asarray(state.lower_bounds, dtype=np.float64)
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
        group.attrs.update(
            {
                "restart": int(state.restart),
                "iteration": int(state.iteration),
                "converged": bool(state.converged),
                "finished": bool(state.finished),
                "best": best_attrs,
                "extra": _json_safe(state.extra),
                "checksums": checksums,
                "complete": True,
            }
        )
        committed = [*self._committed(), name]
        # The commit: one atomic rewrite of the root's metadata document.
        self._root.attrs["committed"] = committed[-self.keep :]
        for old in committed[: -self.keep]:
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
