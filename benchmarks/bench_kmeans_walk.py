"""K-means from a Zarr store: restarts in one walk, a pass against the read floor, weights.

In one process, on the same 400k x 32 blobs (K = 16) written twice — uncompressed and zstd
(level 3), 50 000-row chunks — interleaved rounds time:

* **read floor**: a pass that only reads every chunk (emdist's own pass, whose kernel
  counts the rows: read + decompress, no compute);
* **through Zarr**: the floor and the 1-restart passes with every chunk read through
  Zarr (``emdist.direct-read`` off) instead of from the chunk files; each pass is also
  given against this floor ("/ Zarr's read floor"), the cost of reading the store as any
  other tool reads it;
* **pass, 1 restart**: one K-means iteration's pass (``map_reduce`` of the E-step);
* **pass, 8 restarts in one walk**: the shared pass of 8 restarts, handed to
  ``KMeansFamily.estep_many`` (one walk over each block for all of them);
* **pass, 8 restarts one kernel each**: the same shared pass with a family that has no
  ``estep_many`` (each restart's kernel walks the block on its own: what ran before);
* **with bounds**: the 1-restart and 8-restart passes with Hamerly's bounds kept beside
  the blocks (``emdist.engine.kept``): each call runs the next Lloyd iteration's pass
  (from ``--bounds-from``) on the bounds the previous call left; "rows scored" is the
  share whose bounds failed;
* **in-memory Dask**: the same passes on the data held as an in-memory Dask array;
* **weighted pass**: the 1-restart pass with ``sample_weight`` (uncompressed store), the
  weights held as a fit holds in-memory weights (``align_per_row``: whole, sliced inside
  each block's task), and as per-block Dask weights (a task per block: what a fit ran
  before);
* **fits**: ``KMeans(n_init=1)`` and ``KMeans(n_init=8)``, with and without bounds
  (``emdist.kept-state-bytes`` 0), from the zstd store, k-means++
  starts, ``tol=0``, ``max_iter`` fixed (20 by default: every restart runs its whole
  budget, so the two differ in what a pass costs, not in the iterations a restart needs).

Every restart's statistics from the walk are checked equal, bit for bit, to its lone
E-step's. Medians (min-max) of the rounds, wall and process CPU seconds; the load average
before and after.

``--skip-fits`` times instead whole fits, ``KMeans(n_init=1, tol=0, max_iter=...)`` from
each store, with and without unread blocks (``emdist.kept-skip``: a pass leaves unread the
blocks whose kept bounds prove every label), on the blobs as drawn (rows shuffled) and
sorted by their nearest blob (each block holds few clusters, as data stored by region or
time): wall per iteration against the read floor (fit wall / (n_iter x floor): the scan,
the start's passes and the final pass included) and the blocks each pass read
(``--init``: random rows by default, so that the fits run many iterations;
``--spread``: the blobs moved apart by this factor, as clusters that overlap less).

``--kernels`` times instead the kernels alone on the in-memory block, one thread, CPU
seconds: one restart, 8 restarts as 8 kernel calls, 8 restarts in one walk, and one and 8
restarts with bounds (Lloyd's iterations 6..11, each on the previous one's bounds).

    .venv/bin/python benchmarks/bench_kmeans_walk.py                    # ~5 min
    .venv/bin/python benchmarks/bench_kmeans_walk.py --repeats 3 --n-samples 100000
    .venv/bin/python benchmarks/bench_kmeans_walk.py --kernels
    .venv/bin/python benchmarks/bench_kmeans_walk.py --skip-fits --fit-repeats 3
    .venv/bin/python benchmarks/bench_kmeans_walk.py --weights --repeats 15   # weights only
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import dask  # noqa: E402
import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
import zarr  # noqa: E402

import emdist  # noqa: E402
from emdist.engine.data import align_per_row  # noqa: E402
from emdist.engine.kept import KeptState  # noqa: E402
from emdist.engine.lockstep import shared_pass  # noqa: E402
from emdist.engine.reduce import Rows, map_reduce  # noqa: E402
from emdist.engine.threads import blas_single_threaded  # noqa: E402
from emdist.io import as_dask_array  # noqa: E402
from emdist.kernels.kmeans import (  # noqa: E402
    KMeansParams,
    KMeansStats,
    kmeans_estep_chunk,
    kmeans_estep_many,
    kmeans_mstep,
)
from emdist.kernels.rows import RowBlock  # noqa: E402
from emdist.models.kmeans import KMeansFamily  # noqa: E402


@dataclass(frozen=True)
class OneKernelEach:
    """K-means without ``estep_many``: a shared pass calls each restart's kernel alone."""

    def estep_chunk(self, block: RowBlock, params: KMeansParams) -> KMeansStats:
        return kmeans_estep_chunk(block, params)


def count_rows(block: RowBlock) -> int:
    """The kernel of a read-only pass: the block must have been read to be counted."""
    return block.n_rows


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall s, process CPU s) of one call: CPU time is what a loaded machine disturbs least."""
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-samples", type=int, default=400_000)
    p.add_argument("--n-features", type=int, default=32)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--chunk-rows", type=int, default=50_000)
    p.add_argument("--n-init", type=int, default=8)
    p.add_argument("--max-iter", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5, help="rounds of the passes")
    p.add_argument("--fit-repeats", type=int, default=3, help="rounds of the fits")
    p.add_argument("--kernels", action="store_true", help="the kernels alone, in memory")
    p.add_argument(
        "--bounds-from", type=int, default=5, help="Lloyd iteration the bounded passes start at"
    )
    p.add_argument(
        "--weights",
        action="store_true",
        help="only the uncompressed store's floor, 1-restart pass and weighted passes",
    )
    p.add_argument(
        "--skip-fits", action="store_true", help="whole fits with and without unread blocks"
    )
    p.add_argument("--init", default="random", help="the --skip-fits fits' init")
    p.add_argument(
        "--spread", type=float, default=1.0, help="--skip-fits: blob means scaled by this"
    )
    args = p.parse_args()
    n, d, K, R = args.n_samples, args.n_features, args.k, args.n_init
    print(_common.environment())
    if args.skip_fits:
        skip_fits(n, d, K, args.chunk_rows, args.max_iter, args.fit_repeats, args.init, args.spread)
        return
    if args.kernels:
        kernels(n, d, K, R, args.repeats)
        return
    # BLAS at one thread per Dask thread, as a fit runs its passes (emdist.engine.threads).
    with _common.scratch_dir() as tmp, blas_single_threaded():
        data = _common.make_blobs(n, d, K, seed=0)
        plain, packed = str(tmp / "plain.zarr"), str(tmp / "zstd.zarr")
        _common.write_zarr(plain, n, d, chunk_rows=args.chunk_rows, fill=data)
        zarr.create_array(
            packed, data=data, chunks=(args.chunk_rows, d), compressors=zarr.codecs.ZstdCodec()
        )
        rng = np.random.default_rng(1)
        starts = [KMeansParams(data[np.sort(rng.choice(n, K, replace=False))]) for _ in range(R)]
        weights = rng.uniform(0.5, 2.0, n)
        del data
        family, alone = KMeansFamily(), OneKernelEach()

        # The walk gives each restart its lone statistics, bit for bit.
        X = as_dask_array(packed)
        walked = shared_pass(X, [(family, s) for s in starts])
        for s, got in zip(starts, walked, strict=True):
            want = map_reduce(X, family.estep_chunk, s)
            assert got.inertia == want.inertia and np.array_equal(got.sx, want.sx)
            assert np.array_equal(got.counts, want.counts)
            assert np.array_equal(got.far_row, want.far_row)

        # Lloyd's centres, iteration after iteration, for the passes with bounds: each call
        # runs the next iteration's pass on the bounds the previous call left.
        in_memory = np.asarray(zarr.open_array(packed, mode="r")[:])
        paths = trajectories(in_memory, starts, args.bounds_from + args.repeats + 2)
        scored: dict[str, list[float]] = {}

        def passes(source: Callable[[], da.Array]) -> dict[str, Callable[[], Any]]:
            def run(fn: Callable[[da.Array], Any]) -> Callable[[], Any]:
                return lambda: fn(source())

            return {
                "read floor": run(lambda X: map_reduce(X, count_rows)),
                "pass, 1 restart": run(lambda X: map_reduce(X, family.estep_chunk, starts[0])),
                "pass, 1 restart, bounds": Bounded(source, paths[:1], args.bounds_from, scored),
                f"pass, {R} restarts in one walk": run(
                    lambda X: shared_pass(X, [(family, s) for s in starts])
                ),
                f"pass, {R} restarts in one walk, bounds": Bounded(
                    source, paths, args.bounds_from, scored
                ),
                f"pass, {R} restarts one kernel each": run(
                    lambda X: shared_pass(X, [(alone, s) for s in starts])
                ),
            }

        def from_store(path: str, direct: bool = True) -> Callable[[], da.Array]:
            def open_() -> da.Array:
                with dask.config.set({"emdist.direct-read": direct}):
                    return as_dask_array(path)

            return open_

        held = da.from_array(in_memory, chunks=(args.chunk_rows, d))
        contenders: dict[str, Callable[[], Any]] = {}
        labels = {
            "uncompressed": from_store(plain),
            "uncompressed, through Zarr": from_store(plain, direct=False),
            "zstd": from_store(packed),
            "zstd, through Zarr": from_store(packed, direct=False),
            "in-memory Dask": lambda: held,
        }
        for label, source in labels.items():
            for name, fn in passes(source).items():
                if args.weights and (label != "uncompressed" or "restarts" in name):
                    continue
                if label.endswith("through Zarr") and "restarts" in name:
                    continue  # Zarr's read path, against one restart's pass is enough
                contenders[f"{label}: {name}"] = fn
                if isinstance(fn, Bounded):
                    fn.name = f"{label}: {name}"
        # As a fit holds in-memory weights of store data: made once, whole.
        whole = align_per_row(as_dask_array(plain), {"weights": weights})

        def weighted() -> Any:
            X = as_dask_array(plain)
            return map_reduce(Rows(X, whole), family.estep_chunk, starts[0])

        def weighted_per_block() -> Any:
            X = as_dask_array(plain)
            w = da.from_array(weights, chunks=(X.chunks[0],))
            return map_reduce(Rows(X, {"weights": w}), family.estep_chunk, starts[0])

        contenders["uncompressed: pass, 1 restart, weighted"] = weighted
        contenders["uncompressed: pass, 1 restart, weighted per block (before)"] = (
            weighted_per_block
        )
        times, cpu = interleave(contenders, args.repeats)
        rows = []
        for label in labels:
            floor = f"{label}: read floor"
            if floor not in times:
                continue
            # The floor of reading the store through Zarr, as any other tool reads it.
            store = label.split(",")[0]
            zarr_floor = f"{store}, through Zarr: read floor"
            for name in contenders:
                if name.startswith(f"{label}:"):
                    base = (_common.median(times[floor]), _common.median(cpu[floor]))
                    share = scored.get(name)
                    wall = _common.median(times[name])
                    rows.append(
                        [
                            name,
                            *cells(times[name], cpu[name], *base),
                            f"{wall / _common.median(times[zarr_floor]):.2f}x"
                            if zarr_floor in times
                            else "",
                            "" if not share else f"{100 * _common.median(share):.1f}%",
                        ]
                    )
        print(f"\nOne pass, {n} x {d}, K={K}, chunks of {args.chunk_rows} rows:")
        print(
            f"(bounds: passes of Lloyd iterations {args.bounds_from}.."
            f"{args.bounds_from + args.repeats}, each on the bounds the previous one left)"
        )
        header = [
            "pass",
            "wall s",
            "/ read floor",
            "CPU s",
            "/ read floor CPU",
            "/ Zarr's read floor",
            "rows scored",
        ]
        print(_common.format_table(header, rows))
        if args.weights:
            print(f"\nload {load()} at the end")
            return

        def fit(n_init: int, bounds: bool) -> Callable[[], Any]:
            def run() -> Any:
                km = emdist.KMeans(
                    K, n_init=n_init, tol=0.0, max_iter=args.max_iter, random_state=0
                )
                with dask.config.set({} if bounds else {"emdist.kept-state-bytes": 0}):
                    km.fit(packed)
                iters[n_init] = int(km.n_iter_)
                return km

            return run

        iters: dict[int, int] = {}
        fits, fits_cpu = interleave(
            {
                f"n_init={m}{'' if b else ', no bounds'}": fit(m, b)
                for m in (1, R)
                for b in (True, False)
            },
            args.fit_repeats,
        )
        base = (_common.median(fits["n_init=1"]), _common.median(fits_cpu["n_init=1"]))
        print(f"\nFits from the zstd store, k-means++, tol=0, max_iter={args.max_iter}:")
        rows = [
            [name, *cells(ts, fits_cpu[name], *base), iters[int(name.split("=")[1].split(",")[0])]]
            for name, ts in fits.items()
        ]
        header = ["fit", "wall s", "vs n_init=1", "CPU s", "vs n_init=1 CPU", "n_iter_"]
        print(_common.format_table(header, rows))
    print(f"\nload {load()} at the end")


def skip_fits(
    n: int,
    d: int,
    K: int,
    chunk_rows: int,
    max_iter: int,
    repeats: int,
    init_: str,
    spread: float,
) -> None:
    """Whole fits from each store, with and without unread blocks (``--skip-fits``)."""
    made: list[KeptState] = []
    init = KeptState.__init__

    def record(self: KeptState, *a: Any, **kw: Any) -> None:
        init(self, *a, **kw)
        made.append(self)

    KeptState.__init__ = record  # type: ignore[method-assign]
    with _common.scratch_dir() as tmp, blas_single_threaded():
        data = _common.make_blobs(n, d, K, seed=0)
        _, means, _ = _common.blob_parameters(d, K, 0)
        nearest = np.argmin(((data[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)
        # The blobs moved apart (each row with its nearest blob's mean), shapes kept.
        data += (spread - 1.0) * means[nearest]
        stores: dict[str, str] = {}
        for order, rows in (
            ("shuffled", data),
            ("sorted", data[np.argsort(nearest, kind="stable")]),
        ):
            plain, packed = str(tmp / f"{order}.zarr"), str(tmp / f"{order}-zstd.zarr")
            _common.write_zarr(plain, n, d, chunk_rows=chunk_rows, fill=rows)
            zarr.create_array(
                packed, data=rows, chunks=(chunk_rows, d), compressors=zarr.codecs.ZstdCodec()
            )
            stores[f"{order}, uncompressed"] = plain
            stores[f"{order}, zstd"] = packed
        del data
        outcome: dict[str, tuple[int, list[int]]] = {}

        def fit(path: str, skip: bool, name: str) -> Callable[[], Any]:
            def run() -> Any:
                made.clear()
                km = emdist.KMeans(
                    K, n_init=1, init=init_, tol=0.0, max_iter=max_iter, random_state=0
                )
                with warnings.catch_warnings(), dask.config.set({"emdist.kept-skip": skip}):
                    warnings.simplefilter("ignore")
                    km.fit(path)
                outcome[name] = (int(km.n_iter_), list(made[-1].blocks_read))
                return km

            return run

        def floor_of(path: str) -> Callable[[], Any]:
            return lambda: map_reduce(as_dask_array(path), count_rows)

        contenders: dict[str, Callable[[], Any]] = {}
        for label, path in stores.items():
            contenders[f"{label}: read floor"] = floor_of(path)
            for skip in (False, True):
                name = f"{label}: fit{', unread blocks' if skip else ''}"
                contenders[name] = fit(path, skip, name)
        times, cpu = interleave(contenders, repeats)
        table = []
        for label in stores:
            floor = _common.median(times[f"{label}: read floor"])
            for skip in (False, True):
                name = f"{label}: fit{', unread blocks' if skip else ''}"
                iters, read = outcome[name]
                wall = _common.median(times[name])
                table.append(
                    [
                        name,
                        f"{wall:.2f} ({_common.spread(times[name])})",
                        iters,
                        f"{wall / (iters * floor):.2f}x",
                        " ".join(map(str, read)),
                    ]
                )
        print(
            f"\nFits, {n} x {d}, K={K}, chunks of {chunk_rows} rows, spread {spread}, "
            f"init={init_}, tol=0, max_iter={max_iter}:"
        )
        header = ["fit", "wall s", "n_iter_", "/ (n_iter x floor)", "blocks read per pass"]
        print(_common.format_table(header, table))
    print(f"\nload {load()} at the end")


def trajectories(
    X: np.ndarray, starts: list[KMeansParams], iterations: int
) -> list[list[KMeansParams]]:
    """Every restart's parameters at Lloyd's iterations 1, 2, ... (plain passes in memory)."""
    paths: list[list[KMeansParams]] = [[s] for s in starts]
    block = RowBlock(X, 0)
    for _ in range(iterations):
        stats = kmeans_estep_many(block, [path[-1] for path in paths])
        for path, st in zip(paths, stats, strict=True):
            path.append(kmeans_mstep(st)[0])
    return paths


class Bounded:
    """A pass with Hamerly's bounds: each call runs the next Lloyd iteration's pass on the
    bounds the previous call left (the first call, the warm-up, starts them at
    ``from_iteration``). Records the share of rows scored against every centre."""

    def __init__(
        self,
        source: Callable[[], da.Array],
        paths: list[list[KMeansParams]],
        from_iteration: int,
        scored: dict[str, list[float]],
    ) -> None:
        self.source, self.paths, self.scored = source, paths, scored
        self.kept = KeptState(KMeansFamily.kept_bytes_per_row, limit=1 << 40)
        self.t = from_iteration - 1
        self.name = ""
        family = KMeansFamily()
        X = source()
        # The bounds as the iteration before the first timed one left them.
        self.kept.run(Rows(X), family.estep_kept, [p[self.t] for p in paths], self.tags)

    @property
    def tags(self) -> list[int]:
        return list(range(len(self.paths)))

    def __call__(self) -> Any:
        self.record()
        self.t += 1
        X = self.source()
        family = KMeansFamily()
        return self.kept.run(Rows(X), family.estep_kept, [p[self.t] for p in self.paths], self.tags)

    def record(self) -> None:
        """The share of rows the last pass scored (read from the kept values, no compute)."""
        kept = self.kept._states
        assert kept is not None
        graph = dict(kept.__dask_graph__())
        states = []
        for (key,) in kept.__dask_keys__():
            value = graph[key]
            states.append(getattr(value, "value", value))
        rows = sum(s.labels.size for s in states)
        self.scored.setdefault(self.name, []).append(sum(s.scored for s in states) / rows)


def kernels(n: int, d: int, K: int, R: int, repeats: int) -> None:
    """The E-step kernels alone on one in-memory block, one BLAS thread, CPU seconds."""
    import threadpoolctl

    from emdist.kernels import kmeans as kernel

    data = _common.make_blobs(n, d, K, seed=0)
    rng = np.random.default_rng(1)
    starts = [KMeansParams(data[np.sort(rng.choice(n, K, replace=False))]) for _ in range(R)]
    block = RowBlock(data, 0)
    paths = trajectories(data, starts, 12)
    kept: dict[int, Any] = {}

    def bounded(restarts: int) -> Callable[[], Any]:
        """Iterations 6, 7, ... of ``restarts`` restarts, each on the previous one's bounds."""
        tags = list(range(restarts))
        at = [5]
        _, kept[restarts] = kernel.kmeans_estep_bounded(
            block, [p[5] for p in paths[:restarts]], tags, None
        )

        def run() -> Any:
            at[0] = 6 + (at[0] - 5) % 6
            stats, kept[restarts] = kernel.kmeans_estep_bounded(
                block, [p[at[0]] for p in paths[:restarts]], tags, kept[restarts]
            )
            return stats

        return run

    contenders: dict[str, Callable[[], Any]] = {
        "1 restart": lambda: kernel.kmeans_estep_chunk(block, starts[0]),
        f"{R} restarts, {R} kernel calls": lambda: [
            kernel.kmeans_estep_chunk(block, s) for s in starts
        ],
        f"{R} restarts in one walk": lambda: kernel.kmeans_estep_many(block, starts),
        "1 restart, bounds": bounded(1),
        f"{R} restarts in one walk, bounds": bounded(R),
    }
    with threadpoolctl.threadpool_limits(limits=1):
        kernel.kmeans_estep_many(RowBlock(data[:1000], 0), starts)
        _, cpu = interleave(contenders, repeats)
    one = _common.median(cpu["1 restart"])
    rows = [
        [name, f"{1e3 * _common.median(ts):.1f} ({_common.spread([1e3 * t for t in ts])})",
         f"{_common.median(ts) / one:.2f}x"]
        for name, ts in cpu.items()
    ]  # fmt: skip
    print(f"\nE-step kernels, {n} x {d} in memory, K={K}, one thread:")
    print(_common.format_table(["kernel", "CPU ms", "vs 1 restart"], rows))
    print(f"\nload {load()} at the end")


def interleave(
    contenders: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds of every contender, once per round (after one warm-up each),
    the order rotating."""
    for fn in contenders.values():
        timed(fn)
    names = list(contenders)
    print(f"load {load()} at the start")
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            w, c = timed(contenders[name])
            wall[name].append(w)
            cpu[name].append(c)
    return wall, cpu


def cells(times: list[float], cpu: list[float], base: float, base_cpu: float) -> list[str]:
    """Wall median (min-max), its ratio to ``base``; CPU median, its ratio to ``base_cpu``."""
    med, med_cpu = _common.median(times), _common.median(cpu)
    return [
        f"{med:.3f} ({_common.spread(times)})",
        f"{med / base:.2f}x",
        f"{med_cpu:.3f}",
        f"{med_cpu / base_cpu:.2f}x",
    ]


if __name__ == "__main__":
    main()
