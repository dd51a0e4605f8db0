"""The scikit-learn estimator protocol, without importing scikit-learn.

scikit-learn is an optional dependency of emdist. Its tools (``Pipeline``,
``GridSearchCV``, ``clone``, ``check_is_fitted``, ``check_estimator``) call an estimator
through a small protocol: ``get_params``/``set_params`` (in
:class:`emdist.models._base.BaseEstimator`), ``__sklearn_tags__`` and
``__sklearn_is_fitted__``. The mixins here provide the last two and mirror scikit-learn's
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

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from emdist.exceptions import not_fitted_error

__all__ = ["ClusterMixin", "DensityMixin", "SklearnEstimatorMixin", "TransformerMixin"]


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

    def _check_fitted(self) -> None:
        """Raise :class:`emdist.exceptions.NotFittedError` unless ``fit`` has completed."""
        if not self.__sklearn_is_fitted__():
            raise not_fitted_error(self)


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

    _check_fitted: Callable[[], None]  # from SklearnEstimatorMixin, later in the MRO

    def get_feature_names_out(self, input_features: Any = None) -> Any:
        """Names of the output features: the class name in lower case and an index.

        As scikit-learn's ``KMeans`` (``kmeans0``, ``kmeans1``, ...), so that
        ``Pipeline.get_feature_names_out`` works through our transformers.

        Parameters
        ----------
        input_features : ignored
            The outputs do not depend on the input names.

        Returns
        -------
        ndarray of str of shape (n_features_out,)
        """
        self._check_fitted()
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}{i}" for i in range(self._n_features_out)], dtype=object)

    def __sklearn_tags__(self) -> Any:
        """Tags of the next class in the MRO, with transformer tags."""
        from sklearn.utils import TransformerTags

        tags = super().__sklearn_tags__()  # type: ignore[misc]
        tags.transformer_tags = TransformerTags(preserves_dtype=["float64"])
        return tags
