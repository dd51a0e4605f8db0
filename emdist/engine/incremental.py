"""Incremental EM: the parameters updated after every shard of the data, not once per pass.

Neal & Hinton's view of EM (1998): EM maximises a *free energy* ``F(q, θ)`` over the
responsibilities ``q`` of every row and the parameters ``θ``; the E-step of any subset of
rows and the M-step each raise it. The statistics are summable, so the engine keeps one
statistics value per shard (:mod:`emdist.engine.shards`) and, visiting shard ``s``,
computes its statistics under the current parameters (one ``compute`` over its blocks, in
parallel), replaces its old value, and runs the M-step on the total. A pass over the data
(a *sweep*) thus makes ``n_shards`` M-steps instead of one.

- **The total** is re-summed from the kept shard values, each re-expressed about the
  current shift (:mod:`emdist.kernels.rebase`), in shard order: never ``total - old + new``,
  which would cancel and would depend on the history of the sums. It depends on the kept
  values and the current parameters only, so a resumed fit repeats it bit for bit.
- **The first sweep** is one batch pass (every shard under the starting parameters, one
  ``compute``), then one M-step: there is nothing to replace yet.
- **The bound of a sweep** is the free energy after its last M-step, measured under those
  parameters: ``F(q̃, θ) = E_q̃[log p(X, Z | θ)] + H(q̃)`` from the kept statistics (per
  sample). It never decreases, and it is at most the bound of ``θ`` itself.
- **Convergence** is judged on whole sweeps by the family's test (the change of the sweep
  bound, or the centre shift over the sweep for K-means). Then **one batch pass** ends the
  fit, as one iteration of batch EM: its bound is the exact bound of the parameters it ran
  under (what ``lower_bound_`` reports) and its M-step gives the final parameters.
- **Memory**: ``n_shards`` statistics values, never anything per row.

``max_iter`` counts passes over the data: at most ``max_iter - 1`` sweeps and the final
pass. Restarts run one after the other (docs/design.md, "Incremental EM").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar, cast

import numpy as np

from emdist.engine.data import FitData
from emdist.engine.em import EMResult, IterationState, ModelFamily, Observer
from emdist.engine.reduce import Data, map_reduce
from emdist.engine.restarts import BestRun, RestartSpec, best_run, keep_best
from emdist.engine.shards import (
    Shards,
    make_shards,
    shard_pass,
    shards_pass,
    stats_from_arrays,
    stats_to_arrays,
)
from emdist.io.checkpoint import (
    BestState,
    CheckpointError,
    FitState,
    RestartState,
)

__all__ = [
    "IncrementalFamily",
    "ShardStatistics",
    "run_incremental",
    "run_incremental_restarts",
]

P = TypeVar("P")
S = TypeVar("S")


class IncrementalFamily(ModelFamily[P, S], Protocol):
    """What incremental EM needs from a model family besides :class:`ModelFamily`."""

    #: The class of the statistics values (to restore them from a checkpoint).
    stats_type: ClassVar[type[Any]]

    def rebase(self, stats: S, params: P) -> S:
        """``stats`` re-expressed about the shift of ``params``, so that they add to others."""
        ...

    def entropy(self, stats: S, params: P) -> float:
        """The part of the free energy the statistics do not carry.

        For ``stats`` just computed under ``params``: the entropy of the responsibilities
        (0 when the statistics carry it, or for hard assignments).
        """
        ...

    def free_energy(self, stats: S, entropy: float, params: P) -> float:
        """Per-sample free energy of the responsibilities behind ``stats`` under ``params``.

        ``entropy`` is the summed :meth:`entropy` of the kept statistics; ``params`` are
        the parameters the M-step computed from ``stats``.
        """
        ...


class ShardStatistics:
    """The kept statistics of every shard and their entropies (the incremental state)."""

    def __init__(self, stats: list[Any], entropy: list[float]) -> None:
        self.stats = stats
        self.entropy = entropy

    def total(self, family: IncrementalFamily[Any, Any], params: Any) -> Any:
        """The sum of every shard's statistics about the shift of ``params``, in shard order."""
        parts = [family.rebase(st, params) for st in self.stats]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total

    def total_entropy(self) -> float:
        """The entropies summed in shard order."""
        return math.fsum(self.entropy)

    def to_arrays(self) -> dict[str, Any]:
        """Flat arrays for a checkpoint's ``carry``: each field stacked over the shards.

        One array per field, not per field and shard: a checkpoint commit costs a few
        milliseconds per array written (benchmarks/README.md, "Incremental EM"). A field
        whose shape differs between shards (K-means' far points of a shard with fewer rows
        than clusters) is stored per shard.
        """
        out: dict[str, Any] = {"entropy": np.asarray(self.entropy, dtype=np.float64)}
        per_shard = [stats_to_arrays(st) for st in self.stats]
        for name in per_shard[0]:
            values = [arrays[name] for arrays in per_shard]
            if all(v.shape == values[0].shape for v in values):
                out[f"shards/{name}"] = np.stack(values)
            else:
                out.update({f"shard{s:04d}/{name}": v for s, v in enumerate(values)})
        return out

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, Any], stats_type: type[Any], n_shards: int
    ) -> ShardStatistics:
        """Rebuild from :meth:`to_arrays` (``CheckpointError`` if something is missing)."""
        try:
            entropy = [float(v) for v in np.asarray(arrays["entropy"], dtype=np.float64)]
            if len(entropy) != n_shards:
                raise ValueError(f"{len(entropy)} entropies for {n_shards} shards")
            stats = []
            for s in range(n_shards):
                fields = {
                    k.removeprefix("shards/"): v[s]
                    for k, v in arrays.items()
                    if k.startswith("shards/")
                }
                prefix = f"shard{s:04d}/"
                fields.update(
                    {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
                )
                stats.append(stats_from_arrays(stats_type, fields))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(
                f"the shard statistics of the checkpoint are damaged ({exc})"
            ) from None
        return cls(stats, entropy)


#: Called after every sweep with its state and the shard statistics (checkpoints).
SweepHook = Callable[[IterationState[Any], ShardStatistics], None]


def run_incremental(
    X: Data,
    family: IncrementalFamily[P, S],
    params: P,
    shards: Shards,
    *,
    tol: float,
    max_iter: int,
    observer: Observer | None = None,
    restart: int = 0,
    lower_bounds: Sequence[float] = (),
    previous_bound: float | None = None,
    kept: ShardStatistics | None = None,
    converged: bool = False,
    on_sweep: SweepHook | None = None,
) -> EMResult[P, S]:
    """Run incremental EM from ``params``: sweeps of shard-wise updates, then one batch pass.

    Parameters
    ----------
    X : dask.array.Array or ndarray
        Row-chunked data.
    family : IncrementalFamily
    params : P
        Starting parameters (after the last sweep, when resuming).
    shards : Shards
    tol : float
        Convergence threshold of the family's test, applied to whole sweeps.
    max_iter : int
        Passes over the data: sweeps and the final batch pass.
    observer : callable, optional
        Called with an :class:`IterationState` after every sweep and after the final pass
        (``iteration`` counts passes); returning ``True`` stops at once.
    restart : int, default=0
    lower_bounds : sequence of float, default=()
        Sweep bounds of a run being resumed.
    previous_bound : float, optional
        The bound the first change is measured from (warm start).
    kept : ShardStatistics, optional
        The shard statistics of a run being resumed (required with ``lower_bounds``).
    converged : bool, default=False
        Whether the resumed run's sweeps had converged (only the final pass is left).
    on_sweep : callable, optional
        Called after every sweep, before ``observer`` (commits checkpoints).

    Returns
    -------
    EMResult
        ``lower_bounds`` holds the sweep bounds and, last, the final pass's exact bound;
        ``stats`` are the final pass's statistics.
    """
    history = list(lower_bounds)
    if history:
        prev = history[-1]
        if kept is None:
            raise ValueError("resuming incremental EM needs the kept shard statistics")
    else:
        prev = -math.inf if previous_bound is None else float(previous_bound)
    for iteration in range(len(history) + 1, max_iter):
        if converged:
            break
        start_time = time.perf_counter()
        start = params
        if kept is None:
            # First sweep: every shard under the starting parameters in one pass.
            fresh: list[S] = shards_pass(X, shards, family.estep_chunk, params)
            kept = ShardStatistics(fresh, [family.entropy(st, params) for st in fresh])
            total = kept.total(family, params)
            params = family.mstep(total, params)
        else:
            for s in range(len(shards)):
                st: S = shard_pass(X, shards, s, family.estep_chunk, params)
                kept.stats[s] = st
                kept.entropy[s] = family.entropy(st, params)
                total = kept.total(family, params)
                params = family.mstep(total, params)
        bound = family.free_energy(total, kept.total_entropy(), params)
        converged = family.converged(prev, bound, start, params, tol)
        history.append(bound)
        state = IterationState(
            restart=restart,
            iteration=iteration,
            lower_bound=bound,
            change=bound - prev,
            params=params,
            converged=converged,
            seconds=time.perf_counter() - start_time,
            lower_bounds=tuple(history),
        )
        prev = bound
        if on_sweep is not None:
            on_sweep(state, kept)
        if observer is not None and observer(state):
            return EMResult(params, bound, tuple(history), len(history), converged, None)

    # The final batch pass: the exact bound of the parameters the sweeps ended with.
    start_time = time.perf_counter()
    stats: S = map_reduce(X, family.estep_chunk, params)
    bound = family.lower_bound(stats, params)
    new_params = family.mstep(stats, params)
    history.append(bound)
    state = IterationState(
        restart=restart,
        iteration=len(history),
        lower_bound=bound,
        change=bound - prev,
        params=new_params,
        converged=converged,
        seconds=time.perf_counter() - start_time,
        lower_bounds=tuple(history),
    )
    if observer is not None:
        observer(state)
    return EMResult(new_params, bound, tuple(history), len(history), converged, stats)


def run_incremental_restarts(data: FitData, spec: RestartSpec[P, S], n_shards: int) -> BestRun[P]:
    """The restarts of an incremental fit, one after the other, with checkpoints.

    As :func:`emdist.engine.restarts.run_restarts`, but sequential: a restart's sweeps
    cannot share passes with another's (each visits its shards with its own parameters in
    between). The checkpoint (format version 2) holds the one running restart, with the
    shard statistics as its ``carry``, the finished restarts and the best: committed after
    sweeps (every ``checkpoint.every``-th, the converged one and the last) and at the end
    of every restart, when the restart moves from ``running`` to ``finished``. A resumed
    fit repeats the uninterrupted one bit for bit: the shards derive from the recorded seed
    (and are checked against the recorded assignment), the kept statistics are stored
    exactly.
    """
    family = cast(IncrementalFamily[P, S], spec.family)
    checkpoint, max_iter = spec.checkpoint, spec.max_iter
    shards = make_shards(data.X, n_shards, spec.seed)
    n_blocks = 1 if isinstance(data.X, np.ndarray) else int(data.X.numblocks[0])
    assignment = shards.assignment(n_blocks)
    state = spec.open_checkpoint(data)
    best: BestState | None = state.best if state is not None else None
    finished: list[int] = list(state.finished) if state is not None else []
    resumed = {r.restart: r for r in state.running} if state is not None else {}

    for restart in range(spec.n_init):
        if restart in finished:
            continue
        history: tuple[float, ...] = ()
        kept: ShardStatistics | None = None
        done = False
        saved = resumed.get(restart)
        if saved is not None:
            start = spec.params_from_arrays(**saved.params)
            history = tuple(float(v) for v in saved.lower_bounds)
            done = saved.converged
            if history:
                recorded = saved.carry.get("assignment")
                if recorded is None or not np.array_equal(recorded, assignment):
                    raise CheckpointError(
                        "the checkpoint's shards differ from this fit's; start over with "
                        "overwrite=True"
                    )
                kept = ShardStatistics.from_arrays(saved.carry, family.stats_type, len(shards))
        else:
            start = spec.make_start(restart, spec.seeds[restart])

        def save_sweep(
            it: IterationState[Any],
            kept: ShardStatistics,
            restart: int = restart,
            best: BestState | None = best,
        ) -> None:
            assert checkpoint is not None
            last = it.iteration >= max_iter - 1
            if it.iteration % checkpoint.every == 0 or it.converged or last:
                running = RestartState(
                    restart,
                    dict(it.params.arrays()),
                    np.asarray(it.lower_bounds, dtype=np.float64),
                    it.converged,
                    carry={"assignment": assignment, **kept.to_arrays()},
                )
                checkpoint.save(
                    FitState(running=(running,), finished=tuple(sorted(finished)), best=best)
                )

        result = run_incremental(
            data.X,
            family,
            start,
            shards,
            tol=spec.tol,
            max_iter=max_iter,
            observer=spec.observer,
            restart=restart,
            lower_bounds=history,
            previous_bound=spec.previous_bound if restart == 0 else None,
            kept=kept,
            converged=done,
            on_sweep=save_sweep if checkpoint is not None else None,
        )
        best = keep_best(best, restart, result, float(spec.score(result)))
        finished.append(restart)
        if checkpoint is not None:
            # Nothing running until the next restart's first sweep: it starts afresh from
            # its seed, as it would have.
            checkpoint.save(FitState(running=(), finished=tuple(sorted(finished)), best=best))
    return best_run(best, spec.params_from_arrays)
