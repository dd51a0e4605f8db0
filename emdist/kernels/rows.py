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
import numpy.typing as npt

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
        errors, the order of K-means' far-point candidates). The rows of a block are
        contiguous, ``row_offset``, ``row_offset + 1``, ..., unless ``index`` says
        otherwise: then ``row_offset`` is that of the block they were selected from, and
        work that numbers rows from it (:func:`~emdist.kernels.scan.row_uniforms`, row
        numbers in errors) belongs on the contiguous block, before the selection.
    weights : ndarray of shape (n_rows,) or None, default=None
        Per-row weights (``sample_weight``); ``None``: every row counts once.
    mask : ndarray of shape (n_rows, n_features) or None, default=None
        Missing values (``True`` where a value is missing); ``None``: none is.
    index : ndarray of int64 of shape (n_rows,) or None, default=None
        Global index of every row of a block whose rows are not contiguous (made by
        :meth:`select`); ``None``: contiguous from ``row_offset``.
    """

    x: AnyArray
    row_offset: int = 0
    weights: AnyArray | None = None
    mask: AnyArray | None = None
    index: AnyArray | None = None

    @property
    def n_rows(self) -> int:
        """Rows of the block."""
        return int(self.x.shape[0])

    @property
    def contiguous(self) -> bool:
        """Whether the rows are ``row_offset``, ``row_offset + 1``, ... (not a selection)."""
        return self.index is None

    @property
    def global_index(self) -> AnyArray:
        """Global index of every row, shape (n_rows,), int64."""
        if self.index is not None:
            return self.index
        return np.arange(self.row_offset, self.row_offset + self.n_rows, dtype=np.int64)

    def rows(self, start: int, stop: int) -> RowBlock:
        """Rows ``start:stop`` of the block, with their per-row inputs and global offset."""

        def part(a: Any) -> Any:
            return None if a is None else a[start:stop]

        offset = self.row_offset if self.index is not None else self.row_offset + start
        return RowBlock(
            self.x[start:stop], offset, part(self.weights), part(self.mask), part(self.index)
        )

    def select(self, rows: npt.ArrayLike) -> RowBlock:
        """Some of the block's rows, with their per-row inputs and global indices.

        Parameters
        ----------
        rows : ndarray of bool of shape (n_rows,), or of int
            Which rows: a boolean mask, or local row indices.

        Returns
        -------
        RowBlock
            The selected rows (copies, as numpy indexing makes them), their ``weights``
            and ``mask``, and ``index``, their global indices: the rows are no longer
            contiguous, so ``row_offset`` stays this block's and numbers none of them
            (see ``row_offset``).
        """
        which = np.asarray(rows)

        def part(a: Any) -> Any:
            return None if a is None else np.asarray(a)[which]

        return RowBlock(
            np.asarray(self.x)[which],
            self.row_offset,
            part(self.weights),
            part(self.mask),
            self.global_index[which],
        )

    @classmethod
    def of(cls, x: Any, row_offset: int = 0, **per_row: Any) -> RowBlock:
        """A block of in-memory rows (``per_row``: ``weights``, ``mask``)."""
        return cls(np.asarray(x), int(row_offset), **per_row)
