"""One pass over the data for many EM runs at once: restarts and K sweeps in lockstep.

For data that does not fit in memory a fit costs its passes over the data. Restarts
(``n_init``) and the fits of a K sweep are independent runs of EM over the same data, so
one pass can serve them all: every block is read once and each run's E-step runs on it
(one kernel call per block and run, or one call for all the runs of a family that walks a
block once for all of them: K-means' ``estep_many``), the per-run statistics travel
together as one :class:`StatsTuple`, which adds element-wise, and the usual fixed-shape
tree reduction (:func:`emdist.engine.reduce.map_reduce`) sums them. Every run's statistics
are then the very sums it would have had alone — the same arithmetic on the same block,
added in the same tree order — so results are identical, bit for bit, to running the runs
one after another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from emdist.engine.reduce import PassData, map_reduce
from emdist.kernels.rows import RowBlock

__all__ = ["EStep", "StatsTuple", "kernels_all", "shared_kernel_pass", "shared_pass"]


class EStep(Protocol):
    """What a pass needs of a model family: its per-block E-step."""

    def estep_chunk(self, block: RowBlock, params: Any, /) -> Any:
        """Statistics of one block under ``params``."""
        ...


@dataclass(frozen=True)
class StatsTuple:
    """The statistics of several runs; adding two adds them run by run.

    (A plain ``tuple`` would concatenate under ``+``.)

    Attributes
    ----------
    items : tuple
        One statistics value per run.
    """

    items: tuple[Any, ...]

    def __add__(self, other: StatsTuple) -> StatsTuple:
        return StatsTuple(tuple(a + b for a, b in zip(self.items, other.items, strict=True)))


def _estep_all(
    block: RowBlock,
    families: tuple[EStep, ...],
    params: tuple[Any, ...],
) -> StatsTuple:
    """Every run's E-step on one block (one block read serves them all).

    Runs of one family that has ``estep_many`` (K-means: one walk over the block for all
    its restarts) go to it together; each value is the one ``estep_chunk`` would give.
    """
    out: list[Any] = [None] * len(families)
    together: dict[int, list[int]] = {}
    for i, family in enumerate(families):
        if getattr(family, "estep_many", None) is None:
            out[i] = family.estep_chunk(block, params[i])
            continue
        first = next((j for j in together if families[j] == family), i)
        together.setdefault(first, []).append(i)
    for first, members in together.items():
        many = getattr(families[first], "estep_many")  # noqa: B009 (optional method)
        stats = many(block, [params[i] for i in members])
        for i, s in zip(members, stats, strict=True):
            out[i] = s
    return StatsTuple(tuple(out))


def shared_pass(X: PassData, steps: Sequence[tuple[EStep, Any]]) -> list[Any]:
    """The E-step statistics of several runs from one pass over ``X`` (one ``compute``).

    Parameters
    ----------
    X : dask.array.Array, ndarray or Rows
    steps : sequence of (family, params)
        One entry per run: its model family and the parameters its E-step runs under.

    Returns
    -------
    list
        The reduced statistics of every run, in order; each equal, bit for bit, to
        ``map_reduce(X, family.estep_chunk, params)``.
    """
    if not steps:
        return []
    if len(steps) == 1:
        # The plain single-run pass: the same graph a lone fit builds.
        family, params = steps[0]
        return [map_reduce(X, family.estep_chunk, params)]
    families = tuple(f for f, _ in steps)
    params = tuple(p for _, p in steps)
    total: StatsTuple = map_reduce(X, _estep_all, families, params)
    return list(total.items)


def kernels_all(
    block: RowBlock, calls: tuple[tuple[Callable[..., Any], tuple[Any, ...]], ...]
) -> StatsTuple:
    """Every kernel on one block (one block read serves them all)."""
    return StatsTuple(tuple(fn(block, *args) for fn, args in calls))


def shared_kernel_pass(
    X: PassData, calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]
) -> list[Any]:
    """The reduced results of several per-block kernels from one pass over ``X``.

    As :func:`shared_pass` for kernels other than E-steps (the passes of a start); each
    result equals, bit for bit, ``map_reduce(X, fn, *args)``.

    Parameters
    ----------
    X : dask.array.Array, ndarray or Rows
    calls : sequence of (kernel, args)

    Returns
    -------
    list
    """
    if not calls:
        return []
    if len(calls) == 1:
        fn, args = calls[0]
        return [map_reduce(X, fn, *args)]
    total: StatsTuple = map_reduce(X, kernels_all, tuple(calls))
    return list(total.items)
