"""One validated run configuration for a clustering job.

A run is described by a YAML or TOML file (or the same structure in Python) and validated
once, here, with pydantic: every later step trusts it. Errors name the bad field and the
allowed values. Relative paths are resolved against the configuration file's folder.

Example (YAML)::

    input:
      path: data/measurements.csv      # .npy, .csv, .parquet, .h5 or a Zarr array
      sample_weight: data/weights.zarr # optional: one weight per row (Zarr array or .npy)
    model:
      family: gmm                      # gmm | kmeans | bayesian_gmm
      n_components: 8
      covariance_type: full
    output:
      dir: runs/measurements
    checkpoint:
      every: 1
    cluster:
      n_workers: 2                     # or: address: tcp://scheduler:8786
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from dask.utils import format_bytes, parse_bytes
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from emdist import MAX_N_INIT, model_families
from emdist.exceptions import EmdistError
from emdist.io import MAX_CHUNKS, MAX_COMPONENTS, MAX_KEEP, SOURCE_FORMATS, memory_limit_bytes

__all__ = [
    "CheckpointConfig",
    "ClusterConfig",
    "ConfigError",
    "InputConfig",
    "ModelConfig",
    "OutputConfig",
    "RunConfig",
    "SyntheticConfig",
    "check_input",
    "load_config",
    "parse_config",
]


class ConfigError(EmdistError, ValueError):
    """The run configuration is invalid; the message names each bad field."""


#: Below this a Dask worker cannot even start its process (and a fit would only hang).
MIN_WORKER_MEMORY = 128 * 2**20
#: Names of the per-data-version folders under ``checkpoint.path`` (pipeline.steps).
CHECKPOINT_VERSION = re.compile(r"[0-9a-f]{16}")
_ADDRESS = re.compile(r"(tcp|tls)://[A-Za-z0-9_.\-\[\]:]+:\d{1,5}")


#: Most candidates of ``select_k`` (each is a whole fit).
MAX_SELECT_K = 100
#: Largest configuration file read (a run configuration is a few hundred bytes).
MAX_CONFIG_BYTES = 1 * 2**20
#: Most YAML nodes a configuration may expand to, aliases expanded (an alias bomb expands a
#: few lines into gigabytes).
MAX_CONFIG_NODES = 10_000


def _no_bool(value: Any) -> Any:
    # YAML's `true` is not a number: pydantic would take it as 1.
    if isinstance(value, bool):
        raise ValueError(f"got {value!r}; expected a number, not a boolean")
    return value


#: An int that is written as an int (not ``true``, ``8.0`` or ``"8"``).
Int = Annotated[int, Strict()]
#: A float that is not a boolean.
Float = Annotated[float, BeforeValidator(_no_bool)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(_Strict):
    """A generated Gaussian-mixture dataset (for demos, tests and benchmarks)."""

    n_samples: Int = Field(200_000, gt=0)
    n_features: Int = Field(8, gt=0)
    # The generator places the means by rejection sampling, quadratic in their number.
    n_components: Int = Field(5, gt=0, le=MAX_COMPONENTS)
    covariance_type: Literal["full", "tied", "diag", "spherical"] = "full"
    separation: Float = Field(6.0, gt=0, allow_inf_nan=False)
    chunk_rows: Int = Field(20_000, gt=0)
    random_state: Int = Field(0, ge=0)

    @model_validator(mode="after")
    def _fits_the_machine(self) -> SyntheticConfig:
        n_chunks = -(-self.n_samples // self.chunk_rows)
        if n_chunks > MAX_CHUNKS:
            raise ValueError(
                f"n_samples={self.n_samples:,} in chunks of chunk_rows={self.chunk_rows:,} "
                f"makes {n_chunks:,} chunks; at most {MAX_CHUNKS:,} are possible"
            )
        chunk = min(self.chunk_rows, self.n_samples) * self.n_features * 8
        if chunk > memory_limit_bytes():
            raise ValueError(
                f"a chunk of {self.chunk_rows:,} rows x n_features={self.n_features:,} takes "
                f"{format_bytes(chunk)}, more than the {format_bytes(memory_limit_bytes())} "
                f"one chunk may take on this machine"
            )
        return self


class InputConfig(_Strict):
    """Where the data comes from: a file to ingest, a Zarr array, or a generator."""

    path: str | None = None
    format: str = Field("auto", description="'auto' or one of emdist.io.SOURCE_FORMATS")
    dataset: str | None = Field(None, description="HDF5 dataset name")
    generate: SyntheticConfig | None = None
    sample_weight: str | None = Field(
        None,
        description="a Zarr array or .npy file of shape (n_samples,): the weight of every row "
        "(scikit-learn's sample_weight) for the fit and its criteria",
    )

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value != "auto" and value not in SOURCE_FORMATS:
            allowed = ", ".join(repr(f) for f in ("auto", *SOURCE_FORMATS))
            raise ValueError(f"got {value!r}; allowed values: {allowed}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> InputConfig:
        if (self.path is None) == (self.generate is None):
            raise ValueError("give exactly one of input.path and input.generate")
        return self


class ModelConfig(_Strict):
    """The model family and its parameters (scikit-learn's names and meanings)."""

    family: str = Field("gmm", description="a registered model family (emdist.registry)")
    n_components: Int = Field(8, gt=0)
    covariance_type: Literal["full", "tied", "diag", "spherical"] = "full"
    tol: Float | None = Field(None, ge=0, allow_inf_nan=False)
    reg_covar: Float = Field(1e-6, ge=0, allow_inf_nan=False)
    max_iter: Int = Field(100, gt=0)
    n_init: Int = Field(1, gt=0, le=MAX_N_INIT)
    # The estimators' own default (scikit-learn's too); tests/pipeline/test_config.py checks
    # they agree.
    init_params: Literal["kmeans", "k-means++", "random", "random_from_data"] = "kmeans"
    random_state: Int | None = Field(0, ge=0)
    init_sample_size: Int | None = Field(None, gt=0)
    # The estimators' own defaults; tests/pipeline/test_config.py checks they agree.
    updates: Literal["batch", "incremental"] = Field(
        "batch",
        description="'incremental': an M-step after every shard of the row-blocks, not once "
        "per pass (usually fewer passes; README, 'Incremental EM')",
    )
    n_shards: Int = Field(8, gt=0, description="shards of updates='incremental'")
    # The mixtures' own default; K-means has no such parameter and ignores it.
    acceleration: Literal["auto", "secant", "squarem", "overrelax", "daarem", "none"] = Field(
        "auto",
        description="accelerated EM of the mixtures with updates='batch' (README, "
        "'Accelerated EM'); 'auto': squarem with updates='batch', plain EM with "
        "'incremental'; 'none': plain EM, scikit-learn's iterations",
    )
    # The mixtures' own default; K-means refuses 'marginalize' (checked below).
    missing: Literal["error", "marginalize"] = Field(
        "error",
        description="what NaN in the data means: 'error' refuses it; 'marginalize' fits it as "
        "missing values (Gaussian mixtures; README, 'Missing values'), and an ingested "
        "input keeps its NaN",
    )
    weight_concentration_prior_type: Literal["dirichlet_process", "dirichlet_distribution"] = (
        "dirichlet_process"
    )
    weight_concentration_prior: Float | None = Field(None, gt=0, allow_inf_nan=False)
    mean_precision_prior: Float | None = Field(None, gt=0, allow_inf_nan=False)
    degrees_of_freedom_prior: Float | None = Field(None, gt=0, allow_inf_nan=False)
    warm_start: bool = Field(
        True,
        description="on new data, start from the model at output.model when it has the same "
        "family, n_components, covariance_type and n_features (else a cold start, logged)",
    )

    @model_validator(mode="after")
    def _acceleration_of_batch_em(self) -> ModelConfig:
        if self.acceleration not in ("auto", "none") and self.updates != "batch":
            raise ValueError(
                f"model.acceleration {self.acceleration} needs model.updates batch; "
                f"got {self.updates}"
            )
        return self

    @model_validator(mode="after")
    def _missing_of_a_family_that_fits_it(self) -> ModelConfig:
        if self.missing == "marginalize" and self.family in model_families():
            from emdist import family_class

            if "missing" not in family_class(self.family)._param_names():
                raise ValueError(
                    f"model.missing marginalize needs a model.family that fits missing "
                    f"values (gmm, bayesian_gmm); got {self.family}"
                )
        return self

    @model_validator(mode="after")
    def _sample_holds_the_components(self) -> ModelConfig:
        if self.init_sample_size is not None and self.init_sample_size < self.n_components:
            raise ValueError(
                f"init_sample_size ({self.init_sample_size}) must be >= n_components "
                f"({self.n_components}): every component is seeded from a sampled row"
            )
        return self

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        families = model_families()
        if value not in families:
            allowed = ", ".join(repr(name) for name in families)
            raise ValueError(f"got {value!r}; allowed values: {allowed}")
        return value


class OutputConfig(_Strict):
    """Where results go; everything defaults to files under ``dir``.

    In a run configuration ``dir`` defaults to ``runs/<name>`` (the job's name).
    """

    dir: str = "runs/emdist"
    data: str | None = Field(None, description="ingested Zarr array (default <dir>/data.zarr)")
    model: str | None = None
    predictions: str | None = None
    report: str | None = None
    responsibilities: bool = False
    log_likelihood: bool = False
    overwrite: bool = Field(
        False,
        description="replace outputs this job did not write (an earlier run of the same job "
        "may always be replaced)",
    )


class CheckpointConfig(_Strict):
    """Checkpointing of the fit."""

    enabled: bool = True
    path: str | None = None
    every: Int = Field(1, gt=0)
    keep: Int = Field(2, gt=0, le=MAX_KEEP)
    versions: Int = Field(
        3,
        gt=0,
        description="checkpoints kept under path, one per version of the input data "
        "(the newest ones; older ones are deleted after a successful fit)",
    )
    restart: bool = Field(False, description="discard an existing checkpoint and start over")


class ClusterConfig(_Strict):
    """The Dask cluster: a scheduler address, or an embedded LocalCluster."""

    address: str | None = None
    n_workers: Int | None = Field(None, gt=0)
    threads_per_worker: Int | None = Field(None, gt=0)
    memory_limit: str | None = "auto"
    processes: bool = True
    dashboard: bool = Field(False, description="serve the Dask dashboard on 127.0.0.1:8787")
    connect_timeout: Float = Field(
        5.0, gt=0, description="seconds to wait for the scheduler at address to answer"
    )

    @field_validator("address")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and not _ADDRESS.fullmatch(value):
            raise ValueError(f"got {value!r}; must look like tcp://host:port (or tls://)")
        return value

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is None or value == "auto":
            return value
        try:
            nbytes = parse_bytes(value)
        except (ValueError, TypeError):
            raise ValueError(f"got {value!r}; give 'auto' or a size such as '4GiB'") from None
        if nbytes < MIN_WORKER_MEMORY:
            raise ValueError(
                f"got {value!r}; a worker needs at least {format_bytes(MIN_WORKER_MEMORY)} "
                "(its own process takes about that much before any data)"
            )
        return value

    @field_validator("n_workers")
    @classmethod
    def _cores(cls, value: int | None) -> int | None:
        cores = os.cpu_count() or 1
        if value is not None and value > cores:
            raise ValueError(
                f"got {value}; this machine has {cores} cores, and an embedded cluster runs "
                f"at most one worker process per core (give cluster.address for a larger one)"
            )
        return value


class RunConfig(_Strict):
    """The whole job: input → fit → label → report."""

    name: str = "emdist"
    input: InputConfig
    model: ModelConfig = ModelConfig()
    output: OutputConfig = OutputConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    cluster: ClusterConfig = ClusterConfig()
    select_k: list[Int] | None = Field(
        None, description="candidate K for the selection flow", max_length=MAX_SELECT_K
    )

    @field_validator("select_k")
    @classmethod
    def _candidates(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("give at least one candidate K")
        bad = [k for k in value if k < 1]
        if bad:
            raise ValueError(f"got {value!r}; every candidate K must be >= 1 (not {bad[0]})")
        if len(set(value)) != len(value):
            raise ValueError(f"got {value!r}; a candidate K is listed twice")
        return value

    @model_validator(mode="before")
    @classmethod
    def _output_dir_named_after_the_job(cls, data: Any) -> Any:
        # Two jobs of different names must not share (and then refuse) one folder.
        if not isinstance(data, dict):
            return data
        output = data.get("output", {})
        name = data.get("name", "emdist")
        if isinstance(output, dict) and "dir" not in output and isinstance(name, str):
            data = {**data, "output": {**output, "dir": f"runs/{name}"}}
        return data

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if value in ("", ".", "..") or "/" in value or "\\" in value:
            raise ValueError(
                f"got {value!r}; the name is also the default output folder runs/<name>: "
                "give a name without '/' (and not '.' or '..')"
            )
        return value

    @model_validator(mode="after")
    def _enough_rows(self) -> RunConfig:
        gen = self.input.generate
        if gen is not None and self.model.n_components > gen.n_samples:
            raise ValueError(
                f"model.n_components ({self.model.n_components}) must be <= "
                f"input.generate.n_samples ({gen.n_samples}): every component needs a sample"
            )
        return self

    # -- resolved locations ---------------------------------------------------------------

    def _out(self, value: str | None, default: str) -> Path:
        return Path(value) if value is not None else Path(self.output.dir) / default

    @property
    def synthetic_path(self) -> Path:
        """The Zarr group of a generated dataset (its array ``data`` is what is fitted)."""
        return self._out(self.output.data, "dataset.zarr")

    @property
    def data_path(self) -> Path:
        """The Zarr array the fit reads."""
        if self.input.generate is not None:
            return self.synthetic_path / "data"
        if self.input.format == "zarr" or (
            self.input.path is not None and _looks_like_zarr(self.input.path)
        ):
            assert self.input.path is not None
            return Path(self.input.path)
        return self._out(self.output.data, "data.zarr")

    @property
    def model_path(self) -> Path:
        """Where the fitted model is saved."""
        return self._out(self.output.model, "model.zarr")

    @property
    def predictions_path(self) -> Path:
        """Where labels (and optional per-sample outputs) are written."""
        return self._out(self.output.predictions, "predictions.zarr")

    @property
    def report_dir(self) -> Path:
        """Folder of the report (markdown and PNG plots)."""
        return self._out(self.output.report, "report")

    @property
    def checkpoint_path(self) -> Path:
        """Folder of the fit's checkpoints: one per version of the input data.

        A run on the same data resumes its own checkpoint; a run on changed data (a
        scheduled job whose input grew) gets a new one (see
        :func:`pipeline.steps.checkpoint_for`).
        """
        return self._out(self.checkpoint.path, "checkpoints")

    def resolved(self, base: Path) -> RunConfig:
        """A copy with relative paths made absolute against ``base``."""

        def fix(p: str | None) -> str | None:
            if p is None or "://" in p:
                return p
            return str((base / os.path.expanduser(p)).resolve())

        return self.model_copy(
            update={
                "input": self.input.model_copy(
                    update={
                        "path": fix(self.input.path),
                        "sample_weight": fix(self.input.sample_weight),
                    }
                ),
                "output": self.output.model_copy(
                    update={
                        k: fix(getattr(self.output, k))
                        for k in ("dir", "data", "model", "predictions", "report")
                    }
                ),
                "checkpoint": self.checkpoint.model_copy(
                    update={"path": fix(self.checkpoint.path)}
                ),
            }
        )


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping.

    PyYAML keeps the last of duplicate keys silently; in a run configuration that hides
    the setting the user meant (two ``model:`` sections, say).
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a document whose nodes, aliases expanded, exceed :data:`MAX_CONFIG_NODES`.

    An alias repeats the node it names; nested aliases multiply (nine lines can expand to
    10**9 nodes), which no run configuration needs. Counted on the composed graph with
    each node's expanded size memoised, so the count itself stays cheap.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            if sizes[key] < 0:  # a node inside itself: infinite
                raise ConfigError("the configuration refers to itself (a recursive YAML alias)")
            return sizes[key]
        sizes[key] = -1
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        if total > MAX_CONFIG_NODES:
            raise ConfigError(
                f"the configuration expands to more than {MAX_CONFIG_NODES:,} values (YAML "
                f"aliases repeated inside each other); write the values out"
            )
        sizes[key] = total
        return total

    size(root)


def _looks_like_zarr(path: str) -> bool:
    p = Path(path)
    return p.suffix == ".zarr" or (p / "zarr.json").exists()


def _format_errors(
    exc: ValidationError, source: str, names: Mapping[str, str] | None = None
) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        where = (names or {}).get(path, path)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        elif err["type"] == "value_error":
            msg = str(err["ctx"]["error"]) if "error" in err.get("ctx", {}) else msg
            # A check across fields names them by their paths: said as the user wrote them.
            for field in sorted(names or {}, key=len, reverse=True):
                msg = msg.replace(field, (names or {})[field])
            if names is not None and path not in names:
                # A section ("model") is no word of the user's: the message names the fields.
                lines.append(f"  - {msg}")
                continue
        elif err["type"] in ("int_type", "int_from_float", "int_parsing"):
            msg = f"got {err['input']!r}; expected an integer"
        elif err["type"] == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            msg = f"got {err['input']!r}; allowed values: {expected}"
        lines.append(f"  - {where}: {msg}")
    return "\n".join(lines)


def parse_config(
    data: dict[str, Any],
    source: str = "<config>",
    base: Path | None = None,
    names: Mapping[str, str] | None = None,
) -> RunConfig:
    """Validate a configuration mapping.

    Parameters
    ----------
    data : dict
        The configuration (as read from YAML or TOML).
    source : str
        Name of where it came from, for error messages.
    base : pathlib.Path, optional
        Folder relative paths are resolved against (default: the working directory).
    names : mapping, optional
        How the user spelled each field (``{"model.n_components": "-k"}`` for the command
        line): errors name the field the way the user wrote it.

    Returns
    -------
    RunConfig

    Raises
    ------
    ConfigError
        Naming every bad field and, for choices, the allowed values.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {source}: expected a mapping at top level")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, names)) from None
    config = config.resolved(base or Path.cwd())
    problems = _location_problems(config)
    if problems:
        lines = [f"invalid configuration in {source}:"]
        lines += [f"  - {(names or {}).get(field, field)}: {msg}" for field, msg in problems]
        raise ConfigError("\n".join(lines))
    return config


def _holds_checkpoints(folder: Path) -> bool:
    """Whether ``folder`` holds emdist checkpoints (data-version folders).

    A folder that is itself one checkpoint (an earlier layout) counts too: it is refused
    later, with its own message.
    """
    if (folder / "zarr.json").is_file():
        return True
    return any(p.is_dir() and CHECKPOINT_VERSION.fullmatch(p.name) for p in folder.iterdir())


def _location_problems(config: RunConfig) -> list[tuple[str, str]]:
    """Paths that exist but cannot be what the job needs there: found before any work.

    Only what stands on disk is checked (a missing input is reported when the job reads it;
    outputs that do not exist yet are created): an input that is a folder but no Zarr
    array, or a device; an output folder that is a file; a checkpoint location that is a
    file, or a folder holding something other than a checkpoint (``/etc``).
    """
    problems: list[tuple[str, str]] = []
    source = config.input.path
    if source is not None and "://" not in source:
        p = Path(source)
        if p.is_dir() and not _looks_like_zarr(source):
            problems.append(("input.path", f"{p} is a folder but not a Zarr array or group"))
        elif p.exists() and not p.is_dir() and not p.is_file():
            problems.append(("input.path", f"{p} is not a regular file (a device or a pipe?)"))
    out = Path(config.output.dir)
    if out.exists() and not out.is_dir():
        problems.append(("output.dir", f"{out} is a file, not a folder"))
    if config.checkpoint.enabled:
        ckpt = config.checkpoint_path
        if ckpt.exists() and not ckpt.is_dir():
            kind = "a regular file" if ckpt.is_file() else "a device, pipe or socket"
            problems.append(("checkpoint.path", f"{ckpt} is {kind}, not a checkpoint folder"))
        elif ckpt.is_dir() and any(ckpt.iterdir()) and not _holds_checkpoints(ckpt):
            problems.append(
                ("checkpoint.path", f"{ckpt} is a folder that holds no emdist checkpoint")
            )
    return problems


def check_input(config: RunConfig, source: str = "the configuration") -> None:
    """Refuse a job whose input file is missing or unreadable, before any service starts.

    Not part of :func:`parse_config`: a scheduled job may be deployed before its first
    input arrives. The commands that run a job now (``run``, ``select-k``) call it, so the
    mistake is said before Prefect's server and a Dask cluster take their seconds to start.

    Raises
    ------
    ConfigError
        Naming ``input.path`` and ``source``.
    """
    path = config.input.path
    if path is None or "://" in path:
        return
    p = Path(path)
    problem = None
    if not p.exists():
        problem = "does not exist"
    elif not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
        problem = "cannot be read (permissions)"
    if problem is not None:
        raise ConfigError(f"input.path: {p} {problem} (in {source})")
    weights = config.input.sample_weight
    if weights is not None and "://" not in weights and not Path(weights).exists():
        raise ConfigError(f"input.sample_weight: {weights} does not exist (in {source})")


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a YAML (``.yaml``/``.yml``) or TOML (``.toml``) run configuration.

    Raises
    ------
    ConfigError
        If the file is missing, unparsable or invalid.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"configuration file {p} does not exist")
    if not p.is_file():
        raise ConfigError(f"configuration file {p} is not a regular file")
    with p.open("rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"configuration file {p} is larger than {format_bytes(MAX_CONFIG_BYTES)}; a run "
            f"configuration is a few lines"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file {p} is not UTF-8 text ({exc.reason})") from None
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
        else:
            raise ConfigError(f"{p}: use a .yaml, .yml or .toml file")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        one_line = " ".join(str(exc).split())
        raise ConfigError(f"{p} is not valid {p.suffix[1:].upper()}: {one_line}") from None
    except RecursionError:
        raise ConfigError(f"{p} is nested too deeply to be a run configuration") from None
    return parse_config(data or {}, str(p), p.parent.resolve())
