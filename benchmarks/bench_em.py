"""Seconds per EM iteration: emdist against scikit-learn, in memory and streamed from Zarr.

In one process, on the same data and cores, this times one iteration of

* ``GaussianMixture`` (``full``, ``tied``, ``diag``, ``spherical``): emdist vs
  ``sklearn.mixture.GaussianMixture``; emdist also on float32 data (``full``/``tied``
  computed in float32, ``diag``/``spherical`` in float64),
  and against the *GEMM floor*: the iteration's ``4 K d² n`` flops at the rate of one large
  square GEMM on every core (measured here, float64 and float32);
* ``BayesianGaussianMixture`` (``full``, ``diag``): emdist vs scikit-learn's;
* ``KMeans``: emdist (float64 and float32 data) vs ``sklearn.cluster.KMeans(algorithm="lloyd")``,
  and faiss's K-means as an anchor when ``faiss-cpu`` is installed (never a dependency);
* emdist again on the same rows read from an uncompressed Zarr store on disk;
* the *read floor*: ``da.from_zarr(path).sum().compute()``, the time to merely read the
  store, so that K-means from Zarr is reported as a ratio to it.

What one iteration is, for each contender:

* emdist: ``IterationState.seconds`` from the estimator's ``observer`` hook (one Dask pass
  over the data, the tree reduction, the M-step and the bound on the client, graph
  construction included). The scan pass and initialisation are reported apart ("setup").
* scikit-learn ``GaussianMixture``: the body of its ``fit`` loop, ``_e_step`` + ``_m_step``
  + ``_compute_lower_bound``, run from the same starting parameters (so its k-means
  initialisation and final E-step are not charged to it).
* scikit-learn ``KMeans``: ``(T(max_iter=N) - T(max_iter=1)) / (n_iter_N - n_iter_1)``
  of whole fits from the same centres (its Lloyd loop is private Cython), which cancels
  validation, initialisation and the final assignment; faiss and scikit-learn's
  ``BayesianGaussianMixture`` are timed the same way (emdist's variational mixture starts
  from its own ``random_from_data`` draw without the fit on the sample: the cost of an
  iteration does not depend on where it starts).

Every contender starts from the same fixed parameters with ``tol=0``. Repeats are
interleaved (each round runs every contender once) so that load from other processes hits
all of them alike; the table shows medians over rounds, and the min-max of the rounds.
emdist runs on its default scheduler (the local threaded one, one BLAS thread per Dask
thread); scikit-learn uses BLAS/OpenMP on every core. The page cache is warm.

    .venv/bin/python benchmarks/bench_em.py                              # 1M x 32, K=16
    .venv/bin/python benchmarks/bench_em.py --n-samples 200000 --repeats 2   # quick
    .venv/bin/python benchmarks/bench_em.py --only kmeans --cluster          # + LocalCluster

``--cluster`` adds the Zarr contenders (and the read floor) computed on a LocalCluster of one
single-threaded worker process per core; ``--sklearn-blas-threads 1`` caps scikit-learn's
BLAS (on a loaded machine its multi-threaded BLAS degrades much more than emdist's
single-threaded one, and the ratios move with it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import threadpoolctl

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

import emdist  # noqa: E402

GMM_TYPES = ("full", "tied", "diag", "spherical")
BGMM_TYPES = ("full", "diag")


def starting_point(
    X: np.ndarray, n_components: int, covariance_type: str, seed: int
) -> dict[str, np.ndarray]:
    """Fixed starting parameters: uniform weights, random rows as means, global precision."""
    rng = np.random.default_rng(seed)
    K = n_components
    means = X[np.sort(rng.choice(len(X), K, replace=False))].copy()
    sample = X[rng.choice(len(X), min(len(X), 100_000), replace=False)]
    cov = np.cov(sample, rowvar=False)
    if covariance_type == "full":
        precisions = np.repeat(np.linalg.inv(cov)[None], K, axis=0)
    elif covariance_type == "tied":
        precisions = np.linalg.inv(cov)
    elif covariance_type == "diag":
        precisions = np.repeat((1.0 / np.diag(cov))[None], K, axis=0)
    elif covariance_type == "spherical":
        precisions = np.full(K, 1.0 / float(np.mean(np.diag(cov))))
    else:
        raise ValueError(covariance_type)
    return {
        "weights_init": np.full(K, 1.0 / K),
        "means_init": means,
        "precisions_init": precisions,
    }


# --- one round of each contender: returns seconds per iteration -------------------------


def sklearn_gmm(X: np.ndarray, start: dict[str, np.ndarray], ct: str, iters: int) -> float:
    """Median seconds of scikit-learn's GMM loop body, from ``start``."""
    from sklearn.mixture import GaussianMixture

    model = GaussianMixture(
        len(start["weights_init"]),
        covariance_type=ct,
        tol=0.0,
        max_iter=1,
        init_params="random_from_data",  # cheap; the *_init arrays override it anyway
        random_state=0,
        **start,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X[: max(len(start["weights_init"]) * 10, 1000)])  # sets up the attributes
    # Reset to the exact starting parameters (the short fit moved them).
    model.weights_ = start["weights_init"].copy()
    model.means_ = start["means_init"].copy()
    prec = start["precisions_init"]
    if ct == "full":
        model.precisions_cholesky_ = np.stack([np.linalg.cholesky(p) for p in prec])
    elif ct == "tied":
        model.precisions_cholesky_ = np.linalg.cholesky(prec)
    else:
        model.precisions_cholesky_ = np.sqrt(prec)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        log_prob_norm, log_resp = model._e_step(X)
        model._m_step(X, log_resp)
        model._compute_lower_bound(log_resp, log_prob_norm)
        times.append(time.perf_counter() - t0)
    return _common.median(times)


def sklearn_kmeans(X: np.ndarray, centres: np.ndarray, iters: int) -> float:
    """Seconds per Lloyd iteration of scikit-learn, by difference of two fits.

    ``(T(max_iter=iters) - T(max_iter=1)) / (n_iter - 1)``, with ``T(1)`` the median of
    three fits: validation, initialisation and the final assignment cancel out.
    """
    from sklearn.cluster import KMeans

    def fit(max_iter: int) -> tuple[float, int]:
        model = KMeans(
            len(centres), init=centres, n_init=1, max_iter=max_iter, tol=0.0, algorithm="lloyd"
        )
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X)
        return time.perf_counter() - t0, int(model.n_iter_)

    return by_difference(fit, iters)


def by_difference(fit: Callable[[int], tuple[float, int]], iters: int) -> float:
    """``(T(iters) - T(1)) / (n_iter - 1)`` of whole fits, ``T(1)`` a median of three."""
    t1 = _common.median([fit(1)[0] for _ in range(3)])
    tn, nn = fit(iters)
    if nn <= 1:
        return tn
    return max(tn - t1, 0.0) / (nn - 1)


def sklearn_bgmm(X: np.ndarray, n_components: int, ct: str, iters: int) -> float:
    """Seconds per iteration of scikit-learn's variational mixture, by difference of fits."""
    from sklearn.mixture import BayesianGaussianMixture

    def fit(max_iter: int) -> tuple[float, int]:
        model = BayesianGaussianMixture(
            n_components=n_components,
            covariance_type=ct,
            init_params="random_from_data",
            tol=0.0,
            max_iter=max_iter,
            random_state=0,
            acceleration=None,
        )
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X)
        return time.perf_counter() - t0, int(model.n_iter_)

    return by_difference(fit, iters)


def faiss_kmeans(X32: np.ndarray, centres: np.ndarray, iters: int) -> float:
    """Seconds per iteration of faiss's K-means (float32), by difference of fits."""
    import faiss

    def fit(max_iter: int) -> tuple[float, int]:
        # Every row, as the others use: faiss otherwise trains on 256 rows per centroid.
        km = faiss.Kmeans(
            X32.shape[1],
            len(centres),
            niter=max_iter,
            verbose=False,
            seed=0,
            max_points_per_centroid=len(X32),
        )
        t0 = time.perf_counter()
        km.train(X32, init_centroids=np.ascontiguousarray(centres, dtype=np.float32))
        return time.perf_counter() - t0, max_iter

    return by_difference(fit, iters)


def gemm_rate(dtype: type, size: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of one square GEMM on every core (the best of ``repeats``)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


class EmdistRun:
    """Seconds per emdist iteration (observer hook), and the rest of the fit ("setup")."""

    def __init__(self) -> None:
        self.setup: list[float] = []

    def __call__(self, make: Callable[[Any], Any], data: Any) -> float:
        seconds: list[float] = []

        def observe(state: Any) -> None:
            seconds.append(state.seconds)

        model = make(observe)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tol=0: "did not converge" is the point
            model.fit(data)
        total = time.perf_counter() - t0
        self.setup.append(total - sum(seconds))
        return _common.median(seconds)


def read_floor(path: str) -> float:
    """Seconds to read the store once: ``da.from_zarr(path).sum().compute()``."""
    t0 = time.perf_counter()
    da.from_zarr(path).sum().compute()
    return time.perf_counter() - t0


@contextlib.contextmanager
def local_cluster_client() -> Iterator[Any]:
    """A LocalCluster of one single-threaded worker process per core, not the default.

    Started as a job starts its embedded cluster (``pipeline.cluster.local_cluster``).
    """
    from distributed import Client

    from pipeline.cluster import local_cluster

    n_workers = os.cpu_count() or 1
    with (
        local_cluster(n_workers, 1, processes=True) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def add_cluster_contenders(
    contenders: list[tuple[str, Callable[[], float]]],
    emdist_runs: dict[str, EmdistRun],
    client: Any,
    path: str,
    km: Callable[[Any], Any] | None,
    gms: dict[str, Callable[[Any], Any]],
) -> None:
    """The Zarr contenders again, computed on ``client`` (made current for each call)."""

    def on_cluster(fn: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            with client.as_current():
                return fn()

        return run

    if km is not None:
        contenders.append(("read floor (zarr) cluster", on_cluster(lambda: read_floor(path))))
        run = emdist_runs.setdefault("kmeans emdist zarr cluster", EmdistRun())
        contenders.append(("kmeans emdist zarr cluster", on_cluster(lambda: run(km, path))))
    for ct, gm in gms.items():
        name = f"gmm {ct} emdist zarr cluster"
        run_gm = emdist_runs.setdefault(name, EmdistRun())
        contenders.append((name, on_cluster(lambda r=run_gm, g=gm: r(g, path))))


# --- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-samples", type=int, default=1_000_000)
    p.add_argument("--n-features", type=int, default=32)
    p.add_argument("--n-components", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--gmm-iters", type=int, default=4, help="iterations per GMM fit")
    p.add_argument("--kmeans-iters", type=int, default=10, help="iterations per K-means fit")
    p.add_argument("--chunk-rows", type=int, default=62_500, help="rows per Zarr chunk")
    p.add_argument("--data-dir", default=None, help="scratch root (default .bench-data/)")
    p.add_argument("--skip-sklearn", action="store_true", help="time emdist only")
    p.add_argument(
        "--only",
        default="",
        help="comma list among: full,tied,diag,spherical,kmeans,bgmm (default: all)",
    )
    p.add_argument(
        "--sklearn-blas-threads",
        type=int,
        default=None,
        help="cap scikit-learn's BLAS/OpenMP threads (default: its own, every core)",
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help="also time emdist from Zarr (and the read floor) on a LocalCluster of one "
        "single-threaded worker process per core",
    )
    args = p.parse_args(argv)
    n, d, K = args.n_samples, args.n_features, args.n_components
    wanted = set(filter(None, args.only.split(","))) or {*GMM_TYPES, "kmeans", "bgmm"}

    print(
        f"bench_em: {n} x {d} float64, K={K}, zarr chunks of {args.chunk_rows} rows, "
        f"{args.repeats} rounds; GMM {args.gmm_iters} / K-means {args.kmeans_iters} "
        f"iterations per fit"
    )
    print(_common.environment())
    t0 = time.perf_counter()
    X = _common.make_blobs(n, d, K, seed=0)
    X32 = X.astype(np.float32)
    starts = {ct: starting_point(X, K, ct, seed=1) for ct in GMM_TYPES}
    centres = starts["full"]["means_init"]
    print(f"data generated in {time.perf_counter() - t0:.1f} s")

    results: dict[str, list[float]] = {}
    emdist_runs: dict[str, EmdistRun] = {}

    with _common.scratch_dir(args.data_dir) as tmp:
        path = str(tmp / "X.zarr")
        t0 = time.perf_counter()
        _common.write_zarr(path, n, d, chunk_rows=args.chunk_rows, fill=X)
        mib = n * d * 8 / 2**20
        print(f"zarr store written in {time.perf_counter() - t0:.1f} s ({mib:.0f} MiB)")

        contenders: list[tuple[str, Callable[[], float]]] = []

        def capped(fn: Callable[[], float]) -> Callable[[], float]:
            if args.sklearn_blas_threads is None:
                return fn

            def run() -> float:
                with threadpoolctl.threadpool_limits(args.sklearn_blas_threads):
                    return fn()

            return run

        km_cluster: Callable[[Any], Any] | None = None
        gm_cluster: dict[str, Callable[[Any], Any]] = {}

        def add_emdist(name: str, make: Callable[[Any], Any], data: Any) -> None:
            run = emdist_runs.setdefault(name, EmdistRun())
            contenders.append((name, lambda: run(make, data)))

        if "kmeans" in wanted:
            contenders.append(("read floor (zarr)", lambda: read_floor(path)))

            def km(observe: Any) -> Any:
                return emdist.KMeans(
                    K,
                    init=centres,
                    n_init=1,
                    max_iter=args.kmeans_iters,
                    tol=0.0,
                    observer=observe,
                )

            km_cluster = km
            add_emdist("kmeans emdist zarr", km, path)
            add_emdist("kmeans emdist memory", km, X)
            add_emdist("kmeans emdist memory float32", km, X32)
            if importlib.util.find_spec("faiss") is not None:
                contenders.append(
                    ("kmeans faiss float32", lambda: faiss_kmeans(X32, centres, args.kmeans_iters))
                )
            if not args.skip_sklearn:
                contenders.append(
                    (
                        "kmeans sklearn",
                        capped(lambda: sklearn_kmeans(X, centres, args.kmeans_iters)),
                    )
                )
        for ct in GMM_TYPES:
            if ct not in wanted:
                continue

            def gm(observe: Any, ct: str = ct) -> Any:
                return emdist.GaussianMixture(
                    K,
                    covariance_type=ct,
                    tol=0.0,
                    max_iter=args.gmm_iters,
                    observer=observe,
                    acceleration=None,  # one EM iteration per pass, as scikit-learn's
                    **starts[ct],
                )

            gm_cluster[ct] = gm
            add_emdist(f"gmm {ct} emdist memory", gm, X)
            add_emdist(f"gmm {ct} emdist memory float32", gm, X32)
            add_emdist(f"gmm {ct} emdist zarr", gm, path)
            if not args.skip_sklearn:
                contenders.append(
                    (
                        f"gmm {ct} sklearn",
                        capped(lambda ct=ct: sklearn_gmm(X, starts[ct], ct, args.gmm_iters)),
                    )
                )

        for ct in BGMM_TYPES if "bgmm" in wanted else ():

            def bgm(observe: Any, ct: str = ct) -> Any:
                return emdist.BayesianGaussianMixture(
                    n_components=K,
                    covariance_type=ct,
                    init_params="random_from_data",
                    prefit_on_sample=False,
                    tol=0.0,
                    max_iter=args.gmm_iters,
                    random_state=0,
                    observer=observe,
                    acceleration=None,
                )

            add_emdist(f"bgmm {ct} emdist memory", bgm, X)
            if not args.skip_sklearn:
                contenders.append(
                    (
                        f"bgmm {ct} sklearn",
                        capped(lambda ct=ct: sklearn_bgmm(X, K, ct, args.gmm_iters)),
                    )
                )

        with contextlib.ExitStack() as stack:
            client = None
            if args.cluster:
                client = stack.enter_context(local_cluster_client())
                add_cluster_contenders(
                    contenders, emdist_runs, client, path, km_cluster, gm_cluster
                )
            read_floor(path)  # warm-up: page cache, thread pools, imports
            for r in range(args.repeats):
                for name, fn in contenders:
                    value = fn()
                    results.setdefault(name, []).append(value)
                    print(f"  round {r + 1}: {name:28s} {value:.4f} s/iteration", flush=True)

    med = {k: _common.median(v) for k, v in results.items()}
    rows = []
    for name in results:
        setup = emdist_runs[name].setup if name in emdist_runs else None
        rows.append(
            [
                name,
                med[name],
                _common.spread(results[name]),
                _common.median(setup) if setup else None,
            ]
        )
    print()
    print(
        _common.format_table(
            ["contender", "s/iteration (median)", "rounds min-max", "emdist outside iterations s"],
            rows,
        )
    )
    print()
    ratio_rows = []
    if "kmeans" in wanted:
        floor = med["read floor (zarr)"]
        ratio_rows.append(["kmeans zarr / read floor", med["kmeans emdist zarr"] / floor, "<= 1.1"])
        ratio_rows.append(["kmeans memory / read floor", med["kmeans emdist memory"] / floor, ""])
        if "kmeans emdist zarr cluster" in med:
            ratio_rows.append(
                [
                    "kmeans zarr / read floor, cluster",
                    med["kmeans emdist zarr cluster"] / med["read floor (zarr) cluster"],
                    "<= 1.3",
                ]
            )
        if "kmeans sklearn" in med:
            ratio_rows.append(
                [
                    "kmeans emdist memory / sklearn",
                    med["kmeans emdist memory"] / med["kmeans sklearn"],
                    "<= 1.0",
                ]
            )
        ratio_rows.append(
            [
                "kmeans emdist float32 / float64",
                med["kmeans emdist memory float32"] / med["kmeans emdist memory"],
                "",
            ]
        )
        if "kmeans faiss float32" in med:
            ratio_rows.append(
                [
                    "kmeans emdist float32 / faiss",
                    med["kmeans emdist memory float32"] / med["kmeans faiss float32"],
                    "(anchor)",
                ]
            )
    for ct in GMM_TYPES:
        if ct in wanted and f"gmm {ct} sklearn" in med:
            sk = med[f"gmm {ct} sklearn"]
            ratio_rows.append(
                [
                    f"gmm {ct} emdist memory / sklearn",
                    med[f"gmm {ct} emdist memory"] / sk,
                    {"full": "<= 0.125", "diag": "<= 0.2"}.get(ct, ""),
                ]
            )
            ratio_rows.append(
                [f"gmm {ct} emdist zarr / sklearn", med[f"gmm {ct} emdist zarr"] / sk, ""]
            )
            if f"gmm {ct} emdist zarr cluster" in med:
                ratio_rows.append(
                    [
                        f"gmm {ct} emdist zarr cluster / sklearn",
                        med[f"gmm {ct} emdist zarr cluster"] / sk,
                        "",
                    ]
                )
    if "full" in wanted:
        flops = 4.0 * K * d * d * n
        for label, name, dtype in (
            ("float64", "gmm full emdist memory", np.float64),
            ("float32", "gmm full emdist memory float32", np.float32),
        ):
            floor_s = flops / gemm_rate(dtype)
            ratio_rows.append([f"gmm full {label} / square-GEMM floor", med[name] / floor_s, ""])
    for ct in GMM_TYPES:
        if ct in wanted:
            ratio_rows.append(
                [
                    f"gmm {ct} emdist float32 / float64",
                    med[f"gmm {ct} emdist memory float32"] / med[f"gmm {ct} emdist memory"],
                    "<= 0.625" if ct in ("full", "tied") else "",
                ]
            )
    for ct in BGMM_TYPES:
        if "bgmm" in wanted and f"bgmm {ct} sklearn" in med:
            ratio_rows.append(
                [
                    f"bgmm {ct} emdist memory / sklearn",
                    med[f"bgmm {ct} emdist memory"] / med[f"bgmm {ct} sklearn"],
                    "<= 0.25",
                ]
            )
    print(_common.format_table(["ratio (medians)", "value", "target"], ratio_rows))
    print(
        f"\nscheduler: {dask.config.get('scheduler', 'threads (default)')}; scikit-learn BLAS "
        f"threads: {args.sklearn_blas_threads or 'default (all cores)'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
