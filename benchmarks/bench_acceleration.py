"""Passes and wall time of accelerated EM against plain EM, from the same start.

Overlapping Gaussian blobs (``_common.make_blobs``) fitted by ``GaussianMixture`` with
``acceleration=None`` (plain EM) and each acceleration, from the same k-means++ start (same
seed, so the same scan sample). Every fit runs to ``tol=--tol`` (far past the target); the
reference bound ``B*`` is the best final bound of the variants. Reported per case: the
first pass whose bound is within ``--gap`` per sample of ``B*`` (the bound history has one
entry per pass), the EM seconds up to it (the per-pass seconds the observer reports), and
the final bound minus ``B*``; the ratios are against plain EM, medians over
``--seeds``. Then the same fits from a Zarr store, read through a store that counts every
chunk read, stopped by the observer once the target is reached: reads per chunk (the scan
pass included) and wall time.

    .venv/bin/python benchmarks/bench_acceleration.py
    .venv/bin/python benchmarks/bench_acceleration.py --n 100000 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import numpy as np

import emdist
from benchmarks._common import (
    CountingStore,
    environment,
    format_table,
    make_blobs,
    median,
    scratch_dir,
    write_zarr,
)

#: (covariance type, components fitted, components generated, features)
CASES = [
    ("diag", 6, 8, 8),
    ("full", 8, 8, 6),
    ("full", 16, 16, 16),
    ("tied", 6, 8, 8),
    ("spherical", 6, 8, 8),
]


def fit(
    X: Any, ct: str, k: int, seed: int, acceleration: str | None, tol: float, target: float | None
) -> tuple[list[float], list[float], float]:
    """Bound history, per-pass EM seconds, wall seconds; stopped at ``target`` if given."""
    seconds: list[float] = []

    def observe(state: emdist.IterationState) -> bool:
        seconds.append(state.seconds)
        return target is not None and state.lower_bound >= target

    model = emdist.GaussianMixture(
        k,
        covariance_type=ct,  # type: ignore[arg-type]
        init_params="k-means++",
        tol=tol,
        max_iter=2000,
        random_state=seed,
        acceleration=acceleration,
        observer=observe,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X)
    return list(model.lower_bounds_), seconds, time.perf_counter() - start


def ratio(values: list[float], plain: list[float]) -> str:
    """Median of the per-seed ratios ``values / plain``."""
    return f"{median([a / b for a, b in zip(values, plain, strict=True)]):.2f}"


def first_within(history: list[float], target: float) -> int:
    """1-based pass whose bound first reaches ``target`` (``len + 1`` if none does)."""
    hits = np.flatnonzero(np.asarray(history) >= target)
    return int(hits[0]) + 1 if hits.size else len(history) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=40_000)
    parser.add_argument("--chunk-rows", type=int, default=5_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--gap", type=float, default=1e-4)
    parser.add_argument("--tol", type=float, default=1e-9)
    parser.add_argument("--methods", nargs="+", default=["squarem", "overrelax"])
    parser.add_argument("--cases", nargs="+", default=[c[0] for c in CASES])
    args = parser.parse_args()
    variants: list[str | None] = [None, *args.methods]
    name = {v: "plain" if v is None else v for v in variants}
    print(environment())
    print(f"n={args.n}, gap={args.gap}/sample, tol={args.tol}, seeds={args.seeds}\n")
    mem_rows, zarr_rows = [], []
    with scratch_dir() as tmp:
        for ct, k, k_data, d in [c for c in CASES if c[0] in args.cases]:
            X = make_blobs(args.n, d, k_data, seed=0)
            path = str(tmp / f"{ct}{k}.zarr")
            write_zarr(path, args.n, d, chunk_rows=args.chunk_rows, fill=X)
            n_chunks = -(-args.n // args.chunk_rows)
            per: dict[str | None, dict[str, list[float]]] = {
                v: {"passes": [], "secs": [], "final": [], "reads": [], "wall": []}
                for v in variants
            }
            for seed in args.seeds:
                runs = {v: fit(X, ct, k, seed, v, args.tol, None) for v in variants}
                best = max(max(h) for h, _, _ in runs.values())
                target = best - args.gap
                for v, (history, secs, _) in runs.items():
                    p = first_within(history, target)
                    per[v]["passes"].append(p)
                    per[v]["secs"].append(sum(secs[:p]))
                    per[v]["final"].append(max(history) - best)
                for v in variants:
                    Z, store = CountingStore.open_array(path)
                    _, _, wall = fit(Z, ct, k, seed, v, args.tol, target)
                    per[v]["reads"].append(sum(store.counts.values()) / n_chunks)
                    per[v]["wall"].append(wall)
            plain = per[None]
            for v in variants:
                m = per[v]
                mem_rows.append(
                    [
                        f"{ct} K={k}",
                        name[v],
                        " ".join(str(int(p)) for p in m["passes"]),
                        ratio(m["passes"], plain["passes"]),
                        ratio(m["secs"], plain["secs"]),
                        f"{min(m['final']):.1e}",
                    ]
                )
                zarr_rows.append(
                    [
                        f"{ct} K={k}",
                        name[v],
                        " ".join(f"{r:.0f}" for r in m["reads"]),
                        ratio(m["reads"], plain["reads"]),
                        ratio(m["wall"], plain["wall"]),
                    ]
                )
            print(f"done {ct}", flush=True)
    print("\nIn memory: passes to within the gap of the best bound (one per seed)")
    print(
        format_table(
            ["case", "EM", "passes", "passes / plain", "EM s / plain", "final - best"], mem_rows
        )
    )
    print("\nFrom Zarr, stopped at the gap: reads per chunk (scan included)")
    print(format_table(["case", "EM", "reads", "reads / plain", "wall / plain"], zarr_rows))


if __name__ == "__main__":
    main()
