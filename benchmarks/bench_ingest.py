"""Ingest and read throughput of Zarr datasets made by ``emdist.io.ingest``.

What it measures (warm page cache: every file was just written, so this is CPU and memory
bandwidth, not the disk):

1. Ingest throughput in MB/s of source file, for .npy, CSV and Parquet sources, next to a
   plain ``shutil.copyfile`` of the same file: the floor any conversion is compared with.
2. Read throughput of the ingested store, ``da.from_zarr(p).sum().compute()``, in GB/s of
   float64 values, next to reading the raw .npy (``np.load(p).sum()``), for no compression,
   zstd and blosc-lz4, with the size on disk of each.

Run::

    .venv/bin/python benchmarks/bench_ingest.py                # 256 MB of float64 values
    .venv/bin/python benchmarks/bench_ingest.py --size-mb 64 --features 32 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emdist.io.ingest import ingest  # noqa: E402

GEN_ROWS = 65_536


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls: the machine's speed, not its neighbours' load."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def make_sources(root: Path, n: int, d: int) -> dict[str, Path]:
    """The same values as .npy, CSV and Parquet, written block by block."""
    rng = np.random.default_rng(0)
    npy = root / "data.npy"
    out = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float64, shape=(n, d))
    names = [f"f{j}" for j in range(d)]
    schema = pa.schema([(name, pa.float64()) for name in names])
    with (
        pq.ParquetWriter(root / "data.parquet", schema) as pw,
        pacsv.CSVWriter(root / "data.csv", schema) as cw,
    ):
        for start in range(0, n, GEN_ROWS):
            block = rng.standard_normal((min(GEN_ROWS, n - start), d)) * 10.0 + 3.0
            out[start : start + len(block)] = block
            table = pa.table({name: block[:, j] for j, name in enumerate(names)})
            pw.write_table(table)  # one row group per block: 64k rows
            cw.write_table(table)
    out.flush()
    del out
    return {"npy": npy, "csv": root / "data.csv", "parquet": root / "data.parquet"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=256.0, help="float64 data size (MB)")
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many copies and reads")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory")
    parser.add_argument(
        "--skip-numpy-csv",
        action="store_true",
        help="skip the (slow) numpy CSV engine",
    )
    args = parser.parse_args()

    d = args.features
    n = max(1, int(args.size_mb * 1e6 / (d * 8)))
    data_mb = n * d * 8 / 1e6
    root = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=args.dir))
    print(
        f"{n:,} rows x {d} float64 features = {data_mb:.0f} MB; zarr {zarr.__version__}, "
        f"dask {dask.__version__}, {os.cpu_count()} cores; scratch {root}; warm page cache\n"
    )
    try:
        sources = make_sources(root, n, d)

        # 1. Ingest vs copy -------------------------------------------------------------
        runs: list[tuple[str, str, dict[str, object]]] = [
            ("npy", "none", {}),
            ("npy", "zstd", {"compressor": "zstd"}),
            ("npy", "blosc-lz4", {"compressor": "blosc-lz4"}),
            ("csv", "none", {"csv_engine": "pyarrow"}),
            ("parquet", "none", {}),
        ]
        if not args.skip_numpy_csv:
            runs.insert(4, ("csv", "none (numpy parser)", {"csv_engine": "numpy"}))
        print(
            "Ingest (source MB/s, one run; copy = shutil.copyfile of the same source, "
            f"best of {args.repeats})"
        )
        header = (
            f"| {'source':<8} | {'codec':<20} | {'source MB':>9} | {'copy s':>7} | "
            f"{'copy MB/s':>9} | {'ingest s':>8} | {'ingest MB/s':>11} | {'x copy':>6} |"
        )
        print(header)
        print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
        stores: dict[str, Path] = {}
        for fmt, label, options in runs:
            src = sources[fmt]
            src_mb = src.stat().st_size / 1e6
            copy = root / f"copy-{src.name}"
            t_copy = timed(lambda src=src, copy=copy: shutil.copyfile(src, copy), args.repeats)
            copy.unlink()
            dest = root / f"{fmt}-{label.split()[0]}-{len(stores)}.zarr"
            result = ingest(src, dest, **options)  # type: ignore[arg-type]
            t_ing = result.seconds
            print(
                f"| {fmt:<8} | {label:<20} | {src_mb:9.0f} | {t_copy:7.2f} | "
                f"{src_mb / t_copy:9.0f} | {t_ing:8.2f} | {src_mb / t_ing:11.0f} | "
                f"{t_ing / t_copy:6.1f} |"
            )
            if fmt == "npy":
                stores[label] = dest
            else:
                shutil.rmtree(dest)

        # 2. Read: ingested store vs raw .npy ------------------------------------------
        print(f"\nRead (GB/s of float64 values; best of {args.repeats})")
        header = (
            f"| {'what':<38} | {'on disk MB':>10} | {'ratio':>5} | {'seconds':>7} | "
            f"{'GB/s':>5} | {'x raw npy':>9} |"
        )
        print(header)
        print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
        npy = sources["npy"]
        t_raw = timed(lambda: np.load(npy, allow_pickle=False).sum(), args.repeats)
        rows = [("np.load(.npy).sum()", npy, t_raw)]
        mm_t = timed(lambda: np.load(npy, mmap_mode="r", allow_pickle=False).sum(), args.repeats)
        rows.append(("np.load(.npy, mmap_mode='r').sum()", npy, mm_t))
        for label, path in stores.items():
            t = timed(lambda path=path: da.from_zarr(str(path)).sum().compute(), args.repeats)
            rows.append((f"da.from_zarr, {label}", path, t))
        for what, path, t in rows:
            size = dir_bytes(path) / 1e6
            print(
                f"| {what:<38} | {size:10.0f} | {data_mb / size:5.2f} | {t:7.3f} | "
                f"{data_mb / 1e3 / t:5.2f} | {t / t_raw:9.2f} |"
            )
        chunk_rows = zarr.open_array(str(stores["none"])).chunks[0]
        print(f"\nZarr chunks: {chunk_rows:,} rows x {d} ({chunk_rows * d * 8 / 2**20:.0f} MiB)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
