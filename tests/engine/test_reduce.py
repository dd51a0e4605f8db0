"""The pass graph hands a kernel its arguments exactly as given."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from emdist.engine.reduce import map_reduce
from emdist.kernels.rows import RowBlock


def _scale(x: np.ndarray) -> np.ndarray:
    return 2.0 * x


def _apply_nested(block: RowBlock, steps: tuple[tuple[Any, ...], ...], flat: list[Any]) -> float:
    # Every argument arrives as the caller built it: a tuple whose items are tuples headed by
    # a function (a shared pass's per-model arguments), and a list headed by one.
    assert callable(flat[0]) and flat[1] == "label"
    return float(sum(np.sum(fn(block.x) * w) for fn, w in steps))


def test_nested_tuples_headed_by_a_function_are_not_run_as_tasks() -> None:
    X = np.arange(24.0).reshape(12, 2)
    steps = ((_scale, 1.0), (_scale, 0.5))
    got = map_reduce(da.from_array(X, chunks=(5, 2)), _apply_nested, steps, [_scale, "label"])
    assert got == 3.0 * X.sum()
