"""emdist on a store larger than memory, with what users pick instead, side by side.

What it does, step by step (each can be skipped; benchmarks/README.md, "At scale", has the
figures and the exact commands that made them):

1. ``generate``: ``emdist generate`` writes a synthetic Gaussian mixture of ``--size-gb``
   (rows x ``--n-features`` in ``--dtype``, chunks of ``--chunk-rows``, ``--compressor``) under
   ``--scratch``. Timed: the write throughput.
2. ``floor``: the cold read floor of that store (page cache dropped first: ``sync; echo 3 >
   /proc/sys/vm/drop_caches``, needs root): the chunk files read as bytes (the disk), and every
   chunk decoded (``da.from_zarr(...).sum()``, Dask threads: what any reader pays).
   ``--keep-page-cache`` never drops it (every step): on a machine shared with other
   measurements, for a store larger than the memory, whose every pass is cold anyway.
3. ``run``: the whole job, ``emdist run --config`` (prepare data -> fit -> label -> report,
   Prefect's temporary server included), for each model of ``--models`` (``kmeans``,
   ``gmm-diag``, ``gmm-full``) on each scheduler of ``--schedulers`` (``cluster``: a 2-worker
   LocalCluster of single-threaded processes; ``threads``: one process, 2 threads), cold
   cache, ``--max-iter`` iterations at ``tol: 0`` (plain EM: one pass per iteration).
   Recorded: wall time, fit time, seconds per pass (``iteration_seconds`` of the run's
   ``summary.json``), peak RSS of every process (sampled every 0.2 s), bytes read from disk by
   the job's processes (so passes over the store are counted, not assumed).
4. ``minibatch``: scikit-learn's ``MiniBatchKMeans`` fed chunk by chunk (``partial_fit`` on
   every Zarr chunk in turn) for ``--minibatch-epochs`` passes, in a process of its own.
5. ``daskml``: dask-ml's ``KMeans`` (k-means||) on ``da.from_zarr`` of the store, on the same
   2-worker LocalCluster, iterations capped (``--daskml-max-iter``, ``--daskml-init-iter``)
   and killed after ``--daskml-timeout`` seconds.
6. ``ingest``: a Parquet file of ``--ingest-gb`` (the store's first rows; a Parquet copy of
   the whole store would not fit beside it) converted by ``emdist ingest``: its throughput.

The K-means contenders' centres are scored on the same held-out rows (the store's first
``--eval-rows``; rows are drawn independently of their position): mean squared distance to
the nearest centre.

``--memory-limit-gb`` runs every measured process inside a memory cgroup (v1 or v2) of that
size, page cache included, so a store smaller than the machine's memory is not served from
the page cache after its first read: the matrix beyond the headline is run that way.

Scratch data go to ``--scratch`` (default: ``.bench-data/`` next to the repository) and are
removed at the end unless ``--keep``; before every write the free disk is checked (at least
``--min-free-gb`` must remain). Results: a JSON file (``--out``), a markdown table on stdout
and a plot (``--plot``). Needs the ``bench`` extra (``pip install -e '.[bench]'``, in a venv
of its own: dask-ml may bring other releases of dask or scikit-learn); run as root for cold
reads. Not a test: pytest does not collect it.

Examples::

    python benchmarks/bench_scale.py --size-gb 48 --scratch /mnt/big --max-iter 3
    python benchmarks/bench_scale.py --size-gb 10 --memory-limit-gb 5 --compressor zstd \\
        --chunk-rows 65536 --skip-daskml --skip-ingest --schedulers cluster
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
GB = 1e9
MODELS = {
    "kmeans": {"family": "kmeans"},
    "gmm-diag": {"family": "gmm", "covariance_type": "diag", "acceleration": "none"},
    "gmm-full": {"family": "gmm", "covariance_type": "full", "acceleration": "none"},
}
SCHEDULERS = {
    "cluster": {"n_workers": 2, "threads_per_worker": 1},
    "threads": {"processes": False, "n_workers": 1, "threads_per_worker": 2},
}


# -- the machine ------------------------------------------------------------------------------


def uptime() -> str:
    """``uptime``'s line: the load every figure is recorded with."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def ensure_free(path: Path, needed: float, min_free_gb: float, what: str) -> None:
    """Refuse a write that would leave less than ``min_free_gb`` free on ``path``'s disk."""
    free = free_bytes(path)
    if free - needed < min_free_gb * GB:
        raise SystemExit(
            f"{what} needs {needed / GB:.1f} GB at {path}, {free / GB:.1f} GB are free: that "
            f"would leave less than --min-free-gb {min_free_gb:g} GB; lower --size-gb / "
            f"--ingest-gb or choose another --scratch"
        )


def drop_caches(args: argparse.Namespace) -> bool:
    """Empty the page cache (root only), so the next read comes from the disk.

    Not with ``--keep-page-cache``: on a shared machine dropping the cache disturbs what
    other processes measure, and a store larger than the memory is read cold on every pass
    anyway (a pass evicts what the previous one left cached).
    """
    if args.keep_page_cache:
        return False
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        print("warning: cannot drop the page cache (not root): reads may be warm", flush=True)
        return False
    return True


def du(path: Path) -> int:
    """Bytes the files under ``path`` hold."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("emdist", "numpy", "dask", "distributed", "zarr", "scikit-learn", "dask-ml"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


class MemoryCgroup:
    """A child memory cgroup of this process's own (v2 or v1) holding ``limit`` bytes.

    Only ever a child of the group this process is in, so it can only tighten what that
    group allows. Processes join it through :meth:`enter` (a ``preexec_fn``).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        unified = Path("/sys/fs/cgroup/cgroup.controllers")
        if unified.exists():
            own = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
            self.path = Path("/sys/fs/cgroup") / own.lstrip("/") / f"emdist-bench-{os.getpid()}"
            self.path.mkdir()
            (self.path / "memory.max").write_text(f"{limit}\n")
            (self.path / "memory.swap.max").write_text("0\n") if (
                self.path / "memory.swap.max"
            ).exists() else None
        else:
            own = next(line.split(":", 2)[2] for line in lines if ":memory:" in line)
            base = Path("/sys/fs/cgroup/memory") / own.lstrip("/")
            self.path = base / f"emdist-bench-{os.getpid()}"
            self.path.mkdir()
            (self.path / "memory.limit_in_bytes").write_text(f"{limit}\n")
        self.version = "v2" if unified.exists() else "v1"

    def enter(self) -> None:
        (self.path / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def oom_kills(self) -> int:
        """Processes of the group the OOM killer has killed so far."""
        name = "memory.events" if self.version == "v2" else "memory.oom_control"
        with contextlib.suppress(OSError, StopIteration):
            lines = (self.path / name).read_text().splitlines()
            return int(next(ln.split()[1] for ln in lines if ln.startswith("oom_kill ")))
        return 0

    def close(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.2)


# -- measuring a process tree -----------------------------------------------------------------


class TreeMonitor:
    """Peak RSS of every process in a tree, and the bytes they read from the disk."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self.interval = interval
        self.peak_rss: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.read_bytes: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    io = p.io_counters().read_bytes
                    if p.pid not in self.names:
                        self.names[p.pid] = " ".join(p.cmdline())[:200]
                except psutil.Error:
                    continue
                self.peak_rss[p.pid] = max(self.peak_rss.get(p.pid, 0), rss)
                self.read_bytes[p.pid] = max(self.read_bytes.get(p.pid, 0), io)
            self._stop.wait(self.interval)

    def summary(self, root_pid: int) -> dict[str, Any]:
        """Peaks: the root process, the largest other (a worker), all; bytes read."""
        others = {pid: rss for pid, rss in self.peak_rss.items() if pid != root_pid}
        workers = {
            pid: rss
            for pid, rss in others.items()
            if "multiprocessing" in self.names.get(pid, "") or "spawn" in self.names.get(pid, "")
        }
        return {
            "root_peak_rss": self.peak_rss.get(root_pid, 0),
            "worker_peak_rss": max(workers.values(), default=0),
            "largest_child_peak_rss": max(others.values(), default=0),
            "sum_peak_rss": sum(self.peak_rss.values()),
            # A reaped child's bytes also count in its parent's: an upper bound.
            "read_bytes": sum(self.read_bytes.values()),
            "n_processes": len(self.peak_rss),
        }


def device_read_bytes(path: Path) -> int:
    """Bytes read so far from the block device holding ``path`` (machine-wide)."""
    st = path.stat()
    stat = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat")
    return int(stat.read_text().split()[2]) * 512 if stat.exists() else 0


def run_measured(
    cmd: Sequence[str],
    *,
    log: Path,
    cgroup: MemoryCgroup | None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``cmd`` with its tree sampled; its output goes to ``log``."""
    before = device_read_bytes(log.parent)
    kills = cgroup.oom_kills() if cgroup is not None else 0
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=cgroup.enter if cgroup is not None else None,
            start_new_session=True,
            env=env,
        )
        timed_out = False
        with TreeMonitor(proc.pid) as monitor:
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    code = proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    code = proc.wait()
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "returncode": code, "timed_out": timed_out, "uptime": uptime()}
    result.update(monitor.summary(proc.pid))
    if cgroup is not None:
        result["oom_kills"] = cgroup.oom_kills() - kills
    # The processes' own counters cannot say it: a reaped child's bytes are added to its
    # parent's (/proc/PID/io), so a LocalCluster's workers would count twice.
    result["device_read_bytes"] = device_read_bytes(log.parent) - before
    if code != 0 and not timed_out:
        tail = log.read_text()[-3000:]
        print(f"warning: {' '.join(cmd[:3])} exited {code}:\n{tail}", flush=True)
    return result


# -- the steps --------------------------------------------------------------------------------


def emdist_command() -> list[str]:
    exe = Path(sys.executable).with_name("emdist")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]


def store_rows(args: argparse.Namespace) -> int:
    itemsize = np.dtype(args.dtype).itemsize
    return int(args.size_gb * GB // (args.n_features * itemsize))


def step_generate(
    args: argparse.Namespace, store: Path, cgroup: MemoryCgroup | None
) -> dict[str, Any]:
    n = store_rows(args)
    if args.reuse and (store / "data" / "zarr.json").exists():
        import zarr

        attrs = dict(zarr.open_group(str(store), mode="r").attrs["synthetic"])  # type: ignore[arg-type]
        want = {
            "n_samples": n,
            "n_features": args.n_features,
            "dtype": args.dtype,
            "chunk_rows": min(args.chunk_rows, n),
        }
        have = {k: attrs.get(k) for k in want}
        if have == want and attrs.get("compressor", "none") in (args.compressor, "blosc-lz4"):
            print(f"reusing {store} ({n:,} rows)", flush=True)
            return {"reused": True, "n_samples": n, "disk_bytes": du(store / "data")}
        raise SystemExit(f"--reuse: {store} holds {have}, not {want}")
    itemsize = np.dtype(args.dtype).itemsize
    ensure_free(args.scratch, n * args.n_features * itemsize + n * 4, args.min_free_gb, "the store")
    cmd = [
        *emdist_command(),
        "generate",
        str(store),
        "--n-samples",
        str(n),
        "--n-features",
        str(args.n_features),
        "--n-components",
        str(args.n_components),
        "--covariance-type",
        "full",
        "--chunk-rows",
        str(args.chunk_rows),
        "--seed",
        "0",
        "--dtype",
        args.dtype,
        "--compressor",
        args.compressor,
    ]
    print("$ " + " ".join(cmd), flush=True)
    res = run_measured(cmd, log=args.logs / "generate.log", cgroup=cgroup)
    if res["returncode"] != 0:
        raise SystemExit("emdist generate failed (see its log above)")
    res.update(
        command=" ".join(cmd[1:]),
        n_samples=n,
        disk_bytes=du(store / "data"),
        value_bytes=n * args.n_features * itemsize,
    )
    res["write_gb_per_s"] = du(store) / res["seconds"] / GB
    return res


def _chunk_files(store: Path) -> list[Path]:
    return [p for p in (store / "data").rglob("*") if p.is_file() and p.name != "zarr.json"]


def _read_file(path: Path) -> int:
    n = 0
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(1 << 24):
            n += len(chunk)
    return n


def floor_disk(store: str) -> float:
    """Seconds to read every chunk file as bytes, 2 threads."""
    files = _chunk_files(Path(store))
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        sum(pool.map(_read_file, files))
    return time.perf_counter() - start


def floor_decode(store: str) -> float:
    """Seconds to decode every chunk (checksum, codec) and sum it: Dask threads, 2."""
    import dask
    import dask.array as da

    start = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        da.from_zarr(str(Path(store) / "data")).sum().compute()
    return time.perf_counter() - start


def step_floor(
    args: argparse.Namespace, store: Path, cgroup: MemoryCgroup | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    disk = du(store / "data")
    for kind in ("disk", "decode"):
        drop_caches(args)
        res = run_measured(
            [sys.executable, __file__, "_floor", kind, str(store)],
            log=args.logs / f"floor-{kind}.log",
            cgroup=cgroup,
        )
        seconds = float(json.loads((args.logs / f"floor-{kind}.log").read_text().splitlines()[-1]))
        res.update(inner_seconds=seconds, gb_per_s=disk / seconds / GB)
        out[kind] = res
        print(f"floor {kind}: {seconds:.1f} s, {disk / seconds / GB:.2f} GB/s", flush=True)
    return out


def job_config(args: argparse.Namespace, store: Path, model: str, sched: str, out: Path) -> str:
    import yaml

    m = {
        "n_components": args.n_components,
        "max_iter": args.max_iter,
        "tol": 0.0,
        "random_state": 0,
        "warm_start": False,
        **MODELS[model],
    }
    cfg = {
        "name": f"scale-{model}-{sched}",
        "input": {"path": str(store / "data")},
        "model": m,
        "output": {"dir": str(out)},
        "cluster": dict(SCHEDULERS[sched]),
    }
    return yaml.safe_dump(cfg, sort_keys=False)


def step_run(args: argparse.Namespace, store: Path, cgroup: MemoryCgroup | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    disk = du(store / "data")
    for model in args.models:
        for sched in args.schedulers:
            key = f"{model}/{sched}"
            out = args.scratch / f"run-{model}-{sched}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            n = store_rows(args)
            ensure_free(args.scratch, n * 8 + 1e9, args.min_free_gb, "the run's outputs")
            config = out / "job.yaml"
            config.write_text(job_config(args, store, model, sched, out))
            drop_caches(args)
            cmd = [*emdist_command(), "run", "--config", str(config)]
            print(f"$ {' '.join(cmd)}   # {key}", flush=True)
            env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
            res = run_measured(
                cmd, log=args.logs / f"run-{model}-{sched}.log", cgroup=cgroup, env=env
            )
            res["config"] = config.read_text()
            summary = out / "summary.json"
            if summary.exists():
                fit = json.loads(summary.read_text())["fit"]
                secs = fit["iteration_seconds"]
                res.update(
                    n_iter=fit["n_iter"],
                    fit_seconds=fit["fit_seconds"],
                    iteration_seconds=secs,
                    pass_median=float(np.median(secs)) if secs else None,
                    outside_iterations=fit["fit_seconds"] - sum(secs),
                    lower_bounds=fit["lower_bounds"],
                    inertia=fit.get("inertia"),
                )
            res["passes_read"] = res["device_read_bytes"] / disk
            model_path = out / "model.zarr"
            if model == "kmeans" and model_path.exists():
                import emdist

                centres = emdist.load_model(model_path).cluster_centers_
                np.save(args.scratch / f"centres-emdist-{sched}.npy", centres)
            results[key] = res
            print(
                f"  {key}: {res['seconds']:.0f} s, pass {res.get('pass_median')}, "
                f"worker peak {res['worker_peak_rss'] / 2**20:.0f} MiB, "
                f"root peak {res['root_peak_rss'] / 2**20:.0f} MiB",
                flush=True,
            )
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    return results


def minibatch(store: str, k: int, epochs: int, out: str) -> None:
    """MiniBatchKMeans.partial_fit on every chunk of the store in turn, ``epochs`` passes."""
    import zarr
    from sklearn.cluster import MiniBatchKMeans

    arr = zarr.open_array(str(Path(store) / "data"), mode="r")
    rows = arr.chunks[0]
    km = MiniBatchKMeans(n_clusters=k, random_state=0, n_init=3)
    passes, read_s, fit_s = [], 0.0, 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        for lo in range(0, arr.shape[0], rows):
            t0 = time.perf_counter()
            X = arr[lo : lo + rows]
            t1 = time.perf_counter()
            km.partial_fit(X)
            fit_s += time.perf_counter() - t1
            read_s += t1 - t0
        passes.append(time.perf_counter() - start)
    np.save(out, km.cluster_centers_)
    print(json.dumps({"pass_seconds": passes, "read_seconds": read_s, "fit_seconds": fit_s}))


def step_minibatch(
    args: argparse.Namespace, store: Path, cgroup: MemoryCgroup | None
) -> dict[str, Any]:
    drop_caches(args)
    log = args.logs / "minibatch.log"
    out = args.scratch / "centres-minibatch.npy"
    cmd = [
        sys.executable,
        __file__,
        "_minibatch",
        str(store),
        str(args.n_components),
        str(args.minibatch_epochs),
        str(out),
    ]
    res = run_measured(cmd, log=log, cgroup=cgroup)
    with contextlib.suppress(Exception):
        res.update(json.loads(log.read_text().splitlines()[-1]))
        res["pass_median"] = float(np.median(res["pass_seconds"]))
    res["passes_read"] = res["device_read_bytes"] / du(store / "data")
    print(f"  minibatch: {res['seconds']:.0f} s, passes {res.get('pass_seconds')}", flush=True)
    return res


def daskml(store: str, k: int, max_iter: int, init_iter: int, out: str) -> None:
    """dask-ml's KMeans (k-means||) on the store, on a 2-worker LocalCluster."""
    import dask.array as da
    from dask_ml.cluster import KMeans
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        X = da.from_zarr(str(Path(store) / "data"))
        km = KMeans(
            n_clusters=k,
            init="k-means||",
            max_iter=max_iter,
            init_max_iter=init_iter,
            oversampling_factor=2,
            random_state=0,
            tol=0.0,
        )
        start = time.perf_counter()
        km.fit(X)
        seconds = time.perf_counter() - start
    np.save(out, km.cluster_centers_)
    print(json.dumps({"fit_seconds": seconds, "n_iter": int(km.n_iter_)}))


def step_daskml(
    args: argparse.Namespace, store: Path, cgroup: MemoryCgroup | None
) -> dict[str, Any]:
    drop_caches(args)
    log = args.logs / "daskml.log"
    out = args.scratch / "centres-daskml.npy"
    cmd = [
        sys.executable,
        __file__,
        "_daskml",
        str(store),
        str(args.n_components),
        str(args.daskml_max_iter),
        str(args.daskml_init_iter),
        str(out),
    ]
    res = run_measured(cmd, log=log, cgroup=cgroup, timeout=args.daskml_timeout)
    with contextlib.suppress(Exception):
        res.update(json.loads(log.read_text().splitlines()[-1]))
    res["passes_read"] = res["device_read_bytes"] / du(store / "data")
    res["pass_estimate"] = res["seconds"] / max(res["passes_read"], 1e-9)
    print(
        f"  dask-ml: {res['seconds']:.0f} s, timed out {res['timed_out']}, "
        f"{res['passes_read']:.1f} passes read",
        flush=True,
    )
    return res


def write_parquet(store: str, dest: str, rows: int) -> None:
    """The store's first ``rows`` rows as a Parquet file (pyarrow's defaults: snappy)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zarr

    arr = zarr.open_array(str(Path(store) / "data"), mode="r")
    names = [f"f{j}" for j in range(arr.shape[1])]
    step = 1_000_000
    with pq.ParquetWriter(
        dest, pa.schema([(n, pa.from_numpy_dtype(arr.dtype)) for n in names])
    ) as w:
        for lo in range(0, rows, step):
            X = arr[lo : min(lo + step, rows)]
            w.write_table(pa.table({n: X[:, j] for j, n in enumerate(names)}))


def step_ingest(
    args: argparse.Namespace, store: Path, cgroup: MemoryCgroup | None
) -> dict[str, Any]:
    itemsize = np.dtype(args.dtype).itemsize
    rows = min(int(args.ingest_gb * GB // (args.n_features * itemsize)), store_rows(args))
    size = rows * args.n_features * itemsize
    ensure_free(args.scratch, 2.1 * size, args.min_free_gb, "the Parquet file and its ingest")
    src, dest = args.scratch / "ingest.parquet", args.scratch / "ingested.zarr"
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "_parquet", str(store), str(src), str(rows)], check=True
    )
    made = time.perf_counter() - t
    drop_caches(args)
    cmd = [
        *emdist_command(),
        "ingest",
        str(src),
        str(dest),
        "--dtype",
        args.dtype,
        "--compressor",
        args.compressor,
    ]
    print("$ " + " ".join(cmd), flush=True)
    res = run_measured(cmd, log=args.logs / "ingest.log", cgroup=cgroup)
    res.update(
        command=" ".join(cmd[1:]),
        rows=rows,
        parquet_bytes=src.stat().st_size,
        value_bytes=size,
        zarr_bytes=du(dest) if dest.exists() else 0,
        parquet_write_seconds=made,
    )
    res["rows_per_s"] = rows / res["seconds"]
    res["value_gb_per_s"] = size / res["seconds"] / GB
    src.unlink(missing_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    print(f"  ingest: {rows:,} rows in {res['seconds']:.0f} s", flush=True)
    return res


def score_centres(args: argparse.Namespace, store: Path) -> dict[str, float]:
    """Mean squared distance to the nearest centre on the store's first ``--eval-rows``."""
    import zarr

    X = np.asarray(zarr.open_array(str(store / "data"), mode="r")[: args.eval_rows], np.float64)
    scores = {}
    for path in sorted(args.scratch.glob("centres-*.npy")):
        C = np.load(path).astype(np.float64)
        d2 = ((X**2).sum(1)[:, None] - 2 * X @ C.T + (C**2).sum(1)[None]).min(1)
        scores[path.stem.removeprefix("centres-")] = float(np.maximum(d2, 0).mean())
    return scores


# -- report -----------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    """The headline table: seconds per pass against the cold read floor, memory, reads."""
    floor = results.get("floor", {}).get("decode", {}).get("inner_seconds")
    rows = []

    def add(name: str, pass_s: float | None, r: dict[str, Any], note: str = "") -> None:
        ratio = f"{pass_s / floor:.2f}" if pass_s and floor else ""
        rows.append(
            f"| {name} | {pass_s:.1f} | {ratio} | {r.get('seconds', 0):.0f} | "
            f"{r.get('passes_read', 0):.1f} | {r.get('worker_peak_rss', 0) / 2**20:.0f} | "
            f"{r.get('root_peak_rss', 0) / 2**20:.0f} | {note} |"
            if pass_s is not None
            else f"| {name} | – | | {r.get('seconds', 0):.0f} | {r.get('passes_read', 0):.1f} | "
            f"{r.get('worker_peak_rss', 0) / 2**20:.0f} | {r.get('root_peak_rss', 0) / 2**20:.0f}"
            f" | {note} |"
        )

    for kind, r in results.get("floor", {}).items():
        stored = r["gb_per_s"] * r["inner_seconds"] * GB
        add(
            f"cold read floor ({kind})",
            r["inner_seconds"],
            {**r, "passes_read": r.get("device_read_bytes", r.get("read_bytes", 0)) / stored},
            f"{r['gb_per_s']:.2f} GB/s",
        )
    for key, r in results.get("run", {}).items():
        add(
            f"emdist run {key}",
            r.get("pass_median"),
            r,
            f"{r.get('n_iter')} iterations; fit {r.get('fit_seconds', 0):.0f} s",
        )
    if "minibatch" in results:
        r = results["minibatch"]
        add(
            "MiniBatchKMeans partial_fit per chunk",
            r.get("pass_median"),
            r,
            f"read {r.get('read_seconds', 0):.0f} s + partial_fit {r.get('fit_seconds', 0):.0f} s",
        )
    if "daskml" in results:
        r = results["daskml"]
        if r["timed_out"]:
            note = f"stopped after {r['seconds']:.0f} s (--daskml-timeout)"
        elif r.get("returncode"):
            note = (
                f"died after {r['seconds']:.0f} s (exit {r['returncode']}, "
                f"{r.get('oom_kills', 0)} OOM kills)"
            )
        else:
            note = f"n_iter {r.get('n_iter')}"
        add(
            "dask-ml KMeans (k-means||)",
            None if r.get("returncode") and not r["timed_out"] else r.get("pass_estimate"),
            r,
            note + "; pass = wall / passes read",
        )
    head = (
        "| contender | s per pass | x floor | wall s | passes read | worker peak MiB | "
        "main peak MiB | note |\n|---|---|---|---|---|---|---|---|"
    )
    return head + "\n" + "\n".join(rows)


def plot(results: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, secs, rss = [], [], []
    for kind, r in results.get("floor", {}).items():
        (
            names.append(f"read floor ({kind})"),
            secs.append(r["inner_seconds"]),
            rss.append(r.get("root_peak_rss", 0)),
        )
    for key, r in results.get("run", {}).items():
        if r.get("pass_median"):
            names.append(f"emdist {key}")
            secs.append(r["pass_median"])
            rss.append(max(r["worker_peak_rss"], r["root_peak_rss"]))
    if results.get("minibatch", {}).get("pass_median"):
        r = results["minibatch"]
        (
            names.append("MiniBatchKMeans"),
            secs.append(r["pass_median"]),
            rss.append(r["root_peak_rss"]),
        )
    if "daskml" in results:
        r = results["daskml"]
        died = bool(r.get("returncode")) and not r["timed_out"]
        ended = " (stopped)" if r["timed_out"] else " (died: no pass)" if died else ""
        names.append("dask-ml KMeans" + ended)
        secs.append(np.nan if died else r["pass_estimate"])
        rss.append(max(r["worker_peak_rss"], r["root_peak_rss"]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 0.45 * len(names) + 1.4), sharey=True)
    y = np.arange(len(names))[::-1]
    a.barh(y, secs, color="tab:blue")
    a.set_yticks(y, names)
    a.set_xlabel("seconds per pass over the store (cold)")
    b.barh(y, np.array(rss) / 2**30, color="tab:orange")
    b.set_xlabel("peak RSS of the largest process, GiB")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size-gb", type=float, default=48.0, help="size of the store's values (GB)")
    p.add_argument(
        "--scratch",
        type=Path,
        default=REPO / ".bench-data",
        help="folder for the store and outputs (a new folder inside it is used)",
    )
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--compressor", choices=["none", "lz4", "zstd"], default="none")
    p.add_argument("--chunk-rows", type=int, default=131_072)
    p.add_argument("--n-features", type=int, default=16)
    p.add_argument("--n-components", type=int, default=8)
    p.add_argument("--max-iter", type=int, default=3, help="EM / Lloyd iterations per run")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=["kmeans", "gmm-diag"])
    p.add_argument(
        "--schedulers", nargs="+", choices=list(SCHEDULERS), default=["cluster", "threads"]
    )
    p.add_argument("--minibatch-epochs", type=int, default=1)
    p.add_argument("--daskml-max-iter", type=int, default=3)
    p.add_argument("--daskml-init-iter", type=int, default=2)
    p.add_argument("--daskml-timeout", type=float, default=1800.0)
    p.add_argument("--ingest-gb", type=float, default=6.0)
    p.add_argument("--eval-rows", type=int, default=1_000_000)
    p.add_argument(
        "--memory-limit-gb",
        type=float,
        default=None,
        help="run the measured processes in a memory cgroup of this size",
    )
    p.add_argument("--min-free-gb", type=float, default=10.0)
    p.add_argument(
        "--keep-page-cache",
        action="store_true",
        help="never drop the page cache (for a store larger than memory on a shared machine)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="results JSON (default: in --scratch's parent)"
    )
    p.add_argument("--plot", type=Path, default=None, help="PNG of the results")
    p.add_argument("--title", default="", help="a second line for the plot's title")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="the scratch folder of an earlier --keep run: reuse its store",
    )
    p.add_argument(
        "--report",
        type=Path,
        nargs="+",
        default=None,
        help="measure nothing: merge these results JSON files (of runs on the same store, "
        "e.g. with --reuse) into one table and --plot",
    )
    for step in ("generate", "floor", "run", "minibatch", "daskml", "ingest"):
        p.add_argument(f"--skip-{step}", action="store_true")
    return p.parse_args(argv)


def merge(paths: Sequence[Path]) -> dict[str, Any]:
    """Results of several invocations as one: later steps added, runs joined."""
    merged: dict[str, Any] = {}
    for path in paths:
        part = json.loads(path.read_text())
        for key, value in part.items():
            if key == "run":
                merged.setdefault("run", {}).update(value)
            elif key == "centre_scores":
                merged.setdefault(key, {}).update(value)
            elif key not in merged or key not in ("args", "machine", "versions", "cgroup"):
                merged[key] = value
    return merged


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        results = merge(args.report)
        print(table(results))
        print(json.dumps(results.get("centre_scores", {}), indent=1))
        if args.plot:
            a = results["args"]
            plot(
                results,
                args.plot,
                f"{a['size_gb']} GB store: {a['dtype']}, {a['compressor']}, "
                f"chunks of {int(a['chunk_rows']):,} rows"
                + (f"\n{args.title}" if args.title else ""),
            )
        return
    tag = f"{args.size_gb:g}gb-{args.dtype}-{args.compressor}-{args.chunk_rows}" + (
        f"-cg{args.memory_limit_gb:g}" if args.memory_limit_gb else ""
    )
    args.scratch.mkdir(parents=True, exist_ok=True)
    if args.reuse is not None:
        work = args.reuse
    else:
        work = Path(tempfile.mkdtemp(prefix=f"scale-{tag}-", dir=args.scratch))
    args.out = args.out or Path.cwd() / f"bench_scale-{tag}.json"
    args.scratch, args.logs = work, work / "logs"
    args.logs.mkdir(exist_ok=True)
    store = work / "store.zarr"
    cgroup = MemoryCgroup(int(args.memory_limit_gb * GB)) if args.memory_limit_gb else None
    results: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {
            "cores": os.cpu_count(),
            "memory": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "uptime_start": uptime(),
        },
        "versions": versions(),
        "cgroup": {"limit": cgroup.limit, "version": cgroup.version, "path": str(cgroup.path)}
        if cgroup
        else None,
    }

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=1, default=str))

    steps = [
        ("generate", step_generate),
        ("floor", step_floor),
        ("run", step_run),
        ("minibatch", step_minibatch),
        ("daskml", step_daskml),
        ("ingest", step_ingest),
    ]
    try:
        for name, fn in steps:
            if getattr(args, f"skip_{name}") and not (name == "generate" and args.reuse):
                continue
            if name != "generate" and not (store / "data").exists():
                raise SystemExit(f"no store at {store}: do not skip generate")
            print(f"== {name} ({uptime()})", flush=True)
            results[name] = fn(args, store, cgroup)
            save()
        if (store / "data").exists():
            results["centre_scores"] = score_centres(args, store)
        results["machine"]["uptime_end"] = uptime()
        save()
        print(table(results))
        print(json.dumps(results.get("centre_scores", {}), indent=1))
        if args.plot:
            plot(
                results,
                args.plot,
                f"{store_rows(args):,} x {args.n_features} {args.dtype}, {args.compressor}, "
                f"chunks of {args.chunk_rows:,} rows ({args.size_gb:g} GB)",
            )
    finally:
        if cgroup is not None:
            cgroup.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            print(f"removed {work}", flush=True)


def _entry() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        what, rest = sys.argv[1], sys.argv[2:]
        if what == "_floor":
            fn = floor_disk if rest[0] == "disk" else floor_decode
            print(json.dumps(fn(rest[1])))
        elif what == "_minibatch":
            minibatch(rest[0], int(rest[1]), int(rest[2]), rest[3])
        elif what == "_daskml":
            daskml(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), rest[4])
        elif what == "_parquet":
            write_parquet(rest[0], rest[1], int(rest[2]))
        return
    main()


if __name__ == "__main__":
    _entry()
