"""Restarts (``n_init``) with optional checkpoints: the fit loop every estimator drives.

The loop runs each restart with the EM engine, keeps the best one, and — given a
:class:`~emdist.io.checkpoint.CheckpointStore` — commits the fit state after iterations
and at the end of every restart, so a killed fit resumes where it stopped and ends with
exactly the model an uninterrupted fit would have produced: all randomness derives from the
seed recorded with the checkpoint, and parameters are stored bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from emdist.engine.data import FitData
from emdist.engine.em import EMResult, IterationState, ModelFamily, Observer, run_em
from emdist.io.checkpoint import BestState, CheckpointStore, FitState

__all__ = ["BestRun", "data_fingerprint", "run_restarts"]

P = TypeVar("P")
S = TypeVar("S")


@dataclass(frozen=True)
class BestRun(Generic[P]):
    """The kept restart.

    Attributes
    ----------
    params : P
    lower_bound : float
        Lower bound of the last iteration.
    lower_bounds : tuple of float
    n_iter : int
    converged : bool
    score : float
        The compared quantity (lower bound, or minus inertia for K-means).
    restart : int
    """

    params: P
    lower_bound: float
    lower_bounds: tuple[float, ...]
    n_iter: int
    converged: bool
    score: float
    restart: int


def data_fingerprint(data: FitData) -> dict[str, Any]:
    """A fingerprint of the data from the scan pass: shape, dtype, chunking and moments.

    The per-feature mean and variance depend on every value, so a modified dataset is
    noticed without an extra read.
    """
    moments = hashlib.sha256()
    moments.update(np.ascontiguousarray(data.summary.mean).tobytes())
    moments.update(np.ascontiguousarray(data.summary.variance).tobytes())
    chunks = hashlib.sha256(repr(data.row_chunks).encode()).hexdigest()[:16]
    return {
        "n_samples": data.summary.n_samples,
        "n_features": data.summary.n_features,
        "dtype": str(data.X.dtype),
        "row_chunks": chunks,
        "moments_sha256": moments.hexdigest(),
    }


def _arrays(params: Any) -> dict[str, Any]:
    return dict(params.arrays())


def _state(
    restart: int,
    params: Any,
    lower_bounds: tuple[float, ...],
    converged: bool,
    finished: bool,
    best: BestState | None,
) -> FitState:
    """The fit state a checkpoint commits (after an iteration, or at a restart's end)."""
    return FitState(
        restart=restart,
        params=_arrays(params),
        lower_bounds=np.asarray(lower_bounds),
        converged=converged,
        finished=finished,
        best=best,
    )


def run_restarts(
    data: FitData,
    family: ModelFamily[P, S],
    *,
    n_init: int,
    seeds: list[int],
    make_start: Callable[[int, int], P],
    params_from_arrays: Callable[..., P],
    score: Callable[[EMResult[P, S]], float],
    tol: float,
    max_iter: int,
    observer: Observer | None,
    checkpoint: CheckpointStore | None,
    config: dict[str, Any],
    seed: int,
    previous_bound: float | None = None,
    n_shards: int | None = None,
) -> BestRun[P]:
    """Run the restarts, resuming from ``checkpoint`` if it holds a matching fit.

    Parameters
    ----------
    data : FitData
    family : ModelFamily
    n_init : int
    seeds : list of int
        One seed per restart.
    make_start : callable
        ``make_start(restart, seed)`` -> starting parameters.
    params_from_arrays : callable
        Rebuilds parameters from ``params.arrays()`` (for checkpoints).
    score : callable
        Larger is better; may run a final pass (K-means re-assigns under final centres).
    tol, max_iter, observer :
        As :func:`emdist.engine.run_em`.
    checkpoint : CheckpointStore or None
    config : dict
        Configuration recorded in, and checked against, the checkpoint.
    seed : int
        The fit's seed, recorded in the checkpoint.
    previous_bound : float, optional
        For a warm start: the previous fit's bound, which the first change is measured from.
    n_shards : int, optional
        Incremental EM over this many shards (``family`` must be an
        :class:`~emdist.engine.incremental.IncrementalFamily`); ``None``: batch EM.

    Returns
    -------
    BestRun
    """
    if n_shards is not None:
        # Imported here: the incremental loop builds on this module's BestRun.
        from emdist.engine.incremental import run_incremental_restarts

        return run_incremental_restarts(
            data,
            family,  # type: ignore[arg-type]
            n_shards=n_shards,
            n_init=n_init,
            seeds=seeds,
            make_start=make_start,
            params_from_arrays=params_from_arrays,
            score=score,
            tol=tol,
            max_iter=max_iter,
            observer=observer,
            checkpoint=checkpoint,
            config=config,
            seed=seed,
            previous_bound=previous_bound,
        )
    state: FitState | None = None
    if checkpoint is not None:
        state = checkpoint.open(config, data_fingerprint(data), seed)
    best: BestState | None = state.best if state is not None else None
    first = 0 if state is None else state.restart + (1 if state.finished else 0)
    resume = state if state is not None and not state.finished else None

    for restart in range(first, n_init):
        history: tuple[float, ...] = ()
        done = False
        if resume is not None and resume.restart == restart:
            start = params_from_arrays(**resume.params)
            history = tuple(float(v) for v in resume.lower_bounds)
            done = resume.converged
        else:
            start = make_start(restart, seeds[restart])

        def save_iteration(
            it: IterationState[Any], restart: int = restart, best: BestState | None = best
        ) -> bool | None:
            assert checkpoint is not None
            if it.iteration % checkpoint.every == 0 or it.converged or it.iteration == max_iter:
                checkpoint.save(
                    _state(restart, it.params, it.lower_bounds, it.converged, False, best)
                )
            return observer(it) if observer is not None else None

        if done:
            result: EMResult[P, S] = EMResult(start, history[-1], history, len(history), True, None)
        else:
            result = run_em(
                data.X,
                family,
                start,
                tol=tol,
                max_iter=max_iter,
                observer=save_iteration if checkpoint is not None else observer,
                restart=restart,
                lower_bounds=history,
                previous_bound=previous_bound if restart == 0 else None,
            )
        value = float(score(result))
        if best is None or value > best.score:
            best = BestState(
                restart=restart,
                params=_arrays(result.params),
                lower_bounds=np.asarray(result.lower_bounds),
                n_iter=result.n_iter,
                converged=result.converged,
                score=value,
            )
        if checkpoint is not None:
            checkpoint.save(
                _state(restart, result.params, result.lower_bounds, result.converged, True, best)
            )
    assert best is not None
    bounds = tuple(float(v) for v in best.lower_bounds)
    return BestRun(
        params=params_from_arrays(**best.params),
        lower_bound=bounds[-1] if bounds else float("nan"),
        lower_bounds=bounds,
        n_iter=best.n_iter,
        converged=best.converged,
        score=best.score,
        restart=best.restart,
    )
