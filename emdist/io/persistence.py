"""Save fitted estimators to Zarr and load them back — arrays and JSON only, no pickle.

A saved model is a Zarr group: its attributes hold the estimator's class name (looked up
among the registered model families, :mod:`emdist.registry`, never imported from the
store), its constructor parameters and its scalar fitted attributes as JSON; its arrays
hold the fitted arrays. Loading therefore never runs code from the store.

Verification on load: every array carries a SHA-256 in the attributes (the
digest checkpoints use, :func:`emdist.io.integrity.array_digest`) and a CRC-32C per chunk; an
array's declared size is bounded before it is read; and the values must make a usable model
(each estimator's ``check_fitted_values``: weights >= 0 summing to 1, finite means,
positive definite covariances, precision Cholesky factors triangular with a positive
diagonal and inverse to the covariances, ``precisions_`` their product, shapes consistent
with ``n_components`` and ``n_features_in_``, a finite ``lower_bound_`` that is the last of
the ``n_iter_`` finite ``lower_bounds_``, a finite non-negative ``inertia_``). Anything else
raises :class:`ModelFormatError` naming the field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr

from emdist.exceptions import EmdistError, InvalidParameterError, not_fitted_error
from emdist.io.atomic import atomic_output
from emdist.io.integrity import (
    IntegrityError,
    UnsafeNameError,
    array_digest,
    check_contained,
    check_declared_size,
    create_verified_array,
    safe_name,
    seal,
    verify_array,
)
from emdist.registry import estimator_class, model_families

__all__ = [
    "ModelFormatError",
    "NotAModelError",
    "UnsupportedModelError",
    "load_model",
    "save_model",
]

FORMAT = "emdist-model"
# 2: arrays carry SHA-256 checksums and CRC-32C chunks (version 1 had neither).
VERSION = 2
_PREFIXES = ("params", "fitted")
# Not saved: callables and locations that belong to one run, and data-sized results.
_SKIP_PARAMS = ("observer", "checkpoint")
_SKIP_ATTRS = ("labels_",)
# The names of the columns fitted on (scikit-learn's object array of str), kept as JSON.
_FEATURE_NAMES = "feature_names_in_"
# The attributes save_model writes itself.
_MODEL_KEYS = ("format", "version", "estimator", "params", "fitted", "checksums")


class ModelFormatError(EmdistError, ValueError):
    """A path does not hold a model this version of emdist can load."""


class NotAModelError(ModelFormatError):
    """A path holds no emdist model at all (nothing, a file, a data array, another group)."""


class UnsupportedModelError(EmdistError, TypeError):
    """:func:`save_model` was given an object that is not an emdist estimator."""


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


def save_model(
    estimator: Any,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    attributes: Mapping[str, str] | None = None,
) -> None:
    """Save a fitted estimator to a Zarr group at ``path`` (atomically).

    Parameters
    ----------
    estimator : KMeans, GaussianMixture or BayesianGaussianMixture
        A fitted estimator.
    path : str or path
    overwrite : bool, default=False
        Replace an existing model at ``path`` (the old one stays until the new one is whole).
    attributes : mapping of str to str, optional
        Extra attributes of the model's group (who wrote it), written with the model in the
        same atomic step: a process killed after the model appears never leaves it without
        them. They cannot replace the model's own keys.
    """
    extra = dict(attributes or {})
    clash = sorted(set(extra) & set(_MODEL_KEYS))
    if clash or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise InvalidParameterError(
            f"attributes must map new str names to str values (not {clash or extra!r})"
        )
    name = type(estimator).__name__
    if estimator_class(name) is not type(estimator):
        supported = sorted(cls.__name__ for cls in model_families().values())
        raise UnsupportedModelError(f"cannot save a {name}; supported: {supported}")
    if not estimator.__sklearn_is_fitted__():
        raise not_fitted_error(estimator)
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
        if key == _FEATURE_NAMES:
            fitted[key] = [str(name) for name in value]  # strings: JSON, not an object array
        elif isinstance(value, np.ndarray):
            fitted_arrays[key] = value
        else:
            fitted[key] = _json_value(value)
    # kind="model": overwrite replaces only a model emdist saved, never another folder.
    with atomic_output(path, overwrite=overwrite, kind="model") as tmp:
        group = zarr.open_group(str(tmp), mode="w")
        checksums: dict[str, str] = {}
        for prefix, arrays in (("params", param_arrays), ("fitted", fitted_arrays)):
            for key, value in arrays.items():
                value = np.ascontiguousarray(value)
                target = create_verified_array(
                    group, f"{prefix}/{key}", shape=value.shape, dtype=value.dtype
                )
                target[...] = value
                seal(target)
                checksums[f"{prefix}/{key}"] = array_digest(value)
        group.update_attributes(
            {
                **extra,
                "format": FORMAT,
                "version": VERSION,
                "estimator": name,
                "params": params,
                "fitted": fitted,
                "checksums": checksums,
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
    NotAModelError
        If ``path`` does not exist or holds no emdist model (a :class:`ModelFormatError`).
    ModelFormatError
        If ``path`` holds a model of an unknown kind or version, or one that fails its
        verification (see the module docstring); the message names the field.
    """
    try:
        check_contained(path, "model")
    except UnsafeNameError as exc:
        raise ModelFormatError(str(exc)) from None
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs: dict[str, Any] = dict(group.attrs.asdict())
    except Exception:
        # Zarr's reason ("an array already exists in store file://...") names its internals,
        # not the user's mistake.
        attrs = {}
    if attrs.get("format") != FORMAT:
        missing = not os.path.lexists(path)
        raise NotAModelError(
            f"{os.fspath(path)} {'does not exist' if missing else 'is not an emdist model'}"
        )
    if attrs.get("version") != VERSION:
        older = (
            " (saved without checksums: fit or save it again)" if attrs.get("version") == 1 else ""
        )
        raise ModelFormatError(
            f"{os.fspath(path)!r} holds a version {attrs.get('version')} model; this emdist "
            f"reads version {VERSION}{older}"
        )
    cls = estimator_class(str(attrs.get("estimator")))
    if cls is None:
        raise ModelFormatError(f"unknown estimator {attrs.get('estimator')!r} in {path}")
    where = f"the model at {os.fspath(path)!r}"
    try:
        arrays = _read_arrays(group, attrs.get("checksums"), where)
        estimator = _build(cls, arrays, attrs)
    except ModelFormatError:
        raise
    except (IntegrityError, UnsafeNameError) as exc:
        raise ModelFormatError(f"{where} is damaged: {exc}") from None
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise ModelFormatError(f"{where} is damaged ({type(exc).__name__}: {exc})") from None
    _check_values(estimator, where)
    return estimator


def _read_arrays(group: zarr.Group, checksums: Any, where: str) -> dict[str, np.ndarray[Any, Any]]:
    """Every array the model lists, each verified before and after it is read."""
    if not isinstance(checksums, dict):
        raise ModelFormatError(f"{where} is damaged: field 'checksums' is missing")
    present: set[str] = set()
    for prefix in _PREFIXES:
        sub = group.get(prefix)
        if isinstance(sub, zarr.Group):
            present |= {f"{prefix}/{key}" for key, _ in sub.arrays()}
    unlisted = sorted(present - set(checksums))
    if unlisted:
        raise ModelFormatError(f"{where} is damaged: array {unlisted[0]} has no checksum")
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name, expected in checksums.items():
        safe_name(name, "model field 'checksums'")
        prefix, _, key = name.partition("/")
        if prefix not in _PREFIXES or not key or "/" in key:
            raise ModelFormatError(f"{where} is damaged: field 'checksums' names {name!r}")
        node = group.get(name)
        if not isinstance(node, zarr.Array):
            raise ModelFormatError(f"{where} is damaged: array {name} is missing")
        # Bound the declared size before reading: an edited header must not allocate TiBs.
        check_declared_size(tuple(node.shape), node.dtype, f"array {name}")
        if not verify_array(node, f"array {name}"):
            raise ModelFormatError(f"{where} is damaged: array {name} lost its integrity record")
        try:
            value = np.asarray(node[...])
        except ValueError as exc:  # zarr's CRC-32C failure
            raise ModelFormatError(f"{where} is damaged: array {name}: {exc}") from None
        if array_digest(value) != expected:
            raise ModelFormatError(f"{where} is damaged: array {name} does not match its SHA-256")
        out[name] = value
    return out


def _fitted_name(cls: type[Any], key: str) -> str:
    # Only fitted-attribute names: never a method, a private name or a parameter.
    if not key.endswith("_") or key.startswith("_") or hasattr(cls, key):
        raise ValueError(f"{key!r} is not a fitted attribute")
    return key


def _build(cls: type[Any], arrays: dict[str, np.ndarray[Any, Any]], attrs: dict[str, Any]) -> Any:
    params = {k: _from_json(v) for k, v in dict(attrs["params"]).items()}
    for name, value in arrays.items():
        if name.startswith("params/"):
            params[name.removeprefix("params/")] = value
    estimator = cls(**params)
    for key, value in dict(attrs["fitted"]).items():
        if key == _FEATURE_NAMES:
            value = _feature_names(value)
        setattr(estimator, _fitted_name(cls, key), _from_json(value))
    for name, value in arrays.items():
        if name.startswith("fitted/"):
            setattr(estimator, _fitted_name(cls, name.removeprefix("fitted/")), value)
    names = getattr(estimator, _FEATURE_NAMES, None)
    if names is not None and len(names) != getattr(estimator, "n_features_in_", None):
        raise ValueError(f"field {_FEATURE_NAMES!r} does not name n_features_in_ features")
    return estimator


def _feature_names(value: Any) -> np.ndarray[Any, Any]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise ValueError(f"field {_FEATURE_NAMES!r} is not a list of strings")
    return np.asarray(value, dtype=object)


def _check_values(estimator: Any, where: str) -> None:
    """Refuse fitted values that cannot be a model: predictions from them would be garbage.

    The model says what its values must be (``check_fitted_values``); a failure names the
    field.
    """
    try:
        estimator.check_fitted_values()
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"{where} is damaged: {exc}") from None
