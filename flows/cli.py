"""The ``emdist`` command: the pipeline's step commands plus the Prefect ones.

``run``, ``demo`` and ``select-k`` run flows (Prefect's temporary server unless
``PREFECT_API_URL`` points at a running one); ``serve`` runs a flow on a cron schedule in
this process; ``deploy`` registers a scheduled deployment on a process work pool.

Each command validates its configuration *before* importing Prefect (an import of several
seconds), so a mistake in the file is reported at once.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from pipeline.cli import help_text, make_cli, on_interrupt, run_cli
from pipeline.config import ConfigError, check_input, load_config

__all__ = ["build_cli", "help_text", "main", "parse_args", "selection_table"]

FLOW_NAMES = ("pipeline", "select-k")


def _flows() -> Any:
    """Import the flows (and Prefect), keeping user errors to one line on the terminal."""
    from flows import pipeline_flow
    from flows.logs import quiet_console_for_user_errors

    quiet_console_for_user_errors()
    return pipeline_flow


def _finish(state: Any) -> Any:
    """The flow's result, or its exception raised here (the CLI reports it)."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return result


_config_option = click.option(
    "--config",
    required=True,
    metavar="FILE",
    help="Run configuration (.yaml, .yml or .toml).",
)


@click.command("run")
@_config_option
def run_command(config: str) -> None:
    """Run the whole job (prepare data → fit → label → report) as a Prefect flow."""
    cfg = load_config(config)  # before Prefect's import: a bad file is reported at once
    check_input(cfg, config)
    on_interrupt(cfg)
    flows = _flows()
    result = _finish(flows.clustering_pipeline(config_path=config, return_state=True))
    click.echo(
        f"fitted {result['n_iter']} iterations "
        f"({'converged' if result['converged'] else 'not converged'}), "
        f"lower bound {result['lower_bound']:.6f}; cluster sizes {result['counts']}"
    )
    click.echo(f"report: {result['report']}")


@click.command("demo")
@click.option("--out", default="runs/demo", metavar="DIR", help="Output folder.")
@click.option(
    "--n-samples", type=click.IntRange(min=1), default=1_000_000, help="Rows to generate."
)
@click.option(
    "--overwrite", is_flag=True, help="Replace outputs in --out that the demo did not write."
)
def demo_command(out: str, n_samples: int, overwrite: bool) -> None:
    """Generate a dataset and run the whole job on it (embedded defaults)."""
    import time

    from pipeline.demo import demo_config

    config = demo_config(out, n_samples=n_samples)
    if overwrite:
        config = config.model_copy(
            update={"output": config.output.model_copy(update={"overwrite": True})}
        )
    on_interrupt(config)
    flows = _flows()
    start = time.perf_counter()
    result = _finish(flows.clustering_pipeline(config=config.model_dump(), return_state=True))
    click.echo(
        f"demo: {result['n_iter']} EM iterations "
        f"({'converged' if result['converged'] else 'not converged'}), mean log-likelihood "
        f"{result['lower_bound']:.4f}, BIC {result['bic']:.1f}, cluster sizes {result['counts']}"
    )
    click.echo(f"wall time {time.perf_counter() - start:.1f} s; report: {result['report']}")


@click.command("select-k")
@_config_option
@click.option(
    "--k",
    "k",
    type=click.IntRange(min=1),
    multiple=True,
    metavar="K",
    help="Candidate numbers of components: --k 2 4 8 (or --k 2 --k 4).  "
    "[default: select_k of the configuration]",
)
@click.argument("more_k", metavar="", nargs=-1, type=click.IntRange(min=1))
def select_k_command(config: str, k: tuple[int, ...], more_k: tuple[int, ...]) -> None:
    """Fit each candidate K, pick the best by BIC and label the data with it."""
    cfg = load_config(config)
    candidates = [*k, *more_k] or list(cfg.select_k or [])
    if more_k and not k:
        raise click.UsageError("give the candidates after --k: --k 2 4 8")
    if not candidates:
        raise ConfigError("give candidate numbers of components: --k 2 4 8")
    check_input(cfg, config)
    on_interrupt(cfg)
    flows = _flows()
    state = flows.choose_components(candidates=candidates, config_path=config, return_state=True)
    result = _finish(state)
    click.echo(selection_table(result["rows"]))
    click.echo(f"best K by {result['criterion']}: {result['best_k']}; report: {result['report']}")


def selection_table(rows: list[dict[str, Any]]) -> str:
    """The fits of ``select-k``, one line per K: BIC, AIC, final lower bound, converged."""

    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [f"{'K':>4}  {'BIC':>16}  {'AIC':>16}  {'lower bound':>12}  converged"]
    lines += [
        f"{row['k']:>4}  {number(row.get('bic'), ',.2f'):>16}  "
        f"{number(row.get('aic'), ',.2f'):>16}  {number(row.get('lower_bound'), '.6f'):>12}  "
        f"{'yes' if row.get('converged') else 'no'}"
        for row in rows
    ]
    return "\n".join(lines)


def _schedule_options(command: Any) -> Any:
    for option in reversed(
        [
            _config_option,
            click.option(
                "--cron", default="0 2 * * *", help="Cron schedule (UTC); the default is 02:00."
            ),
            click.option("--name", default="emdist-scheduled", help="Deployment name."),
            click.option(
                "--flow",
                "flow_name",
                type=click.Choice(FLOW_NAMES),
                default="pipeline",
                help="Which flow to schedule; select-k uses the configuration's select_k.",
            ),
        ]
    ):
        command = option(command)
    return command


def _flow_and_parameters(config: str, flow_name: str) -> tuple[Any, dict[str, Any]]:
    cfg = load_config(config)
    if flow_name == "select-k" and not cfg.select_k:
        raise ConfigError(f"--flow select-k needs select_k (candidate K values) in {config}")
    flows = _flows()
    return flows.FLOWS[flow_name], {}


@click.command("serve")
@_schedule_options
def serve_command(config: str, cron: str, name: str, flow_name: str) -> int:
    """Run a flow on a cron schedule in this process (no work pool needed)."""
    flow, parameters = _flow_and_parameters(config, flow_name)
    from flows.deployments import serve_pipeline

    try:
        serve_pipeline(config, cron=cron, name=name, flow=flow, parameters=parameters)
    except KeyboardInterrupt:
        pass
    # Serving ends only when stopped (Prefect's serve takes the Ctrl-C and returns): one
    # line, and the status of a command stopped by Ctrl-C, as run and fit give.
    click.echo(f"stopped: no more scheduled runs of {name} from this process", err=True)
    return 130


@click.command("deploy")
@_schedule_options
@click.option("--pool", default="emdist-process", help="Process work pool to deploy to.")
def deploy_command(config: str, cron: str, name: str, flow_name: str, pool: str) -> None:
    """Register a scheduled deployment of a flow on a process work pool."""
    flow, parameters = _flow_and_parameters(config, flow_name)
    from flows.deployments import deploy_pipeline

    deployment_id = deploy_pipeline(
        config, cron=cron, work_pool=pool, name=name, flow=flow, parameters=parameters
    )
    click.echo(f"deployment {deployment_id} on work pool {pool!r} (cron {cron!r})")
    click.echo(f"start a worker with: prefect worker start --pool {pool}")


def build_cli() -> click.Group:
    """The ``emdist`` group: the step commands and the Prefect ones."""
    cli = make_cli()
    for command in (run_command, demo_command, select_k_command, serve_command, deploy_command):
        cli.add_command(command)
    return cli


def parse_args(argv: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """The command and its parameters that ``emdist ARGV`` would run (nothing runs)."""
    cli = build_cli()
    args = list(argv)
    with click.Context(cli, info_name="emdist") as ctx:
        name, command, rest = cli.resolve_command(ctx, args)
        assert name is not None and command is not None
        with command.make_context(name, rest, parent=ctx) as sub:
            return name, dict(sub.params)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the command line (the ``emdist`` script runs it via ``flows.console``)."""
    return run_cli(build_cli(), argv)


if __name__ == "__main__":
    sys.exit(main())
