"""Command-line interface of the job's steps (no Prefect here; see ``flows/cli.py``).

``emdist ingest | generate | fit | predict | report`` run one step each;
``flows.cli`` adds ``run``, ``select-k``, ``serve`` and ``deploy``, which go through Prefect.
A user's mistake (bad config, bad data, a checkpoint of another run) prints one readable
line and exits with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from emdist.engine.em import IterationState
from emdist.exceptions import FitError, InvalidDataError
from emdist.io.atomic import DiskFullError, OutputExistsError
from emdist.io.checkpoint import CheckpointError, CheckpointMismatchError
from emdist.registry import model_families
from pipeline.config import ConfigError, load_config, parse_config

__all__ = ["USER_ERRORS", "build_parser", "main", "progress_observer"]

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    InvalidDataError,
    FitError,
    CheckpointError,
    CheckpointMismatchError,
    OutputExistsError,
    DiskFullError,
    FileExistsError,
    FileNotFoundError,
    ValueError,
)

EXAMPLES = textwrap.dedent(
    """
    examples:
      emdist run --config job.yaml               # the whole job as a Prefect flow
      emdist generate data.zarr --n-samples 1000000 --n-features 16 --n-components 8
      emdist ingest measurements.csv data.zarr  # .npy, .csv, .parquet, .h5, Zarr
      emdist fit data.zarr --model gmm -k 8 --checkpoint ckpt.zarr --out model.zarr
      emdist predict model.zarr data.zarr labels.zarr --responsibilities
      emdist report --config job.yaml
      emdist select-k --config job.yaml --k 2 4 8 16
      emdist serve --config job.yaml --cron "0 2 * * *"
    """
)


class progress_observer:  # noqa: N801 - used like a function
    """A rich progress bar fed by EM iterations (iteration, lower bound, seconds/iteration)."""

    def __init__(self, max_iter: int, console: Console | None = None) -> None:
        self.max_iter = max_iter
        self.progress = Progress(
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

    def __enter__(self) -> progress_observer:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, state: IterationState[Any]) -> None:
        """Advance the bar to ``state``'s iteration."""
        self.progress.update(
            self.task,
            completed=state.iteration,
            restart=state.restart,
            bound=f"{state.lower_bound:.6f}",
            change=f"{state.change:.2e}",
            rate=f"{state.seconds:.2f} s/it",
        )


def _cmd_generate(args: argparse.Namespace) -> int:
    from emdist.io.synthetic import make_gaussian_mixture

    ds = make_gaussian_mixture(
        args.dest,
        n_samples=args.n_samples,
        n_features=args.n_features,
        n_components=args.n_components,
        covariance_type=args.covariance_type,
        chunk_rows=args.chunk_rows,
        random_state=args.seed,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.n_samples:,} x {args.n_features} to {ds.data_path}")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.ingest import ingest

    result = ingest(
        args.source,
        args.dest,
        source_format=None if args.format == "auto" else args.format,
        dataset=args.dataset,
        overwrite=args.overwrite,
    )
    print(
        f"ingested {result.shape[0]:,} x {result.shape[1]} ({result.source_format}) into "
        f"{result.path}: chunks of {result.chunk_rows:,} rows, {result.seconds:.1f} s"
    )
    return 0


def _fit_config(args: argparse.Namespace) -> Any:
    data: dict[str, Any] = {
        "input": {"path": args.data},
        "model": {
            "family": args.model,
            "n_components": args.k,
            "covariance_type": args.covariance_type,
            "max_iter": args.max_iter,
            "n_init": args.n_init,
            "random_state": args.seed,
        },
        "output": {"dir": str(Path(args.out).parent), "model": args.out},
        "checkpoint": {
            "enabled": args.checkpoint is not None,
            "path": args.checkpoint,
            "restart": args.restart,
        },
        "cluster": {"address": args.scheduler},
    }
    if args.tol is not None:
        data["model"]["tol"] = args.tol
    return parse_config(data, "command line")


def _cmd_fit(args: argparse.Namespace) -> int:
    from pipeline.steps import fit_model, prepare_data

    config = _fit_config(args)
    data = prepare_data(config)
    with progress_observer(config.model.max_iter) as bar:
        summary = fit_model(config, data, scheduler=config.cluster.address, observer=bar)
    print(json.dumps(summary.to_dict() if args.json else _short(summary.to_dict()), indent=2))
    return 0


def _short(summary: dict[str, Any]) -> dict[str, Any]:
    keep = ("model_path", "family", "n_components", "n_iter", "converged", "bic", "aic")
    out = {k: summary[k] for k in keep if summary.get(k) is not None}
    if summary.get("lower_bounds"):
        out["lower_bound"] = summary["lower_bounds"][-1]
    return out


def _cmd_predict(args: argparse.Namespace) -> int:
    import emdist
    from pipeline.steps import connect

    model = emdist.load_model(args.model)
    with connect(args.scheduler):
        path = emdist.write_predictions(
            model,
            args.data,
            args.dest,
            responsibilities=args.responsibilities,
            log_likelihood=args.log_likelihood,
            overwrite=args.overwrite,
        )
    print(f"wrote predictions to {path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pipeline.job import report_from_disk

    config = load_config(args.config)
    ref = report_from_disk(config)
    print(f"report: {ref.markdown_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the step commands."""
    parser = argparse.ArgumentParser(
        prog="emdist",
        description="Out-of-core K-means and Gaussian mixtures fitted by EM on Dask and Zarr.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="write a synthetic Gaussian-mixture dataset to Zarr")
    p.add_argument("dest")
    p.add_argument("--n-samples", type=int, default=200_000)
    p.add_argument("--n-features", type=int, default=8)
    p.add_argument("--n-components", type=int, default=5)
    p.add_argument("--covariance-type", default="full")
    p.add_argument("--chunk-rows", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("ingest", help="convert .npy/.csv/.parquet/.h5/Zarr to row-chunked Zarr")
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument(
        "--format", default="auto", choices=["auto", "npy", "csv", "parquet", "hdf5", "zarr"]
    )
    p.add_argument("--dataset", help="HDF5 dataset name")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("fit", help="fit a model to a Zarr array (checkpointed, resumable)")
    p.add_argument("data", help="Zarr array (or a file to ingest next to --out)")
    p.add_argument("--model", choices=list(model_families()), default="gmm")
    p.add_argument("-k", type=int, default=8, help="number of components/clusters")
    p.add_argument("--covariance-type", default="full")
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--n-init", type=int, default=1)
    p.add_argument("--tol", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="checkpoint folder; a matching one is resumed")
    p.add_argument("--restart", action="store_true", help="discard the checkpoint, start over")
    p.add_argument("--out", default="model.zarr", help="where to save the model")
    p.add_argument("--scheduler", help="Dask scheduler address (default: local threads)")
    p.add_argument("--json", action="store_true", help="print the full fit summary")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("predict", help="write labels (and more) of a dataset to Zarr")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("dest")
    p.add_argument("--responsibilities", action="store_true")
    p.add_argument("--log-likelihood", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--scheduler")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("report", help="(re)write the report of a finished run")
    p.add_argument("--config", required=True)
    p.set_defaults(func=_cmd_report)
    return parser


def _cli_hint(exc: BaseException) -> str | None:
    """The command-line spelling of the remedy an API error message names."""
    if isinstance(exc, CheckpointMismatchError | CheckpointError):
        return "on the command line, --restart discards the checkpoint and starts over"
    if isinstance(exc, FileExistsError) and "overwrite" in str(exc):
        return "on the command line, --overwrite replaces the existing output"
    return None


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, and turn a user's mistake into one readable line."""
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        # soft_wrap: a scheduled job's log is not a terminal; never split a path.
        console = Console(stderr=True, soft_wrap=True)
        console.print(Text("error: ", style="bold red") + Text(str(exc)))
        hint = _cli_hint(exc)
        if hint:
            console.print(Text("hint: ", style="bold") + Text(hint))
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pipeline.cli``."""
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
