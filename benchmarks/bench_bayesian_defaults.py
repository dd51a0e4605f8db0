"""The variational mixture at its defaults: does it prune, and after how many passes?

Well-separated clusters, more components than clusters, every other parameter at its
default (``tol=1e-5`` per sample, ``max_iter=100``, ``init_params='kmeans'``): each case
is fitted with ``prefit_on_sample=False`` (the fit scikit-learn runs, one pass per
iteration from the K-means start) and ``True`` (the default: the same fit run on the scan
sample in memory first). Reported per fit: EM passes over the data (``n_iter_``; the scan
and, for full covariances, the covariance-prior pass come on top), convergence,
components above 1% weight, and the adjusted Rand index of the labels against the truth.

    python benchmarks/bench_bayesian_defaults.py
    python benchmarks/bench_bayesian_defaults.py --cases blobs2d --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

import emdist  # noqa: E402
from emdist.io.synthetic import sample_gaussian_mixture  # noqa: E402


def blobs2d() -> tuple[np.ndarray, np.ndarray]:
    """3 unit clusters of 700 points in 2-D, 10 apart (tests/models' pruning case)."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    X = np.concatenate([rng.normal(size=(700, 2)) + c for c in centres])
    return X, np.repeat(np.arange(3), 700)


def synthetic(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``emdist.io.synthetic``'s mixture (separation 6), as ``emdist generate`` writes it."""
    X, y, _ = sample_gaussian_mixture(n, d, k, random_state=seed)
    return X, y


# name -> (data, n_components, true clusters)
CASES: dict[str, tuple[Any, int, int]] = {
    "blobs2d": (blobs2d, 10, 3),
    "6k x 4": (lambda: synthetic(6_000, 4, 3, 1), 10, 3),
    "readme 20k x 4": (lambda: synthetic(20_000, 4, 3, 0), 10, 3),
    "readme 20k x 4 K=20": (lambda: synthetic(20_000, 4, 3, 0), 20, 3),
    "200k x 16": (lambda: synthetic(200_000, 16, 8, 0), 20, 8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    print(_common.environment())
    header = ("case", "K", "prefit", "seed", "passes", "converged", "used", "ARI", "s")
    rows = []
    for name in args.cases:
        make, k, _ = CASES[name]
        X, y = make()
        for seed in args.seeds:
            # Interleaved: both settings of one seed run back to back.
            for prefit in (False, True):
                est = emdist.BayesianGaussianMixture(
                    k, random_state=seed, prefit_on_sample=prefit, acceleration=None
                )
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    est.fit(X)
                seconds = time.perf_counter() - start
                used = int((est.weights_ > 0.01).sum())
                ari = adjusted_rand_score(y, est.predict(X))
                rows.append(
                    (
                        name,
                        k,
                        prefit,
                        seed,
                        est.n_iter_,
                        est.converged_,
                        used,
                        f"{ari:.3f}",
                        f"{seconds:.1f}",
                    )
                )
                print(*rows[-1], sep="  ", flush=True)
    print()
    print(_common.format_table(header, rows))


if __name__ == "__main__":
    main()
