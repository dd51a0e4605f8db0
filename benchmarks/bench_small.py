"""Whole fits on scikit-learn's bundled datasets (150-1,800 rows): emdist vs scikit-learn.

On data this small a fit's cost is fixed overhead, not arithmetic: emdist runs the kernels
on one in-memory block directly (no Dask graph per pass), and this script measures how far
that brings it to scikit-learn. Same K (the number of classes), same ``n_init`` defaults as
each library (K-means: 1 k-means++ run in both), best of ``--repeats`` fits, interleaved.

    .venv/bin/python benchmarks/bench_small.py
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np
from _common import environment, format_table
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import load_digits, load_iris, load_wine
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import emdist


def contenders(X: np.ndarray, K: int) -> dict[str, Callable[[], object]]:
    """One fit of each library on ``X`` with ``K`` components (scikit-learn's defaults)."""
    return {
        "km-sk": lambda: SkKMeans(K, n_init=1, random_state=0).fit(X),
        "km-ours": lambda: emdist.KMeans(K, random_state=0).fit(X),
        "gm-sk": lambda: SkGaussianMixture(K, random_state=0).fit(X),
        "gm-ours": lambda: emdist.GaussianMixture(K, random_state=0, acceleration=None).fit(X),
    }


def best(fits: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fits}
    for _ in range(repeats):
        for name, fit in fits.items():
            start = time.perf_counter()
            fit()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(environment())
    rows = []
    for name, load in (("iris", load_iris), ("wine", load_wine), ("digits", load_digits)):
        bunch = load()
        X = np.asarray(bunch.data, dtype=np.float64)
        K = len(np.unique(bunch.target))
        t = best(contenders(X, K), args.repeats)
        rows.append(
            [
                f"{name} {X.shape[0]}x{X.shape[1]}, K={K}",
                f"{1e3 * t['km-ours']:.1f} / {1e3 * t['km-sk']:.1f}",
                f"{t['km-ours'] / t['km-sk']:.2f}",
                f"{1e3 * t['gm-ours']:.1f} / {1e3 * t['gm-sk']:.1f}",
                f"{t['gm-ours'] / t['gm-sk']:.2f}",
            ]
        )
    header = ["dataset", "K-means ms (ours / sk)", "ratio", "GMM ms (ours / sk)", "ratio"]
    print(format_table(header, rows))


if __name__ == "__main__":
    main()
