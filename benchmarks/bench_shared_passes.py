"""Restarts and K sweeps that share each pass over the data: wall time and reads per chunk.

Out of core, a fit costs its passes over the data. Two measurements, on an uncompressed
Zarr store of overlapping Gaussian blobs, read through a store wrapper that counts every
chunk read:

* **restarts**: K-means with ``n_init=R`` (restarts side by side, one pass per iteration
  for all of them) against ``n_init=1``, and against the R restarts one after another (the
  engine's plain EM loop per restart: what ``n_init=R`` cost before). By default every
  restart runs exactly ``--max-iter`` iterations (``tol=0``), so the three differ only in
  what a pass costs, not in how many iterations the restarts happen to need;
* **one pass**: a pass serving R K-means restarts against a pass serving one, and the
  per-block kernel alone (what each extra restart adds), interleaved in one process;
* **K sweep**: :func:`emdist.select_n_components` over K = 2..12 (every fit sharing every
  pass, one more pass for all the BIC/AIC) against one fit plus one
  ``information_criteria`` per K.

Rounds interleave the variants; medians (min-max) are reported with the load average.

    python benchmarks/bench_shared_passes.py                       # 200k x 16
    python benchmarks/bench_shared_passes.py --n-samples 50000 --repeats 1   # quick
    python benchmarks/bench_shared_passes.py --zstd     # compressed store: dearer reads
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import numpy as np  # noqa: E402
import zarr  # noqa: E402

import emdist  # noqa: E402
from emdist._random import child_seeds, resolve_seed  # noqa: E402
from emdist.engine.data import compute_context, prepare_fit_data  # noqa: E402
from emdist.engine.em import run_em  # noqa: E402
from emdist.engine.lockstep import shared_pass  # noqa: E402
from emdist.kernels.kmeans import KMeansParams, kmeans_estep_chunk  # noqa: E402
from emdist.kernels.rows import RowBlock
from emdist.models.kmeans import KMeansFamily  # noqa: E402


def load() -> float:
    return os.getloadavg()[0]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fn()
    return time.perf_counter() - start, out


def sequential_restarts(X: Any, est: emdist.KMeans) -> float:
    """The restarts one after another with the plain EM loop, as ``n_init`` ran before."""
    seed = resolve_seed(est.random_state)
    sample_seed, restarts_seed = child_seeds(seed, 2)
    best = float("-inf")
    with compute_context():
        data = prepare_fit_data(
            X, n_clusters=est.n_clusters, seed=sample_seed, sample_size=None, what="n_clusters"
        )
        plan = est._plan(data, False)
        for r, s in enumerate(child_seeds(restarts_seed, int(est.n_init))):
            result = run_em(
                data.X, plan.family, plan.make_start(r, s), tol=plan.tol, max_iter=est.max_iter
            )
            best = max(best, plan.score(result))
    return -best


def bench_restarts(path: Path, args: argparse.Namespace) -> list[list[Any]]:
    def make(n_init: int) -> emdist.KMeans:
        return emdist.KMeans(
            args.k, n_init=n_init, random_state=0, tol=args.tol, max_iter=args.max_iter
        )

    variants: dict[str, Callable[[Any], Any]] = {
        "n_init=1": lambda X: make(1).fit(X).inertia_,
        f"n_init={args.n_init} side by side": lambda X: make(args.n_init).fit(X).inertia_,
        f"n_init={args.n_init} one after another": lambda X: sequential_restarts(
            X, make(args.n_init)
        ),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    loads: dict[str, list[float]] = {name: [] for name in variants}
    reads: dict[str, str] = {}
    inertia: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, run in variants.items():
            X, store = _common.CountingStore.open_array(path)
            loads[name].append(load())
            s, value = timed(lambda run=run, X=X: run(X))
            seconds[name].append(s)
            reads[name] = store.reads_per_chunk()
            inertia[name] = float(value)
    base = _common.median(seconds["n_init=1"])
    rows = []
    for name in variants:
        med = _common.median(seconds[name])
        rows.append(
            [
                name,
                f"{med:.2f} ({_common.spread(seconds[name])})",
                f"{med / base:.2f}x",
                reads[name],
                f"{inertia[name]:.6e}",
                f"{_common.median(loads[name]):.1f}",
            ]
        )
    return rows


def bench_pass(path: Path, args: argparse.Namespace) -> list[list[Any]]:
    import dask.array as da

    X = da.from_zarr(zarr.open_array(str(path), mode="r"))
    block = X.blocks[0].compute()
    rng = np.random.default_rng(0)
    params = [
        KMeansParams(block[rng.choice(len(block), args.k, replace=False)].copy())
        for _ in range(args.n_init)
    ]
    family = KMeansFamily()
    times: dict[str, list[float]] = collections.defaultdict(list)
    loads: list[float] = []
    with compute_context():
        for _ in range(args.repeats * 3):
            loads.append(load())
            for name, fn in {
                "pass, 1 restart": lambda: shared_pass(X, [(family, params[0])]),
                f"pass, {args.n_init} restarts": lambda: shared_pass(
                    X, [(family, p) for p in params]
                ),
                "kernel on one block, 1 restart": lambda: kmeans_estep_chunk(
                    RowBlock(block, 0), params[0]
                ),
                f"kernel on one block, {args.n_init} restarts": lambda: [
                    kmeans_estep_chunk(RowBlock(block, 0), p) for p in params
                ],
            }.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    rows = []
    names = list(times)
    for i, name in enumerate(names):
        med = _common.median(times[name])
        base = _common.median(times[names[i - i % 2]])
        rows.append(
            [
                name,
                f"{med * 1e3:.1f} ({_common.spread([t * 1e3 for t in times[name]])})",
                f"{med / base:.2f}x",
                f"{_common.median(loads):.1f}",
            ]
        )
    return rows


def separate_sweep(X: Any, ks: list[int], template: Callable[[int], Any]) -> list[float]:
    out = []
    for k in ks:
        model = template(k).fit(X)
        out.append(model.information_criteria(X)["bic"])
    return out


def bench_sweep(path: Path, args: argparse.Namespace, family: str) -> list[list[Any]]:
    ks = list(range(2, args.k_max + 1))
    template: Callable[[int], Any]
    if family == "kmeans":
        template = lambda k: emdist.KMeans(k, random_state=0)  # noqa: E731
    else:
        template = lambda k: emdist.GaussianMixture(  # noqa: E731
            k,
            covariance_type="diag",
            init_params="k-means++",
            random_state=0,
            max_iter=200,
            acceleration=None,
        )
    variants: dict[str, Callable[[Any], list[float]]] = {
        "one fit per K": lambda X: separate_sweep(X, ks, template),
        "select_n_components": lambda X: [
            row["bic"] for row in emdist.select_n_components(X, template(2), ks).criteria
        ],
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    loads: dict[str, list[float]] = {name: [] for name in variants}
    reads: dict[str, str] = {}
    bics: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, run in variants.items():
            X, store = _common.CountingStore.open_array(path)
            loads[name].append(load())
            s, value = timed(lambda run=run, X=X: run(X))
            seconds[name].append(s)
            reads[name] = store.reads_per_chunk()
            bics[name] = value
    assert bics["one fit per K"] == bics["select_n_components"], bics
    base = _common.median(seconds["one fit per K"])
    rows = []
    for name in variants:
        med = _common.median(seconds[name])
        rows.append(
            [
                f"{family}: {name}",
                f"{med:.2f} ({_common.spread(seconds[name])})",
                f"{med / base:.2f}x",
                reads[name],
                f"{_common.median(loads[name]):.1f}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=200_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--chunk-rows", type=int, default=25_000)
    parser.add_argument("--true-k", type=int, default=8, help="components of the data")
    parser.add_argument("--k", type=int, default=8, help="clusters of the restarts fits")
    parser.add_argument("--n-init", type=int, default=8)
    parser.add_argument("--tol", type=float, default=0.0, help="K-means tol of the restarts")
    parser.add_argument("--max-iter", type=int, default=20, help="of the restarts fits")
    parser.add_argument("--zstd", action="store_true", help="zstd-compressed store")
    parser.add_argument("--k-max", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--skip", choices=["pass", "restarts", "sweep"], action="append", default=[]
    )
    parser.add_argument("--families", nargs="+", default=["kmeans", "gmm"])
    args = parser.parse_args()

    print(_common.environment())
    with _common.scratch_dir() as tmp:
        path = tmp / "blobs.zarr"
        rows = _common.make_blobs(args.n_samples, args.n_features, args.true_k, 0)
        if args.zstd:
            zarr.create_array(
                str(path),
                data=rows,
                chunks=(args.chunk_rows, args.n_features),
                compressors=zarr.codecs.ZstdCodec(level=3),
            )
        else:
            _common.write_zarr(
                path, args.n_samples, args.n_features, chunk_rows=args.chunk_rows, fill=rows
            )
        what = f"{args.n_samples} x {args.n_features}, chunks of {args.chunk_rows} rows"
        what += ", zstd" if args.zstd else ", uncompressed"
        if "pass" not in args.skip:
            print(f"\nOne pass of K-means K={args.k}, from Zarr ({what}):")
            header = ["what", "ms median (min-max)", "vs 1 restart", "load"]
            print(_common.format_table(header, bench_pass(path, args)))
        if "restarts" not in args.skip:
            budget = f"tol={args.tol}, max_iter={args.max_iter}"
            print(f"\nK-means K={args.k} restarts ({budget}), from Zarr ({what}):")
            header = ["variant", "s median (min-max)", "vs n_init=1", "reads/chunk", "inertia"]
            print(_common.format_table([*header, "load"], bench_restarts(path, args)))
        if "sweep" not in args.skip:
            rows = []
            for family in args.families:
                rows += bench_sweep(path, args, family)
            print(f"\nK sweep K=2..{args.k_max} with BIC, from Zarr ({what}):")
            header = ["variant", "s median (min-max)", "vs one fit per K", "reads/chunk", "load"]
            print(_common.format_table(header, rows))


if __name__ == "__main__":
    main()
