"""Passes over the data per fit, counted on the Zarr store, for every model and init.

A pass is one read of every chunk. The store is opened through a wrapper that counts the
reads of every chunk key, so the figure is what the fit really read, whatever the engine
did: the scan pass, any initialisation passes (K-means over the data, random
responsibilities, the empirical covariance of a variational prior) and one pass per EM
iteration. Every fit runs a fixed ``max_iter`` (``tol=0``), so ``passes - n_iter * n_init``
is the price of the scan and the initialisation.

Run it once with the code before a change and once after (``PYTHONPATH``) to compare:

    python benchmarks/bench_passes.py                       # 200k x 16, K=12, max_iter=6
    python benchmarks/bench_passes.py --n-samples 50000     # quick
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import zarr  # noqa: E402
from zarr.storage import LocalStore  # noqa: E402

import emdist  # noqa: E402

MIXTURE_INITS = ("kmeans", "k-means++", "random", "random_from_data")
HEADER = ("model", "init", "n_init", "n_iter", "passes", "bound", "s")


def cases(k: int) -> list[tuple[str, Any, dict[str, Any]]]:
    """(label, estimator class, parameters) of every fit measured."""
    out: list[tuple[str, Any, dict[str, Any]]] = []
    for init in ("k-means++", "random"):
        out.append(("kmeans", emdist.KMeans, {"n_clusters": k, "init": init}))
    for init in MIXTURE_INITS:
        out.append(("gmm", emdist.GaussianMixture, {"n_components": k, "init_params": init}))
    bgmm = emdist.BayesianGaussianMixture
    has_prefit = "prefit_on_sample" in inspect.signature(bgmm).parameters
    for init in MIXTURE_INITS:
        params: dict[str, Any] = {"n_components": k, "init_params": init}
        if has_prefit:
            out.append(("bayesian_gmm full", bgmm, {**params, "prefit_on_sample": False}))
            out.append(("bayesian_gmm full prefit", bgmm, params))
        else:
            out.append(("bayesian_gmm full", bgmm, params))
    # diag: no pass for the covariance prior (the scan pass's variances are enough).
    out.append(
        (
            "bayesian_gmm diag" + (" prefit" if has_prefit else ""),
            bgmm,
            {"n_components": k, "covariance_type": "diag"},
        )
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=200_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--max-iter", type=int, default=6)
    parser.add_argument("--chunk-rows", type=int, default=25_000)
    parser.add_argument("--n-init", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--models", nargs="+", default=["kmeans", "gmm", "bayesian_gmm"])
    parser.add_argument(
        "--converge",
        action="store_true",
        help="fit to convergence at each model's default tol (max_iter 300) instead of "
        "max_iter iterations with tol=0: compares where the starts lead",
    )
    args = parser.parse_args()
    print(_common.environment())
    print(f"emdist from {Path(emdist.__file__).parent}")
    n_chunks = -(-args.n_samples // args.chunk_rows)
    rows = []
    with _common.scratch_dir() as tmp:
        path = tmp / "x.zarr"
        _common.write_zarr(
            path,
            args.n_samples,
            args.n_features,
            chunk_rows=args.chunk_rows,
            fill=lambda a, b: _common.blob_rows(a, b, args.n_features, args.k, seed=0),
        )
        for label, cls, params in cases(args.k):
            if label.split()[0] not in args.models:
                continue
            for n_init in args.n_init:
                store = _common.CountingStore(LocalStore(str(path), read_only=True))
                arr = zarr.open_array(store, mode="r")
                store.counts.clear()
                stop = (
                    {"max_iter": 300} if args.converge else {"max_iter": args.max_iter, "tol": 0.0}
                )
                est = cls(**params, n_init=n_init, random_state=0, **stop)
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    est.fit(arr)
                seconds = time.perf_counter() - start
                init = params.get("init_params", params.get("init"))
                bound = getattr(est, "lower_bound_", None)
                if bound is None:
                    bound = -est.inertia_ / args.n_samples
                rows.append(
                    (
                        label,
                        init,
                        n_init,
                        est.n_iter_,
                        store.reads_per_chunk(n_chunks),
                        f"{bound:.6f}",
                        f"{seconds:.1f}",
                    )
                )
                print(*rows[-1], sep="  ", flush=True)
    print()
    stop = "default tol, max_iter=300" if args.converge else f"max_iter={args.max_iter}, tol=0"
    print(
        f"{args.n_samples} x {args.n_features}, K={args.k}, {stop}, {n_chunks} chunks of "
        f"{args.chunk_rows} rows; bound: lower_bound_ (K-means: -inertia / n)"
    )
    print(_common.format_table(HEADER, rows))


if __name__ == "__main__":
    main()
