"""Command-line interface of the job's steps (no Prefect here; see ``flows/cli.py``).

``emdist generate | ingest | fit | predict | report`` run one step each; ``flows.cli`` adds
``run``, ``demo``, ``select-k``, ``serve`` and ``deploy``, which go through Prefect, to the
same group (:func:`make_cli`, then ``click.Group.add_command``).

Built with Click: every option declares its help, default and choices once and Click
prints them (``show_default``, ``click.Choice``); Click's public ``Group.add_command``
assembles the two halves of the command. (Typer builds on Click and derives options from
type hints, but adds rich tracebacks and "pretty" errors we would have to switch off, for
nothing Click lacks here.)

A user's mistake (bad options or config, bad data, a checkpoint of another run, an output
that may not be replaced, an unreachable scheduler) prints one line ``error: ...`` and exits
with status 2; ``--debug`` shows the traceback. Messages use the command line's spelling
(``--overwrite``, ``-k``), not the library's (``overwrite=True``, ``model.n_components``).
Heavy modules (Dask, Zarr, Prefect) are imported inside the commands, so that a mistake in
the options or the configuration is reported before they load.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.text import Text

from emdist import COVARIANCE_TYPES, __version__, model_families
from emdist.io import SOURCE_FORMATS
from pipeline.config import ConfigError, RunConfig, load_config, parse_config

if TYPE_CHECKING:
    from rich.progress import Progress

    from emdist import IterationState

__all__ = [
    "STEP_COMMANDS",
    "help_text",
    "main",
    "make_cli",
    "not_converged_message",
    "on_interrupt",
    "progress_observer",
    "run_cli",
]

#: The registered model families (emdist.registry), as --model choices.
FAMILIES = tuple(model_families())

FORMATS = ("auto", *SOURCE_FORMATS)
#: Commands whose options are the user's interface (others read a configuration file).
STEP_COMMANDS = ("generate", "ingest", "fit", "predict")

EXAMPLES = textwrap.dedent(
    """
    \b
    examples:
      emdist run --config job.yaml               # the whole job as a Prefect flow
      emdist generate data.zarr --n-samples 1000000 --n-features 16 --n-components 8
      emdist ingest measurements.csv data.zarr  # .npy, .csv, .parquet, .h5, Zarr
      emdist fit data.zarr/data --model gmm -k 8 --checkpoint ckpt.zarr --out model.zarr
      emdist predict model.zarr data.zarr/data labels.zarr --responsibilities
      emdist report --config job.yaml
      emdist select-k --config job.yaml --k 2 4 8 16
      emdist serve --config job.yaml --cron "0 2 * * *"
    """
)

# The fields of a configuration that `emdist fit` builds from its options, by option.
FIT_OPTION_NAMES = {
    "input.path": "DATA",
    "input.sample_weight": "--sample-weight",
    "model.family": "--model",
    "model.n_components": "-k",
    "model.covariance_type": "--covariance-type",
    "model.max_iter": "--max-iter",
    "model.n_init": "--n-init",
    "model.tol": "--tol",
    "model.updates": "--updates",
    "model.n_shards": "--n-shards",
    "model.acceleration": "--acceleration",
    "model.missing": "--missing",
    "model.random_state": "--seed",
    "model.warm_start": "--warm-start",
    "output.model": "--out",
    "output.data": "--ingest-to",
    "checkpoint.path": "--checkpoint",
    "cluster.address": "--scheduler",
}


class progress_observer:  # noqa: N801 - used like a function
    """A rich progress bar fed by EM iterations (iteration, lower bound, seconds/iteration)."""

    def __init__(self, max_iter: int, console: Console | None = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.max_iter = max_iter
        self.progress: Progress = Progress(
            TextColumn("[bold]EM[/] restart {task.fields[restart]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("bound {task.fields[bound]}  Δ {task.fields[change]}  {task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self.task = self.progress.add_task(
            "fit", total=max_iter, restart=0, bound="-", change="-", rate=""
        )

        self._started = False

    def __enter__(self) -> progress_observer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self.progress.stop()

    def __call__(self, state: IterationState[Any]) -> None:
        """Advance the bar to ``state``'s iteration."""
        # Shown from the first iteration on: an error before it (a bad output, a scheduler
        # that does not answer) should not leave an empty bar above its one line.
        if not self._started:
            self.progress.start()
            self._started = True
        self.progress.update(
            self.task,
            completed=state.iteration,
            # Restarts run side by side, each pass iterating all of them: the bar's
            # iteration is theirs, and the label says how many share it.
            restart=(
                f"{state.restart}"
                if state.in_pass == 1
                else f"{state.restart} ({state.in_pass} side by side)"
            ),
            bound=f"{state.lower_bound:.6f}",
            change=f"{state.change:.2e}",
            rate=f"{state.seconds:.2f} s/it",
        )


# -- what to say on Ctrl-C ------------------------------------------------------------------

_interrupt_message: Callable[[], str] | None = None


def on_interrupt(config: RunConfig) -> None:
    """Have Ctrl-C during the current command say how to resume ``config``'s fit."""
    global _interrupt_message

    def message() -> str:
        if not config.checkpoint.enabled:
            return "no checkpoint was kept, so a rerun starts over"
        from pipeline.job import _iterations_saved
        from pipeline.steps import latest_checkpoint

        saved = _iterations_saved(config)
        if saved is None:
            return "before the first checkpoint; rerun the same command to start again"
        return (
            f"after iteration {saved}: checkpoint saved in "
            f"{latest_checkpoint(config)}; rerun the same command to resume"
        )

    _interrupt_message = message


def _say(line: str, label: str = "error") -> None:
    # soft_wrap: a scheduled job's log is not a terminal; never split a path.
    console = Console(stderr=True, soft_wrap=True)
    console.print(Text(f"{label}: ", style="bold red" if label == "error" else "bold") + line)


# -- the step commands ----------------------------------------------------------------------


def _overwrite(what: str = "DEST") -> Callable[[Any], Any]:
    return click.option(
        "--overwrite",
        is_flag=True,
        help=f"Replace {what} if it exists (atomically, once the new output is complete).",
    )


_scheduler = click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Dask scheduler address, e.g. tcp://127.0.0.1:8786.  [default: Dask's local threads]",
)


def _dtype() -> Callable[[Any], Any]:
    return click.option(
        "--dtype",
        type=click.Choice(["float64", "float32"]),
        default="float64",
        show_default=True,
        help="Data type of the stored values.",
    )


def _compressor() -> Callable[[Any], Any]:
    # Uncompressed by default: dense float features barely compress and read faster raw.
    return click.option(
        "--compressor",
        type=click.Choice(["none", "lz4", "zstd", "blosc-zstd"]),
        default="none",
        show_default=True,
        help="Codec of the stored chunks (lz4 and blosc-zstd: Blosc with byte shuffle).",
    )


@click.command("generate")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--n-samples", type=click.IntRange(min=1), default=200_000, help="Rows to write.")
@click.option("--n-features", type=click.IntRange(min=1), default=8, help="Columns to write.")
@click.option(
    "--n-components", type=click.IntRange(min=1), default=5, help="Mixture components drawn from."
)
@click.option(
    "--covariance-type",
    type=click.Choice(COVARIANCE_TYPES),
    default="full",
    help="Shape of the components' covariances.",
)
@click.option(
    "--chunk-rows", type=click.IntRange(min=1), default=20_000, help="Rows per Zarr chunk."
)
@click.option("--seed", type=int, default=0, help="Random seed (same seed, same rows).")
@_dtype()
@_compressor()
@_overwrite()
def generate_command(
    dest: Path,
    n_samples: int,
    n_features: int,
    n_components: int,
    covariance_type: str,
    chunk_rows: int,
    seed: int,
    dtype: str,
    compressor: str,
    overwrite: bool,
) -> None:
    """Write a synthetic Gaussian-mixture dataset (with its truth) to a Zarr group DEST.

    The data array is DEST/data, the true parameters DEST/truth, the labels DEST/labels.
    """
    from emdist.io import make_gaussian_mixture

    ds = make_gaussian_mixture(
        dest,
        n_samples=n_samples,
        n_features=n_features,
        n_components=n_components,
        covariance_type=covariance_type,  # type: ignore[arg-type]
        chunk_rows=chunk_rows,
        random_state=seed,
        dtype=dtype,
        compressor=compressor,  # type: ignore[arg-type]
        overwrite=overwrite,
    )
    click.echo(f"wrote {n_samples:,} x {n_features} to {ds.data_path}")


class _FilePath(click.Path):
    """A path argument; one holding a NUL byte is a usage error (Click's own stat raises)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Refuse a NUL byte in one line, as Click refuses any other bad value."""
        if "\0" in str(value):
            self.fail(f"{str(value)!r} holds a NUL byte, which no file name can", param, ctx)
        return super().convert(value, param, ctx)


@click.command("ingest")
@click.argument("source", type=_FilePath(path_type=Path))
@click.argument("dest", type=_FilePath(path_type=Path))
@click.option(
    "--format",
    "format_",
    type=click.Choice(FORMATS),
    default="auto",
    help="Format of SOURCE; auto goes by its suffix.",
)
@click.option(
    "--dataset", metavar="NAME", help="HDF5 dataset to read.  [default: the only 2-D one]"
)
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Keep missing values as NaN (NaN, Parquet nulls, empty CSV fields) for a fit with "
    "--missing marginalize; infinity is still refused.",
)
@_dtype()
@_compressor()
@_overwrite()
def ingest_command(
    source: Path,
    dest: Path,
    format_: str,
    dataset: str | None,
    allow_missing: bool,
    dtype: str,
    compressor: str,
    overwrite: bool,
) -> None:
    """Convert SOURCE to a row-chunked Zarr array DEST, checking every value.

    \b
    SOURCE  a .npy, .csv, .parquet, .h5 file or a Zarr array
    DEST    the Zarr array to write (it appears whole or not at all)
    """  # noqa: D301 - Click's \b (no rewrap) must be a real backspace
    from emdist.io import ingest, parse_source_format

    result = ingest(
        source,
        dest,
        source_format=parse_source_format(format_),
        dataset=dataset,
        compressor=compressor,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
        overwrite=overwrite,
        allow_missing=allow_missing,
    )
    click.echo(
        f"ingested {result.shape[0]:,} x {result.shape[1]} ({result.source_format}) into "
        f"{result.path}: chunks of {result.chunk_rows:,} rows, {result.seconds:.1f} s"
    )


def _fit_config(options: dict[str, Any]) -> RunConfig:
    out = Path(options["out"])
    data: dict[str, Any] = {
        "input": {"path": str(options["data"]), "sample_weight": options["sample_weight"]},
        "model": {
            "family": options["model"],
            "n_components": options["k"],
            "covariance_type": options["covariance_type"],
            "max_iter": options["max_iter"],
            "n_init": options["n_init"],
            "updates": options["updates"],
            "n_shards": options["n_shards"],
            "acceleration": options["acceleration"],
            "missing": options["missing"],
            "random_state": options["seed"],
            "warm_start": options["warm_start"],
        },
        "output": {
            "dir": str(out.parent),
            "model": str(out),
            "overwrite": options["overwrite"],
        },
        "checkpoint": {
            "enabled": options["checkpoint"] is not None,
            "path": options["checkpoint"],
            "restart": options["restart"],
        },
        "cluster": {"address": options["scheduler"]},
    }
    if options["ingest_to"] is not None:
        data["output"]["data"] = str(options["ingest_to"])
    if options["tol"] is not None:
        data["model"]["tol"] = options["tol"]
    return parse_config(data, "the command line", names=FIT_OPTION_NAMES)


def not_converged_message(config: RunConfig, n_iter: int, lower_bounds: Sequence[float]) -> str:
    """Why a fit stopped unconverged, in the command line's words (one line)."""
    from emdist import family_class

    estimator = family_class(config.model.family)()
    tol = float(config.model.tol if config.model.tol is not None else estimator.tol)
    stopped = f"not converged after --max-iter {n_iter} iterations"
    rerun = "rerun with a larger --max-iter"
    change = abs(lower_bounds[-1] - lower_bounds[-2]) if len(lower_bounds) >= 2 else None
    last = f"last change {change:.1e}" if change is not None else "one iteration"
    if tol == 0:
        # Convergence is a change below tol: with tol 0 only max_iter stops the fit.
        return f"{stopped}: --tol 0 never stops early ({last}); {rerun} or a --tol above 0"
    if not estimator.tol_is_bound_change:
        # K-means: tol bounds the centres' squared shift, not the change of the bound.
        return f"{stopped} (the centres still moved by --tol {tol:g} or more); {rerun}"
    if change is None:
        return f"{stopped} ({last}); {rerun}"
    return f"{stopped} ({last} >= --tol {tol:g}); {rerun}"


def _short(summary: dict[str, Any]) -> dict[str, Any]:
    keep = ("model_path", "family", "n_components", "n_iter", "converged", "bic", "aic")
    out = {k: summary[k] for k in keep if summary.get(k) is not None}
    if summary.get("lower_bounds"):
        out["lower_bound"] = summary["lower_bounds"][-1]
    return out


@click.command("fit")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--model", type=click.Choice(FAMILIES), default="gmm", help="Model family.")
@click.option(
    "-k",
    "--n-components",
    "--n-clusters",
    "k",
    type=click.IntRange(min=1),
    default=8,
    help="Number of components (clusters); scikit-learn's n_components / n_clusters.",
)
@click.option(
    "--covariance-type",
    type=click.Choice(COVARIANCE_TYPES),
    default="full",
    help="Covariance of each component (mixtures only).",
)
@click.option("--max-iter", type=click.IntRange(min=1), default=100, help="EM iterations at most.")
@click.option(
    "--n-init", type=click.IntRange(min=1), default=1, help="Restarts; the best one is kept."
)
@click.option(
    "--tol",
    type=click.FloatRange(min=0),
    help="Convergence threshold.  [default: the model's: 1e-3 GMM, 1e-5 Bayesian, 1e-4 K-means]",
)
@click.option(
    "--updates",
    type=click.Choice(["batch", "incremental"]),
    default="batch",
    show_default=True,
    help="An M-step once per pass, or after every shard of the data (fewer passes).",
)
@click.option(
    "--n-shards",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Shards of --updates incremental.",
)
@click.option(
    "--acceleration",
    type=click.Choice(["auto", "secant", "squarem", "overrelax", "daarem", "none"]),
    default="auto",
    show_default=True,
    help="Accelerated EM of the mixtures (--updates batch); auto: squarem with --updates "
    "batch, plain EM with incremental; none: plain EM.",
)
@click.option(
    "--missing",
    type=click.Choice(["error", "marginalize"]),
    default="error",
    show_default=True,
    help="What NaN in DATA means: error refuses it; marginalize fits it as missing values "
    "(gmm, bayesian_gmm), and a DATA file ingested first keeps its NaN.",
)
@click.option("--seed", type=int, default=0, help="Random seed of the initialisation.")
@click.option(
    "--sample-weight",
    metavar="PATH",
    help="A Zarr array or .npy file of one weight per row of DATA (finite, >= 0): rows "
    "count that many times in the fit and its criteria.  [default: every row once]",
)
@click.option(
    "--checkpoint",
    metavar="PATH",
    help="Checkpoint folder, one checkpoint per version of DATA: a fit of the same data and "
    "options resumes from it; changed DATA gets a new one.  [default: no checkpoint]",
)
@click.option("--restart", is_flag=True, help="Discard the --checkpoint and start over.")
@click.option(
    "--warm-start/--cold-start",
    # A new model starts cold: --overwrite must not turn into "continue the model it
    # replaces". Scheduled jobs (run, serve, deploy) keep model.warm_start's default, true.
    default=False,
    show_default=True,
    help="Start from the model already at --out when it has the same --model, -k, "
    "--covariance-type and number of features (else cold, with a note).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("model.zarr"),
    help="Where to save the model.",
)
@click.option(
    "--ingest-to",
    type=click.Path(path_type=Path),
    help="Where to ingest DATA when it is not a Zarr array.  [default: data.zarr beside --out]",
)
@_overwrite("--out and the ingested copy of DATA")
@_scheduler
@click.option("--json", "as_json", is_flag=True, help="Print the full fit summary.")
def fit_command(**options: Any) -> None:
    """Fit a model to DATA and save it to --out; checkpointed, resumable.

    \b
    DATA  a Zarr array (e.g. data.zarr/data of `emdist generate`), or a .npy, .csv,
          .parquet or .h5 file, ingested first (to --ingest-to)

    Without --overwrite, an existing --out (or ingested copy) is replaced only when an
    earlier fit of the same DATA into the same folder wrote it.
    """  # noqa: D301 - Click's \b (no rewrap) must be a real backspace
    config = _fit_config(options)
    from emdist import ConvergenceWarning
    from pipeline.job import Hooks, fit_only

    on_interrupt(config)
    # Python prints a warning as "path/to/module.py:455: Category: text" and the source
    # line; the command says what happened in its own words, one line each.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        with progress_observer(config.model.max_iter) as bar:
            hooks = Hooks(bar, log=lambda line: _say(line, "note"))
            summary = fit_only(config, hooks=hooks, flag="--overwrite")
    said = set()
    for w in caught:
        text = " ".join(str(w.message).split())
        if not issubclass(w.category, ConvergenceWarning) and text not in said:
            said.add(text)
            _say(text, "warning")
    if not summary.converged:
        _say(not_converged_message(config, summary.n_iter, summary.lower_bounds), "note")
    out = summary.to_dict() if options["as_json"] else _short(summary.to_dict())
    click.echo(json.dumps(out, indent=2))


@click.command("predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option(
    "--responsibilities",
    is_flag=True,
    help="Also write each sample's component probabilities (mixtures only).",
)
@click.option(
    "--log-likelihood",
    is_flag=True,
    help="Also write each sample's log-likelihood (mixtures only).",
)
@click.option(
    "--missing",
    type=click.Choice(["error", "marginalize"]),
    help="What NaN in DATA means: marginalize labels and scores a row with missing values "
    "on its observed values (gmm, bayesian_gmm models); error refuses NaN.  [default: the "
    "model's own, as `emdist fit --missing` fitted it]",
)
@_overwrite()
@_scheduler
def predict_command(
    model: Path,
    data: Path,
    dest: Path,
    responsibilities: bool,
    log_likelihood: bool,
    missing: str | None,
    overwrite: bool,
    scheduler: str | None,
) -> None:
    """Write the labels of DATA under a saved MODEL to a Zarr group DEST.

    \b
    MODEL  a model saved by `emdist fit` (its --out)
    DATA   the Zarr array to label (e.g. data.zarr/data of `emdist generate`)
    DEST   the Zarr group to write: arrays labels, responsibilities, log_likelihood
    """  # noqa: D301 - Click's \b (no rewrap) must be a real backspace
    import emdist
    from emdist.exceptions import InvalidParameterError
    from emdist.io import NotAModelError
    from pipeline.cluster import connect

    try:
        fitted = emdist.load_model(model)
    except NotAModelError as exc:
        raise NotAModelError(f"{exc} (MODEL is the --out of `emdist fit`)") from None
    if missing is not None:
        if "missing" not in fitted.get_params():
            # Only --missing marginalize asks something of the model: K-means refuses NaN.
            if missing == "marginalize":
                raise InvalidParameterError(
                    f"--missing marginalize: MODEL is a {type(fitted).__name__}, which cannot "
                    f"score rows with missing values; a gmm or bayesian_gmm model can"
                )
        else:
            # Read at prediction only: a mixture fitted without NaN marginalizes as well.
            fitted.set_params(missing=missing)
    with connect(scheduler):
        path = emdist.write_predictions(
            fitted,
            data,
            dest,
            responsibilities=responsibilities,
            log_likelihood=log_likelihood,
            overwrite=overwrite,
        )
    click.echo(f"wrote predictions to {path}")


_config_option = click.option(
    "--config",
    required=True,
    metavar="FILE",
    help="Run configuration (.yaml, .yml or .toml).",
)


@click.command("report")
@_config_option
def report_command(config: str) -> None:
    """(Re)write the report of a finished run from its saved summary and model."""
    cfg = load_config(config)
    from pipeline.job import report_from_disk

    ref = report_from_disk(cfg)
    click.echo(f"report: {ref.markdown_path}")


# -- assembly and errors --------------------------------------------------------------------


class _OrderedGroup(click.Group):
    """Lists commands in the order they were added (steps first, then the flows)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


def make_cli() -> click.Group:
    """A new ``emdist`` group holding the step commands (``flows.cli`` adds its own)."""

    @click.group(
        "emdist",
        cls=_OrderedGroup,
        epilog=EXAMPLES,
        context_settings={
            "help_option_names": ["-h", "--help"],
            "show_default": True,
            "max_content_width": 100,
        },
    )
    @click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
    @click.version_option(
        __version__, "--version", prog_name="emdist", message="%(prog)s %(version)s"
    )
    def cli(debug: bool) -> None:
        """Out-of-core K-means and Gaussian mixtures fitted by EM on Dask and Zarr."""

    for command in (
        generate_command,
        ingest_command,
        fit_command,
        predict_command,
        report_command,
    ):
        cli.add_command(command)
    return cli


def help_text(cli: click.Group, *command: str) -> str:
    """The help page of ``emdist [COMMAND]`` as the terminal would show it."""
    with click.Context(cli, info_name="emdist", terminal_width=100) as ctx:
        if not command:
            return cli.get_help(ctx)
        sub = cli.get_command(ctx, command[0])
        assert sub is not None, command
        with click.Context(sub, info_name=command[0], parent=ctx) as sub_ctx:
            return sub.get_help(sub_ctx)


def _is_user_error(exc: BaseException) -> bool:
    # Config and file errors first: deciding those must not wait for Dask's import.
    if isinstance(exc, ConfigError | FileNotFoundError | FileExistsError):
        return True
    from pipeline.errors import is_user_error

    return is_user_error(exc)


# The Python arguments a library error names (recorded by EmdistError.naming), in the words
# of the command that ran: its arguments and flags, or a job configuration's keys.
_ARGUMENT_WORDS: dict[str, dict[str, str]] = {
    "ingest": {
        "source": "SOURCE",
        "dest": "DEST",
        "source_format": "--format",
        "dataset": "--dataset",
        "allow_missing": "--allow-missing",
    },
    # fit has no --format: a file it cannot tell is ingested first, by `emdist ingest`.
    "fit": {
        "source": "DATA",
        "dest": "--ingest-to",
        "source_format": "emdist ingest --format",
        "sample_weight": "--sample-weight",
        "missing": "--missing",
        "allow_missing": "--missing marginalize",
    },
    "predict": {"source": "DATA", "missing": "--missing"},
}
_CONFIG_WORDS = {
    "source": "input.path",
    "dest": "output.data",
    "source_format": "input.format",
    "dataset": "input.dataset",
    "sample_weight": "input.sample_weight",
    "missing": "model.missing",
    "allow_missing": "model.missing: marginalize",
}


def _argument_words(command: str | None) -> Callable[[str, object], str | None]:
    """How ``command`` names a Python argument (set to a value) of the library."""
    names = _ARGUMENT_WORDS.get(command or "", _CONFIG_WORDS)
    flags = command in STEP_COMMANDS

    def words(argument: str, value: object) -> str | None:
        if argument == "emdist.io.ingest":
            return f"emdist ingest {value} data.zarr"
        name = names.get(argument)
        if name is None or value is None or argument in ("source", "dest"):
            return name  # a path is in the message already
        # A value after a flag (--format hdf5), or a configuration key (input.format: hdf5).
        return f"{name} {value}" if flags else f"{name}: {value}"

    return words


def _speak(exc: BaseException, command: str | None) -> tuple[str, str | None]:
    """The message of ``exc`` in the user's interface, and a hint."""
    from emdist.exceptions import EmdistError

    text = exc.speak(_argument_words(command)) if isinstance(exc, EmdistError) else str(exc)
    step = command in STEP_COMMANDS
    # By name: importing emdist.io.checkpoint (and Dask) would add seconds to every error.
    checkpoint = type(exc).__name__.startswith("Checkpoint")
    if checkpoint:
        remedy = "--restart" if step else "checkpoint.restart: true"
    else:
        remedy = "--overwrite" if step else "output.overwrite: true"
    text = re.sub(r"(CheckpointStore\(path, )?overwrite=True\)?", remedy, text)
    if step:
        text = text.replace("output.overwrite: true", "--overwrite")
    hint = None
    if checkpoint and remedy not in text:
        hint = f"{remedy} discards the checkpoint and starts over"
    return text, hint


def run_cli(cli: click.Group, argv: Sequence[str] | None = None) -> int:
    """Run ``emdist ARGV`` and turn a user's mistake into one readable line (status 2)."""
    global _interrupt_message
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    command = next((a for a in args if not a.startswith("-")), None)
    _interrupt_message = None
    try:
        result = cli.main(args=args, prog_name="emdist", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        # Click's own (bad option, bad choice): already in the command line's words.
        _say(exc.format_message())
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        # Cancelled work may still be reported while the process winds down.
        from pipeline.errors import silence_cancelled_work

        silence_cancelled_work()
        if _interrupt_message is not None:
            _say(_interrupt_message(), "interrupted")
        return 130
    except Exception as exc:
        if debug or not _is_user_error(exc):
            raise
        text, hint = _speak(exc, command)
        _say(text)
        if hint:
            _say(hint, "hint")
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pipeline.cli`` (the step commands only)."""
    return run_cli(make_cli(), argv)


if __name__ == "__main__":
    sys.exit(main())
