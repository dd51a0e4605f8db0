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
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar, cast

import numpy as np

from emdist.engine.em import FitSpec, IterationState, ModelFamily, Pass, Run
from emdist.engine.reduce import PassData, as_rows
from emdist.engine.restarts import param_arrays
from emdist.engine.shards import Shards, make_shards, stats_from_arrays, stats_to_arrays
from emdist.io.checkpoint import CheckpointError, RestartState

__all__ = [
    "IncrementalFamily",
    "IncrementalSchedule",
    "ShardStatistics",
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


@dataclass
class _Sweeps:
    """What one incremental restart keeps between passes."""

    #: The kept statistics of every shard (``None`` before the first sweep).
    kept: ShardStatistics | None = None
    #: The shard the next pass visits within the current sweep.
    shard: int = 0
    #: Parameters at the start of the current sweep (the convergence test compares them).
    start: Any = None
    #: Wall time of the current sweep so far.
    seconds: float = 0.0
    #: The restart after its last sweep, as committed.
    saved: RestartState | None = None
    #: Whether the final batch pass ran.
    final: bool = False


@dataclass(frozen=True)
class IncrementalSchedule:
    """Incremental EM as a schedule of the EM driver (:mod:`emdist.engine.em`).

    A restart runs sweeps of shard-wise updates, then one batch pass; its restarts run one
    after another (a restart's sweeps cannot share passes with another's: each visits its
    shards with its own parameters in between). The checkpoint (format version 2) holds the
    one running restart, with the shard statistics as its ``carry``, the finished restarts
    and the best: committed after sweeps (every ``checkpoint.every``-th, the converged one
    and the last) and when the restart is compared, when it moves from ``running`` to
    ``finished``. A resumed fit repeats the uninterrupted one bit for bit: the shards derive
    from the recorded seed (and are checked against the recorded assignment), the kept
    statistics are stored exactly.

    Attributes
    ----------
    n_shards : int
        Shards asked for (at most one per row-block).
    shards : Shards or None
        Set by :meth:`bind`.
    assignment : ndarray or None
        The shard of every block, recorded with checkpoints.
    """

    n_shards: int
    shards: Shards | None = None
    assignment: Any = None

    @property
    def side_by_side(self) -> bool:
        """False: a restart's sweeps cannot share passes with another's."""
        return False

    def bind(self, X: PassData, seed: int) -> IncrementalSchedule:
        """The shards of ``X``, dealt by the fit's seed."""
        shards = make_shards(X, self.n_shards, seed)
        X = as_rows(X).x
        n_blocks = 1 if isinstance(X, np.ndarray) else int(X.numblocks[0])
        return IncrementalSchedule(self.n_shards, shards, shards.assignment(n_blocks))

    def _shards(self) -> Shards:
        assert self.shards is not None, "bind() first"
        return self.shards

    @staticmethod
    def _state(run: Run[Any, Any]) -> _Sweeps:
        if run.carry is None:
            run.carry = _Sweeps()
        state: _Sweeps = run.carry
        return state

    def resume(self, run: Run[Any, Any], saved: RestartState, family: Any) -> None:
        """The kept shard statistics of the committed sweep (checked against the shards)."""
        state = self._state(run)
        state.saved = saved
        if not run.history:
            return
        recorded = saved.carry.get("assignment")
        if recorded is None or not np.array_equal(recorded, self.assignment):
            raise CheckpointError(
                "the checkpoint's shards differ from this fit's; start over with overwrite=True"
            )
        state.kept = ShardStatistics.from_arrays(
            saved.carry, family.stats_type, len(self._shards())
        )

    def _sweeping(self, run: Run[Any, Any], spec: FitSpec[Any, Any]) -> bool:
        # ``max_iter`` counts passes: at most ``max_iter - 1`` sweeps and the final pass.
        return not run.converged and len(run.history) + 1 < spec.max_iter

    def em_over(self, run: Run[Any, Any], spec: FitSpec[Any, Any]) -> bool:
        """Stopped by the observer, or the final pass ran."""
        return run.stopped or self._state(run).final

    def request(self, run: Run[Any, Any], spec: FitSpec[Any, Any]) -> Pass[Any]:
        """Every shard (first sweep), the next shard, or the whole data (final pass)."""
        state = self._state(run)
        if not self._sweeping(run, spec):
            return Pass(spec.family, run.params)
        if state.kept is None:
            return Pass(spec.family, run.params, self._shards(), None)
        return Pass(spec.family, run.params, self._shards(), state.shard)

    def apply(
        self, run: Run[Any, Any], stats: Any, seconds: float, spec: FitSpec[Any, Any]
    ) -> tuple[IterationState[Any] | None, bool]:
        """One shard's update (or every shard's, first), a sweep's end, or the final pass."""
        family = cast(IncrementalFamily[Any, Any], spec.family)
        state = self._state(run)
        if not self._sweeping(run, spec):
            return self._final(run, stats, seconds, spec), False
        params = run.params
        if state.kept is None:
            # First sweep: every shard under the starting parameters in one pass.
            state.start, state.seconds = params, seconds
            state.kept = ShardStatistics(stats, [family.entropy(st, params) for st in stats])
        else:
            if state.shard == 0:
                state.start, state.seconds = params, 0.0
            state.kept.stats[state.shard] = stats
            state.kept.entropy[state.shard] = family.entropy(stats, params)
            state.seconds += seconds
            state.shard += 1
        total = state.kept.total(family, params)
        run.params = family.mstep(total, params)
        if 0 < state.shard < len(self._shards()):
            return None, False
        state.shard = 0
        return self._end_sweep(run, family, total, spec)

    def _end_sweep(
        self,
        run: Run[Any, Any],
        family: IncrementalFamily[Any, Any],
        total: Any,
        spec: FitSpec[Any, Any],
    ) -> tuple[IterationState[Any], bool]:
        state = self._state(run)
        assert state.kept is not None
        bound = family.free_energy(total, state.kept.total_entropy(), run.params)
        run.converged = family.converged(run.prev, bound, state.start, run.params, spec.tol)
        run.history.append(bound)
        iteration = len(run.history)
        it = IterationState(
            restart=run.restart,
            iteration=iteration,
            lower_bound=bound,
            change=bound - run.prev,
            params=run.params,
            converged=run.converged,
            seconds=state.seconds,
            lower_bounds=tuple(run.history),
        )
        run.prev = bound
        checkpoint = spec.checkpoint
        if checkpoint is None:
            return it, False
        state.saved = RestartState(
            run.restart,
            param_arrays(run.params),
            np.asarray(run.history, dtype=np.float64),
            run.converged,
            carry={"assignment": self.assignment, **state.kept.to_arrays()},
        )
        last = iteration >= spec.max_iter - 1
        return it, iteration % checkpoint.every == 0 or run.converged or last

    def _final(
        self, run: Run[Any, Any], stats: Any, seconds: float, spec: FitSpec[Any, Any]
    ) -> IterationState[Any]:
        """The final batch pass: the exact bound of the parameters the sweeps ended with."""
        family = spec.family
        bound = family.lower_bound(stats, run.params)
        new_params = family.mstep(stats, run.params)
        run.history.append(bound)
        it = IterationState(
            restart=run.restart,
            iteration=len(run.history),
            lower_bound=bound,
            change=bound - run.prev,
            params=new_params,
            converged=run.converged,
            seconds=seconds,
            lower_bounds=tuple(run.history),
        )
        run.params, run.prev, run.stats = new_params, bound, stats
        self._state(run).final = True
        return it

    def saved(self, run: Run[Any, Any]) -> RestartState | None:
        """The restart after its last committed sweep (``None`` before the first)."""
        state: _Sweeps | None = run.carry
        return None if state is None else state.saved
