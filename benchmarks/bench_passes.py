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
import collections
import inspect
import sys
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import zarr  # noqa: E402
from zarr.storage import LocalStore, WrapperStore  # noqa: E402

import emdist  # noqa: E402

MIXTURE_INITS = ("kmeans", "k-means++", "random", "random_from_data")
HEADER = ("model", "init", "n_init", "n_iter", "passes", "bound", "s")


class ReadCountingStore(WrapperStore[LocalStore]):
    """A read-only store that counts the reads of every key (whole and partial)."""

    def __init__(self, store: LocalStore, counts: collections.Counter[str] | None = None) -> None:
        super().__init__(store)
        self.counts: collections.Counter[str] = collections.Counter() if counts is None else counts
        self._lock = threading.Lock()

    def _with_store(self, store: LocalStore) -> ReadCountingStore:
        return type(self)(store, self.counts)

    def _note(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        self._note(key)
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: Any, key_ranges: Iterable[tuple[str, Any]]
    ) -> list[Any]:
        key_ranges = list(key_ranges)
        for key, _ in key_ranges:
            self._note(key)
        return await self._store.get_partial_values(prototype, key_ranges)

    def passes(self, n_chunks: int) -> str:
        """Reads per chunk: one number when every chunk was read equally often."""
        reads = [v for k, v in self.counts.items() if k.startswith("c/")]
        if len(reads) != n_chunks or min(reads) != max(reads):
            return f"{min(reads, default=0)}-{max(reads, default=0)}"
        return str(reads[0])


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
                store = ReadCountingStore(LocalStore(str(path), read_only=True))
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
                        store.passes(n_chunks),
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
