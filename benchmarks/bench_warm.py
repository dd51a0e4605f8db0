"""What a warm start saves a scheduled job whose input grew: iterations and wall time.

The nightly case: a model was fitted to ``n / (1 + growth)`` rows (``emdist generate``'s
overlapping mixture); the input then grew to ``n`` rows (the same distribution, the first
rows unchanged). The new data is fitted twice
from the same seed, on an uncompressed Zarr store, out of core:

* **cold**: as configured (``init_params='kmeans'`` for the mixtures, which runs K-means
  passes first; k-means++ for K-means);
* **warm**: :meth:`~emdist.GaussianMixture.warm_start_from` the previous model (what
  ``emdist run`` does by default, ``model.warm_start: true``).

Every EM/Lloyd iteration is one pass over the data; the wall time also counts the scan
pass and the initialisation. Rounds alternate cold and warm; medians are reported.

    python benchmarks/bench_warm.py                               # 500k x 16, K=8
    python benchmarks/bench_warm.py --n-samples 100000 --repeats 1   # quick
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
import zarr  # noqa: E402

import emdist  # noqa: E402
from emdist.io.synthetic import make_gaussian_mixture  # noqa: E402

FAMILIES: dict[str, Any] = {
    "gmm (full)": (emdist.GaussianMixture, "n_components", {"tol": 1e-3}),
    "kmeans": (emdist.KMeans, "n_clusters", {"tol": 1e-4}),
    "bayesian_gmm (full)": (emdist.BayesianGaussianMixture, "n_components", {"tol": 1e-5}),
}


def fit(cls: Any, k_name: str, k: int, params: dict[str, Any], path: Path, start: Any) -> Any:
    """One fit of ``path``; warm from ``start`` when given. Returns (estimator, seconds)."""
    est = cls(**{k_name: k}, random_state=0, max_iter=1000, **params)
    if start is not None:
        refused = est.warm_start_from(start)
        assert refused is None, refused
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(path)
    return est, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=500_000, help="rows after the growth")
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("-k", type=int, default=8, help="components (and blobs)")
    parser.add_argument(
        "--separation", type=float, default=1.5, help="of the generated components (overlap)"
    )
    parser.add_argument("--growth", type=float, default=0.2, help="fraction of new rows")
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3, help="cold/warm rounds")
    parser.add_argument("--only", choices=sorted(FAMILIES), action="append")
    args = parser.parse_args()

    n_after, d, k = args.n_samples, args.n_features, args.k
    n_before = int(round(n_after / (1 + args.growth)))
    print(_common.environment())
    print(
        f"data: emdist generate, separation {args.separation}, "
        f"{n_before} -> {n_after} rows (+{args.growth:.0%}) x {d}, K={k}\n"
    )
    rows = []
    with _common.scratch_dir() as scratch:
        generated = make_gaussian_mixture(
            scratch / "generated.zarr",
            n_samples=n_after,
            n_features=d,
            n_components=k,
            separation=args.separation,
            chunk_rows=args.chunk_rows,
            random_state=0,
        )
        data = np.asarray(zarr.open_array(str(generated.data_path), mode="r")[:])
        before = scratch / "before.zarr"
        after = scratch / "after.zarr"
        _common.write_zarr(before, n_before, d, chunk_rows=args.chunk_rows, fill=data[:n_before])
        _common.write_zarr(after, n_after, d, chunk_rows=args.chunk_rows, fill=data)
        del data
        for name in args.only or FAMILIES:
            cls, k_name, params = FAMILIES[name]
            previous, _ = fit(cls, k_name, k, params, before, None)
            cold_s, warm_s = [], []
            cold = warm = None
            for _ in range(args.repeats):
                cold, seconds = fit(cls, k_name, k, params, after, None)
                cold_s.append(seconds)
                warm, seconds = fit(cls, k_name, k, params, after, previous)
                warm_s.append(seconds)
            assert cold is not None and warm is not None
            rows.append(
                [
                    name,
                    f"{previous.n_iter_} ({previous.lower_bounds_[-1]:.5f})",
                    f"{cold.n_iter_}{'' if cold.converged_ else ' (not converged)'}",
                    f"{warm.n_iter_}{'' if warm.converged_ else ' (not converged)'}",
                    f"{_common.median(cold_s):.2f} ({_common.spread(cold_s)})",
                    f"{_common.median(warm_s):.2f} ({_common.spread(warm_s)})",
                    f"{_common.median(cold_s) / _common.median(warm_s):.1f}x",
                    f"{cold.lower_bounds_[-1]:.5f} / {warm.lower_bounds_[-1]:.5f}",
                ]
            )
    print(
        _common.format_table(
            [
                "family",
                "iter before (bound)",
                "iter cold",
                "iter warm",
                "s cold",
                "s warm",
                "speed-up",
                "final bound cold / warm",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
