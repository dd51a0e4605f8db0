"""Per-iteration time of emdist's BayesianGaussianMixture against scikit-learn's.

One iteration is what both libraries repeat until convergence: the variational E-step over
all rows, the M-step and the lower bound. scikit-learn is timed on its own loop
(``_e_step`` / ``_m_step`` / ``_compute_lower_bound``, exactly what its ``fit`` runs per
iteration, BLAS on every core); emdist through the estimator's observer (one Dask pass, the
tree reduction, M-step and bound on the client), first with the data in memory and then
streamed from an uncompressed Zarr store on disk. Medians over iterations.

    .venv/bin/python benchmarks/bench_bayesian.py                  # 200k x 32, K=16, full
    .venv/bin/python benchmarks/bench_bayesian.py --n 1000000 --covariance-type all
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from sklearn.mixture import BayesianGaussianMixture as SkBGMM

import emdist

COV_TYPES = ("full", "tied", "diag", "spherical")


def make_data(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """``k`` Gaussian blobs with random covariances, shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=8.0, size=(k, d))
    labels = rng.integers(k, size=n)
    X = np.empty((n, d))
    for j in range(k):
        rows = labels == j
        A = rng.normal(size=(d, d)) / np.sqrt(d)
        X[rows] = rng.normal(size=(int(rows.sum()), d)) @ A + centres[j]
    return X


def sklearn_seconds(X: np.ndarray, k: int, covariance_type: str, iters: int) -> float:
    """Median seconds per scikit-learn iteration from a ``random_from_data`` start."""
    model = SkBGMM(n_components=k, covariance_type=covariance_type, random_state=0)
    model._check_parameters(X)
    resp = np.zeros((len(X), k))
    rows = np.random.default_rng(0).choice(len(X), k, replace=False)
    resp[rows, np.arange(k)] = 1.0
    model._initialize(X, resp)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        log_prob_norm, log_resp = model._e_step(X)
        model._m_step(X, log_resp)
        model._compute_lower_bound(log_resp, log_prob_norm)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def emdist_seconds(X: Any, k: int, covariance_type: str, iters: int) -> float:
    """Median seconds per emdist iteration (one pass + reduction + M-step + bound)."""
    times: list[float] = []

    def observe(state: emdist.IterationState) -> None:
        times.append(state.seconds)

    model = emdist.BayesianGaussianMixture(
        k,
        covariance_type=covariance_type,  # type: ignore[arg-type]
        init_params="random_from_data",
        max_iter=iters,
        tol=0.0,
        random_state=0,
        observer=observe,
        acceleration=None,  # plain EM's iterations (bench_acceleration.py times the other)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        model.fit(X)
    return statistics.median(times)


def write_zarr(X: np.ndarray, path: Path, chunk_rows: int) -> str:
    """An uncompressed Zarr v3 array (zstd saves ~5% and reads 2.7x slower)."""
    z = zarr.create_array(
        str(path), shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype=X.dtype, compressors=None
    )
    z[...] = X
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="rows (default 200000)")
    parser.add_argument("--d", type=int, default=32, help="features (default 32)")
    parser.add_argument("--k", type=int, default=16, help="components (default 16)")
    parser.add_argument(
        "--covariance-type", default="full", choices=(*COV_TYPES, "all"), help="default full"
    )
    parser.add_argument("--iters", type=int, default=5, help="timed iterations (default 5)")
    parser.add_argument("--chunk-rows", type=int, default=50_000, help="Zarr chunk rows")
    parser.add_argument("--no-zarr", action="store_true", help="skip the Zarr run")
    parser.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn")
    parser.add_argument("--tmp", default=None, help="directory for the Zarr store")
    args = parser.parse_args()

    types = COV_TYPES if args.covariance_type == "all" else (args.covariance_type,)
    X = make_data(args.n, args.d, args.k, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-bgmm-", dir=args.tmp))
    try:
        path = None if args.no_zarr else write_zarr(X, tmp / "X.zarr", args.chunk_rows)
        print(
            f"BayesianGaussianMixture, n={args.n} d={args.d} K={args.k}, "
            f"median seconds per iteration over {args.iters}"
        )
        header = (
            f"{'covariance':<10} {'sklearn':>9} {'emdist mem':>11} {'speed-up':>9} "
            f"{'emdist zarr':>12} {'speed-up':>9}"
        )
        print(header)
        print("-" * len(header))
        for cov in types:
            sk = float("nan") if args.no_sklearn else sklearn_seconds(X, args.k, cov, args.iters)
            mem = emdist_seconds(X, args.k, cov, args.iters)
            disk = float("nan") if path is None else emdist_seconds(path, args.k, cov, args.iters)
            print(
                f"{cov:<10} {sk:>9.3f} {mem:>11.3f} {sk / mem:>8.1f}x "
                f"{disk:>12.3f} {sk / disk:>8.1f}x"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
