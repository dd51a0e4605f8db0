"""Where a K-means pass from a Zarr store spends its time: the timeline and each thread's CPU.

On the 400k x 32 blobs (K = 16) of ``bench_kmeans_walk.py``, written uncompressed and
zstd (level 3) in 50 000-row chunks, one process, Dask's threaded scheduler, BLAS limited
to one thread as a fit limits it:

* **cores granted**: a GIL-free numba loop on one thread and on two; the ratio is how many
  cores this process gets now (on Linux, a busy session elsewhere on the machine holds
  half of them: the scheduler shares the cores between sessions, not between threads);
* per pass (the read floor, whose kernel counts rows; the 1-restart pass with bounds kept
  beside the blocks, Lloyd iterations 6.., each on the previous bounds), wall and CPU ms
  and the **timeline shares** from ``dask.diagnostics.Profiler``: the share of the wall
  time in which a read and a kernel run at once, a read alone, a kernel alone, neither
  (graph, scheduler, sums), and two reads or two kernels at once;
* **CPU per thread** (Linux ``/proc``): Dask's worker threads (the kernels), zarr's event
  loop (``zarr_io``: it copies each chunk into the block), zarr's read and decode threads
  (``asyncio_*``: file reads, zstd) and the main thread (graph, Dask's scheduler).

    .venv/bin/python benchmarks/bench_pass_timeline.py              # ~30 s
    .venv/bin/python benchmarks/bench_pass_timeline.py --passes 30
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402
import zarr  # noqa: E402
from bench_kmeans_walk import count_rows, load, trajectories  # noqa: E402
from dask.diagnostics.profile import Profiler  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from emdist.engine.kept import KeptState  # noqa: E402
from emdist.engine.reduce import Rows, map_reduce  # noqa: E402
from emdist.io import as_dask_array  # noqa: E402
from emdist.kernels.kmeans import KMeansParams  # noqa: E402
from emdist.models.kmeans import KMeansFamily  # noqa: E402


@numba.njit(nogil=True, cache=False)
def _spin(n: int) -> float:
    s = 0.0
    for i in range(n):
        s += (i % 7) * 1e-9
    return s


def cores_granted(repeats: int = 5) -> float:
    """Cores this process gets now: two GIL-free threads' work over one thread's time."""
    _spin(10)
    n, pool = 50_000_000, ThreadPoolExecutor(2)
    one, two = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        _spin(n)
        one.append(time.perf_counter() - t)
        t = time.perf_counter()
        list(pool.map(_spin, [n, n]))
        two.append(time.perf_counter() - t)
    pool.shutdown()
    return 2 * _common.median(one) / _common.median(two)


def thread_cpu() -> dict[str, float]:
    """CPU seconds of every live thread of this process, summed by kind of thread."""
    tick = 100.0
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(task.name), "other")
        kind = {"ThreadPoolExecutor": "Dask workers", "asyncio": "zarr read/decode"}.get(
            name.split("-")[0].split("_")[0], name
        )
        out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def shares(prof: Profiler, t0: float, t1: float) -> dict[str, float]:
    """Share of [t0, t1] in which reads and kernels run, alone or together (0.1 ms grid)."""
    grid = np.arange(t0, t1, 1e-4)
    reads, kernels = np.zeros(grid.size, int), np.zeros(grid.size, int)
    for r in prof.results:
        name = r.key[0] if isinstance(r.key, tuple) else r.key
        inside = (grid >= r.start_time) & (grid < r.end_time)
        if name.startswith("from-zarr"):
            reads += inside
        elif name.startswith(("emdist-kept-stats", "emdist-stats")):
            kernels += inside
    return {
        "read + kernel": float(np.mean((reads > 0) & (kernels > 0))),
        "read alone": float(np.mean((reads > 0) & (kernels == 0))),
        "kernel alone": float(np.mean((reads == 0) & (kernels > 0))),
        "neither": float(np.mean((reads == 0) & (kernels == 0))),
        "2 reads": float(np.mean(reads > 1)),
        "2 kernels": float(np.mean(kernels > 1)),
    }


def measure(
    run: Callable[[], Any], passes: int
) -> tuple[float, float, dict[str, float], dict[str, float]]:
    """Median wall and CPU s of ``passes`` passes, mean timeline shares, CPU s per thread kind."""
    run()
    walls, cpus, timeline = [], [], []
    before, start = thread_cpu(), resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(passes):
        with Profiler() as prof:
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            t1, c1 = time.perf_counter(), time.process_time()
        walls.append(t1 - t0)
        cpus.append(c1 - c0)
        timeline.append(shares(prof, t0, t1))
    after, end = thread_cpu(), resource.getrusage(resource.RUSAGE_SELF)
    per_thread = {k: (v - before.get(k, 0.0)) / passes for k, v in after.items()}
    per_thread["system (all threads)"] = (end.ru_stime - start.ru_stime) / passes
    mean = {k: float(np.mean([s[k] for s in timeline])) for k in timeline[0]}
    return _common.median(walls), _common.median(cpus), mean, per_thread


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-samples", type=int, default=400_000)
    p.add_argument("--n-features", type=int, default=32)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--chunk-rows", type=int, default=50_000)
    p.add_argument("--passes", type=int, default=15)
    args = p.parse_args()
    n, d, K = args.n_samples, args.n_features, args.k
    print(_common.environment())
    print(f"load {load()} at the start; cores granted to this process: {cores_granted():.2f}")
    family = KMeansFamily()
    rows, threads = [], []
    with _common.scratch_dir() as tmp, threadpool_limits(limits=1):
        data = _common.make_blobs(n, d, K, seed=0)
        plain, packed = str(tmp / "plain.zarr"), str(tmp / "zstd.zarr")
        _common.write_zarr(plain, n, d, chunk_rows=args.chunk_rows, fill=data)
        zarr.create_array(
            packed, data=data, chunks=(args.chunk_rows, d), compressors=zarr.codecs.ZstdCodec()
        )
        rng = np.random.default_rng(1)
        start = KMeansParams(data[np.sort(rng.choice(n, K, replace=False))])
        path = trajectories(data, [start], 12)[0]
        del data
        for label, store in (("uncompressed", plain), ("zstd", packed)):
            kept = KeptState(family.kept_bytes_per_row, limit=1 << 40)
            kept.run(Rows(as_dask_array(store)), family.estep_kept, [path[5]], [0])
            at = [5]

            def bounded(store: str = store, kept: KeptState = kept, at: list[int] = at) -> Any:
                at[0] = 6 + (at[0] - 5) % 6  # iterations 6..11, each on the last bounds
                return kept.run(Rows(as_dask_array(store)), family.estep_kept, [path[at[0]]], [0])

            def floor(store: str = store) -> Any:
                return map_reduce(as_dask_array(store), count_rows)

            for name, run in (("read floor", floor), ("1 restart, bounds", bounded)):
                wall, cpu, timeline, per_thread = measure(run, args.passes)
                rows.append(
                    [f"{label}: {name}", f"{1e3 * wall:.1f}", f"{1e3 * cpu:.1f}"]
                    + [f"{100 * v:.0f}%" for v in timeline.values()]
                )
                threads.append(
                    [f"{label}: {name}"]
                    + [f"{1e3 * per_thread.get(k, 0.0):.1f}" for k in THREAD_KINDS]
                )
    print(f"\nOne pass, {n} x {d}, K={K}, chunks of {args.chunk_rows} rows, {args.passes} passes:")
    print(_common.format_table(["pass", "wall ms", "CPU ms", *timeline], rows))
    print("\nCPU ms per pass, by thread:")
    print(_common.format_table(["pass", *THREAD_KINDS], threads))
    print(f"\nload {load()} at the end; cores granted to this process: {cores_granted():.2f}")


THREAD_KINDS = ("Dask workers", "zarr_io", "zarr read/decode", "MainThread", "system (all threads)")

if __name__ == "__main__":
    main()
