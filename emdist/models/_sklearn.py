"""The scikit-learn estimator protocol, without importing scikit-learn.

scikit-learn is an optional dependency of emdist. Its tools (``Pipeline``,
``GridSearchCV``, ``clone``, ``check_is_fitted``, ``check_estimator``) call an estimator
through a small protocol: ``get_params``/``set_params`` (in
:class:`emdist.models._base.BaseEstimator`), ``__sklearn_tags__`` and
``__sklearn_is_fitted__``. The mixins here provide the last two, ``feature_names_in_``
(:mod:`emdist.models._feature_names`) and ``set_output``, and mirror scikit-learn's
``ClusterMixin``, ``DensityMixin`` and ``TransformerMixin``: each adds its tags through
``super().__sklearn_tags__()`` in the same order, so a class lists them before the base
as with scikit-learn (``class KMeans(ClusterMixin, TransformerMixin, BaseEstimator)``).

scikit-learn is imported inside ``__sklearn_tags__``, which only scikit-learn calls, and
by :func:`emdist.exceptions.not_fitted_error` on the error path. We cannot subclass
scikit-learn's mixins without importing it, so ``isinstance(est,
sklearn.base.ClusterMixin)`` is false: ``check_estimator`` then skips its clustering
checks, which our tests run by name.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, ClassVar, Self

import numpy as np

from emdist.exceptions import (
    InvalidParameterError,
    align_with_sklearn,
    not_fitted_error,
)
from emdist.models._feature_names import check_feature_names, reset_feature_names

__all__ = ["ClusterMixin", "DensityMixin", "SklearnEstimatorMixin", "TransformerMixin"]

#: ``set_output(transform=...)`` values emdist honours (scikit-learn's, but for polars).
OUTPUT_CONTAINERS = ("default", "pandas")


class SklearnEstimatorMixin:
    """Base tags and the fitted test of every emdist estimator.

    Subclasses name in ``_fitted_attribute`` the attribute that ``fit`` sets last, so that
    its presence means the fit completed.
    """

    _fitted_attribute: ClassVar[str] = "n_features_in_"

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's estimator tags (``sklearn.utils.Tags``).

        Only scikit-learn calls this, so it may import it. Inputs are 2-D dense real
        arrays: NaN and infinity are refused (``allow_nan=False``), sparse matrices are
        refused (every kernel works on dense row-blocks).

        Returns
        -------
        sklearn.utils.Tags
        """
        from sklearn.utils import InputTags, Tags, TargetTags

        align_with_sklearn()
        return Tags(
            estimator_type=None,
            target_tags=TargetTags(required=False),
            input_tags=InputTags(two_d_array=True, sparse=False, allow_nan=False),
        )

    def __sklearn_is_fitted__(self) -> bool:
        """Whether ``fit`` has completed (used by ``sklearn.utils.validation.check_is_fitted``).

        Returns
        -------
        bool
        """
        return hasattr(self, self._fitted_attribute)

    def _check_fitted(self, X: Any = None) -> None:
        """Raise :class:`emdist.exceptions.NotFittedError` unless ``fit`` has completed.

        Given the data a method is about to read, also compare its feature names with
        ``feature_names_in_`` (:func:`emdist.models._feature_names.check_feature_names`),
        before its width is checked, as scikit-learn does.
        """
        if not self.__sklearn_is_fitted__():
            raise not_fitted_error(self)
        if X is not None:
            check_feature_names(self, X)

    def _reset_fit_input(self, X: Any) -> None:
        """scikit-learn's bookkeeping at the start of ``fit``, before any data is read.

        ``feature_names_in_`` is set from ``X`` or removed, as scikit-learn's
        ``validate_data(reset=True)`` does; and :class:`emdist.ConvergenceWarning` is made a
        subclass of scikit-learn's if scikit-learn has been imported since emdist was, so
        the warnings this fit may emit reach filters on scikit-learn's class.
        """
        align_with_sklearn()
        reset_feature_names(self, X)


class ClusterMixin:
    """Mark a clustering estimator.

    As with scikit-learn's, the estimator has ``labels_`` after ``fit`` and
    ``fit_predict(X)`` returns them.
    """

    def __sklearn_tags__(self) -> Any:
        """Tags of the next class in the MRO, with ``estimator_type='clusterer'``."""
        tags = super().__sklearn_tags__()  # type: ignore[misc]
        tags.estimator_type = "clusterer"
        return tags


class DensityMixin:
    """Mark a density estimator: ``score(X)`` is the mean log-likelihood per sample."""

    def __sklearn_tags__(self) -> Any:
        """Tags of the next class in the MRO, with ``estimator_type='density_estimator'``."""
        tags = super().__sklearn_tags__()  # type: ignore[misc]
        tags.estimator_type = "density_estimator"
        return tags


class TransformerMixin:
    """Mark a transformer: ``transform`` maps samples to new features.

    The output is float64 whatever the input dtype (statistics are computed in float64),
    so only float64 is declared as preserved. The estimator gives the number of output
    features in ``_n_features_out`` once fitted.
    """

    @property
    def _n_features_out(self) -> int:
        """Number of output features of ``transform`` (set by the estimator)."""
        raise NotImplementedError

    n_features_in_: int  # set by fit
    _check_fitted: Callable[..., None]  # from SklearnEstimatorMixin, later in the MRO

    def get_feature_names_out(self, input_features: Any = None) -> Any:
        """Names of the output features: the class name in lower case and an index.

        As scikit-learn's ``KMeans`` (``kmeans0``, ``kmeans1``, ...; its
        ``ClassNamePrefixFeaturesOutMixin``), so that ``Pipeline.get_feature_names_out``
        and ``set_output(transform="pandas")`` work through our transformers.

        Parameters
        ----------
        input_features : array-like of str, optional
            Only checked, as scikit-learn does: it must equal ``feature_names_in_`` when
            the model has names, and have ``n_features_in_`` entries.

        Returns
        -------
        ndarray of str of shape (n_features_out,)

        Raises
        ------
        InvalidParameterError
            A ``ValueError``, for ``input_features`` that do not match.
        """
        self._check_fitted()
        if input_features is not None:
            given = np.asarray(input_features, dtype=object)
            names = getattr(self, "feature_names_in_", None)
            if names is not None and not np.array_equal(names, given):
                raise InvalidParameterError("input_features is not equal to feature_names_in_")
            n_features = int(self.n_features_in_)
            if len(given) != n_features:
                raise InvalidParameterError(
                    "input_features should have length equal to number of features "
                    f"({n_features}), got {len(given)}"
                )
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}{i}" for i in range(self._n_features_out)], dtype=object)

    def set_output(self, *, transform: str | None = None) -> Self:
        """Choose the container ``transform`` and ``fit_transform`` return, as scikit-learn.

        ``Pipeline(...).set_output(transform="pandas")`` calls this on every step.

        Parameters
        ----------
        transform : {"default", "pandas"} or None, default=None
            ``"pandas"``: a DataFrame whose columns are :meth:`get_feature_names_out` and
            whose index is that of a DataFrame input. ``"default"``: as scikit-learn's
            global ``transform_output`` setting says (numpy unless set otherwise).
            ``None``: unchanged. Out-of-core input (Dask, Zarr, a path) gives a lazy Dask
            array under ``"default"`` and is refused under ``"pandas"`` rather than read
            into memory.

        Returns
        -------
        self

        Raises
        ------
        InvalidParameterError
            For another value (polars output is not supported).
        """
        if transform is None:
            return self
        if transform not in OUTPUT_CONTAINERS:
            raise InvalidParameterError(
                f"transform must be one of {OUTPUT_CONTAINERS} or None; got {transform!r}"
            )
        # scikit-learn's attribute name: its clone() copies it to the clone.
        self._sklearn_output_config = {"transform": transform}
        return self

    def _output_container(self) -> str:
        """The container ``transform`` returns: this estimator's setting, else the global."""
        config = getattr(self, "_sklearn_output_config", {}).get("transform", "default")
        if config == "default":
            # Only code that imported scikit-learn can have changed its global setting.
            sklearn = sys.modules.get("sklearn")
            if sklearn is not None:
                config = sklearn.get_config().get("transform_output", "default")
        return str(config)

    def _wrap_output(self, data: Any, X: Any) -> Any:
        """``transform``'s result in the container :meth:`set_output` chose."""
        container = self._output_container()
        if container == "default":
            return data
        if container != "pandas":
            raise InvalidParameterError(
                f"transform output {container!r} is not supported by {type(self).__name__}; "
                f"use one of {OUTPUT_CONTAINERS}"
            )
        if not isinstance(data, np.ndarray):
            raise InvalidParameterError(
                f"set_output(transform='pandas') needs in-memory input; "
                f"{type(self).__name__}.transform of {type(X).__name__} input gives a lazy "
                f"dask array: use set_output(transform='default') for out-of-core data"
            )
        import pandas as pd

        index = X.index if isinstance(X, pd.DataFrame) else None
        return pd.DataFrame(data, index=index, columns=self.get_feature_names_out(), copy=False)

    def __sklearn_tags__(self) -> Any:
        """Tags of the next class in the MRO, with transformer tags."""
        from sklearn.utils import TransformerTags

        tags = super().__sklearn_tags__()  # type: ignore[misc]
        tags.transformer_tags = TransformerTags(preserves_dtype=["float64"])
        return tags
