"""One validated run configuration for a clustering job.

A run is described by a YAML or TOML file (or the same structure in Python) and validated
once, here, with pydantic: every later step trusts it. Errors name the bad field and the
allowed values. Relative paths are resolved against the configuration file's folder.

Example (YAML)::

    input:
      path: data/measurements.csv      # .npy, .csv, .parquet, .h5 or a Zarr array
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
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from emdist.exceptions import EmdistError
from emdist.registry import model_families

__all__ = [
    "CheckpointConfig",
    "ClusterConfig",
    "ConfigError",
    "InputConfig",
    "ModelConfig",
    "OutputConfig",
    "RunConfig",
    "SyntheticConfig",
    "load_config",
    "parse_config",
]


class ConfigError(EmdistError, ValueError):
    """The run configuration is invalid; the message names each bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(_Strict):
    """A generated Gaussian-mixture dataset (for demos, tests and benchmarks)."""

    n_samples: int = Field(200_000, gt=0)
    n_features: int = Field(8, gt=0)
    n_components: int = Field(5, gt=0)
    covariance_type: Literal["full", "tied", "diag", "spherical"] = "full"
    separation: float = Field(6.0, gt=0)
    chunk_rows: int = Field(20_000, gt=0)
    random_state: int = 0


class InputConfig(_Strict):
    """Where the data comes from: a file to ingest, a Zarr array, or a generator."""

    path: str | None = None
    format: Literal["auto", "npy", "csv", "parquet", "hdf5", "zarr"] = "auto"
    dataset: str | None = Field(None, description="HDF5 dataset name")
    generate: SyntheticConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> InputConfig:
        if (self.path is None) == (self.generate is None):
            raise ValueError("give exactly one of input.path and input.generate")
        return self


class ModelConfig(_Strict):
    """The model family and its parameters (scikit-learn's names and meanings)."""

    family: str = Field("gmm", description="a registered model family (emdist.registry)")
    n_components: int = Field(8, gt=0)
    covariance_type: Literal["full", "tied", "diag", "spherical"] = "full"
    tol: float | None = Field(None, ge=0)
    reg_covar: float = Field(1e-6, ge=0)
    max_iter: int = Field(100, gt=0)
    n_init: int = Field(1, gt=0)
    # The estimators' own default (scikit-learn's too); tests/test_config.py checks they agree.
    init_params: Literal["kmeans", "k-means++", "random", "random_from_data"] = "kmeans"
    random_state: int | None = 0
    init_sample_size: int | None = Field(None, gt=0)
    weight_concentration_prior_type: Literal["dirichlet_process", "dirichlet_distribution"] = (
        "dirichlet_process"
    )
    weight_concentration_prior: float | None = Field(None, gt=0)
    mean_precision_prior: float | None = Field(None, gt=0)
    degrees_of_freedom_prior: float | None = Field(None, gt=0)
    warm_start: bool = Field(
        True,
        description="on new data, start from the model at output.model when it has the same "
        "family, n_components, covariance_type and n_features (else a cold start, logged)",
    )

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        families = model_families()
        if value not in families:
            allowed = ", ".join(repr(name) for name in families)
            raise ValueError(f"got {value!r}; allowed values: {allowed}")
        return value


class OutputConfig(_Strict):
    """Where results go; everything defaults to files under ``dir``."""

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
    every: int = Field(1, gt=0)
    keep: int = Field(2, gt=0)
    versions: int = Field(
        3,
        gt=0,
        description="checkpoints kept under path, one per version of the input data "
        "(the newest ones; older ones are deleted after a successful fit)",
    )
    restart: bool = Field(False, description="discard an existing checkpoint and start over")


class ClusterConfig(_Strict):
    """The Dask cluster: a scheduler address, or an embedded LocalCluster."""

    address: str | None = None
    n_workers: int | None = Field(None, gt=0)
    threads_per_worker: int | None = Field(None, gt=0)
    memory_limit: str | None = "auto"
    processes: bool = True
    dashboard: bool = Field(False, description="serve the Dask dashboard on 127.0.0.1:8787")
    connect_timeout: float = Field(
        5.0, gt=0, description="seconds to wait for the scheduler at address to answer"
    )

    @field_validator("address")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError("must look like tcp://host:port")
        return value


class RunConfig(_Strict):
    """The whole job: input → fit → label → report."""

    name: str = "emdist"
    input: InputConfig
    model: ModelConfig = ModelConfig()
    output: OutputConfig = OutputConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    cluster: ClusterConfig = ClusterConfig()
    select_k: list[int] | None = Field(None, description="candidate K for the selection flow")

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
                "input": self.input.model_copy(update={"path": fix(self.input.path)}),
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


def _looks_like_zarr(path: str) -> bool:
    p = Path(path)
    return p.suffix == ".zarr" or (p / "zarr.json").exists()


def _format_errors(
    exc: ValidationError, source: str, names: Mapping[str, str] | None = None
) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        where = (names or {}).get(where, where)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        elif err["type"] == "value_error":
            msg = str(err["ctx"]["error"]) if "error" in err.get("ctx", {}) else msg
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
    return config.resolved(base or Path.cwd())


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a YAML (``.yaml``/``.yml``) or TOML (``.toml``) run configuration.

    Raises
    ------
    ConfigError
        If the file is missing, unparsable or invalid.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"configuration file {p} does not exist")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"{p}: use a .yaml, .yml or .toml file")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p} is not valid {p.suffix[1:].upper()}: {exc}") from None
    return parse_config(data or {}, str(p), p.parent.resolve())
