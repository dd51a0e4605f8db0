"""Per-sample outputs (labels, responsibilities, log-likelihoods) written out-of-core to Zarr.

The outputs are computed block by block from the data (never all in memory) and written
into a Zarr group that appears atomically (see :mod:`emdist.io.atomic`): a failed run never
leaves a half-written output, and never destroys a previous good one.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from pathlib import Path
from typing import Any

import dask.array as da
import zarr
from dask.base import compute

from emdist.exceptions import InvalidParameterError
from emdist.io.atomic import atomic_output
from emdist.io.integrity import create_verified_array, seal
from emdist.io.sources import as_dask_array

__all__ = ["write_predictions"]


_active_lock = threading.Lock()
_active: dict[str, int] = {}


class _GuardedTarget:
    """A store target that writes only while its output is still being built.

    When one block fails, the other blocks already running go on and would write into the
    partial output after :func:`~emdist.io.atomic.atomic_output` deleted it. So a write
    first checks that the output's metadata document still exists, and counts itself as
    in flight; :func:`_cancel` removes the document and waits for the writes in flight in
    this process. (Writes in other worker processes see the missing document too.)
    """

    def __init__(self, target: zarr.Array[Any], root: Path) -> None:
        self.target = target
        self.root = root

    def __setitem__(self, key: Any, value: Any) -> None:
        name = str(self.root)
        with _active_lock:
            if not (self.root / "zarr.json").exists():
                return
            _active[name] = _active.get(name, 0) + 1
        try:
            self.target[key] = value
        finally:
            with _active_lock:
                _active[name] -= 1


def _cancel(root: Path, timeout: float = 60.0) -> None:
    """Stop further writes into ``root`` and wait for those in flight in this process."""
    with _active_lock:
        (root / "zarr.json").unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _active_lock:
            if _active.get(str(root), 0) == 0:
                _active.pop(str(root), None)
                return
        time.sleep(0.005)


def write_predictions(
    estimator: Any,
    X: Any,
    dest: str | os.PathLike[str],
    *,
    responsibilities: bool = False,
    log_likelihood: bool = False,
    overwrite: bool = False,
    criteria: bool = False,
    sample_weight: Any = None,
) -> Path:
    """Write the labels of ``X`` (and optionally more) to a Zarr group at ``dest``.

    Parameters
    ----------
    estimator : fitted KMeans, GaussianMixture or BayesianGaussianMixture
    X : dask.array.Array, zarr.Array, str or path, or array-like
        The data, read block by block.
    dest : str or path
        Output group; arrays ``labels`` (int64), ``responsibilities`` (n, K) and
        ``log_likelihood`` (n,), chunked like the data's rows.
    responsibilities : bool, default=False
        Also write ``predict_proba`` (mixtures only).
    log_likelihood : bool, default=False
        Also write ``score_samples`` (mixtures only).
    overwrite : bool, default=False
        Replace an existing output (atomically). Only predictions emdist wrote (or an empty
        folder) are replaced; any other existing folder is refused
        (:class:`~emdist.io.atomic.NotAnOutputError`).
    criteria : bool, default=False
        Also compute the estimator's ``information_criteria(X, sample_weight)`` (score,
        BIC, AIC) from the same reads, and record them in the group's attribute
        ``criteria``: a Gaussian mixture's criteria need a pass under its final
        parameters, which the labels' pass is. Equal, bit for bit, to a pass of their own.
    sample_weight : array-like, dask.array.Array, zarr.Array, str or path, optional
        Weights of the rows, for ``criteria`` only.

    Returns
    -------
    pathlib.Path
        ``dest``.
    """
    Xd = as_dask_array(X)
    reduction, n = _criteria_reduction(estimator, Xd, sample_weight) if criteria else (None, 0.0)
    outputs: dict[str, da.Array] = {"labels": estimator.predict(Xd)}
    if responsibilities or log_likelihood:
        if not estimator.gives_responsibilities:
            raise InvalidParameterError(
                f"{type(estimator).__name__} has no responsibilities or likelihood"
            )
        if responsibilities:
            outputs["responsibilities"] = estimator.predict_proba(Xd)
        if log_likelihood:
            outputs["log_likelihood"] = estimator.score_samples(Xd)
    # One Zarr chunk per block: irregular Dask row-blocks (e.g. after a rechunk) are made
    # regular first, or two blocks would write parts of one chunk and overwrite each other.
    rows = max(Xd.chunks[0])
    outputs = {k: v.rechunk({0: rows}) for k, v in outputs.items()}
    with atomic_output(dest, overwrite=overwrite, kind="predictions") as tmp:
        group = zarr.open_group(str(tmp), mode="w")
        group.update_attributes(
            {
                "emdist": "predictions",
                "estimator": type(estimator).__name__,
                "n_samples": int(Xd.shape[0]),
                "source": os.fspath(X) if isinstance(X, str | os.PathLike) else None,
                "created": dt.datetime.now(dt.UTC).isoformat(),
            }
        )
        stores = []
        for name, arr in outputs.items():
            # Uncompressed, every chunk written (also all-zero label chunks), each with a
            # CRC-32C: see emdist.io.integrity.
            target = create_verified_array(
                group,
                name,
                shape=arr.shape,
                dtype=arr.dtype,
                chunks=tuple(c[0] for c in arr.chunks) if arr.ndim else (),
            )
            stores.append((arr, _GuardedTarget(target, tmp)))
        # One compute: every output of a block comes from one read of it.
        try:
            if reduction is None:
                da.store([a for a, _ in stores], [t for _, t in stores], lock=False)  # type: ignore[misc]
            else:
                # Unoptimized: Dask's optimization fuses each block's read into the tasks of
                # the outputs and into those of the criteria separately, reading it twice;
                # as written, both take the one read task's block.
                stored = da.store(
                    [a for a, _ in stores],
                    [t for _, t in stores],  # type: ignore[misc]
                    lock=False,
                    compute=False,
                    optimize_graph=False,
                )
                _, total = compute(stored, reduction, optimize_graph=False)
                group.attrs["criteria"] = estimator._criteria_from(total, n)
        except BaseException:
            _cancel(tmp)
            raise
        for _, guarded in stores:
            seal(guarded.target)
    return Path(dest)


def _criteria_reduction(estimator: Any, Xd: da.Array, sample_weight: Any) -> tuple[Any, float]:
    """The lazy pass behind ``estimator.information_criteria(Xd, sample_weight)``, and its n."""
    if not hasattr(estimator, "_lazy_criteria"):
        raise InvalidParameterError(
            f"{type(estimator).__name__} computes no criteria in its predictions' pass; "
            f"write them with criteria=False"
        ).naming("criteria", "criteria")
    reduction, n = estimator._lazy_criteria(Xd, sample_weight)
    return reduction, n
