"""Which paths a job may write, and the mark that says a job wrote them.

A job replaces only what an earlier run of the *same job* wrote, or what the user said to
replace (``--overwrite``; ``output.overwrite: true`` in a run configuration). Everything a
job writes — an ingested or generated dataset, a model, predictions, the report folder —
carries the job's identity (:func:`job_id`): in the Zarr root's attributes (key
``emdist_job``), or in a ``.emdist-job`` file for the report folder. A path that exists
without that mark (a dataset made by ``emdist generate``, another job's model, a file of the
user's) is refused before any work starts (:func:`check_outputs`).

The mark is written right after the output is complete, so a crash between the two leaves
an output of this job without its mark: the next run refuses it and says how to replace it.
That errs on the side of keeping data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import zarr

from emdist.io import OutputExistsError, OutputKind, check_replaceable
from pipeline.config import ConfigError, RunConfig

__all__ = [
    "JOB_ATTRIBUTE",
    "check_distinct",
    "check_outputs",
    "claim",
    "derived_outputs",
    "job_id",
    "may_replace",
    "owner",
    "selection_config",
    "selection_dir",
]

JOB_ATTRIBUTE = "emdist_job"
_MARK_FILE = ".emdist-job"


def job_id(config: RunConfig) -> str:
    """The identity of a job: its name, output folder and input (not its model settings).

    A re-run of the same job (also with another K or more iterations) may replace what the
    earlier run wrote; a job with another input or output folder may not.
    """
    source = config.input.path if config.input.path is not None else "generate"
    key = json.dumps([config.name, config.output.dir, source])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def owner(path: Path) -> str | None:
    """The job id marked on ``path``, or ``None`` (no mark, or not an emdist output)."""
    try:
        if path.is_dir() and (path / _MARK_FILE).is_file():
            return (path / _MARK_FILE).read_text().strip() or None
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    value = (meta.get("attributes") or {}).get(JOB_ATTRIBUTE)
    return value if isinstance(value, str) else None


def may_replace(path: str | Path, config: RunConfig) -> bool:
    """Whether the job may write ``path``: absent, its own, or ``output.overwrite``."""
    p = Path(path)
    return not p.exists() or config.output.overwrite or owner(p) == job_id(config)


def claim(path: str | Path, config: RunConfig) -> None:
    """Mark ``path`` (a Zarr store or a folder) as written by this job."""
    p = Path(path)
    if (p / "zarr.json").is_file():
        # use_consolidated=False: a stale consolidated copy must not be written back.
        node = zarr.open(str(p), mode="r+", use_consolidated=False)
        node.attrs[JOB_ATTRIBUTE] = job_id(config)
    elif p.is_dir():
        (p / _MARK_FILE).write_text(job_id(config) + "\n")


def selection_dir(config: RunConfig) -> Path:
    """The folder of everything ``select-k`` writes: ``<output.dir>/select-k``.

    A selection never writes the run's model, labels or report: after ``run`` (one K) and
    ``select-k`` (another), each folder holds the outputs of one K only.
    """
    return Path(config.output.dir) / "select-k"


def selection_config(config: RunConfig, n_components: int) -> RunConfig:
    """``config`` with the chosen K and the labels and report of :func:`selection_dir`.

    The job's identity (:func:`job_id`) is unchanged: a re-run may replace them.
    """
    base = selection_dir(config)
    return config.model_copy(
        update={
            "model": config.model.model_copy(update={"n_components": n_components}),
            "output": config.output.model_copy(
                update={
                    "predictions": str(base / "predictions.zarr"),
                    "report": str(base / "report"),
                }
            ),
        }
    )


def derived_outputs(config: RunConfig, *, label: bool = True, report: bool = True) -> list[Path]:
    """What a job writes: a derived dataset (ingested or generated), model, labels, report."""
    paths = []
    if config.input.generate is not None:
        paths.append(config.synthetic_path)
    elif config.input.path is not None and config.data_path != Path(config.input.path):
        paths.append(config.data_path)
    paths.append(config.model_path)
    if label:
        paths.append(config.predictions_path)
    if report:
        paths.append(config.report_dir)
    return paths


def check_distinct(config: RunConfig, paths: Iterable[Path]) -> None:
    """Refuse a job whose outputs coincide with each other, the input or the checkpoint.

    Raises
    ------
    ConfigError
        Naming both paths. ``--overwrite`` does not help here: replacing the data being
        fitted with its own model is never meant.
    """
    named: dict[str, Path] = {}
    if config.input.path is not None:
        named["the input"] = Path(config.input.path)
    if config.checkpoint.enabled:
        named["the checkpoint"] = config.checkpoint_path
    for p in paths:
        for what, other in named.items():
            if p == other or other.is_relative_to(p) or p.is_relative_to(other):
                raise ConfigError(f"output {p} would overwrite {what} ({other}): choose another")
        named[str(p)] = p


def check_outputs(
    config: RunConfig, paths: Iterable[Path], *, flag: str = "output.overwrite: true"
) -> None:
    """Refuse, before any work, to replace what this job did not write.

    Parameters
    ----------
    config : RunConfig
    paths : iterable of pathlib.Path
        The outputs the job is about to write.
    flag : str
        How the user says "replace" in the interface they used (``--overwrite`` on the
        command line).

    Raises
    ------
    NotAnOutputError
        An output path holds something other than an emdist output of that kind.
    OutputExistsError
        Naming every path that exists, was not written by this job, and may not be replaced.
    """
    paths = list(paths)
    check_distinct(config, paths)
    # Even when replacing is allowed, an output replaces only an emdist output of its own
    # kind: a model never goes over a dataset or a user's folder (checked here, before the
    # fit, rather than when the model is saved).
    kinds: dict[Path, OutputKind] = {
        config.model_path: "model",
        config.predictions_path: "predictions",
        config.synthetic_path: "synthetic",
    }
    if config.input.generate is None:
        kinds[config.data_path] = "dataset"
    for p in paths:
        if p in kinds and (p.exists() or p.is_symlink()):
            check_replaceable(p, kinds[p])
    refused = [p for p in paths if not may_replace(p, config)]
    if refused:
        names = ", ".join(str(p) for p in refused)
        raise OutputExistsError(
            f"{names} exist{'s' if len(refused) == 1 else ''} and this job did not write "
            f"{'it' if len(refused) == 1 else 'them'}: choose another output, or pass {flag} "
            "to replace"
        )
