"""Map every row-block of a Dask array to a statistics value and tree-reduce them.

Each block's statistics come from ``da.map_blocks`` (an object "array" of one value per
block that is never computed as an array), and the tree of sums over them is written
directly rather than with ``.sum()``: the statistics are small Python values, not arrays,
and on a LocalCluster this shape measured ~2x faster for K-means (docs/design.md). The tree
has a fixed shape (``split_every``), so the same data and chunking always add in the same
order and give bitwise-identical totals.

Only public Dask API: ``map_blocks`` reaches the blocks through Dask's own graph
machinery, also blocks that a distributed client has persisted (their keys are not in the
pass's graph, so a tuple task naming them would pass the key itself); the sum tasks name
only keys of the same graph, which tuple tasks may.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeAlias, TypeVar

import dask.array as da
import numpy as np
from dask.base import compute, tokenize
from dask.core import literal
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from emdist.engine.threads import single_blas_task

__all__ = [
    "Data",
    "Summable",
    "build_reduction",
    "map_reduce",
    "row_offsets",
]

S = TypeVar("S")
#: What a pass runs over: row-chunked Dask data, or a single in-memory block.
Data: TypeAlias = da.Array | np.ndarray[Any, Any]


class Summable(Protocol):
    """A statistics value: adding two gives the statistics of the union of their rows."""

    def __add__(self: S, other: S, /) -> S: ...


def _sum_values(*values: Any) -> Any:
    return functools.reduce(lambda a, b: a + b, values)


def row_offsets(X: Data) -> list[int]:
    """Global index of the first row of every row-block (one block for numpy)."""
    if isinstance(X, np.ndarray):
        return [0]
    offsets = [0]
    for size in X.chunks[0][:-1]:
        offsets.append(offsets[-1] + int(size))
    return offsets


def _block_stats(
    block: np.ndarray[Any, Any],
    chunk_fn: Callable[..., Any],
    offsets: list[int],
    *args: Any,
    block_id: tuple[int, ...],
) -> Any:
    return single_blas_task(chunk_fn, block, offsets[block_id[0]], *args)


def _shared(key: str, value: Any) -> Delayed:
    # One key holding the value as it is. Always wrapped in a ``literal``: ``quote`` leaves a
    # tuple whose first item is not callable as it is, and Dask then reads tuples nested in
    # it — e.g. ``(kernel, params, covariance_type)`` among a shared pass's arguments — as
    # tasks and calls them.
    return Delayed(key, {key: (literal(value),)})


def build_reduction(
    X: da.Array,
    chunk_fn: Callable[..., S],
    *args: Any,
    split_every: int = 8,
) -> Delayed:
    """Lazy tree reduction of ``chunk_fn(block, row_offset, *args)`` over row-blocks.

    ``args`` and the blocks' row offsets are put into the graph once (one key each), so
    each parameter object travels to a worker once per pass rather than once per block.

    The graph is written with keys derived from one token of the pass (the data's name, the
    function and its arguments): building it through ``delayed`` tokenized every task and
    cost about as much as the threaded scheduler's whole run of a 16-block pass
    (benchmarks/README.md, "Read path").
    """
    if X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    token = tokenize(X.name, chunk_fn, args, split_every)
    shared = [
        a if _is_scalar(a) else _shared(f"emdist-arg{i}-{token}", a) for i, a in enumerate(args)
    ]
    stats = da.map_blocks(
        _block_stats,
        X,
        chunk_fn,
        _shared(f"emdist-offsets-{token}", row_offsets(X)),
        *shared,
        name=f"emdist-stats-{token}",
        meta=np.empty((0, 0), dtype=object),
        # Two dimensions like the data's blocks: dropping the column axis would make Dask
        # concatenate (copy) every block before the kernel sees it.
        chunks=((1,) * X.numblocks[0], (1,)),
    )
    layer: dict[Any, Any] = {}
    keys: list[Any] = [(stats.name, i, 0) for i in range(X.numblocks[0])]
    level = 0
    while len(keys) > 1:
        parents = []
        for j in range(0, len(keys), split_every):
            sum_key = (f"emdist-sum-{token}", level, j // split_every)
            layer[sum_key] = (_sum_values, *keys[j : j + split_every])
            parents.append(sum_key)
        keys = parents
        level += 1
    name = f"emdist-pass-{token}"
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[stats])
    return Delayed(keys[0], graph, layer=name)


def _is_scalar(a: Any) -> bool:
    return isinstance(a, int | float | str | bool) or a is None


def map_reduce(
    X: Data,
    chunk_fn: Callable[..., S],
    *args: Any,
    split_every: int = 8,
) -> S:
    """Compute the reduced statistics of ``X`` in one pass (one ``compute``).

    Parameters
    ----------
    X : dask.array.Array or ndarray of shape (n_samples, n_features)
        Row-chunked data, or one in-memory block: then the kernel runs on it directly, with
        no graph (a Dask pass costs several ms, which is most of a fit on a few thousand
        rows; the result is the same, bit for bit).
    chunk_fn : callable
        ``chunk_fn(block, row_offset, *args)`` returning a summable statistics value, where
        ``row_offset`` is the global index of the block's first row (every reduction
        kernel takes it, so that row-seeded randomness and row numbers in errors need no
        second signature). Plain numpy.
    *args
        Extra arguments, shipped once per pass.
    split_every : int, default=8
        Fan-in of the reduction tree.

    Returns
    -------
    The sum of the per-block statistics.
    """
    if isinstance(X, np.ndarray):
        return single_blas_task(chunk_fn, X, 0, *args)
    result: S = compute(build_reduction(X, chunk_fn, *args, split_every=split_every))[0]
    return result
