"""scikit-learn interoperability: its estimator checks, tools and exceptions.

``check_estimator`` runs scikit-learn's own conformance suite on each estimator (one test
per check); its clustering checks are run by name for KMeans because scikit-learn selects
them by ``isinstance(est, sklearn.base.ClusterMixin)``, which an estimator that does not
import scikit-learn cannot satisfy. Then the tools a user reaches for: ``Pipeline``,
``GridSearchCV``, ``clone``, ``check_is_fitted``; and emdist imported where scikit-learn
is not installed.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest
import sklearn
import sklearn.exceptions
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import (
    check_clusterer_compute_labels_predict,
    check_clustering,
    parametrize_with_checks,
)
from sklearn.utils.validation import check_is_fitted

import emdist
from emdist.exceptions import InvalidDataError, NotFittedError
from tests.conftest import make_blobs
from tests.helpers import estimator_classes

ESTIMATORS = [cls(random_state=0) for cls in estimator_classes()]


def _expected_failed_checks(estimator: Any) -> dict[str, str]:
    # Every other check scikit-learn runs on our estimators passes.
    return {
        "check_dtype_object": (
            "emdist refuses object arrays (InvalidDataError, 'must hold real numbers') "
            "where scikit-learn converts them to float64: they come from text or mixed "
            "columns, and the same data in Zarr or Dask is refused too, so the in-memory "
            "and out-of-core paths agree (tests/models/test_errors.py pins this behaviour)."
        ),
    }


# scikit-learn warns, while collecting, that our estimators do not inherit from
# sklearn.base.BaseEstimator: they cannot without importing scikit-learn, which stays
# optional; they implement its protocol instead, which is what the checks then verify.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Estimator .* does not inherit from", UserWarning)
    _CHECKS = parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failed_checks)


# check_array_api_input is skipped here (scipy reads SCIPY_ARRAY_API when imported); it
# runs in a fresh interpreter in test_sklearn_array_api_check below.
@_CHECKS
def test_sklearn_check_estimator(estimator: Any, check: Callable[[Any], None]) -> None:
    check(estimator)


@pytest.mark.parametrize(
    "check",
    [
        check_clustering,
        partial(check_clustering, readonly_memmap=True),
        check_clusterer_compute_labels_predict,
    ],
    ids=["check_clustering", "check_clustering_readonly_memmap", "compute_labels_predict"],
)
def test_sklearn_clustering_checks_kmeans(check: Callable[[str, Any], None]) -> None:
    check("KMeans", emdist.KMeans(random_state=0))


@pytest.mark.parametrize(
    ("estimator", "estimator_type", "transformer"),
    [
        (emdist.KMeans(), "clusterer", True),
        (emdist.GaussianMixture(), "density_estimator", False),
        (emdist.BayesianGaussianMixture(), "density_estimator", False),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str | bool) else str(v),
)
def test_tags(estimator: Any, estimator_type: str, transformer: bool) -> None:
    tags = get_tags(estimator)
    assert tags.estimator_type == estimator_type
    assert (tags.transformer_tags is not None) is transformer
    assert tags.target_tags.required is False
    assert tags.input_tags.sparse is False and tags.input_tags.allow_nan is False
    assert tags.requires_fit is True


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    # Three separated clusters, far from the origin and at very different scales per
    # feature, so that a StandardScaler in front changes what the model sees.
    X, y = make_blobs(60, [[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]], seed=3)
    return X * np.array([1000.0, 0.01]) + np.array([5e4, -3.0]), y


def test_pipeline_scaler_then_gaussian_mixture() -> None:
    X, y = _blobs()
    pipe = Pipeline([("scale", StandardScaler()), ("gmm", emdist.GaussianMixture(3))])
    pipe.set_params(gmm__random_state=0, gmm__covariance_type="diag")
    labels = pipe.fit(X).predict(X)
    assert adjusted_rand_score(y, labels) == pytest.approx(1.0)
    scaled = StandardScaler().fit_transform(X)
    direct = emdist.GaussianMixture(3, covariance_type="diag", random_state=0).fit(scaled)
    # The pipeline's score is the mixture's mean log-likelihood of the scaled data.
    assert_allclose(pipe.score(X), direct.score(scaled), rtol=1e-12)
    assert_allclose(pipe.predict_proba(X), direct.predict_proba(scaled), rtol=1e-10, atol=1e-12)
    assert pipe.named_steps["gmm"].n_features_in_ == 2


def test_pipeline_scaler_then_kmeans_transform() -> None:
    X, y = _blobs()
    pipe = make_pipeline(StandardScaler(), emdist.KMeans(3, random_state=0))
    distances = pipe.fit_transform(X)
    assert distances.shape == (len(X), 3)
    assert_array_equal(np.argmin(distances, axis=1), pipe.named_steps["kmeans"].labels_)
    assert adjusted_rand_score(y, pipe.predict(X)) == pytest.approx(1.0)
    # Output names as scikit-learn's KMeans gives them, through the pipeline.
    assert pipe.get_feature_names_out().tolist() == ["kmeans0", "kmeans1", "kmeans2"]
    with pytest.raises(NotFittedError):
        emdist.KMeans(3).get_feature_names_out()


def test_grid_search_over_n_components_by_score() -> None:
    X, _ = _blobs()
    X = StandardScaler().fit_transform(X)
    search = GridSearchCV(
        emdist.GaussianMixture(covariance_type="diag", random_state=0),
        {"n_components": [1, 2, 3]},
        cv=3,
    )
    search.fit(X)
    # Held-out log-likelihood rises with every component up to the true three.
    means = search.cv_results_["mean_test_score"]
    assert np.all(np.diff(means) > 0), means
    assert search.best_params_ == {"n_components": 3}
    assert isinstance(search.best_estimator_, emdist.GaussianMixture)
    assert search.best_estimator_.n_components == 3
    assert_allclose(search.score(X), search.best_estimator_.score(X))


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_clone_is_unfitted_copy_of_parameters(estimator: Any) -> None:
    X, _ = _blobs()
    fitted = clone(estimator).set_params(max_iter=50).fit(StandardScaler().fit_transform(X))
    copy = clone(fitted)
    assert type(copy) is type(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "n_features_in_")
    with pytest.raises(sklearn.exceptions.NotFittedError):
        check_is_fitted(copy)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_check_is_fitted(estimator: Any) -> None:
    est = clone(estimator)
    with pytest.raises(sklearn.exceptions.NotFittedError, match="not fitted"):
        check_is_fitted(est)
    est.fit(StandardScaler().fit_transform(_blobs()[0]))
    check_is_fitted(est)  # raises if not fitted


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_not_fitted_error_is_value_attribute_and_sklearn_error(estimator: Any) -> None:
    est = clone(estimator)
    with pytest.raises(NotFittedError) as info:
        est.predict(np.zeros((2, 2)))
    err = info.value
    for cls in (
        ValueError,
        AttributeError,
        InvalidDataError,
        emdist.NotFittedError,
        sklearn.exceptions.NotFittedError,
    ):
        assert isinstance(err, cls), cls
    assert f"This {type(est).__name__} instance is not fitted yet" in str(err)
    # hasattr probes see an unfitted estimator's computed attributes as absent.
    assert not hasattr(est, "labels_")
    # A Dask worker or Prefect task sends errors back pickled: the class must survive.
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err) and str(again) == str(err)


def _run_python(code: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env_vars}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


@pytest.mark.service
def test_importing_emdist_does_not_import_sklearn() -> None:
    result = _run_python(
        """
        import sys
        import emdist
        emdist.KMeans(2, random_state=0).fit([[0.0], [1.0], [10.0], [11.0]])
        print(sorted(m for m in sys.modules if m.split(".")[0] == "sklearn"))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.service
def test_emdist_works_without_sklearn_installed() -> None:
    # A None entry in sys.modules makes every "import sklearn" raise ImportError, as on a
    # machine without it.
    result = _run_python(
        """
        import sys
        sys.modules["sklearn"] = None
        import numpy as np
        import emdist
        X = np.array([[0.0], [1.0], [10.0], [11.0]])
        km = emdist.KMeans(2, random_state=0)
        try:
            km.predict(X)
        except emdist.NotFittedError as err:
            assert isinstance(err, ValueError) and isinstance(err, AttributeError)
            print("unfitted:", type(err).__mro__[1].__name__)
        print("labels:", sorted(np.bincount(km.fit_predict(X)).tolist()))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["unfitted: InvalidDataError", "labels: [2, 2]"]


@pytest.mark.service
def test_sklearn_array_api_check() -> None:
    # The one estimator check that needs SCIPY_ARRAY_API=1 before scipy is imported: with
    # array API dispatch on and numpy input, results are unchanged.
    result = _run_python(
        """
        import warnings
        import emdist
        from sklearn.utils.estimator_checks import estimator_checks_generator
        from emdist.registry import model_families
        for est in (cls(random_state=0) for _, cls in sorted(model_families().items())):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                for e, check in estimator_checks_generator(est, mark=None):
                    if check.func.__name__ == "check_array_api_input":
                        check(e)  # raises SkipTest or AssertionError if not passed
                        print(type(e).__name__, "passed")
        """,
        SCIPY_ARRAY_API="1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        word for cls in estimator_classes() for word in (cls.__name__, "passed")
    ]
