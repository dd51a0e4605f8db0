"""Fault injection: damaged, edited or hostile stores give one clear error, lose nothing.

Every case damages a real Zarr store on disk (an ingested dataset, a saved model, a
checkpoint) or points an output at a folder emdist did not write, then asserts the message's
key words (one line) and that nothing was written or lost: the victim folder keeps its files,
a previous output is byte for byte unchanged, no new output appears. No mocks.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import emdist
from emdist.exceptions import ConvergenceWarning, InvalidDataError
from emdist.io.atomic import DiskFullError, NotAnOutputError
from emdist.io.checkpoint import CheckpointError, CheckpointStore
from emdist.io.ingest import ingest
from emdist.io.integrity import MAX_CHUNKS, IntegrityError, array_digest, seal
from emdist.io.locks import WriterLockedError
from emdist.io.persistence import ModelFormatError, load_model, save_model
from pipeline.cli import main as cli_main
from tests.helpers import tree_digest
from tests.markers import root_fixture, service_fixture

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def make_victim(parent: Path) -> tuple[Path, dict[str, str]]:
    """A user's folder that no emdist operation may delete or change."""
    victim = parent / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "thesis.txt").write_text("years of work")
    (victim / "sub" / "data.csv").write_text("1,2,3\n")
    return victim, tree_digest(victim)


def edit_attrs(store: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads((store / "zarr.json").read_text())
    edit(doc["attributes"])
    (store / "zarr.json").write_text(json.dumps(doc))


def edit_meta(store: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads((store / "zarr.json").read_text())
    edit(doc)
    (store / "zarr.json").write_text(json.dumps(doc))


def flip(path: Path, n_bytes: int = 1, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(data) - 4, size=n_bytes, replace=False):  # spare the CRC itself
        data[int(i)] ^= 0x10
    path.write_bytes(bytes(data))


def one_line(message: str) -> None:
    assert "\n" not in message.strip(), message
    assert "Traceback" not in message, message


def overlapping(n_per_cluster: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 0.0], [0.0, 4.0, 4.0]])
    X = np.concatenate([c + rng.standard_normal((n_per_cluster, 3)) for c in centers])
    return X[rng.permutation(len(X))]


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return overlapping()


@pytest.fixture
def dataset(tmp_path: Path, X: np.ndarray) -> Path:
    """An ingested (uncompressed) dataset in 4 chunks of 300 rows."""
    np.save(tmp_path / "x.npy", X)
    return ingest(tmp_path / "x.npy", tmp_path / "data.zarr", chunk_rows=300).path


@pytest.fixture(scope="module")
def gmm(X: np.ndarray) -> emdist.GaussianMixture:
    return emdist.GaussianMixture(3, random_state=0).fit(X)


def fit(data: Any, **kwargs: Any) -> emdist.GaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return emdist.GaussianMixture(3, random_state=0, max_iter=3, **kwargs).fit(data)


# --------------------------------------------------------------------------------------------
# 0. nothing outside a store is read or deleted
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_once(tmp_path_factory: pytest.TempPathFactory, X: np.ndarray) -> Path:
    """A checkpoint of an unfinished fit, made once per module (tests damage copies of it)."""
    ckpt = tmp_path_factory.mktemp("checkpoint") / "ckpt"
    store = CheckpointStore(ckpt, keep=2)
    fit(X, checkpoint=store)
    return ckpt


@pytest.fixture
def checkpoint(tmp_path: Path, checkpoint_once: Path) -> Path:
    """This test's copy of a checkpoint holding two committed states (keep=2) of an unfinished
    fit. The fit is deterministic: the copy is what a fit of its own would have left."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint_once, ckpt)
    return ckpt


def _hostile_committed(tmp: Path) -> dict[str, Callable[[Path], list[Any]]]:
    return {
        "parent": lambda v: ["../victim"],
        "absolute": lambda v: [str(v)],
        "nested-parent": lambda v: ["s000001/../../victim"],
        "not-a-list": lambda v: "s000001",
        "not-a-string": lambda v: [1],
        "foreign-name": lambda v: ["victim"],
    }


@pytest.mark.parametrize(
    "case", ["parent", "absolute", "nested-parent", "not-a-list", "not-a-string", "foreign-name"]
)
def test_hostile_committed_is_refused_and_deletes_nothing(
    tmp_path: Path, X: np.ndarray, checkpoint: Path, case: str
) -> None:
    victim, before = make_victim(checkpoint.parent)
    states = tree_digest(checkpoint)
    names = _hostile_committed(tmp_path)[case](victim)
    edit_attrs(checkpoint, lambda a: a.update(committed=names))
    states = {k: v for k, v in states.items() if k != "zarr.json"}
    with pytest.raises(CheckpointError, match="committed") as info:
        fit(X, checkpoint=CheckpointStore(checkpoint, keep=1))
    one_line(str(info.value))
    assert tree_digest(victim) == before
    assert {k: v for k, v in tree_digest(checkpoint).items() if k != "zarr.json"} == states


def test_empty_committed_is_refused_and_keeps_the_states(X: np.ndarray, checkpoint: Path) -> None:
    states = sorted(p.name for p in checkpoint.iterdir() if p.is_dir())
    assert len(states) == 2
    edit_attrs(checkpoint, lambda a: a.update(committed=[]))
    with pytest.raises(CheckpointError, match="'committed' is empty"):
        fit(X, checkpoint=checkpoint)
    assert sorted(p.name for p in checkpoint.iterdir() if p.is_dir()) == states


def test_state_that_is_a_symlink_out_of_the_checkpoint_is_refused(
    X: np.ndarray, checkpoint: Path
) -> None:
    victim, before = make_victim(checkpoint.parent)
    newest = json.loads((checkpoint / "zarr.json").read_text())["attributes"]["committed"][-1]
    shutil.rmtree(checkpoint / newest)
    (checkpoint / newest).symlink_to(victim, target_is_directory=True)
    with pytest.raises(CheckpointError, match="symbolic link"):
        fit(X, checkpoint=CheckpointStore(checkpoint, keep=1))
    assert tree_digest(victim) == before


def test_stray_cleanup_deletes_only_state_groups(X: np.ndarray, checkpoint: Path) -> None:
    """Uncommitted state groups are removed on resume; nothing else in the folder is."""
    (checkpoint / "s999999").mkdir()  # an uncommitted state: a crash mid-write
    victim, before = make_victim(checkpoint)  # not a state name: never touched
    fit(X, checkpoint=checkpoint)
    assert not (checkpoint / "s999999").exists()
    assert tree_digest(victim) == before


def test_model_symlink_out_of_the_store_is_refused(
    tmp_path: Path, gmm: emdist.GaussianMixture
) -> None:
    path = tmp_path / "model.zarr"
    save_model(gmm, path)
    outside = tmp_path / "outside"
    shutil.move(path / "fitted" / "means_", outside)
    (path / "fitted" / "means_").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ModelFormatError, match="symbolic link"):
        load_model(path)


@pytest.mark.parametrize("kind", ["model", "predictions"])
def test_overwrite_never_replaces_a_folder_emdist_did_not_write(
    tmp_path: Path, gmm: emdist.GaussianMixture, X: np.ndarray, kind: str
) -> None:
    victim, before = make_victim(tmp_path)
    with pytest.raises(NotAnOutputError, match="not an emdist output") as info:
        if kind == "model":
            save_model(gmm, victim, overwrite=True)
        else:
            emdist.write_predictions(gmm, X, victim, overwrite=True)
    one_line(str(info.value))
    assert tree_digest(victim) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]  # no partial left


def test_overwrite_never_replaces_an_output_of_another_kind(
    tmp_path: Path, gmm: emdist.GaussianMixture, X: np.ndarray
) -> None:
    model = tmp_path / "model.zarr"
    save_model(gmm, model)
    before = tree_digest(model)
    with pytest.raises(NotAnOutputError, match="emdist model output"):
        emdist.write_predictions(gmm, X, model, overwrite=True)
    assert tree_digest(model) == before
    # Same kind: replaced.
    save_model(emdist.KMeans(3, random_state=0).fit(X), model, overwrite=True)
    assert type(load_model(model)) is emdist.KMeans


def test_predict_overwrite_on_the_cli_refuses_a_foreign_folder(
    tmp_path: Path, gmm: emdist.GaussianMixture, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model.zarr"
    save_model(gmm, model)
    victim, before = make_victim(tmp_path)
    code = cli_main(["predict", str(model), str(dataset), str(victim), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2
    assert "refusing to replace" in err and "not an emdist output" in err
    assert "Traceback" not in err
    assert tree_digest(victim) == before


# --------------------------------------------------------------------------------------------
# 1. a damaged dataset is an error naming what is wrong, never a silently different model
# --------------------------------------------------------------------------------------------


def _flip_1(d: Path) -> None:
    flip(d / "c" / "1" / "0", 1)


def _flip_50(d: Path) -> None:
    flip(d / "c" / "2" / "0", 50, seed=1)


def _delete_chunk(d: Path) -> None:
    (d / "c" / "1" / "0").unlink()


def _chunk_is_a_directory(d: Path) -> None:
    (d / "c" / "1" / "0").unlink()
    (d / "c" / "1" / "0").mkdir()


def _shape_larger(d: Path) -> None:
    edit_meta(d, lambda m: m.update(shape=[m["shape"][0] + 300, m["shape"][1]]))


def _shape_smaller(d: Path) -> None:
    edit_meta(d, lambda m: m.update(shape=[m["shape"][0] - 300, m["shape"][1]]))


def _dtype_int64(d: Path) -> None:
    edit_meta(d, lambda m: m.update(data_type="int64", fill_value=0))


def _chunks_edited(d: Path) -> None:
    def edit(m: dict[str, Any]) -> None:
        m["chunk_grid"]["configuration"]["chunk_shape"] = [600, 3]

    edit_meta(d, edit)


def _checksum_codec_removed(d: Path) -> None:
    edit_meta(d, lambda m: m.update(codecs=[c for c in m["codecs"] if c["name"] != "crc32c"]))


DATASET_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "flip-1-byte": (_flip_1, r"rows 300-600 failed the crc32c checksum"),
    "flip-50-bytes": (_flip_50, r"rows 600-900 failed the crc32c checksum"),
    "delete-chunk": (_delete_chunk, r"chunk 1/0 is missing"),
    "chunk-is-a-directory": (_chunk_is_a_directory, r"chunk 1/0 is not a regular file"),
    "shape-larger": (_shape_larger, r"field 'shape'"),
    "shape-smaller": (_shape_smaller, r"field 'shape'"),
    "dtype-int64": (_dtype_int64, r"field 'dtype'"),
    "chunks-edited": (_chunks_edited, r"field 'chunks'"),
    "checksum-codec-removed": (_checksum_codec_removed, r"(crc32c|checksum)"),
}


@pytest.mark.parametrize("damage", list(DATASET_DAMAGE))
def test_damaged_dataset_is_refused(dataset: Path, damage: str) -> None:
    edit, expected = DATASET_DAMAGE[damage]
    edit(dataset)
    with pytest.raises(InvalidDataError, match=expected) as info:
        fit(str(dataset))
    assert isinstance(info.value, IntegrityError)
    one_line(str(info.value))
    assert str(dataset) in str(info.value)


def test_damaged_dataset_on_the_cli_is_one_line_and_writes_no_model(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _flip_1(dataset)
    out = tmp_path / "model.zarr"
    code = cli_main(["fit", str(dataset), "-k", "3", "--max-iter", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "failed the crc32c checksum" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2  # the error, and perhaps a hint
    assert not out.exists()


def test_intact_dataset_fits_as_the_in_memory_data(dataset: Path, X: np.ndarray) -> None:
    """The verified read path changes nothing when nothing is damaged (same blocks, same sums)."""
    import dask.array as da

    in_memory = fit(da.from_array(X, chunks=(300, -1)))
    np.testing.assert_array_equal(fit(str(dataset)).means_, in_memory.means_)


def test_generated_dataset_is_verified(tmp_path: Path) -> None:
    ds = emdist.io.synthetic.make_gaussian_mixture(
        tmp_path / "syn.zarr", 1000, 3, 2, chunk_rows=250, random_state=0
    )
    (ds.data_path / "c" / "2" / "0").unlink()
    with pytest.raises(IntegrityError, match="chunk 2/0 is missing"):
        fit(str(ds.data_path))


def test_foreign_store_declaring_1e12_rows_fails_fast(tmp_path: Path) -> None:
    """A store emdist did not write has no record: its declared size is still bounded."""
    path = tmp_path / "foreign.zarr"
    zarr.create_array(str(path), data=overlapping(), chunks=(300, 3), compressors=None)
    edit_meta(path, lambda m: m.update(shape=[10**12, 3]))
    start = time.monotonic()
    with pytest.raises(IntegrityError, match=f"at most {MAX_CHUNKS:,}") as info:
        fit(str(path))
    assert time.monotonic() - start < 5
    one_line(str(info.value))


def test_ingested_dataset_declaring_1e12_rows_fails_fast(dataset: Path) -> None:
    edit_meta(dataset, lambda m: m.update(shape=[10**12, 3]))
    start = time.monotonic()
    with pytest.raises(IntegrityError, match="field 'shape'"):
        fit(str(dataset))
    assert time.monotonic() - start < 5


def test_one_chunk_declared_larger_than_memory_fails_fast(tmp_path: Path) -> None:
    path = tmp_path / "foreign.zarr"
    zarr.create_array(str(path), data=overlapping(), chunks=(300, 3), compressors=None)

    def edit(m: dict[str, Any]) -> None:
        m["shape"] = [10**12, 3]
        m["chunk_grid"]["configuration"]["chunk_shape"] = [10**12, 3]

    edit_meta(path, edit)
    with pytest.raises(IntegrityError, match="limit"):
        fit(str(path))


# --------------------------------------------------------------------------------------------
# 2. a tampered saved model is refused with ModelFormatError naming the field
# --------------------------------------------------------------------------------------------


def rewrite(model: Path, name: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    """Change an array, its SHA-256 and its record together: only the value checks can catch
    this."""
    arr = zarr.open_array(str(model / name), mode="r+")
    value = change(np.asarray(arr[...]).copy())
    arr[...] = value
    seal(arr)  # the chunk's new CRC in the record, as a tamperer who knows the format would
    edit_attrs(model, lambda a: a["checksums"].update({name: array_digest(value)}))


def _negative_weight(w: np.ndarray) -> np.ndarray:
    w[0] = -w[0]
    return w


def _nan_weight(w: np.ndarray) -> np.ndarray:
    w[1] = np.nan
    return w


def _unnormalised(w: np.ndarray) -> np.ndarray:
    return w * 2


def _nan_mean(m: np.ndarray) -> np.ndarray:
    m[0, 0] = np.nan
    return m


def _non_pd_factor(f: np.ndarray) -> np.ndarray:
    f[1, 0, 0] = -abs(f[1, 0, 0])
    return f


def _not_triangular(f: np.ndarray) -> np.ndarray:
    f[0] = f[0] + f[0].T
    return f


MODEL_TAMPERING: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray], str]] = {
    "negative-weight": ("fitted/weights_", _negative_weight, "'weights_'"),
    "nan-weight": ("fitted/weights_", _nan_weight, "'weights_'"),
    "weights-not-summing-to-1": ("fitted/weights_", _unnormalised, "'weights_' must be >= 0"),
    "nan-mean": ("fitted/means_", _nan_mean, "'means_'"),
    "non-positive-definite": ("fitted/precisions_cholesky_", _non_pd_factor, "positive"),
    "not-triangular": ("fitted/precisions_cholesky_", _not_triangular, "triangular"),
}


@pytest.mark.parametrize("case", list(MODEL_TAMPERING))
def test_tampered_model_values_are_refused(
    tmp_path: Path, gmm: emdist.GaussianMixture, case: str
) -> None:
    path = tmp_path / "model.zarr"
    save_model(gmm, path)
    name, change, expected = MODEL_TAMPERING[case]
    rewrite(path, name, change)
    with pytest.raises(ModelFormatError, match=expected) as info:
        load_model(path)
    one_line(str(info.value))


def _model_flip(p: Path) -> None:
    flip(p / "fitted" / "means_" / "c" / "0" / "0")


def _model_delete_chunk(p: Path) -> None:
    (p / "fitted" / "weights_" / "c" / "0").unlink()


def _model_delete_array(p: Path) -> None:
    shutil.rmtree(p / "fitted" / "means_")


def _model_value_without_checksum(p: Path) -> None:
    arr = zarr.open_array(str(p / "fitted" / "means_"), mode="r+")
    arr[0, 0] = 1e6
    seal(arr)  # its record follows the new chunk; the model's SHA-256 does not


def _model_shape_edited(p: Path) -> None:
    edit_meta(p / "fitted" / "means_", lambda m: m.update(shape=[3, 2]))


def _model_1e12_rows(p: Path) -> None:
    edit_meta(p / "fitted" / "means_", lambda m: m.update(shape=[10**12, 3]))


def _model_checksums_removed(p: Path) -> None:
    edit_attrs(p, lambda a: a.pop("checksums"))


def _model_checksum_name_escapes(p: Path) -> None:
    edit_attrs(p, lambda a: a["checksums"].update({"../victim": "0" * 64}))


def _model_n_components_edited(p: Path) -> None:
    edit_attrs(p, lambda a: a["params"].update(n_components=4))


def _model_n_features_edited(p: Path) -> None:
    edit_attrs(p, lambda a: a["fitted"].update(n_features_in_=2))


MODEL_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "flip-byte": (_model_flip, "means_"),
    "delete-chunk": (_model_delete_chunk, "chunk 0 is missing"),
    "delete-array": (_model_delete_array, "array fitted/means_ is missing"),
    "value-changed-checksum-not": (_model_value_without_checksum, "SHA-256"),
    "shape-edited": (_model_shape_edited, "field 'shape'"),
    "declares-1e12-rows": (_model_1e12_rows, "limit"),
    "checksums-removed": (_model_checksums_removed, "field 'checksums'"),
    "checksum-name-escapes": (_model_checksum_name_escapes, "outside the store"),
    "n-components-edited": (_model_n_components_edited, "'weights_' has shape"),
    "n-features-edited": (_model_n_features_edited, "'means_' has shape"),
}


@pytest.mark.parametrize("case", list(MODEL_DAMAGE))
def test_damaged_model_is_refused(tmp_path: Path, gmm: emdist.GaussianMixture, case: str) -> None:
    path = tmp_path / "model.zarr"
    save_model(gmm, path)
    damage, expected = MODEL_DAMAGE[case]
    damage(path)
    start = time.monotonic()
    with pytest.raises(ModelFormatError, match=expected) as info:
        load_model(path)
    assert time.monotonic() - start < 5
    one_line(str(info.value))


def test_tampered_model_on_the_cli_writes_no_predictions(
    tmp_path: Path, gmm: emdist.GaussianMixture, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model.zarr"
    save_model(gmm, model)
    rewrite(model, "fitted/weights_", _negative_weight)
    dest = tmp_path / "pred.zarr"
    code = cli_main(["predict", str(model), str(dataset), str(dest)])
    err = capsys.readouterr().err
    assert code == 2 and "'weights_'" in err and "Traceback" not in err
    assert not dest.exists()


@pytest.mark.parametrize(
    "make",
    [
        lambda X: emdist.KMeans(3, random_state=0).fit(X),
        lambda X: emdist.GaussianMixture(3, covariance_type="tied", random_state=0).fit(X),
        lambda X: emdist.GaussianMixture(3, covariance_type="diag", random_state=0).fit(X),
        lambda X: emdist.GaussianMixture(3, covariance_type="spherical", random_state=0).fit(X),
        lambda X: emdist.BayesianGaussianMixture(n_components=3, random_state=0).fit(X),
    ],
    ids=["kmeans", "tied", "diag", "spherical", "bayesian"],
)
def test_intact_models_of_every_kind_load(
    tmp_path: Path, X: np.ndarray, make: Callable[[np.ndarray], Any]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = make(X)
    save_model(model, tmp_path / "m.zarr")
    loaded = load_model(tmp_path / "m.zarr")
    np.testing.assert_array_equal(np.asarray(loaded.predict(X)), np.asarray(model.predict(X)))


# --------------------------------------------------------------------------------------------
# checkpoints: damage of every state is an error, never a silent restart
# --------------------------------------------------------------------------------------------


def test_checkpoint_with_every_state_damaged_is_refused(X: np.ndarray, checkpoint: Path) -> None:
    names = json.loads((checkpoint / "zarr.json").read_text())["attributes"]["committed"]
    for name in names:  # a running restart's parameters, or the best's once it finished
        group = "r0/params" if (checkpoint / name / "r0").exists() else "best"
        chunk = checkpoint / name / group / "means" / "c" / "0" / "0"
        flip(chunk)
    before = tree_digest(checkpoint)
    with pytest.raises(CheckpointError, match="no committed state"):
        fit(X, checkpoint=checkpoint)
    assert tree_digest(checkpoint) == before


def _set_state(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set a state attribute; ``running.0.x`` and ``best.x`` reach into those entries."""

    def edit(attrs: dict[str, Any]) -> None:
        *path, key = field.split(".")
        target: Any = attrs
        for part in path:
            target = target[int(part)] if part.isdigit() else target[part]
        target[key] = value

    return edit


CHECKPOINT_TAMPERING: dict[str, tuple[str, Any, str]] = {
    "restart-negative": (
        "running.0.restart",
        -1,
        r"field 'running\[0\]\.restart' is -1, outside 0\.\.1",
    ),
    "restart-beyond-n-init": (
        "running.0.restart",
        7,
        r"field 'running\[0\]\.restart' is 7, outside 0\.\.1",
    ),
    "restart-a-string": (
        "running.0.restart",
        "0",
        r"field 'running\[0\]\.restart' is '0', not an integer",
    ),
    "iteration-wrong": ("running.0.iteration", 99, r"field 'running\[0\]\.iteration' is 99"),
    "converged-a-string": ("running.0.converged", "yes", r"field 'running\[0\]\.converged'"),
    "running-not-a-list": ("running", {"0": 1}, r"field 'running' .* not a list"),
    "finished-not-a-list": ("finished", 0, r"field 'finished' is 0, not a list"),
    "restart-listed-twice": ("finished", [0, 1], r"listed twice"),
    "best-not-finished": ("best.restart", 1, r"field 'best\.restart' \(1\) is not finished"),
    "checksums-not-a-mapping": ("checksums", [1], r"field 'checksums'"),
    "best-n-iter-negative": ("best.n_iter", -3, r"field 'best.n_iter' is -3"),
    "best-score-a-string": ("best.score", "high", r"field 'best.score'"),
}


def two_restarts(**kwargs: Any) -> emdist.GaussianMixture:
    # Restarts side by side converging after 5 and 7 iterations on X.
    return emdist.GaussianMixture(3, random_state=0, n_init=2, init_params="k-means++", **kwargs)


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def checkpoint_two_restarts_once(tmp_path_factory: pytest.TempPathFactory, X: np.ndarray) -> Path:
    """A checkpoint of an n_init=2 fit: both kept states hold restart 1 running and a best.

    Made once per module; tests tamper with copies (``checkpoint_two_restarts``).
    """
    ckpt = tmp_path_factory.mktemp("two-restarts") / "ckpt2"

    def stop(state: Any) -> None:
        if (state.restart, state.iteration) == (1, 6):
            raise _Stop

    with pytest.raises(_Stop):
        two_restarts(checkpoint=ckpt, observer=stop).fit(X)
    for name in json.loads((ckpt / "zarr.json").read_text())["attributes"]["committed"]:
        attrs = json.loads((ckpt / name / "zarr.json").read_text())["attributes"]
        assert [r["restart"] for r in attrs["running"]] == [1] and attrs["best"] is not None
    return ckpt


@pytest.fixture
def checkpoint_two_restarts(tmp_path: Path, checkpoint_two_restarts_once: Path) -> Path:
    """This test's copy of the n_init=2 checkpoint (restart 1 running, a best kept)."""
    ckpt = tmp_path / "ckpt2"
    shutil.copytree(checkpoint_two_restarts_once, ckpt)
    return ckpt


@pytest.mark.parametrize("case", list(CHECKPOINT_TAMPERING))
def test_tampered_checkpoint_fields_are_refused(
    X: np.ndarray, checkpoint_two_restarts: Path, case: str
) -> None:
    field, value, expected = CHECKPOINT_TAMPERING[case]
    ckpt = checkpoint_two_restarts
    names = json.loads((ckpt / "zarr.json").read_text())["attributes"]["committed"]
    for name in names:  # every kept state: no intact fallback
        edit_attrs(ckpt / name, _set_state(field, value))
    before = tree_digest(ckpt)
    with pytest.raises(CheckpointError, match=expected) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        two_restarts(checkpoint=ckpt).fit(X)
    one_line(str(info.value))
    assert tree_digest(ckpt) == before  # refused before anything was pruned or rewritten


def test_tampered_newest_state_falls_back_to_the_previous(X: np.ndarray, checkpoint: Path) -> None:
    newest = json.loads((checkpoint / "zarr.json").read_text())["attributes"]["committed"][-1]
    edit_attrs(checkpoint / newest, _set_state("best.restart", -1))
    from emdist.io.checkpoint import CheckpointFallbackWarning

    with pytest.warns(CheckpointFallbackWarning, match="field 'best.restart'"):
        fit(X, checkpoint=checkpoint)


def test_reingesting_a_damaged_dataset_is_refused_and_keeps_it(
    tmp_path: Path, dataset: Path
) -> None:
    _delete_chunk(dataset)
    before = tree_digest(dataset)
    with pytest.raises(IntegrityError, match="chunk 1/0 is missing"):
        ingest(dataset, tmp_path / "copy.zarr")
    assert not (tmp_path / "copy.zarr").exists()
    assert tree_digest(dataset) == before


# --------------------------------------------------------------------------------------------
# a full disk: one line naming the path, nothing replaced or lost, resume after freeing space
# --------------------------------------------------------------------------------------------


@root_fixture("mounts a 2 MiB tmpfs")
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a real file system that fills up (mounting needs root).

    Skipped where not root, and failed instead under ``EMDIST_REQUIRE_ROOT_TESTS=1`` (as
    .ci/run runs): a skipped test proves nothing (``tests/markers.py``).
    """
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_during_ingest_is_one_line_and_keeps_the_previous_output(
    tmp_path: Path, small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = np.random.default_rng(0).standard_normal((1000, 3))
    big = np.random.default_rng(1).standard_normal((200_000, 3))  # 4.8 MB > 2 MiB
    np.save(tmp_path / "small.npy", small)
    np.save(tmp_path / "big.npy", big)
    dest = small_disk / "data.zarr"
    ingest(tmp_path / "small.npy", dest)
    before = tree_digest(dest)
    code = cli_main(["ingest", str(tmp_path / "big.npy"), str(dest), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no space left on the device writing" in err and str(dest) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert tree_digest(dest) == before  # the previous dataset is whole
    assert sorted(p.name for p in small_disk.iterdir()) == ["data.zarr"]  # no partial left


def test_full_disk_during_a_checkpoint_commit_resumes_after_space_is_freed(
    X: np.ndarray, small_disk: Path
) -> None:
    store = CheckpointStore(small_disk / "ckpt", keep=1)
    store.open({"k": 1}, {"n": 1})
    rng = np.random.default_rng(0)
    from emdist.io.checkpoint import FitState, RestartState

    small = FitState((RestartState(0, {"means": rng.standard_normal((3, 3))}, np.zeros(2), False),))
    store.save(small)
    with pytest.raises(DiskFullError, match="no space left on the device writing") as info:
        # A state larger than the whole disk.
        big = {"means": rng.standard_normal((300, 1000))}
        store.save(FitState((RestartState(0, big, np.zeros(3), False),)))
    one_line(str(info.value))
    assert sorted(p.name for p in (small_disk / "ckpt").iterdir() if p.is_dir()) == ["s000000"]
    resumed = CheckpointStore(small_disk / "ckpt", keep=1).open({"k": 1}, {"n": 1})
    assert resumed is not None and resumed.iteration == 2
    np.testing.assert_array_equal(
        resumed.running[0].params["means"], small.running[0].params["means"]
    )


# --------------------------------------------------------------------------------------------
# two writers of one checkpoint or output
# --------------------------------------------------------------------------------------------


def hold_lock(target: Path, pid: int) -> Path:
    import socket

    lock = target.with_name(target.name + ".lock")
    lock.write_text(
        json.dumps({"host": socket.gethostname(), "pid": pid, "token": "x", "since": "then"})
    )
    return lock


@service_fixture()
def other_process() -> Iterator[int]:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_second_writer_of_an_output_is_refused_naming_the_first(
    tmp_path: Path, gmm: emdist.GaussianMixture, other_process: int
) -> None:
    path = tmp_path / "model.zarr"
    save_model(gmm, path)
    before = tree_digest(path)
    lock = hold_lock(path, other_process)
    with pytest.raises(WriterLockedError, match=f"pid {other_process}") as info:
        save_model(gmm, path, overwrite=True)
    one_line(str(info.value))
    assert tree_digest(path) == before and lock.exists()  # the other writer's lock is kept


def test_second_writer_of_a_checkpoint_is_refused_naming_the_first(
    X: np.ndarray, checkpoint: Path, other_process: int
) -> None:
    before = tree_digest(checkpoint)
    hold_lock(checkpoint, other_process)
    with pytest.raises(WriterLockedError, match="another process is writing the checkpoint"):
        fit(X, checkpoint=CheckpointStore(checkpoint, overwrite=True))
    assert tree_digest(checkpoint) == before


def test_stale_lock_of_a_dead_process_is_taken_over(
    tmp_path: Path, X: np.ndarray, gmm: emdist.GaussianMixture
) -> None:
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "model.zarr"
    lock = hold_lock(path, dead.pid)
    save_model(gmm, path)
    assert load_model(path) is not None
    assert not lock.exists()  # released after the write
    ckpt = tmp_path / "ckpt"
    hold_lock(ckpt, dead.pid)
    fit(X, checkpoint=ckpt)
    fit(X, checkpoint=ckpt)  # the same process again: its own lock is no obstacle


# --------------------------------------------------------------------------------------------
# ingest: a .npy with zero columns, a tab-separated file
# --------------------------------------------------------------------------------------------


def test_npy_with_zero_columns_is_rejected(tmp_path: Path) -> None:
    np.save(tmp_path / "empty.npy", np.empty((10, 0)))
    with pytest.raises(InvalidDataError, match="0 columns") as info:
        ingest(tmp_path / "empty.npy", tmp_path / "o.zarr")
    one_line(str(info.value))
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("name", ["x.tsv", "x.csv", "x.txt"])
def test_tab_separated_file_is_read_as_such(tmp_path: Path, X: np.ndarray, name: str) -> None:
    src = tmp_path / name
    np.savetxt(src, X, delimiter="\t", header="a\tb\tc", comments="", fmt="%.17g")
    result = ingest(src, tmp_path / "o.zarr")
    assert result.shape == X.shape and result.feature_names == ("a", "b", "c")
    np.testing.assert_array_equal(zarr.open_array(str(result.path))[...], X)


def test_damaged_truth_of_a_generated_dataset_is_refused(tmp_path: Path) -> None:
    ds = emdist.io.synthetic.make_gaussian_mixture(tmp_path / "syn.zarr", 500, 3, 2, random_state=0)
    flip(ds.path / "truth" / "means" / "c" / "0" / "0")
    with pytest.raises(IntegrityError, match="truth/means.*crc32c"):
        emdist.io.synthetic.open_synthetic(ds.path)


def test_full_disk_during_predict_is_one_line_and_keeps_the_previous_predictions(
    tmp_path: Path,
    small_disk: Path,
    gmm: emdist.GaussianMixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tmp_path / "model.zarr"
    save_model(gmm, model)
    big = np.random.default_rng(0).standard_normal((100_000, 3))  # outputs ~4 MB > 2 MiB
    np.save(tmp_path / "big.npy", big)
    data = ingest(tmp_path / "big.npy", tmp_path / "big.zarr", chunk_rows=25_000).path
    dest = small_disk / "pred.zarr"
    emdist.write_predictions(gmm, overlapping(), dest)  # a previous, small output
    before = tree_digest(dest)
    argv = ["predict", str(model), str(data), str(dest), "--overwrite", "--responsibilities"]
    code = cli_main([*argv, "--log-likelihood"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no space left on the device writing" in err and str(dest) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert tree_digest(dest) == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["pred.zarr"]


@pytest.mark.parametrize("field", ["model", "predictions"])
def test_job_config_output_pointing_at_a_foreign_folder_deletes_nothing(
    tmp_path: Path, field: str
) -> None:
    from pipeline.config import parse_config
    from pipeline.steps import fit_model, label_data, prepare_data

    victim, before = make_victim(tmp_path)
    config = parse_config(
        {
            "input": {
                "generate": {
                    "n_samples": 2000,
                    "n_features": 3,
                    "n_components": 2,
                    "chunk_rows": 500,
                    "random_state": 0,
                }
            },
            "model": {"family": "gmm", "n_components": 2, "max_iter": 5},
            "output": {"dir": str(tmp_path / "out"), field: str(victim)},
        }
    )
    data = prepare_data(config)
    with pytest.raises(NotAnOutputError, match="not an emdist output"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        summary = fit_model(config, data)
        label_data(config, data, summary.model_path)
    assert tree_digest(victim) == before


def test_fit_whose_disk_fills_resumes_after_space_is_freed(X: np.ndarray, small_disk: Path) -> None:
    """A fit whose checkpoint disk fills up stops with DiskFullError; once space is freed,
    rerunning resumes from the last committed iteration and ends as an uninterrupted fit."""
    ballast = small_disk / "ballast"
    iterations: list[int] = []

    def watch(state: Any) -> None:
        iterations.append(state.iteration)
        if state.iteration == 2 and not ballast.exists():  # fill the disk up
            with ballast.open("wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)

    def gmm(**kwargs: Any) -> emdist.GaussianMixture:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return emdist.GaussianMixture(3, random_state=0, max_iter=8, tol=0.0, **kwargs).fit(X)

    ckpt = small_disk / "ckpt"
    with pytest.raises(DiskFullError, match=f"writing {ckpt}") as info:
        gmm(checkpoint=ckpt, observer=watch)
    one_line(str(info.value))
    ballast.unlink()
    iterations.clear()
    resumed = gmm(checkpoint=ckpt, observer=watch)
    assert iterations and 2 < iterations[0] <= 4  # resumed after iteration 2 or 3
    np.testing.assert_array_equal(resumed.means_, gmm().means_)
