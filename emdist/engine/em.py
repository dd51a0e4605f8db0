"""The EM loop, written once for every model family, every schedule and every fit.

A *model family* (K-means, Gaussian mixture, variational mixture...) is one object that
tells the engine four things: its per-block E-step (block -> statistics), its M-step
(statistics -> parameters), its per-sample lower bound and its convergence test. The engine
knows nothing else about it, so a new family adds no branch here.

A *schedule* says when a restart's M-steps happen: after every pass over the data (batch
EM, :data:`BATCH`), or after every shard of it (incremental EM,
:class:`emdist.engine.incremental.IncrementalSchedule`). The fit plan picks it; the driver
below runs either.

The driver: the restarts of a fit (``n_init``) are one :class:`RestartGroup`. Each pass over
the data feeds every restart still running (side by side, :mod:`emdist.engine.lockstep`;
incremental restarts run one after another), and the fits of a K sweep share the passes
too (:func:`run_groups`). A restart that has converged, or run out of iterations, is
compared with the best so far and dropped. Given a
:class:`~emdist.io.checkpoint.CheckpointStore`, the fit state (the running restarts, the
best finished one) is committed after iterations and whenever restarts finish, so a killed
fit resumes where it stopped and ends with exactly the model an uninterrupted fit would have
produced: all randomness derives from the seed recorded with the checkpoint, and parameters
are stored bit for bit.

A family that keeps per-row state beside the row blocks between passes (K-means' Hamerly
bounds: ``estep_kept``) has its whole-data passes run through
:class:`emdist.engine.kept.KeptState`, which the driver holds for its lifetime (never in
the checkpoint); the statistics are those of the plain pass, bit for bit.

Each batch iteration is one pass over the data and one ``compute``: the statistics produced
under ``θ_t`` give both the lower bound of ``θ_t`` and the new parameters ``θ_{t+1}``, as in
scikit-learn, so convergence costs no extra pass.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import dask
import numpy as np

from emdist.engine.data import FitData, ScanSpec
from emdist.engine.kept import KeptState
from emdist.engine.lockstep import shared_pass
from emdist.engine.oversampling import StartPasses, run_start_passes
from emdist.engine.reduce import PassData, as_rows
from emdist.engine.restarts import BestRun, best_run, data_fingerprint, keep_best, param_arrays
from emdist.engine.shards import Shards, shard_pass, shards_pass
from emdist.io.checkpoint import BestState, CheckpointStore, FitState, RestartState
from emdist.kernels.rows import RowBlock

__all__ = [
    "BATCH",
    "EMResult",
    "IterationState",
    "ModelFamily",
    "Observer",
    "FitSpec",
    "ModelPlan",
    "Pass",
    "RestartGroup",
    "Run",
    "Schedule",
    "run_em",
    "run_groups",
    "run_restarts",
]

P = TypeVar("P")
S = TypeVar("S")


class ModelFamily(Protocol[P, S]):
    """What the engine needs from a model family.

    Implementations are small frozen dataclasses holding the model's configuration; they are
    pickled to Dask workers with the E-step, so they must hold no data.
    """

    def estep_chunk(self, block: RowBlock, params: P) -> S:
        """Statistics of one block (rows and per-row inputs) under ``params`` (plain numpy)."""
        ...

    def mstep(self, stats: S, params: P) -> P:
        """New parameters from statistics reduced over the whole dataset."""
        ...

    def lower_bound(self, stats: S, params: P) -> float:
        """Per-sample lower bound (mean log-likelihood or ELBO) of ``params``."""
        ...

    def converged(
        self, prev_bound: float, bound: float, params: P, new_params: P, tol: float
    ) -> bool:
        """Whether the iteration that turned ``params`` into ``new_params`` converged."""
        ...


@dataclass(frozen=True)
class IterationState(Generic[P]):
    """What an observer sees after every iteration.

    Attributes
    ----------
    restart : int
        Index of the restart (``n_init``) being run.
    iteration : int
        1-based iteration number.
    lower_bound : float
        Per-sample lower bound of the parameters the pass ran under.
    change : float
        ``lower_bound`` minus the previous one (``inf`` on the first iteration).
    params : P
        The parameters after this iteration's M-step.
    converged : bool
        Whether the convergence test held.
    seconds : float
        Wall time of this iteration.
    lower_bounds : tuple of float
        History of ``lower_bound`` for this restart, this iteration included.
    in_pass : int
        Restarts of this fit whose iterations ran in the same pass over the data (they run
        side by side, :mod:`emdist.engine.lockstep`); the observer sees them one after
        another, with the same ``iteration`` and ``seconds`` (the pass's wall time).
    """

    restart: int
    iteration: int
    lower_bound: float
    change: float
    params: P
    converged: bool
    seconds: float
    lower_bounds: tuple[float, ...]
    in_pass: int = 1


Observer = Callable[[IterationState[Any]], bool | None]
"""Called after every iteration; returning ``True`` stops the fit early."""


@dataclass(frozen=True)
class EMResult(Generic[P, S]):
    """Outcome of one EM run (one restart).

    Attributes
    ----------
    params : P
        Final parameters (after the last M-step).
    lower_bound : float
        Lower bound of the last pass.
    lower_bounds : tuple of float
        Lower bound per iteration.
    n_iter : int
        Iterations run (including those before a resume).
    converged : bool
    stats : S or None
        Statistics of the last pass (under the parameters before the last M-step).
    """

    params: P
    lower_bound: float
    lower_bounds: tuple[float, ...]
    n_iter: int
    converged: bool
    stats: S | None


@dataclass(frozen=True)
class Pass(Generic[P]):
    """One E-step a restart needs from the next pass over the data.

    Attributes
    ----------
    family : ModelFamily
    params : P
        The parameters the E-step runs under.
    shards : Shards or None
        ``None``: the whole data, reduced to one statistics value (such passes of every
        restart and fit share one read). Else the shards of incremental EM.
    shard : int or None
        With ``shards``: the shard to reduce, or ``None`` for every shard, one value each.
    """

    family: ModelFamily[P, Any]
    params: P
    shards: Shards | None = None
    shard: int | None = None


@dataclass
class Run(Generic[P, S]):
    """One restart in flight: its parameters, bound history and state."""

    restart: int
    #: ``None`` until the restart starts (restarts are started when first needed).
    params: P | None
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
    #: What its schedule keeps between passes (incremental EM: the shard statistics).
    carry: Any = None


class Schedule(Protocol):
    """When a restart's M-steps happen, and what it keeps between passes and commits.

    One schedule object serves one fit; :meth:`bind` gives the one for its data.
    """

    @property
    def side_by_side(self) -> bool:
        """Whether the restarts run side by side (sharing passes) or one after another."""
        ...

    def bind(self, X: PassData, seed: int) -> Schedule:
        """The schedule for a fit on ``X`` with seed ``seed``."""
        ...

    def resume(self, run: Run[Any, Any], saved: RestartState, family: Any) -> None:
        """Restore what ``run`` kept besides its parameters from its committed state."""
        ...

    def em_over(self, run: Run[Any, Any], spec: FitSpec[Any, Any]) -> bool:
        """Whether ``run``'s EM is over (it may still need a final pass to be compared)."""
        ...

    def request(self, run: Run[Any, Any], spec: FitSpec[Any, Any]) -> Pass[Any]:
        """The E-step ``run`` needs from the next pass."""
        ...

    def apply(
        self, run: Run[Any, Any], stats: Any, seconds: float, spec: FitSpec[Any, Any]
    ) -> tuple[IterationState[Any] | None, bool]:
        """Apply the statistics of ``run``'s pass: the finished iteration and whether to commit.

        The iteration is ``None`` when the pass ended none (incremental EM mid-sweep).
        """
        ...

    def saved(self, run: Run[Any, Any]) -> RestartState | None:
        """``run`` as a checkpoint holds it (``None``: not committed while it runs)."""
        ...


@dataclass(frozen=True)
class BatchSchedule:
    """Batch EM: one M-step per pass over the data; restarts side by side."""

    @property
    def side_by_side(self) -> bool:
        """True: every pass feeds every running restart."""
        return True

    def bind(self, X: PassData, seed: int) -> BatchSchedule:
        """Itself: batch EM keeps nothing that depends on the data."""
        return self

    def resume(self, run: Run[Any, Any], saved: RestartState, family: Any) -> None:
        """Nothing to restore besides the parameters and the history."""

    def em_over(self, run: Run[Any, Any], spec: FitSpec[Any, Any]) -> bool:
        """Converged, stopped by the observer, or out of iterations."""
        return run.converged or run.stopped or len(run.history) >= spec.max_iter

    def request(self, run: Run[Any, Any], spec: FitSpec[Any, Any]) -> Pass[Any]:
        """The E-step over the whole data under the current parameters."""
        return Pass(spec.family, run.params)

    def apply(
        self, run: Run[Any, Any], stats: Any, seconds: float, spec: FitSpec[Any, Any]
    ) -> tuple[IterationState[Any] | None, bool]:
        """Bound, M-step, convergence test; commit every ``checkpoint.every`` and at the end."""
        family = spec.family
        bound = family.lower_bound(stats, run.params)
        new_params = family.mstep(stats, run.params)
        run.converged = family.converged(run.prev, bound, run.params, new_params, spec.tol)
        run.history.append(bound)
        iteration = len(run.history)
        state = IterationState(
            restart=run.restart,
            iteration=iteration,
            lower_bound=bound,
            change=bound - run.prev,
            params=new_params,
            converged=run.converged,
            seconds=seconds,
            lower_bounds=tuple(run.history),
        )
        run.params, run.prev, run.stats = new_params, bound, stats
        checkpoint = spec.checkpoint
        commit = checkpoint is not None and (
            iteration % checkpoint.every == 0 or run.converged or iteration == spec.max_iter
        )
        return state, commit

    def saved(self, run: Run[Any, Any]) -> RestartState | None:
        """Parameters after the last M-step, the bound history, convergence."""
        return RestartState(
            run.restart, param_arrays(run.params), np.asarray(run.history), run.converged
        )


#: The default schedule: batch EM, restarts side by side.
BATCH = BatchSchedule()


@dataclass(frozen=True)
class ModelPlan(Generic[P, S]):
    """The model's part of a fit, once its data is scanned (an estimator's ``_plan``).

    Attributes
    ----------
    family : ModelFamily
        The model as the EM engine sees it (E-step, M-step, bound, convergence).
    make_start : callable
        ``make_start(restart, seed)`` -> the restart's starting parameters.
    params_type : callable
        Rebuilds parameters from ``params.arrays()`` (checkpoints).
    score : callable
        Larger is better: which restart is kept. Given the restart's result, whose
        ``stats`` are those of a pass under its final parameters when ``final_pass``
        asked for one (``None`` possible after a resume when ``final_pass`` is not given).
    tol : float
        The tolerance the family's convergence test receives.
    final_pass : callable or None
        ``final_pass(result)``: whether ``score`` needs the statistics of one more pass
        under the restart's final parameters (K-means re-assigns under its final centres);
        that pass is shared with the other restarts' iterations. ``None``: never.
    in_memory : callable or None
        ``in_memory(data, spec)``: the model's own run of every restart on data held in
        memory, with no pass per iteration (K-means keeps per-row bounds between
        iterations), or ``None`` where passes must run (data out of core, a checkpoint...).
    start : StartPasses or None
        The passes the restarts' start reads the data with (k-means||,
        :mod:`emdist.engine.oversampling`), shared by every restart; the driver runs them,
        one read for every fit of the pass, before the first iteration of a restart that
        starts fresh. ``make_start`` runs them itself if they have not run. ``None``: the
        start reads nothing (or reads on its own).
    """

    family: ModelFamily[P, S]
    make_start: Callable[[int, int], P]
    params_type: Callable[..., P]
    score: Callable[[EMResult[P, S]], float]
    tol: float
    final_pass: Callable[[EMResult[P, S]], bool] | None = None
    in_memory: Callable[[FitData, FitSpec[P, S]], BestRun[P] | None] | None = None
    start: StartPasses | None = None


@dataclass(frozen=True)
class FitSpec(Generic[P, S]):
    """One fit as the engine runs it, decided once (an estimator's ``_setup_fit``).

    Everything but :attr:`model` is known before the data is read; the model's part needs
    the scanned data and is attached by :meth:`planned`.

    Attributes
    ----------
    seeds : sequence of int
        One seed per restart (``n_init = len(seeds)``).
    max_iter : int
        Iteration budget of every restart (passes over the data).
    seed : int
        The fit's seed, recorded in the checkpoint.
    observer : callable, optional
        Sees every restart's iterations (``IterationState.restart``), those of one pass
        one after another; returning ``True`` stops that restart.
    checkpoint : CheckpointStore, optional
    config : mapping
        Configuration recorded in, and checked against, the checkpoint.
    previous_bound : float, optional
        For a warm start: the previous fit's bound, which the first change is measured from.
    schedule : Schedule, default=BATCH
        Batch or incremental EM.
    scan : ScanSpec, optional
        How the data is opened and scanned (:func:`emdist.engine.data.prepare_fit_data`).
    warm : bool, default=False
        Whether the fit continues the estimator's previous one (``warm_start``).
    model : ModelPlan, optional
        The model's part (:meth:`planned`); required to run.
    """

    seeds: Sequence[int]
    max_iter: int
    seed: int
    observer: Observer | None = None
    checkpoint: CheckpointStore | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    previous_bound: float | None = None
    schedule: Schedule = BATCH
    scan: ScanSpec | None = None
    warm: bool = False
    model: ModelPlan[P, S] | None = None

    def planned(self, model: ModelPlan[P, S]) -> FitSpec[P, S]:
        """The same fit with the model's part attached."""
        return dataclasses.replace(self, model=model)

    def _model(self) -> ModelPlan[P, S]:
        if self.model is None:
            raise ValueError("the fit has no model plan yet: FitSpec.planned(...) first")
        return self.model

    @property
    def family(self) -> ModelFamily[P, S]:
        """The model family (:attr:`ModelPlan.family`)."""
        return self._model().family

    @property
    def tol(self) -> float:
        """The tolerance of the family's convergence test (:attr:`ModelPlan.tol`)."""
        return self._model().tol

    @property
    def n_init(self) -> int:
        """Number of restarts."""
        return len(self.seeds)

    def open_checkpoint(self, data: FitData) -> FitState | None:
        """The committed state of this fit, if its checkpoint holds one (checked first)."""
        if self.checkpoint is None:
            return None
        return self.checkpoint.open(dict(self.config), data_fingerprint(data), self.seed)


@dataclass
class RestartGroup(Generic[P, S]):
    """The restarts of one fit, driven pass by pass by :func:`run_groups`.

    Built by :meth:`open`; holds the running restarts, the best finished one and the
    fit's checkpoint.
    """

    spec: FitSpec[P, S]
    runs: list[Run[P, S]]
    best: BestState | None
    schedule: Schedule
    finished: list[int] = field(default_factory=list)
    #: Statistics of the kept restart's last pass, when this process ran it.
    best_stats: Any = None

    @classmethod
    def open(cls, data: FitData, spec: FitSpec[P, S]) -> RestartGroup[P, S]:
        """Start the restarts, or resume them from the checkpoint if it holds this fit."""
        schedule = spec.schedule.bind(data.rows, spec.seed)
        state = spec.open_checkpoint(data)
        resumed = {r.restart: r for r in state.running} if state is not None else {}
        finished = list(state.finished) if state is not None else []
        runs: list[Run[P, S]] = []
        for restart in range(spec.n_init):
            if restart in finished:
                continue
            saved = resumed.get(restart)
            if saved is not None:
                history = [float(v) for v in saved.lower_bounds]
                run = Run[P, S](
                    restart,
                    spec._model().params_type(**saved.params),
                    history,
                    history[-1] if history else -math.inf,
                    converged=saved.converged,
                )
                schedule.resume(run, saved, spec.family)
            else:
                # As scikit-learn: a warm start's first change is measured from the
                # previous fit's bound (the only restart of a warm start).
                prev = -math.inf
                if restart == 0 and spec.previous_bound is not None:
                    prev = float(spec.previous_bound)
                run = Run[P, S](restart, None, [], prev)
            runs.append(run)
        return cls(
            spec=spec,
            runs=runs,
            best=state.best if state is not None else None,
            schedule=schedule,
            finished=finished,
        )

    # -- what the driver asks ----------------------------------------------------------------

    def _em_over(self, run: Run[P, S]) -> bool:
        return self.schedule.em_over(run, self.spec)

    def _result(self, run: Run[P, S]) -> EMResult[P, S]:
        bound = run.history[-1] if run.history else run.prev
        assert run.params is not None
        return EMResult(
            run.params, bound, tuple(run.history), len(run.history), run.converged, run.stats
        )

    def _settle(self, runs: Sequence[Run[P, S]]) -> bool:
        """Fold the runs whose EM is over (or mark them for a final pass); whether any was."""
        changed = False
        final_pass = self.spec._model().final_pass
        for run in runs:
            if run.finished or run.wants_final or run.params is None or not self._em_over(run):
                continue
            result = self._result(run)
            if final_pass is not None and final_pass(result):
                run.wants_final = True
                continue
            self._fold(run, result)
            changed = True
        return changed

    def settle(self) -> None:
        """Compare the restarts whose EM is over (or mark them for a final pass); commit."""
        if self._settle(self.runs):
            self._commit()

    def _in_pass(self) -> list[Run[P, S]]:
        waiting = [
            run
            for run in self.runs
            if not run.finished
            and (run.wants_final or run.params is None or not self._em_over(run))
        ]
        if not self.schedule.side_by_side:
            waiting = waiting[:1]
        for run in waiting:
            if run.params is None:
                run.params = self.spec._model().make_start(
                    run.restart, self.spec.seeds[run.restart]
                )
        return waiting

    def requests(self) -> list[Pass[P]]:
        """The E-steps this group needs from the next pass, in :meth:`advance`'s order."""
        out = []
        for run in self._in_pass():
            if run.wants_final:
                assert run.params is not None
                out.append(Pass[P](self.spec.family, run.params))
            else:
                out.append(self.schedule.request(run, self.spec))
        return out

    def request_tags(self) -> list[int]:
        """The restart behind each of :meth:`requests`' passes, in the same order."""
        return [run.restart for run in self._in_pass()]

    def start_passes(self) -> StartPasses | None:
        """The start's passes still to run for the restarts of this group that start fresh."""
        start = self.spec._model().start
        if start is None:
            return None
        fresh = [run for run in self.runs if run.params is None and not run.finished]
        if not fresh:
            return None  # every restart resumed from the checkpoint: no start to make
        if not self.schedule.side_by_side:
            fresh = fresh[:1]  # restarts one after another: the others start later
        start.want([self.spec.seeds[run.restart] for run in fresh])
        return start if start.pending else None

    @property
    def pending(self) -> bool:
        """Whether any restart still needs a pass."""
        return any(
            not run.finished and (run.wants_final or run.params is None or not self._em_over(run))
            for run in self.runs
        )

    def advance(
        self, stats: Sequence[S], seconds: float
    ) -> list[tuple[Run[P, S], IterationState[P]]]:
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
        iterations: list[tuple[Run[P, S], IterationState[P]]] = []
        commit = False
        for run, s in zip(runs, stats, strict=True):
            if run.wants_final:
                # The pass ran under the final parameters: what the comparison needs.
                run.stats = s
                run.wants_final = False
                self._fold(run, self._result(run))
                commit = True
                continue
            state, wants_commit = self.schedule.apply(run, s, seconds, self.spec)
            commit = commit or wants_commit
            if state is not None:
                if in_pass != state.in_pass:
                    state = dataclasses.replace(state, in_pass=in_pass)
                iterations.append((run, state))
        if self._settle(runs):
            commit = True
        if commit:
            self._commit()
        return iterations

    def notify(self, run: Run[P, S], state: IterationState[P]) -> None:
        """Call the observer with one iteration; ``True`` stops that restart."""
        if self.spec.observer is not None and self.spec.observer(state):
            run.stopped = True

    def _fold(self, run: Run[P, S], result: EMResult[P, S]) -> None:
        value = float(self.spec._model().score(result))
        best = keep_best(
            self.best, run.restart, result.params, result.lower_bounds, result.converged, value
        )
        if best is not self.best:
            self.best, self.best_stats = best, result.stats
        run.finished = True
        run.stats = None
        run.carry = None
        self.finished.append(run.restart)

    def _commit(self) -> None:
        if self.spec.checkpoint is None:
            return
        running = []
        for run in self.runs:
            if run.finished or run.params is None:
                continue
            saved = self.schedule.saved(run)
            if saved is not None:
                running.append(saved)
        self.spec.checkpoint.save(
            FitState(running=tuple(running), finished=tuple(sorted(self.finished)), best=self.best)
        )

    def result(self) -> BestRun[P]:
        """The kept restart (once every restart is finished)."""
        assert not self.pending
        return best_run(self.best, self.spec._model().params_type, self.best_stats)


def _run_passes(
    X: PassData,
    passes: Sequence[Pass[Any]],
    tags: Sequence[Any] = (),
    kept: dict[str, KeptState] | None = None,
) -> list[Any]:
    """The statistics of every pass: the whole-data ones share one read, shard ones alone.

    ``tags``: each pass's restart, the same from one pass to the next; ``kept``: where a
    family that keeps per-row state between passes (``estep_kept``, K-means' bounds) keeps
    it, for the driver's lifetime.
    """
    out: list[Any] = [None] * len(passes)
    whole = [i for i, p in enumerate(passes) if p.shards is None]
    steps = [(passes[i].family, passes[i].params) for i in whole]
    kept_stats = _kept_pass(X, steps, [tags[i] for i in whole] if tags else [], kept)
    for i, stats in zip(
        whole, shared_pass(X, steps) if kept_stats is None else kept_stats, strict=True
    ):
        out[i] = stats
    for i, p in enumerate(passes):
        if p.shards is None:
            continue
        if p.shard is None:
            out[i] = shards_pass(X, p.shards, p.family.estep_chunk, p.params)
        else:
            out[i] = shard_pass(X, p.shards, p.shard, p.family.estep_chunk, p.params)
    return out


def _kept_pass(
    X: PassData,
    steps: Sequence[tuple[Any, Any]],
    tags: Sequence[Any],
    kept: dict[str, KeptState] | None,
) -> list[Any] | None:
    """The whole-data passes run with kept per-row state, or ``None`` where they cannot.

    They can when every one is of the same family and it keeps state (``estep_kept`` and
    ``kept_bytes_per_row``), and that state for every restart fits the memory budget
    (:mod:`emdist.engine.kept`); else the passes run without it and the state is dropped.
    """
    if kept is None or not steps or len(tags) != len(steps):
        return None
    family = steps[0][0]
    estep_kept = getattr(family, "estep_kept", None)
    per_row = getattr(family, "kept_bytes_per_row", None)
    holder = kept.get("state")
    if estep_kept is None or per_row is None or any(f != family for f, _ in steps):
        if holder is not None:
            holder.drop()
        return None
    if holder is None:
        holder = kept["state"] = KeptState(int(per_row))
    rows = as_rows(X)
    if not holder.fits(int(rows.shape[0]), len(steps)):
        holder.drop()
        return None
    # Blocks whose state proves them unchanged are left unread (dask config
    # ``emdist.kept-skip``, on by default; off: every pass reads every block).
    skip = getattr(family, "kept_skip", None) if dask.config.get("emdist.kept-skip", True) else None
    return holder.run(rows, estep_kept, [p for _, p in steps], list(tags), skip=skip)


def drive(X: PassData, groups: Sequence[RestartGroup[Any, Any]]) -> None:
    """Run the groups' restarts until every one is finished (see :func:`run_groups`)."""
    # The passes of the groups' starts first, one read for all of them.
    run_start_passes(X, [s for s in (group.start_passes() for group in groups) if s is not None])
    # Per-row state kept between the passes of these groups (K-means' bounds); dropped
    # with the driver, never committed to a checkpoint.
    kept: dict[str, KeptState] = {}
    while True:
        for group in groups:
            group.settle()
        requests = [group.requests() for group in groups]
        passes = [p for part in requests for p in part]
        if not passes:
            break
        tags = [(g, run) for g, group in enumerate(groups) for run in group.request_tags()]
        start = time.perf_counter()
        stats = _run_passes(X, passes, tags, kept)
        seconds = time.perf_counter() - start
        calls = []
        offset = 0
        for group, part in zip(groups, requests, strict=True):
            done = group.advance(stats[offset : offset + len(part)], seconds)
            calls += [(group, run, state) for run, state in done]
            offset += len(part)
        for group, run, state in calls:
            group.notify(run, state)


def run_groups(X: PassData, groups: Sequence[RestartGroup[Any, Any]]) -> list[BestRun[Any]]:
    """Run several fits' restarts side by side, one read of the data per pass for all.

    Every pass serves every restart still running in every group (and the final
    passes that comparisons need, such as K-means' re-assignment under its final centres).
    A group commits its checkpoint after the pass, before its observer sees the iterations,
    so an observer that raises leaves the state of that iteration committed.

    Parameters
    ----------
    X : dask.array.Array, ndarray or Rows
        The data and its per-row inputs (:attr:`FitData.rows`).
    groups : sequence of RestartGroup

    Returns
    -------
    list of BestRun
        One per group.
    """
    drive(X, groups)
    return [group.result() for group in groups]


def run_restarts(data: FitData, spec: FitSpec[P, S]) -> BestRun[P]:
    """Run one fit's restarts, resuming from the checkpoint if it holds a matching fit.

    Parameters
    ----------
    data : FitData
    spec : FitSpec

    Returns
    -------
    BestRun
    """
    model = spec._model()
    if model.in_memory is not None:
        best = model.in_memory(data, spec)
        if best is not None:
            return best
    return run_groups(data.rows, [RestartGroup.open(data, spec)])[0]


def run_em(
    X: PassData,
    family: ModelFamily[P, S],
    params: P,
    *,
    tol: float,
    max_iter: int,
    observer: Observer | None = None,
    restart: int = 0,
    lower_bounds: tuple[float, ...] = (),
    previous_bound: float | None = None,
) -> EMResult[P, S]:
    """Run batch EM from ``params`` until convergence or ``max_iter`` iterations.

    One restart of the driver above, without checkpoint, returned as it ended.

    Parameters
    ----------
    X : dask.array.Array of shape (n_samples, n_features)
        Row-chunked data; read once per iteration.
    family : ModelFamily
        The model family.
    params : P
        Starting parameters.
    tol : float
        Convergence threshold, interpreted by ``family.converged``.
    max_iter : int
        Iteration budget, counting the iterations in ``lower_bounds``.
    observer : callable, optional
        Called with an :class:`IterationState` after every iteration.
    restart : int, default=0
        Restart index reported to the observer.
    lower_bounds : tuple of float, default=()
        History of a run being resumed: it continues at iteration ``len(lower_bounds) + 1``.
    previous_bound : float, optional
        Bound the first change is measured from when there is no history (a warm start);
        ``-inf`` by default, so a fresh run never converges at its first iteration.

    Returns
    -------
    EMResult
    """
    results: list[EMResult[P, S]] = []

    def keep(result: EMResult[P, S]) -> float:
        results.append(result)
        return 0.0

    model = ModelPlan(family, lambda r, s: params, lambda **arrays: params, keep, tol)
    spec = FitSpec[P, S](
        seeds=(0,) * (restart + 1), max_iter=max_iter, seed=0, observer=observer
    ).planned(model)
    history = list(lower_bounds)
    if history:
        prev = history[-1]
    else:
        prev = -math.inf if previous_bound is None else float(previous_bound)
    run = Run[P, S](restart, params, history, prev)
    drive(X, [RestartGroup(spec, [run], None, BATCH)])
    return results[0]
