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
from dask.base import compute, persist, tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from emdist.engine.lockstep import StatsTuple
from emdist.engine.reduce import Rows, _shared, row_offsets
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


def _block_with_state(
    x: np.ndarray[Any, Any],
    *parts: Any,
    names: tuple[str, ...],
    flat: tuple[bool, ...],
    block_id: tuple[int, ...],
) -> tuple[StatsTuple, Any]:
    # ``parts``: the per-row inputs' blocks, the previous state of the block or None, the
    # kernel, the blocks' offsets, the parameters and the tags.
    n = len(names)
    per_row = {
        name: part[:, 0] if one else part
        for name, one, part in zip(names, flat, parts[:n], strict=True)
    }
    previous, kernel, offsets, params, tags = parts[n:]
    block = RowBlock(x, offsets[block_id[0]], **per_row)
    stats, state = single_blas_task(kernel, block, params, tags, previous)
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
        if x.numblocks[1] != 1:
            x = x.rechunk({1: -1})
        names = tuple(sorted(X.per_row))
        inputs = [da.asarray(X.per_row[name]) for name in names]
        flat = tuple(a.ndim == 1 for a in inputs)
        columns = [
            (a.reshape(-1, 1) if one else a).rechunk({0: x.chunks[0], 1: -1})
            for a, one in zip(inputs, flat, strict=True)
        ]
        previous = self._states
        if previous is not None and previous.numblocks[0] != x.numblocks[0]:
            previous = None
        starts = row_offsets(x)
        token = tokenize(
            x.name, [c.name for c in columns], kernel, params, tags, starts,
            None if previous is None else previous.name,
        )  # fmt: skip
        pairs = da.map_blocks(
            _block_with_state,
            x,
            *columns,
            previous,
            kernel,
            _shared(f"emdist-offsets-{token}", starts),
            _shared(f"emdist-params-{token}", tuple(params)),
            _shared(f"emdist-tags-{token}", tuple(tags)),
            names=names,
            flat=flat,
            name=f"emdist-kept-{token}",
            meta=np.empty((0, 0), dtype=object),
            chunks=((1,) * x.numblocks[0], (1,)),
        )
        reduction = _reduction(pairs, token, split_every)
        # Only the states are kept, not the blocks' statistics beside them (K d floats per
        # restart and block, the far rows): the budget counts the states.
        states = da.map_blocks(
            _state_of,
            pairs,
            name=f"emdist-kept-state-{token}",
            meta=np.empty((0, 0), dtype=object),
            chunks=pairs.chunks,
        )
        # One run of the graph: the states stay where they were computed (workers, or this
        # process), the sums come back.
        states, reduction = persist(states, reduction)
        total: StatsTuple = reduction.compute()
        self._states = states
        return list(total.items)

    def block_states(self) -> list[Any]:
        """The kept state of every block (gathered here: for tests and measurements)."""
        if self._states is None:
            return [] if self._one is None else [self._one]
        return list(compute(*self._states.to_delayed().ravel()))


def _reduction(pairs: da.Array, token: str, split_every: int) -> Delayed:
    """The fixed-shape sum tree of the blocks' statistics (as :func:`build_reduction`)."""
    layer: dict[Any, Any] = {}
    keys: list[Any] = [(pairs.name, i, 0) for i in range(pairs.numblocks[0])]
    if len(keys) == 1:
        key = (f"emdist-kept-sum-{token}", 0, 0)
        layer[key] = (_stats_of, keys[0])
        keys = [key]
    level = 0
    while len(keys) > 1:
        parents = []
        for j in range(0, len(keys), split_every):
            sum_key = (f"emdist-kept-sum-{token}", level, j // split_every)
            layer[sum_key] = (_sum_stats, *keys[j : j + split_every])
            parents.append(sum_key)
        keys = parents
        level += 1
    name = f"emdist-kept-pass-{token}"
    dependency: Any = pairs
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[dependency])
    return Delayed(keys[0], graph, layer=name)


def state_bytes(states: Sequence[Any]) -> int:
    """Memory held by kept states that tell their ``nbytes``."""
    return int(sum(int(getattr(s, "nbytes", 0)) for s in states))
