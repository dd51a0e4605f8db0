"""Restarts (``n_init``) with optional checkpoints: the fit loop every estimator drives.

The restarts of a fit run side by side (:mod:`emdist.engine.lockstep`): each pass over the
data feeds every restart still running, and a restart that has converged (or run out of
iterations) drops out. The best restart is kept, and — given a
:class:`~emdist.io.checkpoint.CheckpointStore` — the fit state (every running restart, the
best finished one) is committed after iterations and whenever restarts finish, so a killed
fit resumes where it stopped and ends with exactly the model an uninterrupted fit would
have produced: all randomness derives from the seed recorded with the checkpoint, and
parameters are stored bit for bit.

Several fits (a K sweep: :func:`emdist.fit_shared`) run the same way, one
:class:`RestartGroup` each, all sharing every pass: :func:`run_groups`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from emdist.engine.data import FitData
from emdist.engine.em import EMResult, IterationState, ModelFamily, Observer
from emdist.engine.lockstep import shared_pass
from emdist.engine.reduce import Data
from emdist.io.checkpoint import BestState, CheckpointStore, FitState, RestartState

__all__ = [
    "BestRun",
    "RestartGroup",
    "RestartSpec",
    "best_run",
    "data_fingerprint",
    "keep_best",
    "run_groups",
    "run_restarts",
]

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


@dataclass(frozen=True)
class RestartSpec(Generic[P, S]):
    """A fit's restarts: how each starts, is compared and stops, and where it commits.

    Attributes
    ----------
    family : ModelFamily
    seeds : sequence of int
        One seed per restart (``n_init = len(seeds)``).
    make_start : callable
        ``make_start(restart, seed)`` -> starting parameters.
    params_from_arrays : callable
        Rebuilds parameters from ``params.arrays()`` (for checkpoints).
    score : callable
        Larger is better: which restart is kept. Given the restart's result, whose
        ``stats`` are those of a pass under its final parameters when ``final_pass``
        asked for one (``None`` possible after a resume when ``final_pass`` is not given).
    tol, max_iter :
        As :func:`emdist.engine.run_em`.
    seed : int
        The fit's seed, recorded in the checkpoint.
    observer : callable, optional
        Sees every restart's iterations (``IterationState.restart``), those of one pass
        one after another.
    checkpoint : CheckpointStore, optional
    config : mapping
        Configuration recorded in, and checked against, the checkpoint.
    previous_bound : float, optional
        For a warm start: the previous fit's bound, which the first change is measured from.
    final_pass : callable, optional
        ``final_pass(result)``: whether comparing this restart needs one more E-step pass
        under its final parameters; that pass is shared with the next iteration of the
        others.
    """

    family: ModelFamily[P, S]
    seeds: Sequence[int]
    make_start: Callable[[int, int], P]
    params_from_arrays: Callable[..., P]
    score: Callable[[EMResult[P, S]], float]
    tol: float
    max_iter: int
    seed: int
    observer: Observer | None = None
    checkpoint: CheckpointStore | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    previous_bound: float | None = None
    final_pass: Callable[[EMResult[P, S]], bool] | None = None

    @property
    def n_init(self) -> int:
        """Number of restarts."""
        return len(self.seeds)

    def open_checkpoint(self, data: FitData) -> FitState | None:
        """The committed state of this fit, if its checkpoint holds one (checked first)."""
        if self.checkpoint is None:
            return None
        return self.checkpoint.open(dict(self.config), data_fingerprint(data), self.seed)


def keep_best(
    best: BestState | None, restart: int, result: EMResult[Any, Any], value: float
) -> BestState:
    """``best``, or the finished ``restart`` if its score ``value`` beats it.

    Ties go to the lower index, as when restarts run one after another and a later one
    must beat the kept one strictly (side by side, they may finish in any order).
    """
    if not (best is None or value > best.score or (value == best.score and restart < best.restart)):
        return best
    return BestState(
        restart=restart,
        params=_arrays(result.params),
        lower_bounds=np.asarray(result.lower_bounds),
        n_iter=result.n_iter,
        converged=result.converged,
        score=value,
    )


def best_run(best: BestState | None, params_from_arrays: Callable[..., P]) -> BestRun[P]:
    """The kept restart as a :class:`BestRun`."""
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


def _arrays(params: Any) -> dict[str, Any]:
    return dict(params.arrays())


@dataclass
class _Run(Generic[P, S]):
    """One restart in flight: its parameters, bound history and state."""

    restart: int
    params: P
    history: list[float]
    prev: float
    converged: bool = False
    #: The observer asked to stop it.
    stopped: bool = False
    #: Statistics of its last pass (``None`` after a resume).
    stats: S | None = None
    #: Folded into the best: nothing more to do.
    finished: bool = False
    #: Its EM is over and its comparison needs one more pass under its final parameters.
    wants_final: bool = False


@dataclass
class RestartGroup(Generic[P, S]):
    """The restarts of one fit, driven pass by pass by :func:`run_groups`.

    Built by :meth:`open`; holds the running restarts, the best finished one and the
    fit's checkpoint.
    """

    spec: RestartSpec[P, S]
    runs: list[_Run[P, S]]
    best: BestState | None
    finished: list[int] = field(default_factory=list)

    @classmethod
    def open(cls, data: FitData, spec: RestartSpec[P, S]) -> RestartGroup[P, S]:
        """Start the restarts, or resume them from ``checkpoint`` if it holds a matching fit.

        Parameters are those of :func:`run_restarts`.
        """
        state = spec.open_checkpoint(data)
        resumed = {r.restart: r for r in state.running} if state is not None else {}
        finished = list(state.finished) if state is not None else []
        runs: list[_Run[P, S]] = []
        for restart in range(spec.n_init):
            if restart in finished:
                continue
            saved = resumed.get(restart)
            if saved is not None:
                history = [float(v) for v in saved.lower_bounds]
                run = _Run[P, S](
                    restart,
                    spec.params_from_arrays(**saved.params),
                    history,
                    history[-1] if history else -math.inf,
                    converged=saved.converged,
                )
            else:
                # As scikit-learn: a warm start's first change is measured from the
                # previous fit's bound (the only restart of a warm start).
                prev = -math.inf
                if restart == 0 and spec.previous_bound is not None:
                    prev = float(spec.previous_bound)
                run = _Run[P, S](restart, spec.make_start(restart, spec.seeds[restart]), [], prev)
            runs.append(run)
        return cls(
            spec=spec,
            runs=runs,
            best=state.best if state is not None else None,
            finished=finished,
        )

    # -- what the driver asks ----------------------------------------------------------------

    def _em_over(self, run: _Run[P, S]) -> bool:
        return run.converged or run.stopped or len(run.history) >= self.spec.max_iter

    def _result(self, run: _Run[P, S]) -> EMResult[P, S]:
        bound = run.history[-1] if run.history else run.prev
        return EMResult(
            run.params, bound, tuple(run.history), len(run.history), run.converged, run.stats
        )

    def settle(self) -> None:
        """Compare the restarts whose EM is over (or mark them for a final pass); commit."""
        changed = False
        for run in self.runs:
            if run.finished or run.wants_final or not self._em_over(run):
                continue
            result = self._result(run)
            if self.spec.final_pass is not None and self.spec.final_pass(result):
                run.wants_final = True
                continue
            self._fold(run, result)
            changed = True
        if changed:
            self._commit()

    def requests(self) -> list[tuple[ModelFamily[P, S], P]]:
        """The E-steps this group needs from the next pass, in :meth:`advance`'s order."""
        return [(self.spec.family, run.params) for run in self._in_pass()]

    def _in_pass(self) -> list[_Run[P, S]]:
        return [
            run
            for run in self.runs
            if not run.finished and (run.wants_final or not self._em_over(run))
        ]

    @property
    def pending(self) -> bool:
        """Whether any restart still needs a pass."""
        return bool(self._in_pass())

    def advance(
        self, stats: Sequence[S], seconds: float
    ) -> list[tuple[_Run[P, S], IterationState[P]]]:
        """Apply one pass's statistics; commit; return the iterations for the observer.

        Parameters
        ----------
        stats : sequence
            The statistics :meth:`requests` asked for, in order.
        seconds : float
            Wall time of the shared pass.
        """
        runs = self._in_pass()
        in_pass = sum(1 for run in runs if not run.wants_final)
        iterations: list[tuple[_Run[P, S], IterationState[P]]] = []
        commit = False
        for run, s in zip(runs, stats, strict=True):
            if run.wants_final:
                # The pass ran under the final parameters: what the comparison needs.
                run.stats = s
                run.wants_final = False
                self._fold(run, self._result(run))
                commit = True
                continue
            bound = self.spec.family.lower_bound(s, run.params)
            new_params = self.spec.family.mstep(s, run.params)
            run.converged = self.spec.family.converged(
                run.prev, bound, run.params, new_params, self.spec.tol
            )
            run.history.append(bound)
            iteration = len(run.history)
            iterations.append(
                (
                    run,
                    IterationState(
                        restart=run.restart,
                        iteration=iteration,
                        lower_bound=bound,
                        change=bound - run.prev,
                        params=new_params,
                        converged=run.converged,
                        seconds=seconds,
                        lower_bounds=tuple(run.history),
                        in_pass=in_pass,
                    ),
                )
            )
            run.params, run.prev, run.stats = new_params, bound, s
            if self.spec.checkpoint is not None and (
                iteration % self.spec.checkpoint.every == 0
                or run.converged
                or iteration == self.spec.max_iter
            ):
                commit = True
        for run in runs:
            if run.finished or run.wants_final or not self._em_over(run):
                continue
            result = self._result(run)
            if self.spec.final_pass is not None and self.spec.final_pass(result):
                run.wants_final = True
            else:
                self._fold(run, result)
                commit = True
        if commit:
            self._commit()
        return iterations

    def notify(self, run: _Run[P, S], state: IterationState[P]) -> None:
        """Call the observer with one iteration; ``True`` stops that restart."""
        if self.spec.observer is not None and self.spec.observer(state):
            run.stopped = True

    def _fold(self, run: _Run[P, S], result: EMResult[P, S]) -> None:
        self.best = keep_best(self.best, run.restart, result, float(self.spec.score(result)))
        run.finished = True
        run.stats = None
        self.finished.append(run.restart)

    def _commit(self) -> None:
        if self.spec.checkpoint is None:
            return
        running = tuple(
            RestartState(run.restart, _arrays(run.params), np.asarray(run.history), run.converged)
            for run in self.runs
            if not run.finished
        )
        self.spec.checkpoint.save(
            FitState(running=running, finished=tuple(sorted(self.finished)), best=self.best)
        )

    def result(self) -> BestRun[P]:
        """The kept restart (once every restart is finished)."""
        assert not self.pending
        return best_run(self.best, self.spec.params_from_arrays)


def run_groups(X: Data, groups: Sequence[RestartGroup[Any, Any]]) -> list[BestRun[Any]]:
    """Run several fits' restarts side by side, one read of the data per pass for all.

    Every pass serves every restart still running in every group (and the final
    passes that comparisons need, such as K-means' re-assignment under its final centres).
    A group commits its checkpoint after the pass, before its observer sees the iterations,
    so an observer that raises leaves the state of that iteration committed.

    Parameters
    ----------
    X : dask.array.Array or ndarray
    groups : sequence of RestartGroup

    Returns
    -------
    list of BestRun
        One per group.
    """
    while True:
        for group in groups:
            group.settle()
        requests = [group.requests() for group in groups]
        steps = [step for part in requests for step in part]
        if not steps:
            break
        start = time.perf_counter()
        stats = shared_pass(X, steps)
        seconds = time.perf_counter() - start
        calls = []
        offset = 0
        for group, part in zip(groups, requests, strict=True):
            done = group.advance(stats[offset : offset + len(part)], seconds)
            calls += [(group, run, state) for run, state in done]
            offset += len(part)
        for group, run, state in calls:
            group.notify(run, state)
    return [group.result() for group in groups]


def run_restarts(
    data: FitData, spec: RestartSpec[P, S], *, n_shards: int | None = None
) -> BestRun[P]:
    """Run the restarts side by side, resuming from the checkpoint if it holds a matching fit.

    Incremental EM (``n_shards``) runs its restarts one after another instead
    (:func:`emdist.engine.incremental.run_incremental_restarts`).

    Parameters
    ----------
    data : FitData
    spec : RestartSpec
    n_shards : int, optional
        Incremental EM over this many shards (``spec.family`` must be an
        :class:`~emdist.engine.incremental.IncrementalFamily`); ``None``: batch EM.

    Returns
    -------
    BestRun
    """
    if n_shards is not None:
        # Imported here: the incremental loop builds on this module's RestartSpec.
        from emdist.engine.incremental import run_incremental_restarts

        return run_incremental_restarts(data, spec, n_shards)
    return run_groups(data.X, [RestartGroup.open(data, spec)])[0]
