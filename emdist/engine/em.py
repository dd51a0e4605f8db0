"""The EM loop, written once for every model family.

A *model family* (K-means, Gaussian mixture, variational mixture...) is one object that
tells the engine four things: its per-chunk E-step (block -> statistics), its M-step
(statistics -> parameters), its per-sample lower bound and its convergence test. The engine
knows nothing else about it, so a new family adds no branch here.

Each iteration is one pass over the data and one ``compute``: the statistics produced under
``θ_t`` give both the lower bound of ``θ_t`` and the new parameters ``θ_{t+1}``, as in
scikit-learn, so convergence costs no extra pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from emdist.engine.reduce import Data, map_reduce

__all__ = ["EMResult", "IterationState", "ModelFamily", "Observer", "run_em"]

P = TypeVar("P")
S = TypeVar("S")


class ModelFamily(Protocol[P, S]):
    """What the engine needs from a model family.

    Implementations are small frozen dataclasses holding the model's configuration; they are
    pickled to Dask workers with the E-step, so they must hold no data.
    """

    def estep_chunk(self, X: Any, row_offset: int, params: P) -> S:
        """Statistics of one block under ``params`` (plain numpy)."""
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


def run_em(
    X: Data,
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
    """Run EM from ``params`` until convergence or ``max_iter`` iterations.

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
    history = list(lower_bounds)
    if history:
        prev = history[-1]
    else:
        prev = -math.inf if previous_bound is None else float(previous_bound)
    stats: S | None = None
    converged = False
    bound = prev
    for iteration in range(len(history) + 1, max_iter + 1):
        start = time.perf_counter()
        stats = map_reduce(X, family.estep_chunk, params)
        bound = family.lower_bound(stats, params)
        new_params = family.mstep(stats, params)
        converged = family.converged(prev, bound, params, new_params, tol)
        history.append(bound)
        state = IterationState(
            restart=restart,
            iteration=iteration,
            lower_bound=bound,
            change=bound - prev,
            params=new_params,
            converged=converged,
            seconds=time.perf_counter() - start,
            lower_bounds=tuple(history),
        )
        params, prev = new_params, bound
        if observer is not None and observer(state):
            break
        if converged:
            break
    return EMResult(params, bound, tuple(history), len(history), converged, stats)
