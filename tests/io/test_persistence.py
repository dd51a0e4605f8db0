"""Saving fitted estimators to Zarr and loading them back.

Real Zarr stores under ``tmp_path``; the tampering tests edit a saved model's metadata
document by hand, as an attacker with write access to the store would.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import emdist
from emdist.exceptions import EmdistError, NotFittedError
from emdist.io.atomic import OutputExistsError
from emdist.io.persistence import ModelFormatError, load_model, save_model
from tests.conftest import overlapping_data
from tests.helpers import tree_digest

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return overlapping_data(0, 400)


@pytest.fixture(scope="module")
def X_zarr(X: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("data") / "X.zarr"
    zarr.create_array(str(path), data=X, chunks=(250, X.shape[1]), compressors=None)
    return str(path)


@pytest.fixture(scope="module")
def gmm(X: np.ndarray) -> emdist.GaussianMixture:
    return emdist.GaussianMixture(3, init_params="k-means++", random_state=0).fit(X)


def computed(value: Any) -> np.ndarray:
    return np.asarray(value.compute() if hasattr(value, "compute") else value)


def public_fitted(model: Any) -> dict[str, Any]:
    return {
        k: v
        for k, v in vars(model).items()
        if k.endswith("_") and not k.startswith("_") and k != "labels_"
    }


def assert_same_attributes(loaded: Any, original: Any) -> None:
    want, got = public_fitted(original), public_fitted(loaded)
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            assert isinstance(got[key], np.ndarray), key
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            assert np.array_equal(got[key], value), key
        else:
            assert type(got[key]) is type(value), key
            assert got[key] == value, key
    lp, op = loaded.get_params(), original.get_params()
    assert sorted(lp) == sorted(op)
    for key, value in op.items():
        if key in ("observer", "checkpoint"):
            assert lp[key] is None
        elif isinstance(value, np.ndarray):
            assert np.array_equal(lp[key], value), key
        else:
            assert lp[key] == value and type(lp[key]) is type(value), key


def assert_same_predictions(loaded: Any, original: Any, data: Any) -> None:
    methods = ["predict"]
    if isinstance(original, emdist.KMeans):
        methods.append("transform")
    else:
        methods += ["predict_proba", "score_samples"]
    for name in methods:
        want = computed(getattr(original, name)(data))
        got = computed(getattr(loaded, name)(data))
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert np.array_equal(got, want), name
    assert loaded.score(data) == original.score(data)


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


# --------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["numpy", "zarr"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gaussian_mixture_round_trip(
    tmp_path: Path, X: np.ndarray, X_zarr: str, covariance_type: str, source: str
) -> None:
    data = X if source == "numpy" else X_zarr
    model = emdist.GaussianMixture(
        3, covariance_type=covariance_type, init_params="k-means++", random_state=1
    ).fit(data)
    save_model(model, tmp_path / "model.zarr")
    loaded = load_model(tmp_path / "model.zarr")
    assert type(loaded) is emdist.GaussianMixture
    assert_same_attributes(loaded, model)
    assert_same_predictions(loaded, model, X)
    assert_same_predictions(loaded, model, X_zarr)  # lazy, out of core
    assert loaded.bic(X) == model.bic(X) and loaded.aic(X) == model.aic(X)


@pytest.mark.parametrize("source", ["numpy", "zarr"])
def test_kmeans_round_trip(tmp_path: Path, X: np.ndarray, X_zarr: str, source: str) -> None:
    data = X if source == "numpy" else X_zarr
    model = emdist.KMeans(3, n_init=2, random_state=3).fit(data)
    save_model(model, str(tmp_path / "km.zarr"))  # str paths too
    loaded = load_model(str(tmp_path / "km.zarr"))
    assert type(loaded) is emdist.KMeans
    assert_same_attributes(loaded, model)
    assert_same_predictions(loaded, model, X)
    assert_same_predictions(loaded, model, X_zarr)
    assert np.array_equal(computed(loaded.predict(data)), computed(model.labels_))


def test_array_parameters_round_trip(tmp_path: Path, X: np.ndarray) -> None:
    means = X[[0, 500, 1000]]
    gm = emdist.GaussianMixture(
        3, covariance_type="diag", means_init=means, weights_init=np.full(3, 1 / 3)
    ).fit(X)
    save_model(gm, tmp_path / "gm.zarr")
    loaded = load_model(tmp_path / "gm.zarr")
    assert np.array_equal(loaded.means_init, means)
    assert_same_attributes(loaded, gm)
    assert_same_predictions(loaded, gm, X)

    km = emdist.KMeans(3, init=means).fit(X)
    save_model(km, tmp_path / "km.zarr")
    loaded_km = load_model(tmp_path / "km.zarr")
    assert np.array_equal(loaded_km.init, means)
    assert_same_attributes(loaded_km, km)
    # The loaded estimator refits to the same model: its parameters are whole.
    refit = loaded_km.fit(X)
    assert np.array_equal(refit.cluster_centers_, km.cluster_centers_)


def test_saved_model_is_only_json_metadata_and_raw_chunks(
    tmp_path: Path, gmm: emdist.GaussianMixture
) -> None:
    path = tmp_path / "model.zarr"
    save_model(gmm, path)
    arrays = []
    for meta in path.rglob("zarr.json"):
        doc = json.loads(meta.read_text())
        if doc["node_type"] == "array":
            arrays.append(meta.parent)
            assert doc["data_type"] in ("float64", "int64", "bool"), doc["data_type"]
        else:
            assert doc["node_type"] == "group"
    assert {a.name for a in arrays} >= {"weights_", "means_", "covariances_"}
    for p in path.rglob("*"):
        if p.is_file() and p.name != "zarr.json":
            owner = next(a for a in arrays if a in p.parents)
            assert p.relative_to(owner).parts[0] == "c", p
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    assert attrs["format"] == "emdist-model" and attrs["estimator"] == "GaussianMixture"


# --------------------------------------------------------------------------------------------
# loading never executes code from the store
# --------------------------------------------------------------------------------------------


def tamper(path: Path, **attributes: Any) -> None:
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"].update(attributes)
    (path / "zarr.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("estimator", "params"),
    [
        ("os.system", {"command": "touch {marker}"}),
        ("subprocess.getoutput", {"cmd": "touch {marker}"}),
        ("builtins.eval", {"source": "open({marker!r}, 'w')"}),
        ("builtins.exec", {"source": "open({marker!r}, 'w')"}),
        ("pathlib.Path.touch", {"self": "{marker}"}),
        ("emdist.GaussianMixture.__init__", {}),
        ("gaussianmixture", {}),
        ("", {}),
    ],
)
def test_unknown_estimator_is_refused_and_nothing_runs(
    tmp_path: Path, gmm: emdist.GaussianMixture, estimator: str, params: dict[str, str]
) -> None:
    path = tmp_path / "model.zarr"
    marker = tmp_path / "pwned"
    save_model(gmm, path)
    tamper(
        path,
        estimator=estimator,
        params={k: v.format(marker=str(marker)) for k, v in params.items()},
    )
    with pytest.raises(ModelFormatError, match="unknown estimator"):
        load_model(path)
    assert not marker.exists()


MALFORMED = {
    "no-params": lambda a: a.pop("params"),
    "no-fitted": lambda a: a.pop("fitted"),
    "params-not-a-mapping": lambda a: a.update(params=[1, 2]),
    "unknown-parameter": lambda a: a["params"].update(bogus=1),
    "fitted-shadows-a-method": lambda a: a["fitted"].update(predict=1),
    "fitted-dunder": lambda a: a["fitted"].update(__class__="KMeans"),
}


def test_malformed_model_document_is_a_model_format_error(
    tmp_path: Path, gmm: emdist.GaussianMixture
) -> None:
    """A model whose metadata was damaged or tampered with is refused with
    ``ModelFormatError`` (not a ``KeyError``/``TypeError`` from deep inside, and not a model
    whose methods were replaced by values from the store)."""
    wrong = {}
    for damage, edit in MALFORMED.items():
        path = tmp_path / f"{damage}.zarr"
        save_model(gmm, path)
        doc = json.loads((path / "zarr.json").read_text())
        edit(doc["attributes"])
        (path / "zarr.json").write_text(json.dumps(doc))
        try:
            load_model(path)
        except ModelFormatError:
            continue
        except Exception as exc:
            wrong[damage] = f"{type(exc).__name__}: {exc}"
        else:
            wrong[damage] = "loaded without error"
    assert wrong == {}


def test_persistence_source_imports_and_evaluates_nothing_by_name() -> None:
    """No import machinery, eval/exec or unpickling in the loader's code (docstrings aside)."""
    tree = ast.parse(Path(emdist.io.persistence.__file__).read_text())
    imported = set()
    called = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call):
            func = node.func
            called.add(func.id if isinstance(func, ast.Name) else getattr(func, "attr", ""))
    assert "zarr" in imported and "load_model" not in called  # the walk sees the code
    assert not imported & {"importlib", "pickle", "cloudpickle", "dill", "marshal", "pydoc"}
    assert not called & {"__import__", "eval", "exec", "import_module", "locate", "loads"}


def test_wrong_version_is_refused(tmp_path: Path, gmm: emdist.GaussianMixture) -> None:
    path = tmp_path / "model.zarr"
    save_model(gmm, path)
    tamper(path, version=99)
    with pytest.raises(ModelFormatError, match="version 99"):
        load_model(path)


def test_non_model_paths_are_refused(
    tmp_path: Path, X_zarr: str, gmm: emdist.GaussianMixture
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    plain = tmp_path / "file.txt"
    plain.write_text("not a model")
    group = tmp_path / "group.zarr"
    zarr.open_group(str(group), mode="w").attrs["format"] = "something-else"
    bare = tmp_path / "bare.zarr"
    zarr.open_group(str(bare), mode="w")
    ckpt = tmp_path / "ckpt"
    emdist.GaussianMixture(3, max_iter=2, tol=10.0, checkpoint=ckpt, random_state=0).fit(X_zarr)
    for path in [tmp_path / "missing", empty, plain, Path(X_zarr), group, bare, ckpt]:
        with pytest.raises(ModelFormatError):
            load_model(path)


# --------------------------------------------------------------------------------------------
# overwriting, atomically
# --------------------------------------------------------------------------------------------


def test_save_over_existing_model_needs_overwrite(
    tmp_path: Path, X: np.ndarray, gmm: emdist.GaussianMixture
) -> None:
    path = tmp_path / "model.zarr"
    save_model(gmm, path)
    before = tree_digest(path)
    other = emdist.KMeans(3, random_state=0).fit(X)
    with pytest.raises(OutputExistsError):
        save_model(other, path)
    assert tree_digest(path) == before
    assert type(load_model(path)) is emdist.GaussianMixture

    save_model(other, path, overwrite=True)
    loaded = load_model(path)
    assert type(loaded) is emdist.KMeans
    assert np.array_equal(loaded.cluster_centers_, other.cluster_centers_)
    assert not (path / "fitted" / "means_").exists()  # replaced, not merged
    assert siblings(path) == []  # no .partial-* or .old-* left behind


class Unsaveable:
    """A fitted attribute that cannot be written as JSON: saving fails after the arrays."""


def test_failed_overwrite_leaves_the_old_model_intact(
    tmp_path: Path, X: np.ndarray, gmm: emdist.GaussianMixture
) -> None:
    path = tmp_path / "model.zarr"
    save_model(gmm, path)
    before = tree_digest(path)
    broken = emdist.GaussianMixture(2, random_state=0).fit(X)
    broken.extra_ = Unsaveable()
    with pytest.raises(Exception) as info:
        save_model(broken, path, overwrite=True)
    assert not isinstance(info.value, AssertionError)
    assert tree_digest(path) == before
    assert siblings(path) == []
    assert_same_predictions(load_model(path), gmm, X)


def test_unfitted_estimator_cannot_be_saved(tmp_path: Path) -> None:
    for model in (emdist.GaussianMixture(2), emdist.KMeans(2)):
        with pytest.raises(ValueError, match="not fitted"):
            save_model(model, tmp_path / "model.zarr")
        assert list(tmp_path.iterdir()) == []


def test_unsupported_object_cannot_be_saved(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot save"):
        save_model(object(), tmp_path / "model.zarr")
    assert list(tmp_path.iterdir()) == []


def test_unfitted_or_unsupported_saves_raise_emdist_errors_in_one_line(tmp_path: Path) -> None:
    for model in (emdist.GaussianMixture(2), emdist.KMeans(2), emdist.BayesianGaussianMixture(2)):
        with pytest.raises(NotFittedError) as info:
            save_model(model, tmp_path / "model.zarr")
        assert "\n" not in str(info.value)
    with pytest.raises(EmdistError, match="cannot save"):
        save_model(object(), tmp_path / "model.zarr")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# values that cannot be a model, saved with checksums that match them
# --------------------------------------------------------------------------------------------


def _negate_first(name: str) -> Callable[[Any], None]:
    def edit(model: Any) -> None:
        value = getattr(model, name).copy()
        value[0] = -np.eye(value.shape[-1])
        setattr(model, name, value)

    return edit


def _set(name: str, value: Any) -> Callable[[Any], None]:
    return lambda model: setattr(model, name, value)


def _other_factor(model: Any) -> None:
    # A valid triangular factor with a positive diagonal, of another covariance.
    factor = model.precisions_cholesky_.copy()
    factor[0] = 2 * factor[0]
    model.precisions_cholesky_ = factor


INVALID_GMM_VALUES: dict[str, tuple[Callable[[Any], None], str]] = {
    "covariance -I": (_negate_first("covariances_"), "covariances_"),
    "precision -I": (_negate_first("precisions_"), "precisions_"),
    "factor of another covariance": (_other_factor, "precisions_cholesky_"),
    "NaN lower bound": (_set("lower_bound_", float("nan")), "lower_bound_"),
    "infinite lower bound": (_set("lower_bound_", float("inf")), "lower_bound_"),
    "lower bound not the last": (_set("lower_bound_", 1.0), "lower_bound_"),
    "bounds shorter than n_iter_": (lambda m: m.lower_bounds_.pop(), "lower_bounds_"),
    "NaN in the bounds": (lambda m: m.lower_bounds_.__setitem__(0, float("nan")), "lower_bounds_"),
    "n_iter_ zero": (_set("n_iter_", 0), "n_iter_"),
    "negative weight": (_set("weights_", np.array([1.5, -0.25, -0.25])), "weights_"),
    "weights summing to 2": (_set("weights_", np.array([1.0, 0.5, 0.5])), "weights_"),
    "converged_ not a bool": (_set("converged_", "yes"), "converged_"),
}


@pytest.mark.parametrize("case", sorted(INVALID_GMM_VALUES))
def test_mixture_values_that_cannot_be_a_model_are_refused_naming_the_field(
    tmp_path: Path, gmm: emdist.GaussianMixture, case: str
) -> None:
    """save_model writes checksums of whatever it is given: as an attacker who recomputes
    them, the values themselves must be checked on load."""
    edit, field = INVALID_GMM_VALUES[case]
    model = copy.deepcopy(gmm)
    edit(model)
    path = tmp_path / "model.zarr"
    save_model(model, path)
    with pytest.raises(ModelFormatError, match=re.escape(f"'{field}'")) as info:
        load_model(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("cls", [emdist.GaussianMixture, emdist.BayesianGaussianMixture])
def test_negative_covariance_of_every_type_is_refused(
    tmp_path: Path, X: np.ndarray, covariance_type: str, cls: type[Any]
) -> None:
    model = cls(3, covariance_type=covariance_type, random_state=0, max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X)
    save_model(model, tmp_path / "good.zarr")
    load_model(tmp_path / "good.zarr")  # the unedited model loads
    model.covariances_ = -model.covariances_
    save_model(model, tmp_path / "bad.zarr")
    with pytest.raises(ModelFormatError, match="'covariances_'"):
        load_model(tmp_path / "bad.zarr")


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (_set("inertia_", float("nan")), "inertia_"),
        (_set("inertia_", -1.0), "inertia_"),
        (lambda m: m.lower_bounds_.append(-1.0), "lower_bounds_"),
    ],
)
def test_kmeans_values_that_cannot_be_a_model_are_refused(
    tmp_path: Path, X: np.ndarray, edit: Callable[[Any], None], field: str
) -> None:
    model = emdist.KMeans(3, random_state=0).fit(X)
    edit(model)
    save_model(model, tmp_path / "model.zarr")
    with pytest.raises(ModelFormatError, match=re.escape(f"'{field}'")):
        load_model(tmp_path / "model.zarr")


def test_extra_attributes_are_written_with_the_model(
    tmp_path: Path, gmm: emdist.GaussianMixture
) -> None:
    path = tmp_path / "model.zarr"
    save_model(gmm, path, attributes={"emdist_job": "job-1"})
    assert json.loads((path / "zarr.json").read_text())["attributes"]["emdist_job"] == "job-1"
    assert_same_attributes(load_model(path), gmm)
    for bad in ({"format": "x"}, {"checksums": "x"}, {"job": 1}):
        with pytest.raises(EmdistError, match="attributes"):
            save_model(gmm, tmp_path / "other.zarr", attributes=bad)  # type: ignore[dict-item]
    assert not (tmp_path / "other.zarr").exists()
