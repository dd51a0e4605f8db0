"""Cost of verifying what emdist reads: on the read floor, and on a checkpoint commit.

Read floor: the same ~1 GB float64 dataset (4M x 32, 62,500-row chunks of 16 MB) stored
twice, uncompressed: once plain, once as emdist writes it (a CRC-32C per chunk, the sealed
record of :mod:`emdist.io.integrity`). Timed, warm page cache, contenders interleaved so
drift hits them alike, best and median of ``--repeats``:

* ``plain``          ``da.from_zarr(plain).sum().compute()`` (no checksum)
* ``crc32c``         ``da.from_zarr(verified).sum().compute()`` (Zarr checks each CRC)
* ``crc32c+verify``  ``as_dask_array(verified).sum().compute()``: emdist's read path
                     (record and chunk files checked at open, CRC errors named per chunk)

Wall time on a shared 2-core machine is noisy, so the CPU time of the process (all threads,
``time.process_time``) is reported too: it is what verification adds. ``--fit`` also times
one K-means (K=16) Lloyd iteration from each store, the read-bound case of a real fit.

Checkpoint commit: ``CheckpointStore.save`` of a full-covariance GMM state (K=16, d=32,
two restarts' parameters) against the SHA-256 digests it computes, and ``load`` (which reads
and re-hashes every array).

    python benchmarks/bench_verify.py                      # 4M x 32 (~1 GB)
    python benchmarks/bench_verify.py --n-samples 1000000  # quicker
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import dask
import dask.array as da
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from emdist.io.checkpoint import (  # noqa: E402
    BestState,
    CheckpointStore,
    FitState,
    RestartState,
)
from emdist.io.integrity import array_digest, create_verified_array, seal  # noqa: E402
from emdist.io.sources import as_dask_array  # noqa: E402


def write_verified(path: Path, n: int, d: int, chunk_rows: int) -> None:
    """The blob dataset as emdist writes it (CRC-32C chunks, sealed record)."""
    arr = create_verified_array(
        path, shape=(n, d), chunks=(chunk_rows, d), dtype="float64", fill_value=0.0
    )
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        arr[start:stop] = _common.blob_rows(start, stop, d, 16, 0)
    seal(arr)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cpu_timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and process CPU seconds of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def kmeans_iteration(path: str) -> float:
    """Median seconds of one Lloyd iteration of K-means (K=16) fitted from ``path``."""
    import emdist

    seconds: list[float] = []

    def watch(state: object) -> None:
        seconds.append(state.seconds)  # type: ignore[attr-defined]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)  # a fixed count on purpose
        emdist.KMeans(16, n_init=1, max_iter=6, tol=0.0, random_state=0, observer=watch).fit(path)
    return _common.median(seconds[1:])


def read_floor(args: argparse.Namespace, root: Path) -> list[list[object]]:
    n, d, rows = args.n_samples, args.n_features, args.chunk_rows
    plain, verified = root / "plain.zarr", root / "verified.zarr"
    _common.write_zarr(
        plain, n, d, chunk_rows=rows, fill=lambda a, b: _common.blob_rows(a, b, d, 16, 0)
    )
    write_verified(verified, n, d, rows)
    contenders: dict[str, Callable[[], object]] = {
        "plain": lambda: da.from_zarr(str(plain)).sum().compute(),
        "crc32c": lambda: da.from_zarr(str(verified)).sum().compute(),
        "crc32c+verify": lambda: as_dask_array(str(verified)).sum().compute(),
    }
    sums = {name: float(fn()) for name, fn in contenders.items()}  # warm-up: page cache
    assert len(set(sums.values())) == 1, sums  # the same numbers are read every way
    times: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            wall, used = cpu_timed(fn)
            times[name].append(wall)
            cpu[name].append(used)
    nbytes = n * d * 8
    base, cpu_base = min(times["plain"]), min(cpu["plain"])
    rows: list[list[object]] = [
        [
            name,
            min(t),
            _common.median(t),
            nbytes / min(t) / 1e9,
            f"{(min(t) / base - 1) * 100:+.1f}%",
            min(cpu[name]),
            f"{(min(cpu[name]) / cpu_base - 1) * 100:+.1f}%",
        ]
        for name, t in times.items()
    ]
    if args.fit:
        # Interleaved, so that load from other processes hits both alike.
        it: dict[str, list[float]] = {"plain": [], "crc32c+verify": []}
        for _ in range(3):
            it["plain"].append(kmeans_iteration(str(plain)))
            it["crc32c+verify"].append(kmeans_iteration(str(verified)))
        rows.append(
            [
                "K-means iteration, crc32c+verify vs plain",
                min(it["crc32c+verify"]),
                _common.median(it["crc32c+verify"]),
                "",
                f"{(min(it['crc32c+verify']) / min(it['plain']) - 1) * 100:+.1f}%",
                min(it["plain"]),
                "(plain s)",
            ]
        )
    return rows


def checkpoint_commit(args: argparse.Namespace, root: Path) -> list[list[object]]:
    K, d = 16, args.n_features
    rng = np.random.default_rng(0)

    def params() -> dict[str, np.ndarray]:
        A = rng.standard_normal((K, d, d))
        return {
            "weights": np.full(K, 1 / K),
            "means": rng.standard_normal((K, d)),
            "covariances": A @ A.transpose(0, 2, 1),
            "precisions_cholesky": np.triu(A),
        }

    best = BestState(0, params(), rng.standard_normal(50), 50, True, -1.0)
    state = FitState((RestartState(1, params(), rng.standard_normal(30), False),), (0,), best)
    store = CheckpointStore(root / "ckpt", keep=2)
    store.open({"k": K}, {"n": 1})
    arrays = [*state.running[0].params.values(), *best.params.values()]
    save, digest, load = [], [], []
    for _ in range(args.repeats * 3):
        save.append(timed(lambda: store.save(state)))
        digest.append(timed(lambda: [array_digest(a) for a in arrays]))
        load.append(timed(store.load))
    s, h, lo = min(save), min(digest), min(load)
    return [
        ["save (commit)", s * 1e3, "", ""],
        ["  of which SHA-256", h * 1e3, f"{h / s * 100:.1f}%", ""],
        ["load (read + verify)", lo * 1e3, "", f"re-hash {h / lo * 100:.1f}%"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=4_000_000)
    parser.add_argument("--n-features", type=int, default=32)
    parser.add_argument("--chunk-rows", type=int, default=62_500)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--data-root", help="scratch folder (default .bench-data/)")
    parser.add_argument("--fit", action="store_true", help="also time K-means iterations")
    args = parser.parse_args()
    dask.config.set(scheduler="threads")
    with _common.scratch_dir(args.data_root) as root:
        rows = read_floor(args, root)
        print(
            f"Read floor, {args.n_samples:,} x {args.n_features} float64, "
            f"{args.chunk_rows:,}-row chunks, warm cache, best of {args.repeats}:"
        )
        header = ["read", "best s", "median s", "GB/s", "vs plain", "CPU s", "CPU vs plain"]
        print(_common.format_table(header, rows))
        print()
        rows = checkpoint_commit(args, root)
        print("Checkpoint commit of a GMM state (K=16, full covariances, with best restart):")
        print(_common.format_table(["", "best ms", "share", ""], rows))
    print()
    print(_common.environment())


if __name__ == "__main__":
    main()
