"""The run configuration: YAML and TOML files, path resolution, and readable errors."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import ConfigError, RunConfig, load_config, parse_config
from tests.helpers import estimator_classes

YAML_CONFIG = """\
name: measurements
input:
  path: data/measurements.csv
model:
  family: kmeans
  n_components: 4
  max_iter: 50
output:
  dir: runs/out
checkpoint:
  every: 2
cluster:
  address: tcp://10.0.0.5:8786
select_k: [2, 4, 8]
"""

TOML_CONFIG = """\
name = "measurements"
select_k = [2, 4, 8]

[input]
path = "data/measurements.csv"

[model]
family = "kmeans"
n_components = 4
max_iter = 50

[output]
dir = "runs/out"

[checkpoint]
every = 2

[cluster]
address = "tcp://10.0.0.5:8786"
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(("name", "text"), [("job.yaml", YAML_CONFIG), ("job.toml", TOML_CONFIG)])
def test_yaml_and_toml_give_the_same_config(tmp_path: Path, name: str, text: str) -> None:
    config = load_config(write(tmp_path / "conf", name, text))
    assert isinstance(config, RunConfig)
    assert config.name == "measurements"
    assert config.model.family == "kmeans"
    assert config.model.n_components == 4
    assert config.model.max_iter == 50
    assert config.checkpoint.every == 2
    assert config.cluster.address == "tcp://10.0.0.5:8786"
    assert config.select_k == [2, 4, 8]
    # Unset sections keep their defaults.
    assert config.model.covariance_type == "full"
    assert config.checkpoint.enabled is True


def test_yml_suffix_is_yaml(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "job.yml", YAML_CONFIG))
    assert config.model.family == "kmeans"


@pytest.mark.parametrize("name", ["job.yaml", "job.toml"])
def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "project" / "conf"
    path = write(folder, name, YAML_CONFIG if name.endswith("yaml") else TOML_CONFIG)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    config = load_config(path)
    assert config.input.path == str(folder / "data" / "measurements.csv")
    assert config.output.dir == str(folder / "runs" / "out")
    # Every derived location lives under the resolved output folder.
    out = folder / "runs" / "out"
    assert config.data_path == out / "data.zarr"
    assert config.model_path == out / "model.zarr"
    assert config.predictions_path == out / "predictions.zarr"
    assert config.report_dir == out / "report"
    assert config.checkpoint_path == out / "checkpoints"


def test_absolute_paths_and_urls_are_kept(tmp_path: Path) -> None:
    data = tmp_path / "abs" / "x.npy"
    config = load_config(
        write(
            tmp_path / "conf",
            "job.yaml",
            f"""\
            input:
              path: {data}
            output:
              dir: s3://bucket/runs
              model: ../models/m.zarr
            checkpoint:
              path: ckpt.zarr
            """,
        )
    )
    assert config.input.path == str(data)
    assert config.output.dir == "s3://bucket/runs"
    assert config.output.model == str((tmp_path / "models" / "m.zarr").resolve())
    assert config.checkpoint_path == tmp_path / "conf" / "ckpt.zarr"


def test_default_output_dir_is_under_the_config_folder(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "job.yaml", "input:\n  path: x.npy\n"))
    assert config.output.dir == str(tmp_path / "runs" / "emdist")


def test_default_output_dir_is_named_after_the_job(tmp_path: Path) -> None:
    text = "name: nightly\ninput:\n  path: x.npy\noutput:\n  responsibilities: true\n"
    config = load_config(write(tmp_path, "job.yaml", text))
    assert config.output.dir == str(tmp_path / "runs" / "nightly")
    assert config.model_path == tmp_path / "runs" / "nightly" / "model.zarr"
    # Two jobs that differ only by name no longer share (and refuse) one output folder.
    other = parse_config({"name": "weekly", "input": {"path": "x.npy"}}, base=tmp_path)
    assert other.output.dir == str(tmp_path / "runs" / "weekly")
    # An explicit output.dir wins.
    given = parse_config(
        {"name": "weekly", "input": {"path": "x.npy"}, "output": {"dir": "o"}}, base=tmp_path
    )
    assert given.output.dir == str(tmp_path / "o")


@pytest.mark.parametrize("name", ["", "a/b", "..", "."])
def test_a_job_name_that_cannot_name_its_folder_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="name: "):
        parse_config({"name": name, "input": {"path": "x.npy"}})


def test_parse_config_resolves_against_the_given_base(tmp_path: Path) -> None:
    config = parse_config({"input": {"path": "x.npy"}, "output": {"dir": "out"}}, base=tmp_path)
    assert config.input.path == str(tmp_path / "x.npy")
    assert config.output.dir == str(tmp_path / "out")


def test_zarr_input_is_fitted_in_place(tmp_path: Path) -> None:
    config = parse_config({"input": {"path": "d.zarr"}}, base=tmp_path)
    assert config.data_path == tmp_path / "d.zarr"
    named = parse_config({"input": {"path": "store", "format": "zarr"}}, base=tmp_path)
    assert named.data_path == tmp_path / "store"


def test_generated_input_is_fitted_from_the_synthetic_group(tmp_path: Path) -> None:
    config = parse_config(
        {"input": {"generate": {"n_samples": 100}}, "output": {"dir": "o"}}, base=tmp_path
    )
    assert config.input.generate is not None
    assert config.input.generate.n_samples == 100
    assert config.data_path == tmp_path / "o" / "dataset.zarr" / "data"


def test_config_is_frozen() -> None:
    config = parse_config({"input": {"path": "/x.npy"}})
    with pytest.raises(ValueError, match="frozen"):
        config.name = "other"  # type: ignore[misc]


# -- errors ---------------------------------------------------------------------------------

GOOD_INPUT: dict[str, Any] = {"path": "x.npy"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            {"input": GOOD_INPUT, "modle": {"family": "gmm"}},
            ["modle", "unknown field"],
            id="unknown-top-level-field",
        ),
        pytest.param(
            {"input": GOOD_INPUT, "model": {"n_component": 3}},
            ["model.n_component", "unknown field"],
            id="unknown-nested-field",
        ),
        pytest.param(
            {"input": GOOD_INPUT, "model": {"family": "dbscan"}},
            ["model.family", "'dbscan'", "allowed values", "'gmm'", "'kmeans'", "'bayesian_gmm'"],
            id="bad-family",
        ),
        pytest.param(
            {"input": GOOD_INPUT, "model": {"covariance_type": "ful"}},
            [
                "model.covariance_type",
                "allowed values",
                "'full'",
                "'tied'",
                "'diag'",
                "'spherical'",
            ],
            id="bad-covariance-type",
        ),
        pytest.param(
            {"input": {"path": "x", "format": "xlsx"}},
            ["input.format", "allowed values", "'npy'", "'csv'", "'parquet'", "'zarr'"],
            id="bad-format",
        ),
        pytest.param(
            {"input": GOOD_INPUT, "model": {"n_components": 0}},
            ["model.n_components", "greater than 0"],
            id="zero-components",
        ),
        pytest.param(
            {"input": GOOD_INPUT, "model": {"n_components": "many"}},
            ["model.n_components", "integer"],
            id="non-integer-components",
        ),
        pytest.param(
            {"input": GOOD_INPUT, "checkpoint": {"every": 0}},
            ["checkpoint.every", "greater than 0"],
            id="zero-checkpoint-frequency",
        ),
        pytest.param(
            {"input": {"generate": {"n_samples": -5}}},
            ["input.generate.n_samples", "greater than 0"],
            id="negative-generated-samples",
        ),
        pytest.param(
            {"input": GOOD_INPUT, "cluster": {"address": "127.0.0.1:8786"}},
            ["cluster.address", "tcp://host:port"],
            id="address-without-scheme",
        ),
        pytest.param(
            {"input": {"path": "x.npy", "generate": {"n_samples": 10}}},
            ["input", "exactly one of input.path and input.generate"],
            id="both-path-and-generate",
        ),
        pytest.param(
            {"input": {}},
            ["input", "exactly one of input.path and input.generate"],
            id="neither-path-nor-generate",
        ),
        pytest.param({}, ["input", "Field required"], id="missing-input"),
    ],
)
def test_bad_fields_are_named(data: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="job.yaml")
    message = str(info.value)
    assert message.startswith("invalid configuration in job.yaml:")
    for text in expected:
        assert text in message
    # pydantic's own noise (URLs to its docs, input dumps) stays out of the message.
    assert "errors.pydantic.dev" not in message


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "input": GOOD_INPUT,
                "model": {"family": "dbscan", "n_components": 0},
                "cluster": {"address": "host:1"},
            }
        )
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == 3
    assert {line.split(":")[0].strip(" -") for line in lines} == {
        "model.family",
        "model.n_components",
        "cluster.address",
    }


def test_config_error_is_a_value_error() -> None:
    # The CLI turns ValueError subclasses into one readable line.
    assert issubclass(ConfigError, ValueError)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "job.yaml", "- input\n- model\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)


def test_empty_file_says_input_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"input: Field required"):
        load_config(write(tmp_path, "job.yaml", ""))


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(missing)
    assert str(missing) in str(info.value)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "job.yaml", "input:\n  path: [unclosed\nmodel: {")
    with pytest.raises(ConfigError, match="is not valid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "job.toml", '[input]\npath = "x.npy\n')
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(path)


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = write(tmp_path, "job.json", '{"input": {"path": "x.npy"}}')
    with pytest.raises(ConfigError, match=r"\.yaml, \.yml or \.toml"):
        load_config(path)


def test_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "job.toml", '[input]\npath = "x.npy"\n[model]\nfamily = "em"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"invalid configuration in {path}:")
    assert "model.family" in str(info.value)


def test_demo_defaults_span_many_chunks_on_an_embedded_cluster(tmp_path: Path) -> None:
    from pipeline.demo import demo_config

    config = demo_config(tmp_path / "demo")
    gen = config.input.generate
    assert gen is not None and config.input.path is None
    assert -(-gen.n_samples // gen.chunk_rows) >= 10, "the demo should span many chunks"
    assert config.model.n_components == gen.n_components
    assert config.cluster.address is None  # an embedded LocalCluster
    assert config.output.dir == str(tmp_path / "demo")
    assert config.data_path == tmp_path / "demo" / "dataset.zarr" / "data"
    small = demo_config("relative/demo", n_samples=1_000)
    assert small.input.generate is not None and small.input.generate.n_samples == 1_000
    assert Path(small.output.dir).is_absolute()


def test_default_init_params_is_the_library_default() -> None:
    import inspect

    mixtures = [c for c in estimator_classes() if "init_params" in inspect.signature(c).parameters]
    assert len(mixtures) >= 2
    for estimator in mixtures:
        library = inspect.signature(estimator).parameters["init_params"].default
        assert RunConfig.model_fields["model"].default.init_params == library


def test_outputs_are_not_replaced_by_default(tmp_path: Path) -> None:
    config = parse_config({"input": {"path": "x.npy"}}, base=tmp_path)
    assert config.output.overwrite is False


def test_errors_can_name_fields_as_the_user_spelled_them() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            {"input": {"path": "x.zarr"}, "model": {"n_components": 0}},
            "the command line",
            names={"model.n_components": "-k"},
        )
    assert "  - -k: " in str(err.value) and "model.n_components" not in str(err.value)


# -- faults a config fuzzer found: each one ConfigError naming the field, before any work ----

_GEN = "input:\n  generate: {n_samples: 1000, n_features: 3, n_components: 3}\n"


def _fault_cases(tmp: Path) -> list[tuple[str, str, list[str]]]:
    (tmp / "a-file").write_text("not a folder\n")
    (tmp / "not-zarr").mkdir()
    (tmp / "not-zarr" / "notes.txt").write_text("mine\n")
    return [
        (
            "input:\n  generate: {n_samples: 10, n_features: 3, n_components: 3}\n"
            "model: {n_components: 50}\n",
            "rows",
            ["model.n_components (50)", "input.generate.n_samples (10)"],
        ),
        (_GEN + "model: {random_state: -1}\n", "seed", ["model.random_state", "greater than"]),
        (_GEN + "model: {init_sample_size: 1}\n", "sample", ["init_sample_size (1)"]),
        (_GEN + "model: {reg_covar: 1e309}\n", "reg", ["model.reg_covar", "finite"]),
        (_GEN + f"checkpoint: {{path: {tmp / 'a-file'}}}\n", "ckpt-file", ["checkpoint.path"]),
        (_GEN + "checkpoint: {path: /etc}\n", "ckpt-etc", ["checkpoint.path", "/etc"]),
        (_GEN + f"output: {{dir: {tmp / 'a-file'}}}\n", "out-file", ["output.dir", "a file"]),
        (_GEN + "cluster: {memory_limit: lots}\n", "mem", ["cluster.memory_limit", "'lots'"]),
        (_GEN + "cluster: {memory_limit: 1MB}\n", "mem-tiny", ["cluster.memory_limit", "MiB"]),
        (_GEN + "cluster: {n_workers: 4000}\n", "workers", ["cluster.n_workers", "cores"]),
        (_GEN + "cluster: {address: 'tcp://'}\n", "addr", ["cluster.address", "tcp://host:port"]),
        (_GEN + "cluster: {address: 'http://h:1'}\n", "scheme", ["cluster.address", "http://"]),
        (
            "input:\n  generate: {n_samples: 2000000, n_features: 3, n_components: 1000000}\n",
            "gen-k",
            ["input.generate.n_components", "10000"],
        ),
        (f"input: {{path: {tmp / 'not-zarr'}}}\n", "in-dir", ["input.path", "not a Zarr"]),
        ("input: {path: /dev/zero}\n", "in-dev", ["input.path", "not a regular file"]),
        (_GEN + "model: {n_components: 3}\nmodel: {n_components: 4}\n", "dup", ["duplicate key"]),
        (_GEN + "x: " + "[" * 3000 + "]" * 3000 + "\n", "deep", ["nested too deeply"]),
    ]


@pytest.mark.parametrize("case", range(17))
def test_config_faults_are_one_config_error_naming_the_field(tmp_path: Path, case: int) -> None:
    text, name, expected = _fault_cases(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    path = write(tmp_path, f"{name}.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    for part in expected:
        assert part in message, (part, message)
    assert "Traceback" not in message
    # Only the config file itself was added: nothing was written.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, f"{name}.yaml"])


def test_update_schedule_defaults_are_the_library_defaults() -> None:
    import inspect

    model = RunConfig.model_fields["model"].default
    for estimator in estimator_classes():
        params = inspect.signature(estimator).parameters
        assert model.updates == params["updates"].default == "batch"
        assert model.n_shards == params["n_shards"].default


def test_update_schedule_reaches_every_estimator() -> None:
    from emdist.registry import model_families

    config = parse_config(
        {"input": {"path": "x.npy"}, "model": {"updates": "incremental", "n_shards": 3}}
    )
    for family in model_families().values():
        estimator = family.from_config(config.model.model_dump())
        assert (estimator.updates, estimator.n_shards) == ("incremental", 3)
    with pytest.raises(ConfigError, match="model.updates"):
        parse_config({"input": {"path": "x.npy"}, "model": {"updates": "online"}})


def test_acceleration_reaches_the_mixtures() -> None:
    import inspect

    import emdist

    # The default agrees with the estimators': SQUAREM with batch EM, plain incremental EM.
    assert RunConfig.model_fields["model"].default.acceleration == "auto"
    for estimator in (emdist.GaussianMixture, emdist.BayesianGaussianMixture):
        assert inspect.signature(estimator).parameters["acceleration"].default == "auto"
    incremental = parse_config(
        {"input": {"path": "x.npy"}, "model": {"family": "gmm", "updates": "incremental"}}
    )
    assert incremental.model.acceleration == "auto"
    plain = parse_config(
        {"input": {"path": "x.npy"}, "model": {"family": "gmm", "acceleration": "none"}}
    )
    assert emdist.GaussianMixture.from_config(plain.model.model_dump()).acceleration is None
    config = parse_config(
        {"input": {"path": "x.npy"}, "model": {"family": "gmm", "acceleration": "squarem"}}
    )
    assert emdist.GaussianMixture.from_config(config.model.model_dump()).acceleration == "squarem"
    # K-means has no acceleration: the field is left out.
    assert "acceleration" not in emdist.KMeans.from_config(config.model.model_dump()).get_params()
    with pytest.raises(ConfigError, match="model.acceleration"):
        parse_config({"input": {"path": "x.npy"}, "model": {"acceleration": "anderson"}})
    with pytest.raises(ConfigError, match="model.acceleration squarem needs model.updates batch"):
        parse_config(
            {
                "input": {"path": "x.npy"},
                "model": {"acceleration": "squarem", "updates": "incremental"},
            }
        )


# --------------------------------------------------------------------------------------------
# bounds: types, counts and sizes refused before any work
# --------------------------------------------------------------------------------------------


def _with(section: str, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"input": {"path": "x.npy"}}
    if section == "generate":
        data["input"] = {"generate": fields}
    elif section:
        data[section] = fields
    else:
        data.update(fields)
    return data


BOUND_CASES = {
    "n_components true": (_with("model", n_components=True), "model.n_components"),
    "max_iter false": (_with("model", max_iter=False), "model.max_iter"),
    "n_init a float": (_with("model", n_init=2.0), "model.n_init"),
    "n_init a string": (_with("model", n_init="2"), "model.n_init"),
    "tol true": (_with("model", tol=True), "model.tol"),
    "n_init 1e9": (_with("model", n_init=10**9), "model.n_init"),
    "keep 1e9": (_with("checkpoint", keep=10**9), "checkpoint.keep"),
    "select_k zero and negative": (_with("", select_k=[0, -1]), "select_k"),
    "select_k empty": (_with("", select_k=[]), "select_k"),
    "select_k twice": (_with("", select_k=[2, 2]), "select_k"),
    "select_k bools": (_with("", select_k=[True, 2]), "select_k"),
    "select_k too many": (_with("", select_k=list(range(1, 1000))), "select_k"),
    "chunk_rows 1 over 2e6 rows": (
        _with("generate", n_samples=2_000_000, chunk_rows=1),
        "input.generate",
    ),
    "n_features 1e9": (_with("generate", n_features=10**9), "input.generate"),
    "n_samples 1e13": (_with("generate", n_samples=10**13), "input.generate"),
}


@pytest.mark.parametrize("case", sorted(BOUND_CASES))
def test_out_of_bounds_values_are_refused_naming_the_field(case: str) -> None:
    data, field = BOUND_CASES[case]
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert f"  - {field}" in str(info.value), str(info.value)


YAML_ALIAS_BOMB = """\
input: {path: x.npy}
name: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_yaml_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    path = write(tmp_path, "job.yaml", YAML_ALIAS_BOMB)
    with pytest.raises(ConfigError, match="expands to more than") as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_recursive_yaml_alias_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "job.yaml", "input: {path: x.npy}\nname: &a [*a]\n")
    with pytest.raises(ConfigError, match="refers to itself|expands"):
        load_config(path)


def test_a_few_aliases_are_still_fine(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "job.yaml",
        "input: {path: x.npy}\nmodel: &m {n_components: 3}\nselect_k: &k [2, 3]\n",
    )
    config = load_config(path)
    assert config.model.n_components == 3 and config.select_k == [2, 3]


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_config_that_is_a_device_is_not_a_regular_file(device: str) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(device)


def test_config_folder_is_not_a_regular_file(tmp_path: Path) -> None:
    folder = tmp_path / "job.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(folder)


def test_oversized_config_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("input: {path: x.npy}\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path)
