"""The EM engine: one Dask pass per iteration, tree-reduced statistics, M-step on the client."""

from __future__ import annotations

from emdist.engine.em import EMResult, IterationState, ModelFamily, Observer, run_em
from emdist.engine.reduce import map_reduce

__all__ = ["EMResult", "IterationState", "ModelFamily", "Observer", "map_reduce", "run_em"]
