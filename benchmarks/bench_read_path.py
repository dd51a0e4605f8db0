"""The read floor: the time to merely read a Zarr store, one pass, the way emdist reads it.

A "pass" here is emdist's own pass (``emdist.engine.reduce.map_reduce`` over
``emdist.io.as_dask_array(path)``) with a kernel that only counts the rows of its block: the
time is opening nothing, reading every stored chunk once, the graph and the scheduler. The
store is 1M x 32 float64 (256 MB), uncompressed Zarr v3, as ``emdist ingest`` and
``emdist generate`` write it by default. Sections (``--parts``):

* ``zarr``: zarr's ``async.concurrency`` and ``threading.max_workers``, Dask's thread count
  (threaded scheduler);
* ``blocks``: a store in 50-row chunks read one Dask block per stored chunk (emdist before
  it grouped chunks) and grouped into blocks of 1-64 MiB, beside 3,000- and 62,500-row
  chunks (threaded scheduler);
* ``cluster``: a 2-worker LocalCluster (one thread each) with ``MALLOC_TRIM_THRESHOLD_``
  unset, at distributed's 65536 and at 1 GiB in the workers, against threads;
* ``kmeans``: a K-means fit (K = 16, 10 iterations from fixed centres) of the 50-row store
  and of the 62,500-row store, on threads.

Rounds interleave the contenders; medians (min-max) are printed, with the load average.

    python benchmarks/bench_read_path.py                      # everything
    python benchmarks/bench_read_path.py --parts cluster --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import dask  # noqa: E402
import numpy as np  # noqa: E402
import zarr  # noqa: E402

import emdist  # noqa: E402
from emdist.engine.reduce import map_reduce  # noqa: E402
from emdist.io import as_dask_array  # noqa: E402
from emdist.io.chunking import BLOCK_SIZE_CONFIG  # noqa: E402
from emdist.kernels.rows import RowBlock  # noqa: E402

N, D = 1_000_000, 32
MALLOC = "MALLOC_TRIM_THRESHOLD_"


def count_rows(block: RowBlock) -> int:
    """The kernel of a read-only pass: the block must have been read to be counted."""
    return block.n_rows


def read_pass(path: str) -> float:
    """Seconds of one pass that reads every row of ``path``."""
    t0 = time.perf_counter()
    rows = map_reduce(as_dask_array(path), count_rows)
    elapsed = time.perf_counter() - t0
    assert rows == N, rows
    return elapsed


def write_store(path: Path, data: np.ndarray, chunk_rows: int) -> str:
    """An uncompressed Zarr v3 copy of ``data`` in ``chunk_rows``-row chunks."""
    zarr.create_array(str(path), data=data, chunks=(chunk_rows, D), compressors=None, zarr_format=3)
    return str(path)


def interleave(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run every contender once per round, ``repeats`` rounds, after one warm-up each."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            times[name].append(fn())
    return times


def report(title: str, times: dict[str, list[float]], unit: float = 1e3) -> None:
    load = os.getloadavg()[0]
    rows = [
        (name, unit * _common.median(t), _common.spread([unit * x for x in t]))
        for name, t in times.items()
    ]
    print(f"\n{title} (load average {load:.2f} at the end)")
    print(_common.format_table(["contender", "ms" if unit == 1e3 else "s", "min-max"], rows))


def with_config(fn: Callable[[], float], **config: Any) -> Callable[[], float]:
    def run() -> float:
        with dask.config.set(config):
            return fn()

    return run


def with_zarr(fn: Callable[[], float], settings: dict[str, Any]) -> Callable[[], float]:
    def run() -> float:
        with zarr.config.set(settings):
            return fn()

    return run


def part_zarr(stores: dict[int, str], repeats: int) -> None:
    path = stores[62_500]
    base = lambda: read_pass(path)  # noqa: E731
    contenders: dict[str, Callable[[], float]] = {
        "defaults (2 Dask threads, concurrency 10, max_workers None)": base,
    }
    for c in (1, 4, 64):
        contenders[f"async.concurrency={c}"] = with_zarr(base, {"async.concurrency": c})
    for w in (1, 2, 4):
        contenders[f"threading.max_workers={w}"] = with_zarr(base, {"threading.max_workers": w})
    for t in (1, 4):
        contenders[f"{t} Dask threads"] = with_config(base, scheduler="threads", num_workers=t)
    report(
        "zarr and Dask thread settings, 62,500-row chunks (16 blocks), threads",
        interleave(contenders, repeats),
    )


def part_blocks(stores: dict[int, str], repeats: int) -> None:
    contenders: dict[str, Callable[[], float]] = {
        "62,500-row chunks (16 MB)": lambda: read_pass(stores[62_500]),
        "3,000-row chunks, grouped (default)": lambda: read_pass(stores[3_000]),
        "50-row chunks, grouped (default)": lambda: read_pass(stores[50]),
    }
    for mib in (1, 4, 64):
        contenders[f"50-row chunks, blocks of <= {mib} MiB"] = with_config(
            lambda: read_pass(stores[50]), **{BLOCK_SIZE_CONFIG: mib * 2**20}
        )
    report("Block size, threads", interleave(contenders, repeats))
    # One block per 50-row chunk (20,000 tasks) is slow: timed once, apart.
    one = with_config(lambda: read_pass(stores[50]), **{BLOCK_SIZE_CONFIG: 1})
    report("50-row chunks, one block per chunk (20,000 tasks), threads", {"one run": [one()]})
    one = with_config(lambda: read_pass(stores[3_000]), **{BLOCK_SIZE_CONFIG: 1})
    report(
        "3,000-row chunks, one block per chunk (334 tasks), threads",
        interleave({"3,000": one}, repeats),
    )


def _env(name: str) -> str | None:
    return os.environ.get(name)


@contextlib.contextmanager
def cluster_with_malloc(value: str | None) -> Iterator[Any]:
    """A 2-worker LocalCluster whose workers start with ``MALLOC_TRIM_THRESHOLD_=value``."""
    from distributed import Client, LocalCluster

    saved = os.environ.pop(MALLOC, None)
    if value is not None:
        os.environ[MALLOC] = value
    env = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}
    try:
        with (
            dask.config.set({"distributed.nanny.pre-spawn-environ": env}),
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster, set_as_default=False) as client,
        ):
            got = set(client.run(_env, MALLOC).values())
            assert got == {value}, got
            yield client
    finally:
        os.environ.pop(MALLOC, None)
        if saved is not None:
            os.environ[MALLOC] = saved


def part_cluster(stores: dict[int, str], repeats: int) -> None:
    with contextlib.ExitStack() as stack:
        clients = {
            "unset": stack.enter_context(cluster_with_malloc(None)),
            "65536 (distributed's default)": stack.enter_context(cluster_with_malloc("65536")),
            "1 GiB": stack.enter_context(cluster_with_malloc(str(2**30))),
        }
        contenders: dict[str, Callable[[], float]] = {"threads": lambda: read_pass(stores[62_500])}
        for name, client in clients.items():

            def run(client: Any = client, path: str = stores[62_500]) -> float:
                with client.as_current():
                    return read_pass(path)

            contenders[f"2 workers, MALLOC_TRIM_THRESHOLD_ {name}"] = run
        for name, client in clients.items():

            def run50(client: Any = client, path: str = stores[50]) -> float:
                with client.as_current():
                    return read_pass(path)

            contenders[f"2 workers, 50-row chunks, MALLOC_TRIM_THRESHOLD_ {name}"] = run50
        report(
            "Threads vs a 2-worker LocalCluster, 62,500-row chunks", interleave(contenders, repeats)
        )


def part_kmeans(stores: dict[int, str], repeats: int) -> None:
    init = _common.make_blobs(16, D, 16, seed=1)

    def fit(path: str) -> float:
        km = emdist.KMeans(16, init=init, n_init=1, max_iter=10, tol=0.0)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            km.fit(path)
        return time.perf_counter() - t0

    contenders = {
        "read floor, 62,500-row chunks (1 pass)": lambda: read_pass(stores[62_500]),
        "K-means 10 iter, 62,500-row chunks": lambda: fit(stores[62_500]),
        "K-means 10 iter, 50-row chunks": lambda: fit(stores[50]),
    }
    report(
        "K-means fit (12 passes: scan, 10 iterations, final labels), threads",
        interleave(contenders, repeats),
        unit=1,
    )


PARTS = {"zarr": part_zarr, "blocks": part_blocks, "cluster": part_cluster, "kmeans": part_kmeans}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"any of {','.join(PARTS)}")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--data-root", default=None, help="scratch folder (default .bench-data/)")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    print(_common.environment(), flush=True)
    data = _common.make_blobs(N, D, 16)
    with _common.scratch_dir(args.data_root) as tmp:
        stores = {
            rows: write_store(tmp / f"c{rows}.zarr", data, rows) for rows in (62_500, 3_000, 50)
        }
        del data
        with dask.config.set(scheduler="threads"):
            for part in parts:
                PARTS[part](stores, args.repeats)


if __name__ == "__main__":
    main()
