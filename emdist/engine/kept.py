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

A family that can tell, from a block's kept state alone, that none of its rows changes
under the next parameters (:class:`Skipping`; K-means: every row keeps its label on its
bounds) has such *clean* blocks left unread: their statistics come from their states in a
task without data, their states stand as they are (valid, under the parameters of the pass
that last read the block), and the pass reads only the others. Should the totals of such a
pass not stand (K-means: a cluster came out empty, which needs every block's far rows), the
pass runs again reading every block.

The state costs memory: ``bytes_per_row`` per row and restart. Above a budget (dask config
``emdist.kept-state-bytes``, :data:`DEFAULT_BUDGET` by default; 0 turns kept state off) the
passes run without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import dask
import dask.array as da
import numpy as np
from dask.base import compute, persist
from dask.delayed import delayed
from dask.highlevelgraph import HighLevelGraph

from emdist.engine.lockstep import StatsTuple
from emdist.engine.reduce import Rows, block_results, sum_tree
from emdist.engine.threads import single_blas_task
from emdist.kernels.rows import RowBlock

__all__ = ["DEFAULT_BUDGET", "KeptState", "Skipping", "budget"]

#: Default memory for kept per-row state, summed over the cluster (bytes): 2 GiB holds
#: K-means' bounds of ~180 million rows for one restart (12 bytes a row).
DEFAULT_BUDGET = 2 << 30

#: ``kernel(block, params, tags, previous) -> (stats list, state)``.
StateKernel = Callable[[RowBlock, Sequence[Any], Sequence[Any], Any], tuple[list[Any], Any]]


class Skipping(Protocol):
    """How a family's pass leaves unread the blocks its kept state proves unchanged."""

    def reach(self, state: Any) -> Any:
        """What the client keeps of a block's new state to decide (small; in the block's task)."""

    def stays(self, reach: Any, params: Sequence[Any], tags: Sequence[Any]) -> bool:
        """Whether the block of this reach needs no read under ``params`` (at the client)."""

    def kept_stats(
        self, state: Any, params: Sequence[Any], tags: Sequence[Any]
    ) -> list[Any] | None:
        """The block's statistics from its state alone, or ``None`` if it must be read."""

    def stands(self, totals: Sequence[Any]) -> bool:
        """Whether a pass's totals hold although blocks were left unread."""


def budget() -> int:
    """The memory kept state may take (bytes; dask config ``emdist.kept-state-bytes``)."""
    value = dask.config.get("emdist.kept-state-bytes", DEFAULT_BUDGET)
    return int(dask.utils.parse_bytes(value) if isinstance(value, str) else value)


def _with_state(
    block: RowBlock,
    kernel: StateKernel,
    params: Any,
    tags: Any,
    skip: Skipping | None,
    previous: Any = None,
) -> tuple[StatsTuple, Any, Any]:
    # A block's (statistics, state, reach) from the kernel, handed its previous state; the
    # reach is taken here, while the state is at hand.
    stats, state = kernel(block, params, tags, previous)
    return StatsTuple(tuple(stats)), state, None if skip is None else skip.reach(state)


def _kept_pair(stats: list[Any], state: Any) -> tuple[StatsTuple, Any, Any]:
    # An unread block: its statistics from its state, the state as it was, no new reach.
    return StatsTuple(tuple(stats)), state, None


def _kept_stats(skip: Skipping, state: Any, params: Any, tags: Any) -> list[Any] | None:
    return skip.kept_stats(state, params, tags)


def _reach_of(pair: tuple[StatsTuple, Any, Any]) -> Any:
    return pair[2]


def _part(pairs: da.Array, part: Callable[[Any], Any], name: str) -> da.Array:
    # One part of every block's (statistics, state, reach), as a Dask array of objects.
    out: da.Array = da.map_blocks(
        part, pairs, name=name, meta=np.empty((0, 0), dtype=object), chunks=pairs.chunks
    )
    return out


def _stats_of(pair: tuple[Any, ...]) -> StatsTuple:
    stats: StatsTuple = pair[0]
    return stats


def _state_of(pair: tuple[Any, ...]) -> Any:
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
        # Per block: what its state proves (Skipping.reach), kept here to decide unread blocks.
        self._reaches: list[Any] = []
        #: Passes run with the state.
        self.passes = 0
        #: Blocks read by each pass (an unread block costs no read of its data).
        self.blocks_read: list[int] = []
        #: Passes run again reading every block (their totals needed the unread blocks).
        self.passes_read_again = 0

    def fits(self, n_rows: int, n_restarts: int) -> bool:
        """Whether the state of ``n_restarts`` restarts over ``n_rows`` rows fits the budget."""
        return n_rows * n_restarts * self.bytes_per_row <= self.limit

    def drop(self) -> None:
        """Forget the kept state (the next pass starts without it)."""
        self._states = None
        self._one = None
        self._reaches = []

    def run(
        self,
        X: Rows,
        kernel: StateKernel,
        params: Sequence[Any],
        tags: Sequence[Any],
        split_every: int = 8,
        skip: Skipping | None = None,
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
        skip : Skipping, optional
            Leave unread the blocks whose kept state proves them unchanged (the module's
            docstring); their statistics are the family's from the state alone.

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
            self.blocks_read.append(1)
            return list(stats)
        assert isinstance(x, da.Array)
        previous = self._states
        if previous is not None and previous.numblocks[0] != x.numblocks[0]:
            previous = None
        kept: dict[int, list[Any]] = {}
        if skip is not None and previous is not None and len(self._reaches) == x.numblocks[0]:
            kept = self._unread(previous, skip, params, tags)
        total = self._pass(X, kernel, params, tags, split_every, skip, previous, kept)
        if kept and not skip.stands(total):  # type: ignore[union-attr]
            # The unread blocks gave no far rows, and the totals need them: every block read.
            self.passes_read_again += 1
            total = self._pass(X, kernel, params, tags, split_every, skip, previous, {})
        return total

    def _unread(
        self, previous: da.Array, skip: Skipping, params: Sequence[Any], tags: Sequence[Any]
    ) -> dict[int, list[Any]]:
        """The blocks this pass need not read, with their statistics from their states."""
        candidates = [
            i for i, reach in enumerate(self._reaches)
            if reach is not None and skip.stays(reach, params, tags)
        ]  # fmt: skip
        if not candidates:
            return {}
        # One task per block, without its data, where its state is.
        blocks = previous.to_delayed().ravel()
        task = delayed(_kept_stats, pure=False)
        got = compute(
            *[task(skip, blocks[i], tuple(params), tuple(tags)) for i in candidates],
            optimize_graph=False,
        )
        return {i: stats for i, stats in zip(candidates, got, strict=True) if stats is not None}

    def _pass(
        self,
        X: Rows,
        kernel: StateKernel,
        params: Sequence[Any],
        tags: Sequence[Any],
        split_every: int,
        skip: Skipping | None,
        previous: da.Array | None,
        kept: dict[int, list[Any]],
    ) -> list[Any]:
        # The plain pass's blocks and sum tree (emdist.engine.reduce), the previous state
        # handed to each block's kernel.
        pairs, token = block_results(
            X, _with_state, kernel, tuple(params), tuple(tags), skip, previous=previous,
            prefix="emdist-kept",
        )  # fmt: skip
        n_blocks = pairs.numblocks[0]
        if kept:
            assert previous is not None
            # The unread blocks' tasks are dropped from the graph (nothing reads them), the
            # others' kept; in their places, each unread block's statistics and old state.
            read = {(pairs.name, i, 0) for i in range(n_blocks) if i not in kept}
            whole: HighLevelGraph = pairs.__dask_graph__()  # type: ignore[assignment]
            culled = da.Array(whole.cull(read), pairs.name, pairs.chunks, meta=pairs._meta)
            name = f"emdist-kept-mixed-{token}"
            layer: dict[Any, Any] = {
                (name, i, 0): (
                    (_kept_pair, kept[i], (previous.name, i, 0))
                    if i in kept
                    else (pairs.name, i, 0)
                )
                for i in range(n_blocks)
            }
            dependencies: list[Any] = [culled, previous]
            graph = HighLevelGraph.from_collections(name, layer, dependencies=dependencies)
            pairs = da.Array(graph, name, pairs.chunks, meta=pairs._meta)
        self.blocks_read.append(n_blocks - len(kept))
        reduction = sum_tree(pairs, token, split_every, _sum_stats, _stats_of, "emdist-kept")
        # Only the states are kept (for K-means: the bounds and the per-segment statistics),
        # not the pass's statistics beside them (the far rows): the budget counts the states.
        states = _part(pairs, _state_of, f"emdist-kept-state-{token}")
        # One run of the graph: the states stay where they were computed (workers, or this
        # process), the sums (and, to decide unread blocks, the reaches) come back. Not
        # optimized: blockwise fusion would fold each block's read into the states' tasks
        # and read it again for the sums.
        if skip is None:
            states, reduction = persist(states, reduction, optimize_graph=False)
            total: StatsTuple = reduction.compute()
            self._states = states
            self._reaches = []
            return list(total.items)
        reaches = _part(pairs, _reach_of, f"emdist-kept-reach-{token}")
        states, reduction, reaches = persist(states, reduction, reaches, optimize_graph=False)
        total, *new = compute(reduction, *reaches.to_delayed().ravel(), optimize_graph=False)
        self._states = states
        old = self._reaches if len(self._reaches) == n_blocks else [None] * n_blocks
        # An unread block keeps its reach (its state did not change).
        self._reaches = [old[i] if i in kept else new[i] for i in range(n_blocks)]
        return list(total.items)

    def block_states(self) -> list[Any]:
        """The kept state of every block (gathered here: for tests and measurements)."""
        if self._states is None:
            return [] if self._one is None else [self._one]
        return list(compute(*self._states.to_delayed().ravel()))


def state_bytes(states: Sequence[Any]) -> int:
    """Memory held by kept states that tell their ``nbytes``."""
    return int(sum(int(getattr(s, "nbytes", 0)) for s in states))
