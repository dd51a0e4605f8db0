"""One K-means (Lloyd) iteration, 1M x 32, K = 16: the kernel designs side by side.

In one process, on the same data, the same starting centres and the same cores, this times
one iteration (the assignment pass over every row, then the centre update) of

* ``reference``: emdist's numpy reference kernel (``emdist.kernels.kmeans_reference``),
  what emdist ran before the compiled kernels;
* ``numba (a)``: an all-numba kernel of direct distances ``Σ_j (x_j - c_kj)²`` (defined
  here, for the comparison only): rows are copied feature-major per sub-block so that the
  loops vectorise across rows without reordering any sum;
* ``numba (b)``: emdist's kernel (``emdist.kernels.kmeans``): a BLAS GEMM per sub-block for
  the scores, then one compiled sweep for the argmin, differences, sums, inertia and far
  points;
* scikit-learn's Lloyd: ``KMeans(algorithm="lloyd", n_init=1, init=<same centres>, tol=0)``,
  ``(T(max_iter=N) - T(max_iter=1)) / (n_iter - 1)`` of whole fits;
* faiss's K-means, if ``faiss`` imports (an anchor, never a dependency): the same
  difference of whole ``faiss.Kmeans.train`` runs, without subsampling.

Each in float64 and float32, on one thread and on two: emdist kernels through
``emdist.engine.reduce.map_reduce`` over a Dask array of 62 500-row chunks (the synchronous
scheduler, or the threaded one with two workers; one BLAS thread per Dask thread), then
``kmeans_mstep``; scikit-learn and faiss with their OpenMP threads capped at 1 or 2.
Rounds are interleaved; the table gives the median round and the min-max spread, and the
load average is printed before and after.

    .venv/bin/python benchmarks/bench_kmeans_kernel.py                 # ~5 min
    .venv/bin/python benchmarks/bench_kmeans_kernel.py --n-samples 200000 --repeats 3
    .venv/bin/python benchmarks/bench_kmeans_kernel.py --compile-cost   # first calls only

``--compile-cost`` instead times, in fresh processes, ``import emdist`` and the first call of
each compiled kernel (float64 then float32): with an empty numba cache
(``NUMBA_CACHE_DIR`` set to a new temporary directory: the compilation), then again with
that cache warm (loading the machine code).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numpy as np
from _common import environment, format_table, make_blobs, median, spread
from threadpoolctl import threadpool_limits

from emdist.engine.reduce import map_reduce
from emdist.engine.threads import blas_single_threaded
from emdist.kernels._blocks import as_row_major
from emdist.kernels._jit import jit
from emdist.kernels.kmeans import (
    KMeansParams,
    KMeansStats,
    _offer_far,
    kmeans_estep_chunk,
    kmeans_mstep,
)
from emdist.kernels.kmeans_reference import kmeans_estep_reference
from emdist.kernels.rows import RowBlock

CHUNK_ROWS = 62_500
SUB_BLOCK_ROWS = 128  # design (a): best of 64/128/256/512 in a first run


@jit
def _direct_kernel(
    X: Any,
    row0: int,
    centers: Any,
    ref: Any,
    shifted: Any,
    rows: int,
    counts: Any,
    sx: Any,
    far_dist: Any,
    far_row: Any,
    far_label: Any,
    n_far: int,
) -> tuple[float, int]:
    n, d = X.shape
    K = centers.shape[0]
    xt = np.empty((d, rows), dtype=shifted.dtype)
    dist_k = np.empty((K, rows), dtype=shifted.dtype)
    inertia = 0.0
    for start in range(0, n, rows):
        m = min(rows, n - start)
        for i in range(m):
            for j in range(d):
                xt[j, i] = X[start + i, j] - ref[j]
        for k in range(K):
            acc = dist_k[k]
            acc[:m] = 0
            for j in range(d):
                c = shifted[k, j]
                xj = xt[j]
                for i in range(m):
                    t = xj[i] - c
                    acc[i] += t * t
        part = 0.0
        for i in range(m):
            best = 0
            low = dist_k[0, i]
            for k in range(1, K):
                if dist_k[k, i] < low:
                    low = dist_k[k, i]
                    best = k
            dist = 0.0
            for j in range(d):
                t = np.float64(X[start + i, j]) - centers[best, j]
                sx[best, j] += t
                dist += t * t
            counts[best] += 1.0
            part += dist
            n_far = _offer_far(dist, row0 + start + i, best, far_dist, far_row, far_label, n_far)
        inertia += part
    return inertia, n_far


def estep_direct(block: RowBlock, params: KMeansParams) -> KMeansStats:
    """Design (a): the same statistics as ``kmeans_estep_chunk``, all in numba."""
    X, row_offset = block.x, block.row_offset
    centers = params.centers
    K, d = centers.shape
    n = X.shape[0]
    dtype = np.float32 if X.dtype == np.float32 else np.float64
    ref = centers.mean(axis=0).astype(dtype)
    shifted = np.ascontiguousarray(centers - ref.astype(np.float64), dtype=dtype)
    keep = min(K, n)
    counts, sx = np.zeros(K), np.zeros((K, d))
    far_dist = np.empty(keep)
    far_row, far_label = np.empty(keep, np.int64), np.empty(keep, np.int64)
    inertia, n_far = 0.0, 0
    inertia, n_far = _direct_kernel(
        as_row_major(X), 0, centers, ref, shifted, SUB_BLOCK_ROWS, counts, sx,
        far_dist, far_row, far_label, n_far,
    )  # fmt: skip
    return KMeansStats(
        n, counts, sx, inertia, far_dist, far_row + row_offset, far_label,
        np.asarray(X[far_row], dtype=np.float64), centers, centers,
    )  # fmt: skip


KERNELS: dict[str, Callable[..., KMeansStats]] = {
    "emdist numpy reference": kmeans_estep_reference,
    "emdist numba (a) direct": estep_direct,
    "emdist numba (b) GEMM + sweep": kmeans_estep_chunk,
}


def emdist_iteration(
    Xd: da.Array, centers: np.ndarray, kernel: Callable[..., KMeansStats], threads: int
) -> tuple[float, float]:
    """Wall and CPU seconds of one pass of ``kernel`` over ``Xd`` plus the M-step."""
    scheduler: dict[str, Any] = (
        {"scheduler": "sync"} if threads == 1 else {"scheduler": "threads", "num_workers": 2}
    )
    with dask.config.set(**scheduler), blas_single_threaded():
        t0, c0 = time.perf_counter(), time.process_time()
        stats = map_reduce(Xd, kernel, KMeansParams(centers))
        kmeans_mstep(stats)
        return time.perf_counter() - t0, time.process_time() - c0


def sklearn_iteration(
    X: np.ndarray, centers: np.ndarray, threads: int, iters: int
) -> tuple[float, float]:
    """scikit-learn Lloyd: (T(iters) - T(1)) / (n_iter - 1) of whole fits, wall and CPU."""
    from sklearn.cluster import KMeans

    def fit(max_iter: int) -> tuple[float, float, int]:
        model = KMeans(
            len(centers), init=centers, n_init=1, max_iter=max_iter, tol=0.0, algorithm="lloyd"
        )
        with threadpool_limits(threads), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0, c0 = time.perf_counter(), time.process_time()
            model.fit(X)
            return time.perf_counter() - t0, time.process_time() - c0, int(model.n_iter_)

    t1, c1, _ = fit(1)
    tn, cn, nn = fit(iters)
    return (tn - t1) / max(nn - 1, 1), (cn - c1) / max(nn - 1, 1)


def faiss_iteration(
    X: np.ndarray, centers: np.ndarray, threads: int, iters: int
) -> tuple[float, float]:
    """faiss K-means (float32 only): (T(iters) - T(1)) / (iters - 1), wall and CPU."""
    import faiss

    X32 = np.ascontiguousarray(X, dtype=np.float32)
    init = np.ascontiguousarray(centers, dtype=np.float32)

    def fit(niter: int) -> tuple[float, float]:
        km = faiss.Kmeans(
            X.shape[1], len(centers), niter=niter, max_points_per_centroid=len(X), seed=0
        )
        faiss.omp_set_num_threads(threads)
        t0, c0 = time.perf_counter(), time.process_time()
        km.train(X32, init_centroids=init)
        return time.perf_counter() - t0, time.process_time() - c0

    (t1, c1), (tn, cn) = fit(1), fit(iters)
    return (tn - t1) / (iters - 1), (cn - c1) / (iters - 1)


_FIRST_CALLS = """
import time
t0, c0 = time.perf_counter(), time.process_time()
import emdist
from emdist.kernels.kmeans import (
    KMeansParams, kmeans_estep_chunk, kmeans_labels_chunk, kmeans_transform_chunk,
)
print(f"import emdist: {time.perf_counter() - t0:.2f} s wall, {time.process_time() - c0:.2f} s CPU")
import numpy as np
X = np.random.default_rng(0).standard_normal((1000, 8))
c = X[:4].copy()
for dt in (np.float64, np.float32):
    Xd = X.astype(dt)
    for name, call in (
        ("kmeans_estep_chunk", lambda: kmeans_estep_chunk(RowBlock(Xd, 0), KMeansParams(c))),
        ("kmeans_labels_chunk", lambda: kmeans_labels_chunk(Xd, c)),
        ("kmeans_transform_chunk", lambda: kmeans_transform_chunk(Xd, c)),
    ):
        t0, c0 = time.perf_counter(), time.process_time()
        call()
        w, p = time.perf_counter() - t0, time.process_time() - c0
        print(f"first call {name} {np.dtype(dt).name}: {w:.2f} s wall, {p:.2f} s CPU")
"""


def compile_cost() -> None:
    """First-call times in fresh processes, numba cache cold then warm."""
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for state in ("cold", "warm"):
            print(f"--- {state} cache ({cache}), load average {os.getloadavg()}")
            out = subprocess.run(
                [sys.executable, "-c", _FIRST_CALLS], env=env, check=True, capture_output=True
            )
            print(out.stdout.decode(), end="")


def kernel_alone(X: np.ndarray, centers: np.ndarray, repeats: int) -> list[list[Any]]:
    """CPU seconds of the kernels alone on one thread (``time.thread_time``), chunk by chunk.

    Next to them: scikit-learn's own Lloyd step (``lloyd_iter_chunked_dense``, private) with
    one thread, and the GEMM alone (the scores of every row, in emdist's sub-blocks), the
    floor that the GEMM design shares with scikit-learn.
    """
    from sklearn.cluster._k_means_lloyd import lloyd_iter_chunked_dense

    from emdist.kernels.kmeans import _sub_block_rows

    K, d = centers.shape
    n = X.shape[0]
    rows = _sub_block_rows(K, d)
    neg2_t = np.ascontiguousarray(-2.0 * centers.T, dtype=X.dtype)
    scores = np.empty((rows, K), dtype=X.dtype)

    def gemm() -> None:
        for start in range(0, n, rows):
            block = X[start : start + rows]
            np.matmul(block, neg2_t, out=scores[: len(block)])

    c = centers.astype(X.dtype)
    weights = np.ones(n, dtype=X.dtype)
    new, wic, shift = np.empty_like(c), np.empty(K, X.dtype), np.empty(K, X.dtype)
    labels = np.empty(n, dtype=np.int32)

    def per_chunk(kernel: Callable[..., KMeansStats]) -> None:
        # As a pass calls it: once per 62 500-row chunk (the numpy reference's temporaries
        # grow with the block).
        params = KMeansParams(centers)
        for start in range(0, n, CHUNK_ROWS):
            kernel(RowBlock(X[start : start + CHUNK_ROWS], start), params)

    calls: dict[str, Callable[[], Any]] = {
        name: (lambda kernel=kernel: per_chunk(kernel)) for name, kernel in KERNELS.items()
    }
    calls["scikit-learn lloyd_iter_chunked_dense"] = lambda: lloyd_iter_chunked_dense(
        X, weights, c, new, wic, labels, shift, 1, True
    )
    calls["GEMM alone (emdist's sub-blocks)"] = gemm
    times: dict[str, list[float]] = {name: [] for name in calls}
    with threadpool_limits(1):
        for _ in range(repeats):
            for name, call in calls.items():
                t0 = time.thread_time()
                call()
                times[name].append(time.thread_time() - t0)
    tag = X.dtype.name
    return [[f"{name}, {tag}", median(v), spread(v)] for name, v in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--n-features", type=int, default=32)
    parser.add_argument("--n-clusters", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sklearn-iters", type=int, default=21)
    parser.add_argument("--compile-cost", action="store_true")
    parser.add_argument("--only-kernels", action="store_true", help="the kernel-alone table only")
    args = parser.parse_args()
    print(environment())
    if args.compile_cost:
        compile_cost()
        return
    n, d, K = args.n_samples, args.n_features, args.n_clusters
    X64 = make_blobs(n, d, K, seed=0)
    centers = X64[np.random.default_rng(1).choice(n, K, replace=False)].copy()
    try:
        import faiss  # noqa: F401

        has_faiss = True
    except ImportError:
        has_faiss = False
    contenders: list[tuple[str, Callable[[], tuple[float, float]]]] = []
    for dtype in (np.float64, np.float32):
        X = X64.astype(dtype)
        Xd = da.from_array(X, chunks=(CHUNK_ROWS, d))
        tag = np.dtype(dtype).name
        for threads in (1, 2):
            for name, kernel in KERNELS.items():
                contenders.append(
                    (
                        f"{name}, {tag}, {threads} thr",
                        lambda Xd=Xd, kernel=kernel, t=threads: emdist_iteration(
                            Xd, centers, kernel, t
                        ),
                    )
                )
            contenders.append(
                (
                    f"scikit-learn lloyd, {tag}, {threads} thr",
                    lambda X=X, t=threads: sklearn_iteration(X, centers, t, args.sklearn_iters),
                )
            )
            if has_faiss and dtype == np.float32:
                contenders.append(
                    (
                        f"faiss, {tag}, {threads} thr",
                        lambda X=X, t=threads: faiss_iteration(X, centers, t, args.sklearn_iters),
                    )
                )
    # Compile (and warm the caches) outside the timing.
    for dtype in (np.float64, np.float32):
        for kernel in KERNELS.values():
            kernel(RowBlock(X64[:1000].astype(dtype)), KMeansParams(centers))
    print(f"load average at start: {os.getloadavg()}")
    alone = kernel_alone(X64, centers, args.repeats)
    alone += kernel_alone(X64.astype(np.float32), centers, args.repeats)
    print(f"load average at end: {os.getloadavg()}")
    print(f"\nKernel alone, one thread, CPU seconds per {n} rows, median of {args.repeats}")
    print(format_table(["kernel", "CPU s", "min-max"], alone))
    if args.only_kernels:
        return
    wall: dict[str, list[float]] = {name: [] for name, _ in contenders}
    cpu: dict[str, list[float]] = {name: [] for name, _ in contenders}
    print(f"load average at start: {os.getloadavg()}")
    for _ in range(args.repeats):
        for name, run in contenders:
            w, c = run()
            wall[name].append(w)
            cpu[name].append(c)
    print(f"load average at end: {os.getloadavg()}")
    # CPU seconds (all threads of the process) are the steadier figure on a shared machine.
    rows = [
        [name, median(wall[name]), spread(wall[name]), median(cpu[name]), spread(cpu[name])]
        for name in wall
    ]
    print(f"\nSeconds per iteration, {n} x {d}, K={K}, median of {args.repeats} rounds")
    print(format_table(["contender", "wall s", "min-max", "CPU s", "min-max"], rows))


if __name__ == "__main__":
    main()
