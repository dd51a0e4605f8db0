"""Compiled mixture kernels: numpy vs numba per chunk, per iteration vs scikit-learn, compile time.

Three parts, chosen with ``--parts`` (default all):

* ``kernels`` — one E-step on one chunk (``--chunk-rows`` x d, K components), one thread
  (BLAS capped at one thread, as under Dask), for every covariance type, for the
  Gaussian mixture and the variational one: the numpy reference
  (:mod:`emdist.kernels.mixture_reference`) against the compiled kernel the estimators run
  (:mod:`emdist.kernels.fused_estep`), on float64 data, and the compiled kernel on the
  same data as float32. Interleaved rounds; medians of the thread's CPU seconds per 1M rows
  (robust to other processes on the machine), and the square-GEMM floor of ``full``.
* ``iteration`` — seconds per iteration of a whole in-memory fit, emdist (default threaded
  scheduler, one BLAS thread per Dask thread) against scikit-learn (its own BLAS threads),
  from the same starting parameters, as ``bench_em.py`` and ``bench_bayesian.py`` time
  them: GMM ``full`` (float64 and float32 data), ``diag``, ``spherical``, and the
  variational mixture (``full``, ``diag``). For ``full`` the table adds the *square-GEMM
  floor*: the iteration's GEMM flops (two ``(d, d) @ (d, n)`` products per component,
  ``4 K d² n``) at the rate of a square GEMM measured in the same process on every core.
* ``compile`` — the first call of every compiled kernel in a fresh interpreter, with an
  empty ``NUMBA_CACHE_DIR`` (cold: numba compiles) and again with the cache it left (warm:
  numba loads machine code).

    .venv/bin/python benchmarks/bench_mixture_kernels.py                   # 1M x 32, K=16
    .venv/bin/python benchmarks/bench_mixture_kernels.py --n-samples 200000 --repeats 2
    .venv/bin/python benchmarks/bench_mixture_kernels.py --parts kernels,compile
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import threadpoolctl

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import bench_bayesian  # noqa: E402
import bench_em  # noqa: E402

import emdist  # noqa: E402
from emdist.kernels import MixtureParams, compute_precision_cholesky  # noqa: E402
from emdist.kernels.mixture import mixture_estep_chunk  # noqa: E402
from emdist.kernels.mixture_reference import (  # noqa: E402
    mixture_estep_reference,
    variational_estep_reference,
)
from emdist.kernels.rows import RowBlock  # noqa: E402
from emdist.kernels.variational import VariationalParams, variational_estep_chunk  # noqa: E402

COV_TYPES = ("full", "tied", "diag", "spherical")


def covariances_of(X: np.ndarray, K: int, covariance_type: str) -> np.ndarray:
    """The sample covariance of ``X`` shaped for ``covariance_type`` (every component alike)."""
    cov = np.cov(X[: min(len(X), 100_000)], rowvar=False)
    if covariance_type == "full":
        return np.repeat(cov[None], K, axis=0)
    if covariance_type == "tied":
        return np.asarray(cov)
    if covariance_type == "diag":
        return np.repeat(np.diag(cov)[None], K, axis=0)
    return np.full(K, float(np.mean(np.diag(cov))))


# --- part 1: one chunk, one thread -------------------------------------------------------


def kernel_contenders(X: np.ndarray, K: int, seed: int) -> list[tuple[str, Callable[[], object]]]:
    """(name, call) for every kernel, numpy reference and compiled, float64 and float32."""
    rng = np.random.default_rng(seed)
    means = X[np.sort(rng.choice(len(X), K, replace=False))].copy()
    X32 = X.astype(np.float32)
    out: list[tuple[str, Callable[[], object]]] = []
    for ct in COV_TYPES:
        cov = covariances_of(X, K, ct)
        prec = compute_precision_cholesky(cov, ct)
        gmm = MixtureParams(np.full(K, 1.0 / K), means, cov, prec)
        dof = np.asarray(X.shape[1] + 10.0) if ct == "tied" else np.full(K, X.shape[1] + 10.0)
        var = VariationalParams(
            np.stack((np.full(K, 5.0), np.linspace(50.0, 5.0, K))),
            np.full(K, 20.0),
            means,
            dof,
            cov,
            prec,
        )

        def bind(fn: Callable[..., object], data: np.ndarray, params: Any, c: str) -> Any:
            return lambda: fn(RowBlock(data, 0), params, c)

        out += [
            (f"GMM {ct} numpy", bind(mixture_estep_reference, X, gmm, ct)),
            (f"GMM {ct} compiled", bind(mixture_estep_chunk, X, gmm, ct)),
            (f"GMM {ct} compiled float32", bind(mixture_estep_chunk, X32, gmm, ct)),
            (f"variational {ct} numpy", bind(variational_estep_reference, X, var, ct)),
            (f"variational {ct} compiled", bind(variational_estep_chunk, X, var, ct)),
            (f"variational {ct} compiled float32", bind(variational_estep_chunk, X32, var, ct)),
        ]
    return out


def run_kernels(args: argparse.Namespace) -> None:
    n, d, K = args.chunk_rows, args.n_features, args.n_components
    X = _common.make_blobs(n, d, K, seed=0)
    contenders = kernel_contenders(X, K, seed=1)
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    with threadpoolctl.threadpool_limits(1):
        for _, call in contenders:  # compile / load every kernel first
            call()
        for r in range(args.repeats):
            for name, call in contenders:
                # CPU time of this one thread: the kernels and their BLAS run in it, and on a
                # shared machine it does not count the time other processes hold the core.
                t0 = time.thread_time()
                call()
                times[name].append(time.thread_time() - t0)
            print(f"  round {r + 1}/{args.repeats}, load {os.getloadavg()[0]:.2f}", flush=True)
    per_m = 1e6 / n
    rows = []
    for name, _ in contenders:
        base = name.replace(" compiled float32", " numpy").replace(" compiled", " numpy")
        speedup = _common.median(times[base]) / _common.median(times[name])
        rows.append(
            [
                name,
                _common.median(times[name]) * per_m,
                f"{min(times[name]) * per_m:.3g}-{max(times[name]) * per_m:.3g}",
                f"{speedup:.2f}x",
            ]
        )
    print(f"\none E-step on a {n} x {d} chunk, K={K}, one thread: CPU seconds per 1M rows")
    print(_common.format_table(["kernel", "median s", "min-max", "vs numpy"], rows))
    with threadpoolctl.threadpool_limits(1):
        for dtype in (np.float64, np.float32):
            A = np.random.default_rng(0).standard_normal((2048, 2048)).astype(dtype)
            best = np.inf
            for _ in range(3):
                t0 = time.thread_time()
                A @ A
                best = min(best, time.thread_time() - t0)
            rate = 2.0 * 2048**3 / best
            floor = 4.0 * K * d * d * 1e6 / rate
            full = _common.median(
                times["GMM full compiled" + (" float32" if dtype == np.float32 else "")]
            )
            print(
                f"square GEMM {np.dtype(dtype).name}, one thread: {rate / 1e9:.1f} GFLOP/s; "
                f"full's 4Kd^2 flops per 1M rows: {floor:.3f} s; GMM full compiled "
                f"{full * per_m / floor:.2f}x that floor"
            )


# --- part 2: whole iterations against scikit-learn ----------------------------------------


def starting_point(X: np.ndarray, K: int, covariance_type: str, seed: int) -> dict[str, Any]:
    """Uniform weights, random rows as means, the sample's precision (as ``bench_em``)."""
    rng = np.random.default_rng(seed)
    cov = covariances_of(X, K, covariance_type)
    if covariance_type in ("full", "tied"):
        precisions = np.linalg.inv(cov)
    else:
        precisions = 1.0 / cov
    return {
        "weights_init": np.full(K, 1.0 / K),
        "means_init": X[np.sort(rng.choice(len(X), K, replace=False))].copy(),
        "precisions_init": precisions,
    }


def square_gemm_rate(dtype: Any, size: int = 2048) -> float:
    """FLOP/s of a square ``size`` GEMM on every core (best of 3)."""
    A = np.random.default_rng(0).standard_normal((size, size)).astype(dtype)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        A @ A
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


def run_iterations(args: argparse.Namespace) -> None:
    n, d, K = args.n_samples, args.n_features, args.n_components
    X = _common.make_blobs(n, d, K, seed=0)
    X32 = X.astype(np.float32)
    run = bench_em.EmdistRun()
    contenders: list[tuple[str, Callable[[], float]]] = []
    for ct in ("full", "diag", "spherical"):
        start = starting_point(X, K, ct, seed=1)

        def gm(observe: Any, ct: str = ct, start: dict[str, Any] = start) -> Any:
            return emdist.GaussianMixture(
                K,
                covariance_type=ct,
                tol=0.0,
                max_iter=args.iters,
                observer=observe,
                acceleration=None,  # one EM iteration per pass
                **start,
            )

        def emd(data: np.ndarray, gm: Callable[[Any], Any] = gm) -> Callable[[], float]:
            return lambda: run(gm, data)

        contenders.append((f"GMM {ct} emdist", emd(X)))
        if ct == "full":
            contenders.append((f"GMM {ct} emdist float32", emd(X32)))
        contenders.append(
            (
                f"GMM {ct} scikit-learn",
                lambda ct=ct, start=start: bench_em.sklearn_gmm(X, start, ct, args.iters),
            )
        )
    for ct in ("full", "diag"):
        contenders.append(
            (
                f"variational {ct} emdist",
                lambda ct=ct: bench_bayesian.emdist_seconds(X, K, ct, args.iters),
            )
        )
        contenders.append(
            (
                f"variational {ct} scikit-learn",
                lambda ct=ct: bench_bayesian.sklearn_seconds(X, K, ct, args.iters),
            )
        )
    wanted = [c for c in contenders if not args.only or any(w in c[0] for w in args.only)]
    times: dict[str, list[float]] = {name: [] for name, _ in wanted}
    rates: dict[str, list[float]] = {"float64": [], "float32": []}
    for r in range(args.repeats):
        for name, call in wanted:
            times[name].append(call())
        rates["float64"].append(square_gemm_rate(np.float64))
        rates["float32"].append(square_gemm_rate(np.float32))
        print(f"  round {r + 1}/{args.repeats}, load {os.getloadavg()[0]:.2f}", flush=True)
    gemm_flops = 4.0 * K * d * d * n
    rows = []
    for name, _ in wanted:
        med = _common.median(times[name])
        sk = name.rsplit(" emdist", 1)[0] + " scikit-learn"
        vs = _common.median(times[sk]) / med if " emdist" in name and sk in times else None
        floor = None
        if name.startswith("GMM full emdist"):
            rate = _common.median(rates["float32" if "float32" in name else "float64"])
            floor = med / (gemm_flops / rate)
        rows.append(
            [
                name,
                med,
                _common.spread(times[name]),
                f"{vs:.2f}x" if vs else None,
                f"{floor:.2f}" if floor else None,
            ]
        )
    print(f"\nseconds per iteration, {n} x {d}, K={K}, in memory, {args.repeats} rounds")
    print(
        _common.format_table(
            ["contender", "median s", "min-max", "faster than sklearn", "/ GEMM floor"], rows
        )
    )
    for key, values in rates.items():
        g = gemm_flops / _common.median(values)
        print(
            f"square GEMM {key}: {_common.median(values) / 1e9:.1f} GFLOP/s on every core; "
            f"floor of the full iteration's {gemm_flops / 1e9:.0f} GFLOP: {g:.3f} s"
        )


# --- part 3: compile time -----------------------------------------------------------------

_FIRST_CALLS = """
import time, numpy as np
from emdist.kernels import fused_estep as f
rng = np.random.default_rng(0)
K, d, m = 4, 3, 64
res = {}
for dt in (np.float64, np.float32):
    X = rng.standard_normal((m, d)).astype(dt)
    p = d * (d + 1) // 2 + d + 1
    A = np.empty((m, p))
    A32 = np.empty((m if dt == np.float32 else 0, p), dtype=np.float32)
    t0 = time.perf_counter()
    f.quadratic_features(X, 0, np.zeros(d), f.FULL_FEATURES, A, A32)
    res["quadratic_features " + dt.__name__] = time.perf_counter() - t0
    L = rng.standard_normal((m, K)).astype(dt)
    S, E, amax = np.empty((m, K)), np.empty((m, K)), np.empty(m)
    t0 = time.perf_counter()
    f.shift_log_densities(L, np.zeros(K), S, amax, -np.inf)
    res["shift_log_densities " + dt.__name__] = time.perf_counter() - t0
np.exp(S, out=E)
t0 = time.perf_counter()
f.responsibilities(S, E, amax, np.zeros(K), None, 0)
res["responsibilities float64"] = time.perf_counter() - t0
# The float32 full/tied E-step: the grouping and one grouped kernel each (all compiled).
from emdist.kernels import compute_precision_cholesky
from emdist.kernels.mixture import fused_estep
X32 = rng.standard_normal((m, d)).astype(np.float32)
means = rng.standard_normal((K, d))
for ct, cov in (("full", np.repeat(np.eye(d)[None], K, axis=0)), ("tied", np.eye(d))):
    pc = compute_precision_cholesky(cov, ct)
    t0 = time.perf_counter()
    fused_estep(X32, means, pc, ct, np.full(K, -np.log(K)))
    res["float32 " + ct + " E-step (grouping, grouped kernel)"] = time.perf_counter() - t0
print(repr(res))
"""


def first_calls(cache_dir: str) -> dict[str, float]:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_CALLS], env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, float] = eval(out.stdout.strip().splitlines()[-1])  # our own repr
    return result


def run_compile(args: argparse.Namespace) -> None:
    cold: dict[str, list[float]] = {}
    warm: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
            for name, s in first_calls(cache).items():
                cold.setdefault(name, []).append(s)
            for name, s in first_calls(cache).items():
                warm.setdefault(name, []).append(s)
    rows = [[name, _common.median(cold[name]), _common.median(warm[name])] for name in sorted(cold)]
    print(f"\nfirst call in a fresh interpreter, seconds (median of {args.repeats})")
    print(_common.format_table(["kernel signature", "cold cache", "warm cache"], rows))


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts and print their tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-samples", type=int, default=1_000_000)
    p.add_argument("--n-features", type=int, default=32)
    p.add_argument("--n-components", type=int, default=16)
    p.add_argument("--chunk-rows", type=int, default=62_500, help="rows of the kernel chunk")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--iters", type=int, default=3, help="iterations per fit")
    p.add_argument("--parts", default="kernels,iteration,compile")
    p.add_argument(
        "--only", default="", help="iteration part: comma list of name fragments to keep"
    )
    args = p.parse_args(argv)
    args.only = [s for s in args.only.split(",") if s]
    print(_common.environment())
    parts = set(args.parts.split(","))
    if "kernels" in parts:
        run_kernels(args)
    if "iteration" in parts:
        run_iterations(args)
    if "compile" in parts:
        run_compile(args)
    print(_common.environment())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
