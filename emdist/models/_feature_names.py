"""``feature_names_in_``: the names of the columns a model was fitted on, as scikit-learn.

Names come from a DataFrame's columns (pandas or polars, recognised without importing
either) or from a Zarr dataset's ``feature_names`` attribute, which ingest records from a
CSV header or Parquet schema (:mod:`emdist.io.ingest`). ``fit`` records them (or removes
the attribute when the data has none); every method that reads data afterwards compares,
with scikit-learn's rules and words (``sklearn.utils.validation._check_feature_names``):

- names that differ (other, missing or reordered): ``ValueError`` (:class:`InvalidDataError`)
  with scikit-learn's message, listing them;
- names on one side only: :class:`~emdist.exceptions.FeatureNamesWarning`, a
  ``UserWarning`` with scikit-learn's text.

A Dask array carries no names and is not checked against them: the library hands its own
Dask views of a store to ``predict`` (:func:`emdist.write_predictions`), and a warning the
user cannot act on would only be noise.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from emdist.exceptions import FeatureNamesWarning, InvalidDataError, InvalidDataTypeError
from emdist.io.sources import DATA_ARRAY_NAME

__all__ = ["check_feature_names", "feature_names_of", "reset_feature_names"]

_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


def _frame_columns(X: Any) -> list[Any] | None:
    """The columns of a pandas or polars DataFrame, else ``None`` (imports neither)."""
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(X, pandas.DataFrame):
        return list(X.columns)
    polars = sys.modules.get("polars")
    if polars is not None and isinstance(X, polars.DataFrame):
        return list(X.columns)
    return None


def _store_names(X: Any) -> list[Any] | None:
    """The ``feature_names`` a Zarr array (or dataset group, or its path) records, if any.

    Only metadata is read. A path that is not a readable store gives ``None``: opening the
    data reports that properly.
    """
    node: Any = X
    if isinstance(X, str | os.PathLike):
        try:
            node = zarr.open(os.fspath(X), mode="r")
        except Exception:
            return None
    if isinstance(node, zarr.Group):
        node = node.get(DATA_ARRAY_NAME)
    if not isinstance(node, zarr.Array) or node.ndim != 2:
        return None
    names = node.attrs.get("feature_names")
    # Stale or foreign metadata (another width): better no names than wrong ones.
    if not isinstance(names, list) or len(names) != node.shape[1]:
        return None
    return names


def feature_names_of(X: Any) -> np.ndarray[Any, Any] | None:
    """The feature names ``X`` carries, as scikit-learn's ``_get_feature_names``.

    Parameters
    ----------
    X : array-like, DataFrame, dask.array.Array, zarr.Array, zarr.Group, str or path

    Returns
    -------
    ndarray of object, or None
        The names when they are all strings; ``None`` when ``X`` has none or they are all
        of another type (integer column labels).

    Raises
    ------
    InvalidDataTypeError
        Names mixing strings and other types (a ``TypeError``, as scikit-learn raises).
    """
    names = _frame_columns(X)
    if names is None and isinstance(X, zarr.Array | zarr.Group | str | os.PathLike):
        names = _store_names(X)
    if not names:
        return None
    array = np.asarray(names, dtype=object)
    types = sorted({type(v).__qualname__ for v in array})
    if len(types) > 1 and "str" in types:
        raise InvalidDataTypeError(
            "Feature names are only supported if all input features have string names, "
            f"but your input has {types} as feature name / column name types. If you want "
            "feature names to be stored and validated, you must convert them all to "
            "strings, by using X.columns = X.columns.astype(str) for example. Otherwise "
            "you can remove feature / column names from your input data, or convert them "
            "all to a non-string data type."
        )
    return array if types == ["str"] else None


def reset_feature_names(estimator: Any, X: Any) -> None:
    """Set ``estimator.feature_names_in_`` from the data ``fit`` receives, or remove it."""
    names = feature_names_of(X)
    if names is not None:
        estimator.feature_names_in_ = names
    elif "feature_names_in_" in vars(estimator):
        del estimator.feature_names_in_


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside emdist."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def check_feature_names(estimator: Any, X: Any) -> None:
    """Compare the names of ``X`` with those ``estimator`` was fitted on.

    Raises
    ------
    InvalidDataError
        A ``ValueError`` with scikit-learn's message when both have names and they differ.

    Warns
    -----
    FeatureNamesWarning
        When only one side has names (a Dask array is never checked).
    """
    fitted = getattr(estimator, "feature_names_in_", None)
    if fitted is None and isinstance(X, np.ndarray | list | tuple):
        return  # the common case, decided without looking further
    given = feature_names_of(X)
    name = type(estimator).__name__
    if fitted is None and given is None:
        return
    if fitted is None:
        warnings.warn(
            f"X has feature names, but {name} was fitted without feature names",
            FeatureNamesWarning,
            stacklevel=_caller_stacklevel(),
        )
        return
    if given is None:
        if not _is_dask(X):
            warnings.warn(
                f"X does not have valid feature names, but {name} was fitted with feature names",
                FeatureNamesWarning,
                stacklevel=_caller_stacklevel(),
            )
        return
    if len(fitted) == len(given) and np.all(fitted == given):
        return
    raise InvalidDataError(_mismatch_message(fitted, given))


def _is_dask(X: Any) -> bool:
    dask_array = sys.modules.get("dask.array")
    return dask_array is not None and isinstance(X, dask_array.Array)


def _mismatch_message(fitted: np.ndarray[Any, Any], given: np.ndarray[Any, Any]) -> str:
    """scikit-learn's message, word for word (its checks match it)."""
    message = "The feature names should match those that were passed during fit.\n"
    unexpected = sorted(set(given) - set(fitted))
    missing = sorted(set(fitted) - set(given))

    def listed(names: list[Any]) -> str:
        shown = [f"- {n}\n" for n in names[:5]]
        return "".join(shown) + ("- ...\n" if len(names) > 5 else "")

    if unexpected:
        message += "Feature names unseen at fit time:\n" + listed(unexpected)
    if missing:
        message += "Feature names seen at fit time, yet now missing:\n" + listed(missing)
    if not unexpected and not missing:
        message += "Feature names must be in the same order as they were in fit.\n"
    return message
