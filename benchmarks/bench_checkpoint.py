"""Checkpoint overhead per EM iteration, as a fraction of the iteration's time.

Fits a full-covariance GMM on a Zarr dataset with a checkpoint committed after every
iteration, timing each commit (``CheckpointStore.save``) and each iteration (the observer's
``IterationState.seconds``), and reports commit time / iteration time. Also times a run
without checkpoints on the same data for the end-to-end difference.

    python benchmarks/bench_checkpoint.py                    # 1M x 32, K=16 (the default)
    python benchmarks/bench_checkpoint.py --n-samples 200000 # quicker
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import emdist
from emdist.io.checkpoint import CheckpointStore, FitState
from emdist.io.synthetic import make_gaussian_mixture


class TimedStore(CheckpointStore):
    """A checkpoint store that records how long each commit takes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: list[float] = []

    def save(self, state: FitState) -> None:
        start = time.perf_counter()
        super().save(state)
        self.seconds.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--n-features", type=int, default=32)
    parser.add_argument("--n-components", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="emdist-bench-ckpt-"))
    try:
        ds = make_gaussian_mixture(
            work / "data.zarr",
            args.n_samples,
            args.n_features,
            args.n_components,
            chunk_rows=65_536,
            random_state=0,
            overwrite=True,
        )
        X = str(ds.data_path)
        rng = np.random.default_rng(1)
        means = ds.truth.means + rng.normal(scale=0.5, size=ds.truth.means.shape)
        common: dict[str, Any] = dict(
            n_components=args.n_components,
            covariance_type="full",
            tol=0.0,
            max_iter=args.iterations,
            means_init=means,
            random_state=0,
        )
        results = {}
        for label, with_ckpt in (("no checkpoint", False), ("checkpoint every=1", True)):
            iter_seconds: list[float] = []
            store = TimedStore(work / "ckpt.zarr", every=1, overwrite=True) if with_ckpt else None
            gm = emdist.GaussianMixture(
                **common,
                acceleration=None,  # plain EM: the figures are per EM iteration
                checkpoint=store,
                observer=lambda s, acc=iter_seconds: acc.append(s.seconds),
            )
            start = time.perf_counter()
            try:
                gm.fit(X)
            except Exception:
                raise
            total = time.perf_counter() - start
            results[label] = (iter_seconds, store.seconds if store else [], total)
        print(f"data: {args.n_samples:,} x {args.n_features}, K={args.n_components}, full")
        header = ("run", "median s/iter", "median commit s", "commit/iter", "fit s")
        print(f"{header[0]:<22}{header[1]:>15}{header[2]:>17}{header[3]:>13}{header[4]:>9}")
        for label, (its, commits, total) in results.items():
            it = statistics.median(its)
            commit = statistics.median(commits) if commits else 0.0
            print(f"{label:<22}{it:>15.3f}{commit:>17.4f}{commit / it:>12.2%}{total:>9.1f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore", emdist.ConvergenceWarning)
    main()
