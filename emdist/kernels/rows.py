"""One row-block as every reduction kernel receives it: the rows and their per-row inputs.

The engine builds one :class:`RowBlock` per block of a pass (:mod:`emdist.engine.reduce`)
and hands it unchanged through shards and shared passes to the kernels, so a new per-row
input (weights, a missing-value mask...) is a new field here and an argument the kernels
read: the engine in between does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emdist._typing import AnyArray

__all__ = ["RowBlock"]


@dataclass(frozen=True)
class RowBlock:
    """The rows of one block and what comes with each of them.

    Attributes
    ----------
    x : ndarray of shape (n_rows, n_features)
        The rows, any real dtype and layout.
    row_offset : int, default=0
        Global index of the block's first row (row-seeded randomness, row numbers in
        errors, the order of K-means' far-point candidates).
    weights : ndarray of shape (n_rows,) or None, default=None
        Per-row weights (``sample_weight``); ``None``: every row counts once.
    mask : ndarray of shape (n_rows, n_features) or None, default=None
        Missing values (``True`` where a value is missing); ``None``: none is.
    """

    x: AnyArray
    row_offset: int = 0
    weights: AnyArray | None = None
    mask: AnyArray | None = None

    @property
    def n_rows(self) -> int:
        """Rows of the block."""
        return int(self.x.shape[0])

    def rows(self, start: int, stop: int) -> RowBlock:
        """Rows ``start:stop`` of the block, with their per-row inputs and global offset."""

        def part(a: Any) -> Any:
            return None if a is None else a[start:stop]

        return RowBlock(
            self.x[start:stop], self.row_offset + start, part(self.weights), part(self.mask)
        )

    @classmethod
    def of(cls, x: Any, row_offset: int = 0, **per_row: Any) -> RowBlock:
        """A block of in-memory rows (``per_row``: ``weights``, ``mask``)."""
        return cls(np.asarray(x), int(row_offset), **per_row)
