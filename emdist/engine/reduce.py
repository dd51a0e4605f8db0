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
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, TypeVar

import dask.array as da
import numpy as np
from dask.base import compute, tokenize
from dask.core import literal
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from emdist.engine.threads import single_blas_task
from emdist.kernels.rows import RowBlock

__all__ = [
    "Data",
    "Rows",
    "Summable",
    "block_results",
    "build_reduction",
    "map_reduce",
    "row_offsets",
    "sum_tree",
]

S = TypeVar("S")
#: Row-chunked Dask data, or a single in-memory block.
Data: TypeAlias = da.Array | np.ndarray[Any, Any]


@dataclass(frozen=True)
class Rows:
    """The rows a pass runs over and their per-row inputs, chunked alike.

    Attributes
    ----------
    x : dask.array.Array or ndarray of shape (n_samples, n_features)
    per_row : mapping of str to array
        Per-row inputs by the name of their :class:`~emdist.kernels.rows.RowBlock` field
        (``weights``, ``mask``): numpy when ``x`` is. For Dask ``x`` each is either
        *aligned*, a Dask array with ``x``'s row chunks (block ``i`` of the input holds the
        rows of block ``i`` of ``x``: out-of-core inputs, read block by block), or *whole*,
        held in one block (numpy, or a Dask array of one row-block) over the rows of ``x``
        or of the data ``x``'s blocks were taken from (a shard's), in which a block's rows
        start at its place in ``x``, or at its global row offset. A whole input rides in
        each block's task and is sliced there: numpy in the key of the pass's row offsets
        (no key of its own), a Dask one as one key per pass; no task per block.
        :func:`emdist.engine.data.align_per_row` chooses. Each block's slice reaches the
        kernels in the block's ``RowBlock``.
    """

    x: Data
    per_row: Mapping[str, Data] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of ``x``."""
        return tuple(self.x.shape)

    def blocks(self, idx: Sequence[int]) -> Rows:
        """The row-blocks ``idx`` of ``x`` and of every per-row input (Dask data only).

        Whole per-row inputs stay whole (a block finds its rows by its global row offset,
        which the caller passes on: :func:`emdist.engine.shards.shard_rows`).
        """
        x = self.x
        assert isinstance(x, da.Array)
        per_row = {
            k: v if _is_whole(v, x) else _row_chunked(v, x.chunks[0]).blocks[list(idx)]
            for k, v in self.per_row.items()
        }
        return Rows(x.blocks[list(idx)], per_row)


def _row_chunked(value: Data, row_chunks: tuple[int, ...]) -> da.Array:
    """``value`` as a Dask array with these row chunks (and whole rows)."""
    arr = da.asarray(value)
    out: da.Array = arr.rechunk({0: row_chunks, **{i: -1 for i in range(1, arr.ndim)}})
    return out


def _is_whole(value: Data, x: da.Array) -> bool:
    """Whether a per-row input of Dask ``x`` is held whole (see :class:`Rows`)."""
    if isinstance(value, np.ndarray):
        return True
    return value.numblocks[0] == 1 and tuple(value.chunks[0]) != tuple(x.chunks[0])


def _whole_block(value: da.Array) -> da.Array:
    """A whole Dask per-row input as one block, every axis in it."""
    one: da.Array = value.rechunk(value.shape) if value.npartitions != 1 else value
    return one


#: What a pass runs over: data alone, or with its per-row inputs.
PassData: TypeAlias = Data | Rows


def as_rows(X: PassData) -> Rows:
    """``X`` as :class:`Rows` (data alone has no per-row input)."""
    return X if isinstance(X, Rows) else Rows(X)


class Summable(Protocol):
    """A statistics value: adding two gives the statistics of the union of their rows."""

    def __add__(self: S, other: S, /) -> S: ...


def _sum_values(*values: Any) -> Any:
    return functools.reduce(lambda a, b: a + b, values)


def row_offsets(X: PassData) -> list[int]:
    """Global index of the first row of every row-block (one block for numpy)."""
    X = as_rows(X).x
    if isinstance(X, np.ndarray):
        return [0]
    offsets = [0]
    for size in X.chunks[0][:-1]:
        offsets.append(offsets[-1] + int(size))
    return offsets


def _block_stats(
    x: np.ndarray[Any, Any],
    *parts: Any,
    names: tuple[str, ...],
    flat: tuple[bool, ...],
    wholes: tuple[str, ...],
    rows_here: int,
    block_id: tuple[int, ...],
) -> Any:
    # ``parts``: the blocks of the aligned per-row inputs (``names``; ``flat``: one value
    # per row, carried as an (n, 1) column), the kernel, the blocks' global and local row
    # offsets (``rows_here``: the pass's rows) with the whole per-row inputs held in
    # memory, the whole Dask ones (``wholes``: their names; each block's rows are sliced
    # from a whole input, a view), then the kernel's arguments (a kept state's pass: the
    # block's previous state last, its own block of an aligned array, or None).
    n = len(names)
    per_row = {
        name: part[:, 0] if one else part
        for name, one, part in zip(names, flat, parts[:n], strict=True)
    }
    chunk_fn, (offsets, local, held), *rest = parts[n:]
    start = offsets[block_id[0]]
    whole = {**held, **dict(zip(wholes, rest[: len(wholes)], strict=True))}
    for name, value in whole.items():
        # A whole input of the pass's own rows is cut at the block's place among them;
        # one of the data the pass's blocks were taken from (a shard's), at its global row.
        at = local[block_id[0]] if value.shape[0] == rows_here else start
        per_row[name] = value[at : at + x.shape[0]]
    args = rest[len(wholes) :]
    block = RowBlock(x, start, **per_row)
    return single_blas_task(chunk_fn, block, *args)


def _shared(key: str, value: Any) -> Delayed:
    # One key holding the value as it is. Always wrapped in a ``literal``: ``quote`` leaves a
    # tuple whose first item is not callable as it is, and Dask then reads tuples nested in
    # it — e.g. ``(kernel, params, covariance_type)`` among a shared pass's arguments — as
    # tasks and calls them.
    return Delayed(key, {key: (literal(value),)})


def build_reduction(
    X: da.Array | Rows,
    chunk_fn: Callable[..., S],
    *args: Any,
    offsets: Sequence[int] | None = None,
    split_every: int = 8,
) -> Delayed:
    """Lazy tree reduction of ``chunk_fn(block, *args)`` over row-blocks.

    Every block reaches ``chunk_fn`` as one :class:`~emdist.kernels.rows.RowBlock`: its
    rows, the global index of its first row (``offsets``, by default those of ``X``'s own
    blocks) and its slice of every per-row input. ``args`` and the offsets are put into the
    graph once (one key each), so each parameter object travels to a worker once per pass
    rather than once per block.

    The graph is written with keys derived from one token of the pass (the data's name, the
    function and its arguments): building it through ``delayed`` tokenized every task and
    cost about as much as the threaded scheduler's whole run of a 16-block pass
    (benchmarks/README.md, "Read path").
    """
    stats, token = block_results(X, chunk_fn, *args, offsets=offsets)
    return sum_tree(stats, token, split_every, _sum_values)


def block_results(
    X: da.Array | Rows,
    chunk_fn: Callable[..., Any],
    *args: Any,
    offsets: Sequence[int] | None = None,
    previous: da.Array | None = None,
    prefix: str = "emdist",
) -> tuple[da.Array, str]:
    """The lazy ``chunk_fn(block, *args)`` of every row-block, and the pass's token.

    What :func:`build_reduction` sums: an object array with one ``(1, 1)`` block per
    row-block. ``previous`` (an earlier result of the same blocks, e.g. a kept state):
    each block's own value is ``chunk_fn``'s last argument, after ``args``.
    """
    rows = as_rows(X)
    x = rows.x
    assert isinstance(x, da.Array)
    if x.numblocks[1] != 1:
        x = x.rechunk({1: -1})
    # Per-row inputs chunked like the rows, two-dimensional: map_blocks aligns blocks by
    # index, and a 1-D array would be aligned with the columns (so it travels as a column).
    # Whole inputs ride in every block's task, sliced there: held in memory, in the key
    # of the offsets (no key of their own); Dask ones (persisted), one key each.
    whole = {k: v for k, v in rows.per_row.items() if _is_whole(v, x)}
    held = {k: v for k, v in whole.items() if isinstance(v, np.ndarray)}
    wholes = tuple(sorted(k for k in whole if k not in held))
    whole_inputs = [_whole_block(da.asarray(whole[name])) for name in wholes]
    names = tuple(sorted(k for k in rows.per_row if k not in whole))
    inputs = [da.asarray(rows.per_row[name]) for name in names]
    flat = tuple(a.ndim == 1 for a in inputs)
    columns = [
        (a.reshape(-1, 1) if one else a).rechunk({0: x.chunks[0], 1: -1})
        for a, one in zip(inputs, flat, strict=True)
    ]
    starts = list(row_offsets(x) if offsets is None else offsets)
    token = tokenize(
        x.name,
        [c.name for c in columns],
        [w.name for w in whole_inputs],
        None if previous is None else previous.name,
        # Keys unique to this pass, not a hash of the held values (~10 ms per 1M float64):
        # a key reused with other values could be answered from another pass's result.
        uuid.uuid4().hex if held else None,
        chunk_fn,
        args,
        starts,
    )
    shared = [
        a if _is_scalar(a) else _shared(f"emdist-arg{i}-{token}", a) for i, a in enumerate(args)
    ]
    stats = da.map_blocks(
        _block_stats,
        x,
        *columns,
        chunk_fn,
        _shared(f"emdist-offsets-{token}", (starts, row_offsets(x), held)),
        *(_one_block(w) for w in whole_inputs),
        *shared,
        *(() if previous is None else (previous,)),
        names=names,
        flat=flat,
        wholes=wholes,
        rows_here=int(x.shape[0]),
        name=f"{prefix}-stats-{token}",
        meta=np.empty((0, 0), dtype=object),
        # Two dimensions like the data's blocks: dropping the column axis would make Dask
        # concatenate (copy) every block before the kernel sees it.
        chunks=((1,) * x.numblocks[0], (1,)),
    )
    return stats, token


def sum_tree(
    blocks: da.Array,
    token: str,
    split_every: int,
    add: Callable[..., Any],
    one: Callable[[Any], Any] | None = None,
    prefix: str = "emdist",
) -> Delayed:
    """The fixed-shape sum tree (fan-in ``split_every``) of :func:`block_results`' blocks.

    ``add`` sums several blocks' values (or partial sums); ``one`` maps a lone block's value
    to its sum where that is not the value itself.
    """
    layer: dict[Any, Any] = {}
    keys: list[Any] = [(blocks.name, i, 0) for i in range(blocks.numblocks[0])]
    if len(keys) == 1 and one is not None:
        key = (f"{prefix}-sum{split_every}-{token}", 0, 0)
        layer[key] = (one, keys[0])
        keys = [key]
    level = 0
    while len(keys) > 1:
        parents = []
        for j in range(0, len(keys), split_every):
            sum_key = (f"{prefix}-sum{split_every}-{token}", level, j // split_every)
            layer[sum_key] = (add, *keys[j : j + split_every])
            parents.append(sum_key)
        keys = parents
        level += 1
    name = f"{prefix}-pass{split_every}-{token}"
    dependency: Any = blocks
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[dependency])
    return Delayed(keys[0], graph, layer=name)


def _one_block(a: da.Array) -> Delayed:
    # The key of a one-block array, as an argument every block's task receives whole.
    key = (a.name,) + (0,) * a.ndim
    graph = a.__dask_graph__()
    layer = a.name if a.name in getattr(graph, "layers", {}) else None
    return Delayed(key, graph, layer=layer)


def _is_scalar(a: Any) -> bool:
    return isinstance(a, int | float | str | bool) or a is None


def map_reduce(
    X: PassData,
    chunk_fn: Callable[..., S],
    *args: Any,
    offsets: Sequence[int] | None = None,
    split_every: int = 8,
) -> S:
    """Compute the reduced statistics of ``X`` in one pass (one ``compute``).

    Parameters
    ----------
    X : dask.array.Array, ndarray or Rows
        Row-chunked data (with its per-row inputs, as :class:`Rows`), or one in-memory
        block: then the kernel runs on it directly, with no graph (a Dask pass costs several
        ms, which is most of a fit on a few thousand rows; the result is the same, bit for
        bit).
    chunk_fn : callable
        ``chunk_fn(block, *args)`` returning a summable statistics value, where ``block``
        is a :class:`~emdist.kernels.rows.RowBlock`: the rows, the global index of the first
        (row-seeded randomness, row numbers in errors) and the per-row inputs. Plain numpy.
    *args
        Extra arguments, shipped once per pass.
    offsets : sequence of int, optional
        Global index of the first row of every block of ``X`` (when ``X`` holds some of the
        blocks of larger data: a shard); by default the blocks' own offsets. A whole
        per-row input of that larger data (:class:`Rows`) is cut there.
    split_every : int, default=8
        Fan-in of the reduction tree.

    Returns
    -------
    The sum of the per-block statistics.
    """
    rows = as_rows(X)
    if isinstance(rows.x, np.ndarray):
        start = 0 if offsets is None else int(offsets[0])
        per_row = {k: np.asarray(v) for k, v in rows.per_row.items()}
        return single_blas_task(chunk_fn, RowBlock(rows.x, start, **per_row), *args)
    reduction = build_reduction(rows, chunk_fn, *args, offsets=offsets, split_every=split_every)
    result: S = compute(reduction)[0]
    return result
