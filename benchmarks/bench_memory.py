"""Peak worker memory when fitting Zarr datasets several times larger than a worker's limit.

For each dataset size, an uncompressed Zarr store is written chunk by chunk (the data never
exists in memory as a whole), a fresh ``LocalCluster`` of worker *processes* with a small
``memory_limit`` is started, and emdist fits the store (K-means, then a full-covariance
Gaussian mixture) while a thread samples the resident set size (RSS) of every worker
process every few milliseconds. Each worker also reports its own ``ru_maxrss`` (the kernel's
high-water mark of its RSS since it started) at the end. If the peak does not grow with the
dataset's size, the engine streams: a few chunks per worker thread, whatever ``n``.

    .venv/bin/python benchmarks/bench_memory.py                       # 1.5 and 3 GiB
    .venv/bin/python benchmarks/bench_memory.py --sizes-gib 0.25,0.5  # quick

The distributed nanny's defaults are kept (including its ``MALLOC_TRIM_THRESHOLD_``, which
returns freed memory to the OS promptly and so keeps RSS honest).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

import emdist  # noqa: E402

MiB = 2**20


class RSSSampler:
    """Samples the RSS of a set of processes in a background thread; keeps the maxima."""

    def __init__(self, pids: list[int], interval: float = 0.005) -> None:
        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.interval = interval
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid, proc in self.procs.items():
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                if rss > self.peak[pid]:
                    self.peak[pid] = rss
            time.sleep(self.interval)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _ru_maxrss_bytes() -> int:
    # Linux reports kilobytes.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def fit_model(kind: str, path: str, n_features: int, K: int, max_iter: int) -> float:
    """Fit one model on the store with fixed initial parameters; returns wall seconds."""
    rng = np.random.default_rng(0)
    means = rng.normal(scale=2.0, size=(K, n_features))
    if kind == "kmeans":
        model: Any = emdist.KMeans(K, init=means, n_init=1, max_iter=max_iter, tol=0.0)
    elif kind.startswith("gmm-"):
        ct = kind.split("-", 1)[1]
        precisions = {
            "full": np.repeat(np.eye(n_features)[None], K, axis=0),
            "diag": np.ones((K, n_features)),
        }[ct]
        model = emdist.GaussianMixture(
            K,
            covariance_type=ct,
            tol=0.0,
            max_iter=max_iter,
            weights_init=np.full(K, 1.0 / K),
            means_init=means,
            precisions_init=precisions,
            acceleration=None,
        )
    else:
        raise ValueError(kind)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(path)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Run the memory benchmark and print its table."""
    from distributed import Client, LocalCluster

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes-gib", default="1.5,3", help="comma list of dataset sizes (GiB)")
    p.add_argument("--n-features", type=int, default=32)
    p.add_argument("--n-components", type=int, default=16)
    p.add_argument("--chunk-rows", type=int, default=65_536, help="rows per Zarr chunk")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--memory-limit", default="512MiB")
    p.add_argument("--models", default="kmeans,gmm-full", help="kmeans, gmm-full, gmm-diag")
    p.add_argument("--max-iter", type=int, default=2)
    p.add_argument("--data-dir", default=None, help="scratch root (default .bench-data/)")
    args = p.parse_args(argv)
    d, K = args.n_features, args.n_components
    sizes = [float(s) for s in args.sizes_gib.split(",") if s]
    models = [m for m in args.models.split(",") if m]

    print(
        f"bench_memory: {args.workers} worker processes x {args.threads_per_worker} thread, "
        f"memory_limit={args.memory_limit}; d={d}, K={K}, zarr chunks of {args.chunk_rows} rows "
        f"({args.chunk_rows * d * 8 / MiB:.0f} MiB, uncompressed); {args.max_iter} iterations"
    )
    print(_common.environment())
    rows_out = []
    with _common.scratch_dir(args.data_dir) as tmp:
        for size in sizes:
            n = int(size * 2**30) // (d * 8)
            path = str(tmp / f"X-{size:g}GiB.zarr")
            t0 = time.perf_counter()
            _common.write_zarr(
                path,
                n,
                d,
                chunk_rows=args.chunk_rows,
                fill=lambda a, b: _common.blob_rows(a, b, d, K, seed=0),
            )
            print(f"{size:g} GiB: {n} rows written in {time.perf_counter() - t0:.1f} s", flush=True)
            for kind in models:
                with (
                    LocalCluster(
                        n_workers=args.workers,
                        threads_per_worker=args.threads_per_worker,
                        memory_limit=args.memory_limit,
                        processes=True,
                        dashboard_address=None,
                    ) as cluster,
                    Client(cluster) as client,
                ):
                    pids_before = client.run(os.getpid)
                    base = client.run(_rss_bytes)
                    driver_before = _rss_bytes()
                    with RSSSampler(list(pids_before.values())) as sampler:
                        seconds = fit_model(kind, path, d, K, args.max_iter)
                    pids_after = client.run(os.getpid)
                    maxrss = client.run(_ru_maxrss_bytes)
                    restarted = pids_after != pids_before
                    peak = max(sampler.peak.values())
                    rows_out.append(
                        [
                            f"{size:g}",
                            n,
                            kind,
                            round(max(base.values()) / MiB),
                            round(peak / MiB),
                            round((peak - max(base.values())) / MiB),
                            round(max(maxrss.values()) / MiB),
                            round((_rss_bytes() - driver_before) / MiB),
                            round(seconds, 1),
                            "yes" if restarted else "no",
                        ]
                    )
                    print(
                        f"  {kind}: peak worker RSS {peak / MiB:.0f} MiB in {seconds:.1f} s",
                        flush=True,
                    )
            _common_rm(path)
    print()
    print(
        _common.format_table(
            [
                "dataset GiB",
                "rows",
                "model",
                "worker RSS before MiB",
                "peak worker RSS MiB",
                "peak - before",
                "worker ru_maxrss MiB",
                "driver RSS growth MiB",
                "fit s",
                "worker restarted",
            ],
            rows_out,
        )
    )
    print(f"\nworker memory_limit: {args.memory_limit} (per worker process)")
    return 0


def _common_rm(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
