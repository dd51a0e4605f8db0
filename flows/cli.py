"""The ``emdist`` command: the pipeline's step commands plus the Prefect ones.

``run`` and ``select-k`` run flows (Prefect's embedded server unless ``PREFECT_API_URL``
points at one); ``serve`` runs the flow on a cron schedule in this process; ``deploy``
registers a scheduled deployment on a process work pool.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.cli import build_parser, run_cli

__all__ = ["main"]


def _cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline_flow import clustering_pipeline
    from pipeline.config import load_config

    load_config(args.config)  # fail fast, with a readable message, before Prefect starts
    result = clustering_pipeline(config_path=args.config)
    print(
        f"fitted {result['n_iter']} iterations "
        f"({'converged' if result['converged'] else 'not converged'}), "
        f"lower bound {result['lower_bound']:.6f}; cluster sizes {result['counts']}"
    )
    print(f"report: {result['report']}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from flows.pipeline_flow import clustering_pipeline
    from pipeline.demo import demo_config

    config = demo_config(args.out, n_samples=args.n_samples)
    start = time.perf_counter()
    result = clustering_pipeline(config=config.model_dump())
    print(
        f"demo: {result['n_iter']} EM iterations "
        f"({'converged' if result['converged'] else 'not converged'}), mean log-likelihood "
        f"{result['lower_bound']:.4f}, BIC {result['bic']:.1f}, cluster sizes {result['counts']}"
    )
    print(f"wall time {time.perf_counter() - start:.1f} s; report: {result['report']}")
    return 0


def _cmd_select_k(args: argparse.Namespace) -> int:
    from flows.pipeline_flow import choose_components
    from pipeline.config import load_config

    load_config(args.config)
    result = choose_components(candidates=args.k, config_path=args.config)
    print(f"best K by {result['criterion']}: {result['best_k']}; report: {result['report']}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from flows.deployments import serve_pipeline
    from pipeline.config import load_config

    load_config(args.config)
    serve_pipeline(args.config, cron=args.cron, name=args.name)
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from flows.deployments import deploy_pipeline
    from pipeline.config import load_config

    load_config(args.config)
    deployment_id = deploy_pipeline(
        args.config, cron=args.cron, work_pool=args.pool, name=args.name
    )
    print(f"deployment {deployment_id} on work pool {args.pool!r} (cron {args.cron!r})")
    print(f"start a worker with: prefect worker start --pool {args.pool}")
    return 0


def build_full_parser() -> argparse.ArgumentParser:
    """The step commands' parser extended with the Prefect commands."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.add_parser("run", help="run the whole job (ingest → fit → label → report) as a flow")
    p.add_argument("--config", required=True, help="YAML or TOML run configuration")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="generate a dataset and run the whole job on it (defaults)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--n-samples", type=int, default=1_000_000)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("select-k", help="fit a range of K and pick the best by BIC")
    p.add_argument("--config", required=True)
    p.add_argument("--k", type=int, nargs="+", required=True, help="candidate K values")
    p.set_defaults(func=_cmd_select_k)

    for name, func, help_ in (
        ("serve", _cmd_serve, "serve the flow on a cron schedule (no work pool needed)"),
        ("deploy", _cmd_deploy, "create a scheduled deployment on a process work pool"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", required=True)
        p.add_argument("--cron", default="0 2 * * *", help="cron schedule (default: 02:00 daily)")
        p.add_argument("--name", default="emdist-scheduled", help="deployment name")
        if name == "deploy":
            p.add_argument("--pool", default="emdist-process", help="process work pool")
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``emdist`` console script."""
    return run_cli(build_full_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
