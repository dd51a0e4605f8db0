"""Cost of ``sample_weight`` per pass: a weighted pass beside the same unweighted pass.

One pass = the E-step statistics of every row-block of in-memory Dask data, reduced
(``emdist.engine.reduce.map_reduce``), as a fit runs it each iteration. The weighted pass
carries one float64 per row as the row-blocks' ``weights``, held as a fit holds in-memory
weights (``emdist.engine.data.align_per_row``: whole, one key per pass, each block's slice
cut inside its task); "per block" holds them as a Dask array with the data's row chunks (a
task per block and a reshape each: what a fit ran before). Rounds interleave the three;
medians of wall and process CPU time, the graph's tasks, the load before and after. Target:
a weighted pass costs at most 5% more.

    python benchmarks/bench_weights.py                         # 200k x 16, K = 8
    python benchmarks/bench_weights.py --n-samples 1000000 --n-features 32 --k 16
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402

from emdist.engine.data import align_per_row, compute_context  # noqa: E402
from emdist.engine.reduce import Rows, build_reduction, map_reduce  # noqa: E402
from emdist.kernels.gaussian import compute_precision_cholesky  # noqa: E402
from emdist.kernels.kmeans import KMeansParams, kmeans_estep_chunk  # noqa: E402
from emdist.kernels.mixture import MixtureParams, mixture_estep_chunk  # noqa: E402


def _mixture_params(X: np.ndarray, k: int, covariance_type: Any) -> MixtureParams:
    rng = np.random.default_rng(1)
    means = X[rng.choice(len(X), k, replace=False)]
    d = X.shape[1]
    cov: Any = {
        "full": np.stack([np.eye(d)] * k),
        "diag": np.ones((k, d)),
    }[covariance_type]
    chol = compute_precision_cholesky(cov, covariance_type)
    return MixtureParams(np.full(k, 1.0 / k), means, cov, chol)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=200_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--chunk-rows", type=int, default=25_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    X = _common.make_blobs(args.n_samples, args.n_features, args.k, seed=0)
    w = np.random.default_rng(2).uniform(0.0, 3.0, args.n_samples)
    Xd = da.from_array(X, chunks=(args.chunk_rows, -1))
    wd = da.from_array(w, chunks=args.chunk_rows)
    plain = Rows(Xd)
    weighted = Rows(Xd, align_per_row(Xd, {"weights": w}))
    per_block = Rows(Xd, {"weights": wd})
    centers = X[np.random.default_rng(1).choice(len(X), args.k, replace=False)]
    cases: list[tuple[str, Any, Any]] = [
        ("K-means", kmeans_estep_chunk, (KMeansParams(centers),)),
        ("GMM full", mixture_estep_chunk, (_mixture_params(X, args.k, "full"), "full")),
        ("GMM diag", mixture_estep_chunk, (_mixture_params(X, args.k, "diag"), "diag")),
    ]
    contenders = {"plain": plain, "weighted": weighted, "per block": per_block}
    print(_common.environment())
    print(
        f"{args.n_samples} x {args.n_features} float64, K = {args.k}, "
        f"{args.chunk_rows}-row blocks; median of {args.repeats} interleaved rounds"
    )
    tasks = {
        label: len(dict(build_reduction(data, kmeans_estep_chunk).__dask_graph__()))
        for label, data in contenders.items()
    }
    print("tasks per pass: " + ", ".join(f"{k} {v}" for k, v in tasks.items()))
    print(f"load {_load()} at the start")
    rows = []
    with compute_context():
        for name, kernel, kernel_args in cases:
            for data in contenders.values():  # warm-up: compile, caches
                map_reduce(data, kernel, *kernel_args)
            wall: dict[str, list[float]] = {label: [] for label in contenders}
            cpu: dict[str, list[float]] = {label: [] for label in contenders}
            for _ in range(args.repeats):
                for label, data in contenders.items():
                    start, cpu_start = time.perf_counter(), time.process_time()
                    map_reduce(data, kernel, *kernel_args)
                    wall[label].append(time.perf_counter() - start)
                    cpu[label].append(time.process_time() - cpu_start)
            a, b, c = (_common.median(wall[k]) for k in contenders)
            ca, cb, cc = (_common.median(cpu[k]) for k in contenders)
            rows.append(
                [
                    name,
                    f"{a:.3f} ({ca:.3f})",
                    f"{b:.3f} ({cb:.3f})",
                    f"{b / a:.2f} ({cb / ca:.2f})",
                    f"{c:.3f} ({cc:.3f})",
                    f"{c / a:.2f} ({cc / ca:.2f})",
                ]
            )
    header = [
        "pass: wall s (CPU s)",
        "unweighted",
        "weighted",
        "ratio",
        "weighted per block (before)",
        "ratio",
    ]
    print(_common.format_table(header, rows))
    print(f"load {_load()} at the end")


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


if __name__ == "__main__":
    main()
