"""Prefect's overhead per EM iteration, as a fraction of the iteration's time.

Runs the fit step on the demo dataset twice on the same embedded LocalCluster: once plain
(``pipeline.steps.fit_model``), once as the flow's ``fit`` task inside a Prefect flow with
the per-iteration log line and progress artifact of ``flows.tasks.PrefectHooks``. Reports
the median iteration time of both, the time spent in Prefect's per-iteration hook, and the
whole flow's wall time compared with the plain steps.

    python benchmarks/bench_prefect.py                       # the demo: 1M x 16, K=8
    python benchmarks/bench_prefect.py --n-samples 200000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--max-iter", type=int, default=15)
    args = parser.parse_args()

    from prefect import flow

    import flows.tasks as tasks
    from pipeline.cluster import dask_client
    from pipeline.demo import demo_config
    from pipeline.steps import fit_model, prepare_data

    hook_seconds: list[float] = []

    class TimedLogger(tasks.IterationLogger):
        def __call__(self, state: Any) -> None:
            start = time.perf_counter()
            super().__call__(state)
            hook_seconds.append(time.perf_counter() - start)

    tasks.IterationLogger = TimedLogger  # type: ignore[misc]

    work = Path(tempfile.mkdtemp(prefix="emdist-bench-prefect-"))
    try:
        base = demo_config(work, n_samples=args.n_samples)
        config = base.model_copy(
            update={
                "model": base.model.model_copy(update={"tol": 0.0, "max_iter": args.max_iter}),
                "checkpoint": base.checkpoint.model_copy(update={"enabled": False}),
            }
        )
        data = prepare_data(config)
        with dask_client(config.cluster) as client:
            address = str(client.scheduler_info()["address"])
            plain: list[float] = []
            start = time.perf_counter()
            fit_model(config, data, scheduler=address, observer=lambda s: plain.append(s.seconds))
            plain_wall = time.perf_counter() - start

            @flow(name="bench-fit")
            def bench_flow() -> Any:
                hooks = tasks.PrefectHooks()  # as the flows show a fit
                with hooks.fitting(config, "fit") as observer:
                    fit = tasks.fit_task(config, data, scheduler=address, observer=observer)
                return hooks.fitted(config, fit)

            start = time.perf_counter()
            summary = bench_flow()
            flow_wall = time.perf_counter() - start
        it_plain = statistics.median(plain[1:])
        it_flow = statistics.median(summary.iteration_seconds[1:])
        hook = statistics.median(hook_seconds)
        print(
            f"data: {data.n_samples:,} x {data.n_features} in {data.n_chunks} chunks; "
            f"GMM full K={config.model.n_components}; {args.max_iter} iterations"
        )
        print(f"median iteration, plain step:        {it_plain:.3f} s")
        print(f"median iteration, inside Prefect:    {it_flow:.3f} s")
        print(
            f"median Prefect hook per iteration:   {hook * 1000:.1f} ms "
            f"({hook / it_flow:.2%} of an iteration)"
        )
        per_iter_total = (flow_wall - plain_wall) / args.max_iter
        print(
            f"fit wall time: plain {plain_wall:.1f} s, flow {flow_wall:.1f} s "
            f"(includes the flow/task start-up: {per_iter_total * 1000:.0f} ms per iteration "
            f"amortised)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
