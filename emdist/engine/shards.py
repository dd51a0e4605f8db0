"""Shards of the row-blocks for incremental EM, their passes, and their statistics as arrays.

A *shard* is a fixed set of row-blocks: the blocks are dealt to ``n_shards`` shards by a
seeded permutation (so a dataset written cluster by cluster still gives every shard a bit
of every cluster), each shard keeping its blocks in row order. A shard's pass is a
reduction over the Dask array of its blocks (``X.blocks[idx]``, per-row inputs alike), one
``compute``; each block's :class:`~emdist.kernels.rows.RowBlock` holds the *global* index of
its first row.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

import numpy as np
from dask.base import compute

from emdist._random import child_seeds
from emdist._typing import AnyArray, IntArray
from emdist.engine.reduce import PassData, as_rows, build_reduction, map_reduce, row_offsets

__all__ = [
    "Shards",
    "make_shards",
    "shard_pass",
    "shards_pass",
    "stats_from_arrays",
    "stats_to_arrays",
]

# Which child of the fit's seed deals the blocks: the fit template spends children 0 and 1
# (scan sample, restarts); spawned children are independent of how many are drawn.
_SHARD_STREAM = 2


@dataclasses.dataclass(frozen=True)
class Shards:
    """The blocks of every shard.

    Attributes
    ----------
    blocks : tuple of tuple of int
        Block indices of every shard, in row order.
    """

    blocks: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.blocks)

    def assignment(self, n_blocks: int) -> IntArray:
        """The shard of every block, shape (n_blocks,) (recorded with checkpoints)."""
        out = np.full(n_blocks, -1, dtype=np.int64)
        for s, idx in enumerate(self.blocks):
            out[list(idx)] = s
        return out


def make_shards(X: PassData, n_shards: int, seed: int) -> Shards:
    """Deal the row-blocks of ``X`` to ``min(n_shards, n_blocks)`` shards.

    Parameters
    ----------
    X : dask.array.Array or ndarray
        In-memory data is one block, hence one shard.
    n_shards : int
    seed : int
        The fit's seed; the permutation draws from its own child stream.

    Returns
    -------
    Shards
    """
    X = as_rows(X).x
    chunks = (X.shape[0],) if isinstance(X, np.ndarray) else X.chunks[0]
    n_blocks = len(chunks)
    S = max(1, min(int(n_shards), n_blocks))
    if S == 1:
        order = np.arange(n_blocks)
    else:
        rng = np.random.default_rng(child_seeds(seed, _SHARD_STREAM + 1)[_SHARD_STREAM])
        order = rng.permutation(n_blocks)
    blocks = tuple(tuple(sorted(int(b) for b in part)) for part in np.array_split(order, S))
    return Shards(blocks)


def _shard(X: PassData, shards: Shards, s: int) -> tuple[PassData, list[int] | None]:
    """The rows of shard ``s`` and the global row offset of each of its blocks."""
    rows = as_rows(X)
    if isinstance(rows.x, np.ndarray):
        return X, None
    idx = list(shards.blocks[s])
    if len(idx) == rows.x.numblocks[0]:
        return X, None
    starts = row_offsets(rows.x)
    return rows.blocks(idx), [starts[b] for b in idx]


def shard_pass(
    X: PassData, shards: Shards, s: int, chunk_fn: Callable[..., Any], *args: Any
) -> Any:
    """Statistics of shard ``s`` (one ``compute`` over its blocks, in parallel).

    Parameters
    ----------
    X : dask.array.Array, ndarray or Rows
    shards : Shards
    s : int
    chunk_fn : callable
        A reduction kernel, ``chunk_fn(block, *args)``; each block carries its global row
        offset, not its offset within the shard.
    *args
        Its extra arguments.

    Returns
    -------
    The statistics of the shard.
    """
    part, offsets = _shard(X, shards, s)
    return map_reduce(part, chunk_fn, *args, offsets=offsets)


def shards_pass(X: PassData, shards: Shards, chunk_fn: Callable[..., Any], *args: Any) -> list[Any]:
    """Statistics of every shard, in one ``compute`` (one pass over the data).

    Each shard is its own fixed-shape reduction, so the values are bit for bit those of
    :func:`shard_pass` on each shard.
    """
    if isinstance(as_rows(X).x, np.ndarray) or len(shards) == 1:
        return [shard_pass(X, shards, s, chunk_fn, *args) for s in range(len(shards))]
    graphs = []
    for s in range(len(shards)):
        part, offsets = _shard(X, shards, s)
        assert not isinstance(part, np.ndarray)
        graphs.append(build_reduction(part, chunk_fn, *args, offsets=offsets))
    return list(compute(*graphs))


def stats_to_arrays(stats: Any, prefix: str = "") -> dict[str, AnyArray]:
    """A statistics value (a dataclass of arrays, numbers and such values) as flat arrays.

    Numbers become 0-d arrays of their own dtype (a Python ``int`` stays an integer), so
    :func:`stats_from_arrays` restores every value bit for bit.
    """
    out: dict[str, AnyArray] = {}
    for f in dataclasses.fields(stats):
        value = getattr(stats, f.name)
        if dataclasses.is_dataclass(value):
            out.update(stats_to_arrays(value, f"{prefix}{f.name}."))
        elif value is None:
            continue  # an optional field left out (its default on the way back)
        else:
            out[f"{prefix}{f.name}"] = np.asarray(value)
    return out


def stats_from_arrays(cls: type[Any], arrays: dict[str, AnyArray], prefix: str = "") -> Any:
    """Rebuild a statistics value of class ``cls`` from :func:`stats_to_arrays`' output.

    Raises
    ------
    KeyError
        If a field is missing.
    """
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        kind = hints.get(f.name)
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            kwargs[f.name] = stats_from_arrays(kind, arrays, f"{prefix}{f.name}.")
            continue
        if f"{prefix}{f.name}" not in arrays and f.default is None:
            continue  # an optional field that was None
        value = arrays[f"{prefix}{f.name}"]
        kwargs[f.name] = value.item() if value.ndim == 0 else value
    return cls(**kwargs)
