"""Save fitted estimators to Zarr and load them back — arrays and JSON only, no pickle.

A saved model is a Zarr group: its attributes hold the estimator's class name (looked up
among the registered model families, :mod:`emdist.registry`, never imported from the
store), its constructor parameters and its scalar fitted attributes as JSON; its arrays
hold the fitted arrays. Loading therefore never runs code from the store.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import zarr

from emdist.exceptions import EmdistError
from emdist.io.atomic import atomic_output
from emdist.registry import estimator_class, model_families

__all__ = ["ModelFormatError", "load_model", "save_model"]

FORMAT = "emdist-model"
VERSION = 1
# Not saved: callables and locations that belong to one run, and data-sized results.
_SKIP_PARAMS = ("observer", "checkpoint")
_SKIP_ATTRS = ("labels_",)


class ModelFormatError(EmdistError, ValueError):
    """A path does not hold a model this version of emdist can load."""


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"float"}:
        return float(value["float"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def save_model(estimator: Any, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Save a fitted estimator to a Zarr group at ``path`` (atomically).

    Parameters
    ----------
    estimator : KMeans, GaussianMixture or BayesianGaussianMixture
        A fitted estimator.
    path : str or path
    overwrite : bool, default=False
        Replace an existing model at ``path`` (the old one stays until the new one is whole).
    """
    name = type(estimator).__name__
    if estimator_class(name) is not type(estimator):
        supported = sorted(cls.__name__ for cls in model_families().values())
        raise TypeError(f"cannot save a {name}; supported: {supported}")
    if not hasattr(estimator, "n_features_in_"):
        raise ValueError(f"this {name} is not fitted; fit it before saving")
    params: dict[str, Any] = {}
    param_arrays: dict[str, np.ndarray[Any, Any]] = {}
    for key, value in estimator.get_params().items():
        if key in _SKIP_PARAMS:
            continue
        if isinstance(value, np.ndarray):
            param_arrays[key] = value
        elif isinstance(value, np.random.RandomState | np.random.Generator):
            params[key] = None  # a generator's state is not a parameter worth keeping
        else:
            params[key] = _json_value(value)
    fitted: dict[str, Any] = {}
    fitted_arrays: dict[str, np.ndarray[Any, Any]] = {}
    for key, value in vars(estimator).items():
        if not key.endswith("_") or key.startswith("_") or key in _SKIP_ATTRS:
            continue
        if isinstance(value, np.ndarray):
            fitted_arrays[key] = value
        else:
            fitted[key] = _json_value(value)
    with atomic_output(path, overwrite=overwrite) as tmp:
        group = zarr.open_group(str(tmp), mode="w")
        for prefix, arrays in (("params", param_arrays), ("fitted", fitted_arrays)):
            for key, value in arrays.items():
                group.create_array(f"{prefix}/{key}", data=np.ascontiguousarray(value))
        group.attrs.update(
            {
                "format": FORMAT,
                "version": VERSION,
                "estimator": name,
                "params": params,
                "fitted": fitted,
            }
        )


def load_model(path: str | os.PathLike[str]) -> Any:
    """Load an estimator saved by :func:`save_model`.

    Parameters
    ----------
    path : str or path

    Returns
    -------
    KMeans, GaussianMixture or BayesianGaussianMixture
        Fitted, with predictions identical to the saved estimator's.

    Raises
    ------
    ModelFormatError
        If ``path`` holds no emdist model, or one of an unknown kind or version.
    """
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs: dict[str, Any] = dict(group.attrs.asdict())
    except Exception as exc:
        raise ModelFormatError(f"no emdist model at {os.fspath(path)!r}: {exc}") from None
    if attrs.get("format") != FORMAT:
        raise ModelFormatError(f"{os.fspath(path)!r} does not hold an emdist model")
    if attrs.get("version") != VERSION:
        raise ModelFormatError(
            f"{os.fspath(path)!r} holds a version {attrs.get('version')} model; this emdist "
            f"reads version {VERSION}"
        )
    cls = estimator_class(str(attrs.get("estimator")))
    if cls is None:
        raise ModelFormatError(f"unknown estimator {attrs.get('estimator')!r} in {path}")
    try:
        return _build(cls, group, attrs)
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise ModelFormatError(
            f"the model at {os.fspath(path)!r} is damaged ({type(exc).__name__}: {exc})"
        ) from None


def _fitted_name(cls: type[Any], key: str) -> str:
    # Only fitted-attribute names: never a method, a private name or a parameter.
    if not key.endswith("_") or key.startswith("_") or hasattr(cls, key):
        raise ValueError(f"{key!r} is not a fitted attribute")
    return key


def _build(cls: type[Any], group: zarr.Group, attrs: dict[str, Any]) -> Any:
    params = {k: _from_json(v) for k, v in dict(attrs["params"]).items()}
    if "params" in group:
        sub = group["params"]
        assert isinstance(sub, zarr.Group)
        for key, arr in sub.arrays():
            params[key] = np.asarray(arr[...])
    estimator = cls(**params)
    for key, value in dict(attrs["fitted"]).items():
        setattr(estimator, _fitted_name(cls, key), _from_json(value))
    if "fitted" in group:
        sub = group["fitted"]
        assert isinstance(sub, zarr.Group)
        for key, arr in sub.arrays():
            setattr(estimator, _fitted_name(cls, key), np.asarray(arr[...]))
    return estimator
