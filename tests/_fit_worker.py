"""Fit a model on a Zarr dataset with a checkpoint; the kill-and-resume tests run this.

Usage::

    python tests/_fit_worker.py DATA CHECKPOINT OUT KIND [--markers FILE]
        [--write-delay SECONDS] [--iter-delay SECONDS]
    python tests/_fit_worker.py --serve

``DATA`` is a Zarr array on disk, ``CHECKPOINT`` a checkpoint location (``-`` for none),
``OUT`` the ``.npz`` the fitted arrays are written to at the end (atomically, so a killed
worker never leaves a half-written one), ``KIND`` one of :data:`MODELS`.

``--markers`` appends one line per event, flushed immediately so that it survives SIGKILL:
``start`` (imports done), ``estep-begin`` / ``estep-end`` around every E-step pass over the
data, ``save-begin R I F`` / ``array NAME`` / ``save-end R I F`` around every checkpoint
write (R restart, I iteration, F finished 0/1), ``iter R I`` after every iteration, ``done``
at the end. ``--write-delay`` sleeps that long before every array a
checkpoint write stores (so a random kill often lands in the middle of a write);
``--iter-delay`` sleeps after every iteration.

The arrays are written by the real Zarr code; the delays only stretch the time between them.

``--serve`` pays the (slow, on a busy machine) imports once: it reads one JSON list of the
arguments above per line on stdin, forks a child that runs them (a fresh process image with
nothing computed yet: no thread exists at the fork), answers ``pid N`` and, when the child
is gone, ``exit N STATUS`` (the raw ``waitpid`` status). The tests SIGKILL the child.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import warnings
from typing import Any

import numpy as np
import zarr

import emdist
from emdist.engine import kept, lockstep
from emdist.exceptions import ConvergenceWarning
from emdist.io.checkpoint import CheckpointStore, FitState

MODELS: dict[str, Any] = {
    # One restart of accelerated EM, the default (tol=0): 24 passes.
    "gmm": lambda: emdist.GaussianMixture(
        4, covariance_type="full", tol=0.0, max_iter=24, random_state=7
    ),
    # Three restarts of plain EM of 12 (max_iter), 12 (max_iter) and 11 (converged)
    # iterations: the kill targets name those iterations.
    "gmm-restarts": lambda: emdist.GaussianMixture(
        4,
        covariance_type="full",
        tol=1e-5,
        max_iter=12,
        n_init=3,
        init_params="random_from_data",
        random_state=0,
        acceleration=None,
    ),
    # Three restarts of 20 (max_iter), 20 (max_iter) and 18 (converged) iterations. Random
    # rows as starts (the default k-means|| start's restarts here all run the same length).
    "kmeans": lambda: emdist.KMeans(
        6,
        n_init=3,
        tol=1e-4,
        max_iter=20,
        init="random",
        random_state=25,
        init_sample_size=20_000,
    ),
}

_state = threading.local()


class Markers:
    """Append-only event log that survives SIGKILL (every line is flushed at once)."""

    def __init__(self, path: str | None) -> None:
        self._fh = open(path, "a", buffering=1) if path else None  # noqa: SIM115
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        if self._fh is None:
            return
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()


def slow_array_writes(markers: Markers, delay: float) -> None:
    """Stretch every array write that happens inside a checkpoint save."""
    original = zarr.Array.__setitem__

    def setitem(self: zarr.Array, key: Any, value: Any) -> None:
        if getattr(_state, "saving", False):
            markers(f"array {self.path}")
            time.sleep(delay)
            original(self, key, value)
        else:
            original(self, key, value)

    zarr.Array.__setitem__ = setitem  # type: ignore[method-assign]


class MarkedStore(CheckpointStore):
    """A checkpoint store that logs the start and end of every save."""

    markers: Markers

    def save(self, state: FitState) -> None:
        # The restarts run side by side: the furthest iteration, restarts finished, all done.
        tag = f"{state.iteration} {len(state.finished)} {int(state.done)}"
        self.markers(f"save-begin {tag}")
        _state.saving = True
        try:
            super().save(state)
        finally:
            _state.saving = False
        self.markers(f"save-end {tag}")


def mark_estep_passes(markers: Markers) -> None:
    """Log the start and end of every E-step pass of the restarts loop (one for them all)."""
    original = lockstep.map_reduce

    def map_reduce(*args: Any, **kwargs: Any) -> Any:
        markers("estep-begin")
        result = original(*args, **kwargs)
        markers("estep-end")
        return result

    lockstep.map_reduce = map_reduce
    # K-means' passes with bounds kept beside the blocks run through KeptState instead.
    run = kept.KeptState.run

    def kept_run(self: kept.KeptState, *args: Any, **kwargs: Any) -> Any:
        markers("estep-begin")
        result = run(self, *args, **kwargs)
        markers("estep-end")
        return result

    kept.KeptState.run = kept_run  # type: ignore[method-assign]


def fitted_arrays(model: Any) -> dict[str, np.ndarray]:
    """Every fitted attribute as an array (labels computed), for ``np.savez``."""
    out = {}
    for key, value in vars(model).items():
        if not key.endswith("_") or key.startswith("_"):
            continue
        if hasattr(value, "compute"):
            value = value.compute()
        out[key] = np.asarray(value)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("kind", choices=sorted(MODELS))
    parser.add_argument("--markers")
    parser.add_argument("--write-delay", type=float, default=0.0)
    parser.add_argument("--iter-delay", type=float, default=0.0)
    args = parser.parse_args(argv)

    markers = Markers(args.markers)
    markers(f"start {os.getpid()}")
    if args.markers:
        mark_estep_passes(markers)
    if args.write_delay > 0:
        slow_array_writes(markers, args.write_delay)

    def observer(it: Any) -> None:
        markers(f"iter {it.restart} {it.iteration}")
        if args.iter_delay > 0:
            time.sleep(args.iter_delay)

    model = MODELS[args.kind]()
    model.set_params(observer=observer)
    if args.checkpoint != "-":
        store = MarkedStore(args.checkpoint)
        store.markers = markers
        model.set_params(checkpoint=store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(args.data)
    arrays = fitted_arrays(model)
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, args.out)
    markers("done")
    return 0


def serve() -> int:
    """Fork one fitting child per command line on stdin; report its pid and exit status."""
    for line in sys.stdin:
        argv = json.loads(line)
        assert threading.active_count() == 1, "fork with threads alive"
        pid = os.fork()
        if pid == 0:  # the child: stdout is the protocol pipe, keep it clean
            os.dup2(2, 1)
            rc = 1
            try:
                rc = main(argv)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(rc)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main(sys.argv[1:]))
