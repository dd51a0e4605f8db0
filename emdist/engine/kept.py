"""Passes whose kernels keep per-row state beside the row blocks, from one pass to the next.

K-means' bounds (:func:`emdist.kernels.kmeans.kmeans_estep_bounded`): every pass gives each
block's kernel the block and the state the previous pass left for it, and takes back the
block's statistics and its new state. The states never travel to the client:

- on a distributed cluster the pass's per-block results (statistics and state) are
  persisted — futures held by the workers that computed them, so the next pass runs each
  block where its state is, or fetches 12 bytes a row where the scheduler moves it;
- on a local scheduler they are the values of the persisted array, in this process's
  memory (no copy: the next pass's tasks receive them as they are).

Only the statistics are summed (the fixed tree of :mod:`emdist.engine.reduce`, so the totals
equal, bit for bit, those of a pass without state). The state lives as long as the
:class:`KeptState` (one fit's passes) and is never written to a checkpoint: a resumed fit
starts without it, which changes no result, only what its first pass computes.

The state costs memory: ``bytes_per_row`` per row and restart. Above a budget (dask config
``emdist.kept-state-bytes``, :data:`DEFAULT_BUDGET` by default; 0 turns kept state off) the
passes run without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import compute, persist

from emdist.engine.lockstep import StatsTuple
from emdist.engine.reduce import Rows, block_results, sum_tree
from emdist.engine.threads import single_blas_task
from emdist.kernels.rows import RowBlock

__all__ = ["DEFAULT_BUDGET", "KeptState", "budget"]

#: Default memory for kept per-row state, summed over the cluster (bytes): 2 GiB holds
#: K-means' bounds of ~180 million rows for one restart (12 bytes a row).
DEFAULT_BUDGET = 2 << 30

#: ``kernel(block, params, tags, previous) -> (stats list, state)``.
StateKernel = Callable[[RowBlock, Sequence[Any], Sequence[Any], Any], tuple[list[Any], Any]]


def budget() -> int:
    """The memory kept state may take (bytes; dask config ``emdist.kept-state-bytes``)."""
    value = dask.config.get("emdist.kept-state-bytes", DEFAULT_BUDGET)
    return int(dask.utils.parse_bytes(value) if isinstance(value, str) else value)


def _with_state(
    block: RowBlock, kernel: StateKernel, params: Any, tags: Any, previous: Any = None
) -> tuple[StatsTuple, Any]:
    # A block's (statistics, state) from the kernel, handed its previous state.
    stats, state = kernel(block, params, tags, previous)
    return StatsTuple(tuple(stats)), state


def _stats_of(pair: tuple[StatsTuple, Any]) -> StatsTuple:
    stats: StatsTuple = pair[0]
    return stats


def _state_of(pair: tuple[StatsTuple, Any]) -> Any:
    return pair[1]


def _sum_stats(*pairs_or_sums: Any) -> StatsTuple:
    values = [v[0] if isinstance(v, tuple) else v for v in pairs_or_sums]
    total: StatsTuple = functools.reduce(lambda a, b: a + b, values)
    return total


class KeptState:
    """The per-block state of one fit's passes, kept where the blocks are computed.

    Parameters
    ----------
    bytes_per_row : int
        Memory the state takes per row and restart (the budget's unit).
    limit : int, optional
        Memory allowed (default :func:`budget`).
    """

    def __init__(self, bytes_per_row: int, limit: int | None = None) -> None:
        self.bytes_per_row = int(bytes_per_row)
        self.limit = budget() if limit is None else int(limit)
        self._states: da.Array | None = None
        self._one: Any = None
        #: Passes run with the state.
        self.passes = 0

    def fits(self, n_rows: int, n_restarts: int) -> bool:
        """Whether the state of ``n_restarts`` restarts over ``n_rows`` rows fits the budget."""
        return n_rows * n_restarts * self.bytes_per_row <= self.limit

    def drop(self) -> None:
        """Forget the kept state (the next pass starts without it)."""
        self._states = None
        self._one = None

    def run(
        self,
        X: Rows,
        kernel: StateKernel,
        params: Sequence[Any],
        tags: Sequence[Any],
        split_every: int = 8,
    ) -> list[Any]:
        """One pass: every block's statistics under ``params``, its state kept for the next.

        Parameters
        ----------
        X : Rows
            The rows and their per-row inputs (numpy: one block, the kernel runs here).
        kernel : callable
            ``kernel(block, params, tags, previous)`` -> (statistics per restart, state).
        params : sequence
            One per restart.
        tags : sequence of hashable
            The restarts' names, the same from pass to pass.
        split_every : int, default=8
            Fan-in of the reduction tree (the plain pass's, for equal totals).

        Returns
        -------
        list
            The reduced statistics of every restart.
        """
        self.passes += 1
        x = X.x
        if isinstance(x, np.ndarray):
            per_row = {k: np.asarray(v) for k, v in X.per_row.items()}
            stats, self._one = single_blas_task(
                kernel, RowBlock(x, 0, **per_row), tuple(params), tuple(tags), self._one
            )
            return list(stats)
        assert isinstance(x, da.Array)
        previous = self._states
        if previous is not None and previous.numblocks[0] != x.numblocks[0]:
            previous = None
        # The plain pass's blocks and sum tree (emdist.engine.reduce), the previous state
        # handed to each block's kernel.
        pairs, token = block_results(
            X, _with_state, kernel, tuple(params), tuple(tags), previous=previous,
            prefix="emdist-kept",
        )  # fmt: skip
        reduction = sum_tree(pairs, token, split_every, _sum_stats, _stats_of, "emdist-kept")
        # Only the states are kept (for K-means: the bounds and the per-segment statistics),
        # not the pass's statistics beside them (the far rows): the budget counts the states.
        states = da.map_blocks(
            _state_of,
            pairs,
            name=f"emdist-kept-state-{token}",
            meta=np.empty((0, 0), dtype=object),
            chunks=pairs.chunks,
        )
        # One run of the graph: the states stay where they were computed (workers, or this
        # process), the sums come back. Not optimized: blockwise fusion would fold each
        # block's read into the states' tasks and read it again for the sums.
        states, reduction = persist(states, reduction, optimize_graph=False)
        total: StatsTuple = reduction.compute()
        self._states = states
        return list(total.items)

    def block_states(self) -> list[Any]:
        """The kept state of every block (gathered here: for tests and measurements)."""
        if self._states is None:
            return [] if self._one is None else [self._one]
        return list(compute(*self._states.to_delayed().ravel()))


def state_bytes(states: Sequence[Any]) -> int:
    """Memory held by kept states that tell their ``nbytes``."""
    return int(sum(int(getattr(s, "nbytes", 0)) for s in states))
