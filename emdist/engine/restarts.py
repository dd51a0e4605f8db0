"""The kept restart of a fit: comparing finished restarts, and the data a checkpoint is tied to.

Model-agnostic pieces of the EM driver (:mod:`emdist.engine.em`) that the checkpoint
format shares: the best finished restart as stored (:class:`~emdist.io.checkpoint.BestState`)
and as returned (:class:`BestRun`), and the fingerprint of the data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from emdist.engine.data import FitData
from emdist.io.checkpoint import BestState

__all__ = ["BestRun", "best_run", "data_fingerprint", "keep_best", "param_arrays"]

P = TypeVar("P")


@dataclass(frozen=True)
class BestRun(Generic[P]):
    """The kept restart.

    Attributes
    ----------
    params : P
    lower_bound : float
        Lower bound of the last iteration.
    lower_bounds : tuple of float
    n_iter : int
    converged : bool
    score : float
        The compared quantity (lower bound, or minus inertia for K-means).
    restart : int
    stats : object or None
        Statistics of its last pass (a final pass, if its comparison asked for one), when
        this process ran it; ``None`` after a resume that found it finished. What a model
        can tell of its training data without another pass comes from here.
    """

    params: P
    lower_bound: float
    lower_bounds: tuple[float, ...]
    n_iter: int
    converged: bool
    score: float
    restart: int
    stats: Any = None


def data_fingerprint(data: FitData) -> dict[str, Any]:
    """A fingerprint of the data from the scan pass: shape, dtype, chunking and moments.

    The per-feature mean and variance depend on every value, so a modified dataset is
    noticed without an extra read; so is every weight of a weighted fit (the scan's digest).
    """
    moments = hashlib.sha256()
    moments.update(np.ascontiguousarray(data.summary.mean).tobytes())
    moments.update(np.ascontiguousarray(data.summary.variance).tobytes())
    chunks = hashlib.sha256(repr(data.row_chunks).encode()).hexdigest()[:16]
    fingerprint: dict[str, Any] = {
        "n_samples": data.summary.n_samples,
        "n_features": data.summary.n_features,
        "dtype": str(data.X.dtype),
        "row_chunks": chunks,
        "moments_sha256": moments.hexdigest(),
    }
    if data.summary.weights_digest is not None:
        # Computed by the scan pass: a resume with other weights would continue another fit.
        fingerprint["sample_weight"] = data.summary.weights_digest
    return fingerprint


def param_arrays(params: Any) -> dict[str, Any]:
    """Parameters as the named arrays a checkpoint stores (``params.arrays()``)."""
    return dict(params.arrays())


def keep_best(
    best: BestState | None,
    restart: int,
    params: Any,
    lower_bounds: tuple[float, ...],
    converged: bool,
    value: float,
) -> BestState:
    """``best``, or the finished ``restart`` if its score ``value`` beats it.

    Ties go to the lower index, as when restarts run one after another and a later one
    must beat the kept one strictly (side by side, they may finish in any order).
    """
    if not (best is None or value > best.score or (value == best.score and restart < best.restart)):
        return best
    return BestState(
        restart=restart,
        params=param_arrays(params),
        lower_bounds=np.asarray(lower_bounds),
        n_iter=len(lower_bounds),
        converged=converged,
        score=value,
    )


def best_run(
    best: BestState | None, params_from_arrays: Callable[..., P], stats: Any = None
) -> BestRun[P]:
    """The kept restart as a :class:`BestRun` (``stats``: of its last pass, if known)."""
    assert best is not None
    bounds = tuple(float(v) for v in best.lower_bounds)
    return BestRun(
        params=params_from_arrays(**best.params),
        lower_bound=bounds[-1] if bounds else float("nan"),
        lower_bounds=bounds,
        n_iter=best.n_iter,
        converged=best.converged,
        score=best.score,
        restart=best.restart,
        stats=stats,
    )
