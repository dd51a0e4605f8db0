"""Per-pass cost of ways to write one pass's reduction graph (emdist/engine/reduce.py).

A pass maps every row-block to a statistics value and adds them in a fixed tree. The graph
can be written with dask's private task specs (``dask._task_spec``: ``Task``, ``TaskRef``,
``DataNode``, what emdist used while it pinned dask 2026.8.0; needs a dask that has them) or
with public API only:

* ``legacy``: tuple tasks in a ``HighLevelGraph``; cannot reach blocks that a distributed
  client has persisted (their keys are not in the graph, so a tuple key stays a tuple);
* ``map_blocks`` (what ``emdist.engine.reduce.build_reduction`` does now):
  ``da.map_blocks`` computes each block's statistics (an object "array" never computed as
  an array), parameters and row offsets as one ``Delayed`` key each, then tuple tasks for
  the tree of sums over keys that are always in the graph;
* ``delayed``: ``dask.delayed`` per block and per sum, with precomputed key names.

Each pass runs a kernel that touches one value of its block (``X[0, 0]``), so the time is
the graph: building, scheduling, moving keys. Rounds interleave the builders; medians.

    python benchmarks/bench_pass_graph.py                    # threads and a 2-worker cluster
    python benchmarks/bench_pass_graph.py --repeats 5 --no-cluster
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import dask  # noqa: E402
import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
from dask.base import compute, tokenize  # noqa: E402
from dask.core import quote  # noqa: E402
from dask.delayed import Delayed, delayed  # noqa: E402
from dask.highlevelgraph import HighLevelGraph  # noqa: E402

from emdist.engine import reduce  # noqa: E402
from emdist.engine.threads import single_blas_task  # noqa: E402


def _sum_tree(layer: dict[Any, Any], keys: list[Any], token: str, split_every: int) -> Any:
    level = 0
    while len(keys) > 1:
        parents = []
        for j in range(0, len(keys), split_every):
            key = (f"emdist-sum-{token}", level, j // split_every)
            layer[key] = (reduce._sum_values, *keys[j : j + split_every])
            parents.append(key)
        keys = parents
        level += 1
    return keys[0]


def legacy(X: da.Array, chunk_fn: Callable[..., Any], *args: Any, split_every: int = 8) -> Any:
    token = tokenize("legacy", X.name, chunk_fn, args, split_every)
    blocks = X.to_delayed().ravel().tolist()
    layer: dict[Any, Any] = {}
    refs = []
    for i, a in enumerate(args):
        key = f"emdist-arg{i}-{token}"
        layer[key] = quote(a)
        refs.append(key)
    keys = []
    for i, (block, offset) in enumerate(zip(blocks, reduce.row_offsets(X), strict=True)):
        key = (f"emdist-stats-{token}", i)
        layer[key] = (single_blas_task, chunk_fn, block.key, offset, *refs)
        keys.append(key)
    top = _sum_tree(layer, keys, token, split_every)
    name = f"emdist-pass-{token}"
    return Delayed(
        top, HighLevelGraph.from_collections(name, layer, dependencies=blocks), layer=name
    )


def task_spec(X: da.Array, chunk_fn: Callable[..., Any], *args: Any, split_every: int = 8) -> Any:
    """emdist's graph up to dask 2026.8, with dask's private task specs."""
    from dask._task_spec import DataNode, Task, TaskRef

    token = tokenize("task_spec", X.name, chunk_fn, args, split_every)
    blocks = X.to_delayed().ravel().tolist()
    layer: dict[Any, Any] = {}
    refs: list[Any] = []
    for i, a in enumerate(args):
        key = f"emdist-arg{i}-{token}"
        layer[key] = DataNode(key, a)
        refs.append(TaskRef(key))
    keys: list[Any] = []
    for i, (block, offset) in enumerate(zip(blocks, reduce.row_offsets(X), strict=True)):
        key = (f"emdist-stats-{token}", i)
        layer[key] = Task(key, single_blas_task, chunk_fn, TaskRef(block.key), offset, *refs)
        keys.append(key)
    level = 0
    while len(keys) > 1:
        parents = []
        for j in range(0, len(keys), split_every):
            key = (f"emdist-sum-{token}", level, j // split_every)
            layer[key] = Task(
                key, reduce._sum_values, *(TaskRef(k) for k in keys[j : j + split_every])
            )
            parents.append(key)
        keys = parents
        level += 1
    name = f"emdist-pass-{token}"
    graph = HighLevelGraph.from_collections(name, layer, dependencies=blocks)
    return Delayed(keys[0], graph, layer=name)


def delayed_calls(
    X: da.Array, chunk_fn: Callable[..., Any], *args: Any, split_every: int = 8
) -> Any:
    token = tokenize("delayed", X.name, chunk_fn, args, split_every)
    blocks = X.to_delayed().ravel().tolist()
    shared = [delayed(a, pure=True, name=f"emdist-arg{i}-{token}") for i, a in enumerate(args)]
    stats = delayed(single_blas_task, pure=True)
    parts = [
        stats(chunk_fn, b, off, *shared, dask_key_name=(f"emdist-stats-{token}", i))
        for i, (b, off) in enumerate(zip(blocks, reduce.row_offsets(X), strict=True))
    ]
    add = delayed(reduce._sum_values, pure=True)
    level = 0
    while len(parts) > 1:
        parts = [
            add(*parts[j : j + split_every], dask_key_name=(f"emdist-sum-{token}", level, j))
            for j in range(0, len(parts), split_every)
        ]
        level += 1
    return parts[0]


def touch(X: np.ndarray, offset: int, params: dict[str, Any]) -> float:
    return float(X[0, 0]) + offset * 0.0 + params["w"][0] * 0.0


def _on_row_block(block: Any, chunk_fn: Callable[..., Any], *args: Any) -> Any:
    return chunk_fn(block.x, block.row_offset, *args)


def emdist_now(X: da.Array, chunk_fn: Callable[..., Any], *args: Any, split_every: int = 8) -> Any:
    """emdist's graph: the kernel receives one RowBlock (adapted to ``touch``'s signature)."""
    return reduce.build_reduction(X, _on_row_block, chunk_fn, *args, split_every=split_every)


def run_pass(builder: Callable[..., Any], X: da.Array, i: int) -> float:
    params = {"w": np.full(64, float(i))}  # new parameters every pass, as in EM
    t0 = time.perf_counter()
    compute(builder(X, touch, params))
    return time.perf_counter() - t0


def measure(builders: dict[str, Callable[..., Any]], X: da.Array, repeats: int) -> dict[str, Any]:
    expected = compute(task_spec(X, touch, {"w": np.zeros(64)}))[0]
    for name, b in builders.items():
        got = compute(b(X, touch, {"w": np.zeros(64)}))[0]
        assert got == expected, (name, got, expected)
    times: dict[str, list[float]] = {name: [] for name in builders}
    for i in range(repeats):
        for name, b in builders.items():
            times[name].append(run_pass(b, X, i))
    return times


HEADER = ["scheduler", "blocks", "graph", "ms/pass", "min-max"]


def show(rows: list[tuple[Any, ...]], what: str) -> None:
    load = os.getloadavg()[0]
    print(f"\n{what} (load average {load:.2f})\n" + _common.format_table(HEADER, rows), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-cluster", action="store_true")
    parser.add_argument("--no-threads", action="store_true")
    parser.add_argument("--cluster-repeats", type=int, default=None, help="default --repeats")
    args = parser.parse_args()
    builders = {
        "task_spec (private, before)": task_spec,
        "legacy tuples": legacy,
        "map_blocks (emdist now)": emdist_now,
        "delayed": delayed_calls,
    }
    data = np.random.default_rng(0).standard_normal((1_000_000, 32))
    cases = {"16 blocks": 62_500, "1000 blocks": 1_000}
    print(_common.environment())
    rows = []
    with dask.config.set(scheduler="threads"):
        for case in [] if args.no_threads else cases:
            chunk = cases[case]
            X = da.from_array(data, chunks=(chunk, -1), name=False)
            times = measure(builders, X, args.repeats)
            for name, t in times.items():
                rows.append(("threads", case, name, 1e3 * _common.median(t), _common.spread(t)))
            show(rows[-len(times) :], f"threads, {case}")
    if not args.no_cluster:
        from distributed import Client, LocalCluster

        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            for case, chunk in cases.items():
                # Persisted, as emdist does with in-memory data on a cluster: the blocks'
                # keys are then outside the pass's graph.
                rng = da.random.default_rng(0)
                X = rng.standard_normal((1_000_000, 32), chunks=(chunk, -1)).persist()
                builders_here = {k: v for k, v in builders.items() if k != "legacy tuples"}
                times = measure(builders_here, X, args.cluster_repeats or args.repeats)
                for name, t in times.items():
                    rows.append(
                        ("2 workers", case, name, 1e3 * _common.median(t), _common.spread(t))
                    )
                show(rows[-len(times) :], f"2 workers, {case}")
                del X
                client.cancel(list(client.futures))
    print("\nAll:\n" + _common.format_table(HEADER, rows))


if __name__ == "__main__":
    main()
