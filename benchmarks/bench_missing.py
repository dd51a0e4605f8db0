"""Missing values: cost per pass and quality of ``missing='marginalize'``.

Cost: one E-step pass (in-memory Dask data, every row-block reduced to statistics, as a fit
runs each iteration) of ``missing='marginalize'`` on data with 0%, 5% and 20% of the values
missing completely at random, beside the same pass of ``missing='error'`` on the data
without NaN (the compiled kernels). Rounds interleave the cases; medians.

Quality: synthetic Gaussian mixtures with 20% (or ``--quality-frac``) of the values missing
at random; the error of the recovered means (matched to the true ones) of
``GaussianMixture(missing='marginalize')`` against mean imputation followed by
scikit-learn's ``GaussianMixture``, from the same kind of start.

    python benchmarks/bench_missing.py                          # 200k x 16, K = 8
    python benchmarks/bench_missing.py --n-samples 1000000 --repeats 5
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
import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

import emdist  # noqa: E402
from emdist.engine.data import compute_context  # noqa: E402
from emdist.engine.reduce import map_reduce  # noqa: E402
from emdist.kernels.gaussian import compute_precision_cholesky  # noqa: E402
from emdist.kernels.missing import mixture_estep_missing_chunk  # noqa: E402
from emdist.kernels.mixture import MixtureParams, mixture_estep_chunk  # noqa: E402


def _params(X: np.ndarray, k: int, covariance_type: Any) -> MixtureParams:
    rng = np.random.default_rng(1)
    means = np.nan_to_num(X[rng.choice(len(X), k, replace=False)])
    d = X.shape[1]
    cov: Any = {"full": np.stack([np.eye(d)] * k), "diag": np.ones((k, d))}[covariance_type]
    chol = compute_precision_cholesky(cov, covariance_type)
    return MixtureParams(np.full(k, 1.0 / k), means, cov, chol)


def _with_missing(X: np.ndarray, frac: float, seed: int) -> np.ndarray:
    out = X.copy()
    out[np.random.default_rng(seed).random(X.shape) < frac] = np.nan
    empty = np.isnan(out).all(axis=1)
    out[empty, 0] = X[empty, 0]
    return out


def cost(args: argparse.Namespace) -> None:
    X = _common.make_blobs(args.n_samples, args.n_features, args.k, seed=0)
    datasets = {f: _with_missing(X, f, 3) for f in (0.0, 0.05, 0.2)}
    print(
        f"cost per pass: {args.n_samples} x {args.n_features} float64, K = {args.k}, "
        f"{args.chunk_rows}-row blocks; median of {args.repeats} interleaved rounds"
    )
    rows = []
    with compute_context():
        for ct in ("full", "diag"):
            params = _params(X, args.k, ct)
            cases = [("error, no NaN", mixture_estep_chunk, datasets[0.0])] + [
                (f"marginalize, {int(f * 100)}% NaN", mixture_estep_missing_chunk, datasets[f])
                for f in (0.0, 0.05, 0.2)
            ]
            lazy = [(n, k, da.from_array(x, chunks=(args.chunk_rows, -1))) for n, k, x in cases]
            for _, kernel, data in lazy:  # warm-up: compile, caches
                map_reduce(data, kernel, params, ct)
            times: dict[str, list[float]] = {name: [] for name, _, _ in lazy}
            for _ in range(args.repeats):
                for name, kernel, data in lazy:
                    start = time.perf_counter()
                    map_reduce(data, kernel, params, ct)
                    times[name].append(time.perf_counter() - start)
            base = _common.median(times[lazy[0][0]])
            for name, _, _ in lazy:
                t = _common.median(times[name])
                rows.append([f"GMM {ct}", name, f"{t:.3f}", f"{t / base:.2f}"])
    print(_common.format_table(["pass", "case", "seconds", "vs no-NaN fast path"], rows))


def _mean_error(found: np.ndarray, truth: np.ndarray) -> float:
    """Largest distance of a true mean to its matched fitted mean (Hungarian matching)."""
    distance = np.linalg.norm(truth[:, None, :] - found[None, :, :], axis=2)
    r, c = linear_sum_assignment(distance)
    return float(distance[r, c].max())


def quality(args: argparse.Namespace) -> None:
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    n, d, k = args.quality_samples, args.quality_features, args.quality_k
    rows = []
    for seed in range(args.quality_seeds):
        rng = np.random.default_rng(100 + seed)
        truth = rng.normal(scale=3.0, size=(k, d))
        A = rng.normal(size=(k, d, d)) / np.sqrt(d) + 0.6 * np.eye(d)
        labels = rng.integers(0, k, n)
        X = truth[labels] + np.einsum("nd,nde->ne", rng.normal(size=(n, d)), A[labels])
        Xm = _with_missing(X, args.quality_frac, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = emdist.GaussianMixture(
                k, missing="marginalize", n_init=3, random_state=seed, max_iter=300
            ).fit(Xm)
            imputed = np.where(np.isnan(Xm), np.nanmean(Xm, axis=0), Xm)
            theirs = SkGaussianMixture(k, n_init=3, random_state=seed, max_iter=300).fit(imputed)
            complete = emdist.GaussianMixture(k, n_init=3, random_state=seed, max_iter=300).fit(X)
        rows.append(
            [
                str(seed),
                f"{_mean_error(ours.means_, truth):.3f}",
                f"{_mean_error(theirs.means_, truth):.3f}",
                f"{_mean_error(complete.means_, truth):.3f}",
            ]
        )
    print(
        f"quality: {n} x {d}, K = {k}, {int(args.quality_frac * 100)}% missing at random; "
        f"largest error of a true mean (Hungarian-matched), n_init=3"
    )
    print(
        _common.format_table(
            ["seed", "marginalize", "mean-impute + sklearn", "no values missing"], rows
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=200_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--chunk-rows", type=int, default=25_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quality-samples", type=int, default=5000)
    parser.add_argument("--quality-features", type=int, default=5)
    parser.add_argument("--quality-k", type=int, default=4)
    parser.add_argument("--quality-frac", type=float, default=0.2)
    parser.add_argument("--quality-seeds", type=int, default=3)
    parser.add_argument("--skip-cost", action="store_true")
    args = parser.parse_args()
    print(_common.environment())
    if not args.skip_cost:
        cost(args)
    quality(args)


if __name__ == "__main__":
    main()
