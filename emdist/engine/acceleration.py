"""Accelerated EM: extrapolation along EM steps, at one pass over the data per proposal.

Near convergence EM is a linear iteration whose rate is the largest fraction of missing
information: on overlapping mixtures it crawls. Two accelerations, chosen by the
estimators' ``acceleration`` parameter:

- ``"squarem"``: squared extrapolation (Varadhan & Roland 2008, step length "S3") along
  two consecutive EM steps ``r = θ1 - θ0``, ``v = (θ2 - θ1) - r`` (``θ1 = M(θ0)``,
  ``θ2 = M(θ1)``, ``M`` the EM map): ``α = ||r|| / ||v||`` clipped to ``[1, step_max]``,
  ``θ' = θ0 + 2 α r + α² v`` (``α = 1`` gives ``θ2``, plain EM). ``step_max`` starts at
  4, grows 4x when an accepted proposal reached it, and a rejection divides it by 4 (not
  below 1; the next EM pass then allows 4 again).
- ``"secant"``: SQUAREM's step length, proposed after every accepted pass rather than
  every other one: ``θ' = θ + α (M(θ) - θ)`` with ``α = ||s|| / ||y||``, ``s`` the move
  from the previous accepted point to ``θ`` and ``y`` the change of their EM steps (a
  secant estimate of ``1 / (1 - λ)``, ``λ`` EM's rate along the slowest direction), clipped
  to ``[1, step_max]`` as SQUAREM's.
- ``"overrelax"``: adaptive over-relaxation (Salakhutdinov & Roweis 2003):
  ``θ' = θ + η (M(θ) - θ)``, ``η`` grown 1.2x after every accepted pass, back to 1 (a
  plain EM step) after a rejection.
- ``"daarem"``: damped Anderson acceleration (Henderson & Varadhan 2019): over a window
  of the last (up to 5) accepted points ``x_i`` and their EM steps ``f_i = M(x_i) - x_i``,
  ``θ' = x + f - (ΔX + ΔF) γ`` with ``γ`` the ridge solution of ``min ||f - ΔF γ||``
  whose squared norm is ``δ = 1 / (1 + 1.2^(25 - s))`` of the least-squares one (``s``
  counts accepted proposals, less one per rejection: a rejection costs a pass here,
  where the paper tolerates a small drop of the bound); the window restarts empty when
  full.

``"auto"``, the estimators' default, is SQUAREM with batch EM and leaves
incremental EM plain (:func:`accelerated`); ``None`` is plain EM, scikit-learn's
iterations.

Out of core what counts is passes, not iterations, so every pass evaluates one point: its
statistics give both the point's bound and its EM step. A proposal is accepted when its
bound is at least the accepted one; else the next pass evaluates the EM step of the
accepted point (known from the pass that evaluated it), so a rejection costs exactly its
one pass. SQUAREM alternates an *EM pass* at ``θ1 = M(θ0)`` (whose EM step ``θ2`` gives
the extrapolation) and a *proposal pass*; the secant step, over-relaxation and DAAREM
propose after every accepted pass. Proposals are made in the family's vector space and
projected back onto the parameter space (:meth:`AcceleratedFamily.from_vector`).

- **Bound history**: one entry per pass, the accepted bound (a rejected pass repeats it),
  so it never decreases and its length counts the passes.
- **Convergence**: the family's test on the change of the bound from one accepted point
  to the next — for SQUAREM only on EM passes (an accepted point to its EM step), as
  batch EM tests it; for the others on every accepted pass.
- **Result**: the restart's parameters are the EM step of its last accepted point (as
  batch EM's: the parameters after the last M-step); its bound is that point's, the best
  evaluated.

Restarts run side by side and K sweeps share passes as batch EM's do; the checkpoint's
``carry`` holds the next point, the accepted point and the step state (DAAREM: its window
too, two float64 arrays), so a resumed fit repeats the uninterrupted one bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import numpy as np

from emdist.engine.em import BATCH, FitSpec, IterationState, ModelFamily, Pass, Run, Schedule
from emdist.engine.reduce import PassData
from emdist.engine.restarts import param_arrays
from emdist.exceptions import InvalidParameterError
from emdist.io.checkpoint import CheckpointError, RestartState

__all__ = [
    "ACCELERATIONS",
    "AUTO_ACCELERATION",
    "AcceleratedFamily",
    "AcceleratedSchedule",
    "accelerated",
    "anderson_step",
    "squarem_step",
]

P = TypeVar("P")
S = TypeVar("S")

#: The accelerations an estimator's ``acceleration`` parameter accepts (``None``: plain EM;
#: ``"auto"``, the default: :data:`AUTO_ACCELERATION` with ``updates='batch'``, plain EM
#: with incremental).
ACCELERATIONS = ("auto", "secant", "squarem", "overrelax", "daarem")

#: What ``acceleration="auto"`` means with batch EM: SQUAREM. The secant step took fewer
#: passes on 6 of the 7 overlapping mixtures of ``benchmarks/bench_acceleration.py``
#: (0.29-0.71x plain EM's; SQUAREM 0.44-0.71x), but over 30 starts on each of two
#: heavy-tailed mixtures its early extrapolations carried one fit into a basin 3.5% below
#: where plain EM and SQUAREM end from the same start (benchmarks/README.md): fewer passes
#: do not pay for a worse answer.
AUTO_ACCELERATION = "squarem"

# Growth of the over-relaxation factor after an accepted step.
_RELAX_GROWTH = 1.2

# Growth (and shrink) factor of the largest step length (SQUAREM's ``mstep``).
_STEP_FACTOR = 4.0

# DAAREM: the window of EM steps Anderson mixing uses (it restarts when full), and the
# damping schedule: the coefficients' squared norm is ``δ = 1 / (1 + A^(κ - s))`` of the
# undamped least squares', ``s`` the count of accepted proposals.
_WINDOW = 5
_DAMP_BASE = 1.2
_DAMP_KAPPA = 25.0
_DAMP_REJECT = 1.0


class AcceleratedFamily(ModelFamily[P, S], Protocol):
    """What accelerated EM needs from a model family besides :class:`ModelFamily`."""

    def to_vector(self, params: P) -> Any:
        """The parameters as one float64 vector in which extrapolation is meaningful."""
        ...

    def from_vector(self, vector: Any, like: P) -> P | None:
        """Parameters from :meth:`to_vector`'s layout, projected onto the parameter space.

        ``None`` when no valid parameters are near ``vector`` (then EM steps instead).
        """
        ...


def accelerated(schedule: Schedule, acceleration: str | None, updates: str) -> Schedule:
    """An estimator's schedule with its ``acceleration`` (batch EM only; else one-line error).

    ``"auto"`` is :data:`AUTO_ACCELERATION` for batch EM and leaves any other schedule
    (incremental EM) as it is; an explicit method with another schedule is an error.
    """
    if acceleration is None:
        return schedule
    if acceleration == "auto":
        if schedule is not BATCH:
            return schedule
        acceleration = AUTO_ACCELERATION
    if schedule is not BATCH:
        raise InvalidParameterError(
            f"acceleration={acceleration!r} needs updates='batch'; got updates={updates!r}"
        )
    return AcceleratedSchedule(acceleration)


def squarem_step(x0: Any, x1: Any, x2: Any, step_max: float) -> tuple[Any, float]:
    """SQUAREM's proposal from three EM iterates (``x1 = M(x0)``, ``x2 = M(x1)``).

    Returns the proposal and the step length ``α`` in ``[1, step_max]`` (S3:
    ``||r|| / ||v||``); ``α = 1`` gives ``x2``.
    """
    r = x1 - x0
    v = (x2 - x1) - r
    norm_v = float(np.linalg.norm(v))
    alpha = float(np.linalg.norm(r)) / norm_v if norm_v > 0 else math.inf
    alpha = min(max(alpha, 1.0), step_max)
    return x0 + 2.0 * alpha * r + alpha * alpha * v, alpha


def anderson_step(x: Any, f: Any, dx: Any, df: Any, shrink: float) -> Any:
    """Damped Anderson mixing's proposal (DAAREM, Henderson & Varadhan 2019).

    ``x`` is the current iterate, ``f = M(x) - x`` its EM step; the rows of ``dx`` and
    ``df`` are the differences of consecutive iterates and of their EM steps (the window).
    The coefficients ``γ`` minimise ``||f - dfᵀ γ||² + λ ||γ||²`` with ``λ`` such that
    ``||γ||² = δ ||γ₀||²`` (``γ₀`` the least-squares ones, ``δ = 1 / (1 + A^(κ - shrink))``);
    the proposal is ``x + f - (dx + df)ᵀ γ`` (``γ = 0``: ``M(x)``, plain EM).
    """
    u, d, vt = np.linalg.svd(np.asarray(df).T, full_matrices=False)
    keep = d > d[0] * 1e-12 if d.size and d[0] > 0 else np.zeros(d.size, dtype=bool)
    if not keep.any():
        return x + f
    u, d, vt = u[:, keep], d[keep], vt[keep]
    uf = u.T @ f
    squared = float(np.sum((uf / d) ** 2))
    delta = 1.0 / (1.0 + _DAMP_BASE ** (_DAMP_KAPPA - shrink))
    target = delta * squared
    lam = _ridge_for_norm(uf, d, target) if target > 0 else 0.0
    gamma = vt.T @ (d * uf / (d * d + lam))
    return x + f - (np.asarray(dx) + np.asarray(df)).T @ gamma


def _ridge_for_norm(uf: Any, d: Any, target: float) -> float:
    """The ridge ``λ >= 0`` whose coefficients' squared norm is ``target`` (bisection in log λ).

    ``||γ(λ)||² = Σ (d uf / (d² + λ))²`` falls from ``||γ₀||²`` at ``λ = 0`` to zero; a
    fixed bracket and step count keep it deterministic (resume repeats it bit for bit).
    """
    num = (d * uf) ** 2
    d2 = d * d

    def norm2(lam: float) -> float:
        return float(np.sum(num / (d2 + lam) ** 2))

    hi = math.sqrt(float(np.sum(num)) / target)  # norm2(hi) <= target
    lo = hi * 1e-30
    if norm2(lo) <= target:
        return 0.0
    log_lo, log_hi = math.log(lo), math.log(hi)
    for _ in range(100):
        mid = 0.5 * (log_lo + log_hi)
        if norm2(math.exp(mid)) > target:
            log_lo = mid
        else:
            log_hi = mid
    return math.exp(0.5 * (log_lo + log_hi))


@dataclass
class _Squarem:
    """What one accelerated restart keeps between passes."""

    #: The point the next pass evaluates (``None``: the restart's parameters, the start).
    point: Any = None
    #: Whether that point is the EM step of ``base`` (else an extrapolated proposal).
    em_step: bool = True
    #: The last accepted point (``None`` before the first pass).
    base: Any = None
    #: SQUAREM, secant: the largest step length allowed; over-relaxation: the factor ``η``;
    #: DAAREM: the damping count ``s``.
    step_max: float = _STEP_FACTOR
    #: Step length of the pending proposal.
    alpha: float = 1.0
    #: DAAREM's window: differences of consecutive accepted points (rows) and of their EM
    #: steps, in :meth:`AcceleratedFamily.to_vector`'s layout (``None``: empty).
    dx: Any = None
    df: Any = None


@dataclass(frozen=True)
class AcceleratedSchedule:
    """Batch EM accelerated by extrapolation along EM steps, as a schedule of the EM driver.

    Restarts run side by side (one pass serves every running restart and the fits of a K
    sweep); each pass evaluates one point per restart. ``max_iter`` counts passes. The
    family must be an :class:`AcceleratedFamily`.

    Attributes
    ----------
    method : {'squarem', 'secant', 'overrelax', 'daarem'}
    """

    method: str = "squarem"

    @property
    def side_by_side(self) -> bool:
        """True: every pass feeds every running restart."""
        return True

    def bind(self, X: PassData, seed: int) -> AcceleratedSchedule:
        """Itself: nothing depends on the data."""
        return self

    def _state(self, run: Run[Any, Any]) -> _Squarem:
        if run.carry is None:
            # DAAREM's ``step_max`` slot counts accepted proposals (its damping), from 0.
            run.carry = _Squarem(step_max=0.0 if self.method == "daarem" else _STEP_FACTOR)
        state: _Squarem = run.carry
        return state

    def resume(self, run: Run[Any, Any], saved: RestartState, family: Any) -> None:
        """The next point, the accepted one and the step state of the committed pass."""
        if not run.history:
            return
        carry = saved.carry
        try:
            flags = np.asarray(carry["steps"], dtype=np.float64)
            point = {
                k.removeprefix("point/"): v for k, v in carry.items() if k.startswith("point/")
            }
            base = {k.removeprefix("base/"): v for k, v in carry.items() if k.startswith("base/")}
            params_type: Any = type(run.params)
            dx, df = carry.get("window/dx"), carry.get("window/df")
            if (dx is None) != (df is None):
                raise KeyError("window/dx" if dx is None else "window/df")
            run.carry = _Squarem(
                point=params_type(**point),
                em_step=bool(flags[0]),
                base=params_type(**base),
                step_max=float(flags[1]),
                alpha=float(flags[2]),
                dx=None if dx is None else np.asarray(dx, dtype=np.float64),
                df=None if df is None else np.asarray(df, dtype=np.float64),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(
                f"the accelerated EM state of the checkpoint is damaged ({exc})"
            ) from None

    def em_over(self, run: Run[Any, Any], spec: FitSpec[Any, Any]) -> bool:
        """Converged, stopped by the observer, or out of passes."""
        return run.converged or run.stopped or len(run.history) >= spec.max_iter

    def request(self, run: Run[Any, Any], spec: FitSpec[Any, Any]) -> Pass[Any]:
        """The E-step over the whole data under the point this pass evaluates."""
        state = self._state(run)
        return Pass(spec.family, run.params if state.point is None else state.point)

    def apply(
        self, run: Run[Any, Any], stats: Any, seconds: float, spec: FitSpec[Any, Any]
    ) -> tuple[IterationState[Any] | None, bool]:
        """Accept or reject the point, plan the next one; commit as batch EM does."""
        family = cast(AcceleratedFamily[Any, Any], spec.family)
        state = self._state(run)
        point = run.params if state.point is None else state.point
        bound = family.lower_bound(stats, point)
        accepted_bound = run.history[-1] if run.history else -math.inf
        reported_before = run.history[-1] if run.history else run.prev
        step = family.mstep(stats, point)
        if state.em_step:
            if bound < accepted_bound:
                # The EM step of the accepted point lowers the bound: at the optimum up to
                # rounding (or the covariance floor). Keep the accepted point and stop.
                run.converged = True
                run.history.append(accepted_bound)
            else:
                run.converged = family.converged(run.prev, bound, point, step, spec.tol)
                run.history.append(bound)
                if self.method == "secant":
                    self._after_secant(family, state, run.params, point, step)
                elif self.method == "daarem":
                    self._after_iterate(family, state, run.params, point, step)
                else:
                    self._after_em_pass(family, state, point, step)
                run.params, run.prev, run.stats = step, bound, stats
        elif bound >= accepted_bound:
            if self.method == "secant":
                run.converged = family.converged(run.prev, bound, point, step, spec.tol)
                run.history.append(bound)
                if state.alpha >= state.step_max:
                    state.step_max *= _STEP_FACTOR
                self._after_secant(family, state, run.params, point, step)
            elif self.method == "daarem":
                # An accepted Anderson proposal is the next iterate, tested as an EM one.
                run.converged = family.converged(run.prev, bound, point, step, spec.tol)
                run.history.append(bound)
                state.step_max += 1.0
                self._after_iterate(family, state, run.params, point, step)
            elif self.method == "overrelax":
                # Every accepted pass is a (relaxed) EM iteration: tested as one.
                run.converged = family.converged(run.prev, bound, point, step, spec.tol)
                run.history.append(bound)
                self._after_em_pass(family, state, point, step)
            else:
                # An accepted proposal: its EM step comes next.
                if state.alpha >= state.step_max:
                    state.step_max *= _STEP_FACTOR
                run.history.append(bound)
                state.base, state.point, state.em_step = point, step, True
            run.params, run.prev, run.stats = step, bound, stats
        else:
            # Rejected: the EM step of the accepted point (the restart's parameters) next.
            if self.method == "overrelax":
                state.step_max = 1.0
            elif self.method == "daarem":
                # A rejection costs a pass here (no tolerance for a lower bound, unlike
                # the paper's): damp the next proposals harder.
                state.step_max -= _DAMP_REJECT
            else:
                state.step_max = max(1.0, state.step_max / _STEP_FACTOR)
            run.history.append(accepted_bound)
            state.point, state.em_step = run.params, True
        iteration = len(run.history)
        it = IterationState(
            restart=run.restart,
            iteration=iteration,
            lower_bound=run.history[-1],
            change=run.history[-1] - reported_before,
            params=run.params,
            converged=run.converged,
            seconds=seconds,
            lower_bounds=tuple(run.history),
        )
        checkpoint = spec.checkpoint
        commit = checkpoint is not None and (
            iteration % checkpoint.every == 0 or run.converged or iteration == spec.max_iter
        )
        return it, commit

    def _after_secant(
        self,
        family: AcceleratedFamily[Any, Any],
        state: _Squarem,
        base_step: Any,
        point: Any,
        step: Any,
    ) -> None:
        """Secant: the next point ``x + α r`` (``r`` the EM step of ``x = point``).

        ``α = ||s|| / ||y||`` (SQUAREM's S3 length) from the last two accepted points:
        ``s`` the move between them, ``y`` the change of their EM steps; clipped to
        ``[1, step_max]`` as SQUAREM's. In EM's linear phase (rate ``λ``) it is
        ``1 / (1 - λ)``, the jump to the fixed point along the slowest direction.
        """
        base = state.base
        state.base, state.point, state.em_step = point, step, True
        if base is None:
            return
        x, m = family.to_vector(point), family.to_vector(step)
        x_old = family.to_vector(base)
        s = x - x_old
        y = (m - x) - (family.to_vector(base_step) - x_old)
        norm_y = float(np.linalg.norm(y))
        alpha = float(np.linalg.norm(s)) / norm_y if norm_y > 0 else math.inf
        alpha = min(max(alpha, 1.0), state.step_max)
        if alpha <= 1.0:
            if state.step_max <= 1.0:
                state.step_max *= _STEP_FACTOR
            return
        projected = family.from_vector(x + alpha * (m - x), step)
        if projected is not None:
            state.point, state.em_step, state.alpha = projected, False, alpha

    def _after_iterate(
        self,
        family: AcceleratedFamily[Any, Any],
        state: _Squarem,
        base_step: Any,
        point: Any,
        step: Any,
    ) -> None:
        """DAAREM: plan the pass after the new iterate ``point`` (``step`` its EM step).

        The window gains the differences from the previous iterate ``state.base`` (whose
        EM step is ``base_step``); the next point is the Anderson proposal from the window,
        or the EM step when the window is empty (the first pass) or the proposal has no
        valid parameters near it. A full window restarts empty after its proposal.
        """
        x = family.to_vector(point)
        f = family.to_vector(step) - x
        if state.base is not None:
            x_old = family.to_vector(state.base)
            f_old = family.to_vector(base_step) - x_old
            rows = ((x - x_old)[None, :], (f - f_old)[None, :])
            if state.dx is None:
                state.dx, state.df = rows
            else:
                state.dx = np.concatenate([state.dx, rows[0]])
                state.df = np.concatenate([state.df, rows[1]])
        state.base, state.point, state.em_step = point, step, True
        if state.dx is None:
            return
        proposal = anderson_step(x, f, state.dx, state.df, state.step_max)
        if state.dx.shape[0] >= _WINDOW:
            state.dx = state.df = None
        projected = family.from_vector(proposal, step)
        if projected is not None:
            state.point, state.em_step = projected, False

    def _after_em_pass(
        self, family: AcceleratedFamily[Any, Any], state: _Squarem, point: Any, step: Any
    ) -> None:
        """Plan the pass after an accepted pass at ``point`` (``step`` its EM step)."""
        base = state.base
        state.base, state.point, state.em_step = point, step, True
        if self.method == "overrelax":
            state.step_max = eta = 1.0 if base is None else state.step_max * _RELAX_GROWTH
            if eta <= 1.0:
                return
            x, m = family.to_vector(point), family.to_vector(step)
            relaxed = family.from_vector(x + eta * (m - x), step)
            if relaxed is not None:
                state.point, state.em_step, state.alpha = relaxed, False, eta
            return
        if base is None:
            return
        proposal, alpha = squarem_step(
            family.to_vector(base),
            family.to_vector(point),
            family.to_vector(step),
            state.step_max,
        )
        if alpha <= 1.0:
            if state.step_max <= 1.0:
                # Held to plain EM by a rejection: allow extrapolation again next time.
                state.step_max *= _STEP_FACTOR
            return
        projected = family.from_vector(proposal, step)
        if projected is None:
            return
        state.point, state.em_step, state.alpha = projected, False, alpha

    def saved(self, run: Run[Any, Any]) -> RestartState | None:
        """Parameters, bound history, and the next point, accepted point and step state."""
        state = self._state(run)
        carry: dict[str, Any] = {}
        if run.history:
            carry["steps"] = np.array(
                [float(state.em_step), state.step_max, state.alpha], dtype=np.float64
            )
            carry.update({f"point/{k}": v for k, v in param_arrays(state.point).items()})
            carry.update({f"base/{k}": v for k, v in param_arrays(state.base).items()})
            if state.dx is not None:
                carry["window/dx"], carry["window/df"] = state.dx, state.df
        return RestartState(
            run.restart,
            param_arrays(run.params),
            np.asarray(run.history, dtype=np.float64),
            run.converged,
            carry=carry,
        )
