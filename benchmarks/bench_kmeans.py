"""K-means in memory to strict convergence: emdist (Hamerly's bounds) vs scikit-learn.

Every contender starts from the same centres (random rows of the data) with ``tol=0`` and
runs until no label changes (or ``--max-iter``); the labels must come out equal to
scikit-learn's Lloyd. Contenders, interleaved round by round (the order rotates):

- ``emdist KMeans.fit``: the estimator on the numpy array (the scan pass, the bounded Lloyd
  loop of ``emdist.kernels.kmeans_bounds``, the final ``predict``);
- ``emdist lloyd_bounds``: the loop alone;
- scikit-learn ``KMeans(algorithm='lloyd')`` and ``KMeans(algorithm='elkan')``.

BLAS and OpenMP are limited to one thread for everyone (``threadpoolctl``), and the figure
compared is process CPU time, which the other jobs on a shared machine disturb far less
than wall time; wall time is printed beside it. (emdist's own threads are not limited: its
CPU time counts every thread it splits a step over.)

``--all-cores`` lifts the limits instead: scikit-learn runs its OpenMP threads on every
core, emdist splits each step over them, and the figure compared is wall time.

    .venv/bin/python benchmarks/bench_kmeans.py              # 400k x 32 K=16, 200k x 32 K=256
    .venv/bin/python benchmarks/bench_kmeans.py --configs 100000x32x16 --repeats 1   # quick
    .venv/bin/python benchmarks/bench_kmeans.py --restarts 8  # + n_init=8 vs n_init=1
    .venv/bin/python benchmarks/bench_kmeans.py --all-cores   # wall time, every core
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import threadpoolctl

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

import emdist  # noqa: E402
from emdist.kernels.kmeans_bounds import lloyd_bounds  # noqa: E402

Fit = Callable[[], tuple[np.ndarray, int]]


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def contenders(X: np.ndarray, init: np.ndarray, max_iter: int) -> dict[str, Fit]:
    """Each contender: a whole fit from ``init``, returning (labels, iterations)."""
    from sklearn.cluster import KMeans

    K = len(init)

    def emdist_fit() -> tuple[np.ndarray, int]:
        km = emdist.KMeans(K, init=init, n_init=1, tol=0.0, max_iter=max_iter).fit(X)
        return np.asarray(km.labels_), int(km.n_iter_)

    def bounds_alone() -> tuple[np.ndarray, int]:
        run = lloyd_bounds(X, init, max_iter=max_iter, tol=0.0)
        return run.final_labels, run.n_iter

    def sklearn_fit(algorithm: str) -> Fit:
        def fit() -> tuple[np.ndarray, int]:
            km = KMeans(K, init=init, n_init=1, tol=0.0, max_iter=max_iter, algorithm=algorithm)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                km.fit(X)
            return km.labels_, int(km.n_iter_)

        return fit

    return {
        "emdist KMeans.fit": emdist_fit,
        "emdist lloyd_bounds": bounds_alone,
        "sklearn lloyd": sklearn_fit("lloyd"),
        "sklearn elkan": sklearn_fit("elkan"),
    }


def timed(fit: Fit) -> tuple[float, float, np.ndarray, int]:
    """(process CPU s, wall s, labels, iterations) of one fit."""
    c0, w0 = time.process_time(), time.perf_counter()
    labels, n_iter = fit()
    return time.process_time() - c0, time.perf_counter() - w0, labels, n_iter


def run_config(
    n: int, d: int, K: int, repeats: int, max_iter: int, by_wall: bool = False
) -> list[list[Any]]:
    X = _common.make_blobs(n, d, K, seed=0)
    rng = np.random.default_rng(1)
    init = X[np.sort(rng.choice(n, K, replace=False))].copy()
    fits = contenders(X, init, max_iter)
    # Compile (or load from numba's cache) outside the timings.
    lloyd_bounds(X[:2000], init, max_iter=2, tol=0.0)
    emdist.KMeans(K, init=init, n_init=1, max_iter=2).fit(X[:2000])
    cpu: dict[str, list[float]] = {name: [] for name in fits}
    wall: dict[str, list[float]] = {name: [] for name in fits}
    iters: dict[str, int] = {}
    same: dict[str, bool] = {}
    names = list(fits)
    print(f"\n{n} x {d}, K={K}: load {_load()} at the start")
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        labels: dict[str, np.ndarray] = {}
        for name in order:
            c, w, lab, it = timed(fits[name])
            cpu[name].append(c)
            wall[name].append(w)
            iters[name] = it
            labels[name] = lab
            print(f"  round {r + 1} {name:22s} cpu {c:7.2f} s  wall {w:7.2f} s  {it} iterations")
        for name in names:
            ok = bool(np.array_equal(labels[name], labels["sklearn lloyd"]))
            same[name] = same.get(name, True) and ok
    print(f"  load {_load()} at the end")
    by = wall if by_wall else cpu
    best_sklearn = min(_common.median(by["sklearn lloyd"]), _common.median(by["sklearn elkan"]))
    rows = []
    for name in names:
        med = _common.median(cpu[name])
        rows.append(
            [
                f"{n // 1000}k x {d}, K={K}",
                name,
                f"{med:.2f} ({min(cpu[name]):.2f}-{max(cpu[name]):.2f})",
                f"{_common.median(wall[name]):.2f}",
                iters[name],
                f"{1000 * med / max(iters[name], 1):.1f}",
                f"{_common.median(by[name]) / best_sklearn:.2f}x",
                "yes" if same[name] else "NO",
            ]
        )
    return rows


def run_restarts(n: int, d: int, K: int, restarts: int, repeats: int) -> list[list[Any]]:
    """emdist ``n_init=restarts`` vs ``n_init=1`` (k-means++ starts, tol=0), CPU seconds."""
    X = _common.make_blobs(n, d, K, seed=0)
    out = []
    cpu: dict[int, list[float]] = {1: [], restarts: []}
    iters: dict[int, int] = {}
    for _ in range(repeats):
        for n_init in (1, restarts):
            km = emdist.KMeans(K, n_init=n_init, tol=0.0, max_iter=1000, random_state=0)
            c0 = time.process_time()
            km.fit(X)
            cpu[n_init].append(time.process_time() - c0)
            iters[n_init] = int(km.n_iter_)
    for n_init in (1, restarts):
        out.append(
            [
                f"{n // 1000}k x {d}, K={K}",
                f"n_init={n_init}",
                f"{_common.median(cpu[n_init]):.2f}",
                f"{_common.median(cpu[n_init]) / _common.median(cpu[1]):.2f}x",
            ]
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="400000x32x16,200000x32x256", help="n x d x K, ...")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--restarts", type=int, default=0, help="also time n_init=R vs n_init=1")
    p.add_argument("--all-cores", action="store_true", help="no thread limits; compare wall time")
    args = p.parse_args(argv)
    rows: list[list[Any]] = []
    limits = (
        contextlib.nullcontext() if args.all_cores else threadpoolctl.threadpool_limits(limits=1)
    )
    with limits:
        for config in args.configs.split(","):
            n, d, K = (int(v) for v in config.split("x"))
            rows += run_config(n, d, K, args.repeats, args.max_iter, args.all_cores)
        restart_rows: list[list[Any]] = []
        if args.restarts:
            for config in args.configs.split(","):
                n, d, K = (int(v) for v in config.split("x"))
                restart_rows += run_restarts(n, d, K, args.restarts, args.repeats)
    print()
    print(
        _common.format_table(
            [
                "data",
                "contender",
                "CPU s, median (min-max)",
                "wall s",
                "iterations",
                "CPU ms / iteration",
                "vs faster sklearn" + (" (wall)" if args.all_cores else " (CPU)"),
                "labels = sklearn",
            ],
            rows,
        )
    )
    if args.restarts:
        print()
        print(_common.format_table(["data", "restarts", "CPU s", "vs n_init=1"], restart_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
