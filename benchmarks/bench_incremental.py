"""Passes and wall time of incremental EM against batch EM, from the same start, from Zarr.

Part 1 (GaussianMixture, full): overlapping blobs (``_common.make_blobs``) on which batch EM
needs many iterations. Batch EM is run to convergence (``--tol-ref``) to give the reference
bound ``B*``; then batch and incremental fits from the same k-means++ start (same seed, so
the same scan sample) are run with ``tol=0`` for ``--passes`` passes, alternating, and the
parameters after every pass (observer) are scored *exactly* afterwards, untimed, by one
in-memory log-likelihood each. Reported: the first pass whose parameters are within
``--gap`` per sample of ``B*`` and the EM wall time up to it (the sum of the per-pass
seconds the observer reports: Dask pass, reductions, M-steps; the scan and the start are
the same for both and left out). Medians over ``--repeats`` interleaved rounds (alternating
which goes first).

Part 2 (BayesianGaussianMixture, full): well-separated blobs fitted with more components
than clusters; passes until convergence (``tol`` default) and the number of components
left above 1% weight, batch vs incremental (``lower_bound_`` is exact for both).

    .venv/bin/python benchmarks/bench_incremental.py                    # 200k x 16, K=16
    .venv/bin/python benchmarks/bench_incremental.py --n 50000 --chunk-rows 3125 --shards 8 16
    .venv/bin/python benchmarks/bench_incremental.py --n 1000000 --d 32 # 1M x 32 (README)
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

import emdist
from benchmarks._common import (
    environment,
    format_table,
    make_blobs,
    median,
    scratch_dir,
    spread,
    write_zarr,
)
from emdist.kernels.mixture import MixtureParams, mixture_estep_chunk
from emdist.kernels.rows import RowBlock


def exact_bound(X: np.ndarray, params: MixtureParams, chunk: int = 50_000) -> float:
    """Mean log-likelihood per sample of ``params`` on in-memory ``X`` (untimed scoring)."""
    total = 0.0
    for start in range(0, len(X), chunk):
        total += mixture_estep_chunk(RowBlock(X[start : start + chunk], 0), params, "full").log_lik
    return total / len(X)


def gmm_run(
    path: str, X: np.ndarray, target: float, k: int, passes: int, updates: str, n_shards: int
) -> tuple[int, float, float]:
    """Passes until the parameters score >= ``target``, the EM seconds to then, s/pass.

    The observer scores the parameters after every pass exactly (in memory); that time is
    not in ``IterationState.seconds``, which is what is summed. It stops the fit once the
    target is reached.
    """
    seconds: list[float] = []
    reached: list[int] = []

    def observe(state: emdist.IterationState) -> bool:
        seconds.append(state.seconds)
        if exact_bound(X, state.params) >= target:
            reached.append(len(seconds))
            return True
        return False

    model = emdist.GaussianMixture(
        k,
        covariance_type="full",
        init_params="k-means++",
        tol=0.0,
        max_iter=passes,
        random_state=0,
        updates=updates,
        n_shards=n_shards,
        observer=observe,
        acceleration=None,  # against plain batch EM (bench_acceleration.py: the other)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        model.fit(path)
    if not reached:
        return -1, float("nan"), median(seconds)
    return reached[0], float(sum(seconds)), median(seconds)


def part_gmm(args: argparse.Namespace, tmp: Path) -> None:
    X = make_blobs(args.n, args.d, args.k, seed=args.seed)
    path = str(tmp / "gmm.zarr")
    write_zarr(path, args.n, args.d, chunk_rows=args.chunk_rows, fill=X)
    n_blocks = -(-args.n // args.chunk_rows)
    print(
        f"## GaussianMixture full, n={args.n} d={args.d} K={args.k}, Zarr chunks of "
        f"{args.chunk_rows} rows ({n_blocks} blocks)"
    )
    ref = emdist.GaussianMixture(
        args.k,
        covariance_type="full",
        init_params="k-means++",
        tol=args.tol_ref,
        max_iter=1000,
        random_state=0,
        acceleration=None,
    )
    start = time.perf_counter()
    ref.fit(path)
    ref_wall = time.perf_counter() - start
    best = float(ref.lower_bound_)
    print(
        f"reference: batch EM converged={ref.converged_} in {ref.n_iter_} passes "
        f"(tol={args.tol_ref}), bound B* = {best:.8f}, {ref_wall:.1f} s"
    )
    target = best - args.gap
    contenders = [("batch", 1)] + [("incremental", S) for S in args.shards]
    rows: dict[tuple[str, int], list[tuple[int, float, float]]] = {c: [] for c in contenders}
    for r in range(args.repeats):
        # Interleaved, the order reversed every other round.
        for updates, S in contenders if r % 2 == 0 else contenders[::-1]:
            p, secs, per_pass = gmm_run(path, X, target, args.k, args.passes, updates, S)
            rows[(updates, S)].append((p, secs, per_pass))
            print(
                f"  round {r + 1} {updates} S={S}: {p} passes, {secs:.2f} s, {per_pass:.3f} s/pass"
            )
    table = []
    batch_p = median([g[0] for g in rows[("batch", 1)]])
    batch_s = median([g[1] for g in rows[("batch", 1)]])
    for (updates, S), got in rows.items():
        p, secs = median([g[0] for g in got]), median([g[1] for g in got])
        table.append(
            (
                updates if updates == "batch" else f"incremental S={S}",
                p,
                secs,
                spread([g[1] for g in got]),
                median([g[2] for g in got]),
                round(p / batch_p, 3),
                round(secs / batch_s, 3),
            )
        )
    print(
        format_table(
            [
                "updates",
                f"passes to B*-{args.gap:g}",
                "EM seconds",
                "(min-max)",
                "s/pass",
                "passes / batch",
                "time / batch",
            ],
            table,
        )
    )


def part_bayesian(args: argparse.Namespace, tmp: Path) -> None:
    rng = np.random.default_rng(args.seed)
    n, d, clusters, k = args.vb_n, 8, 5, 15
    centres = rng.normal(scale=6.0, size=(clusters, d))
    labels = rng.integers(clusters, size=n)
    X = centres[labels] + rng.standard_normal((n, d))
    path = str(tmp / "vb.zarr")
    write_zarr(path, n, d, chunk_rows=args.vb_chunk_rows, fill=X)
    print(
        f"\n## BayesianGaussianMixture full, n={n} d={d}, {clusters} clusters, "
        f"n_components={k}, chunks of {args.vb_chunk_rows} rows, n_shards={args.shards[0]}, "
        f"tol={args.vb_tol}"
    )
    table = []
    for updates in ("batch", "incremental"):
        model = emdist.BayesianGaussianMixture(
            k,
            max_iter=2000,
            tol=args.vb_tol,
            random_state=0,
            init_params="k-means++",
            updates=updates,
            n_shards=args.shards[0],
            acceleration=None,
        )
        start = time.perf_counter()
        model.fit(path)
        wall = time.perf_counter() - start
        active = int((model.weights_ > 0.01).sum())
        table.append(
            (updates, model.n_iter_, model.converged_, active, model.lower_bound_, round(wall, 1))
        )
    print(
        format_table(
            ["updates", "passes", "converged", "weights > 1%", "lower_bound_", "wall s"], table
        )
    )


def part_checkpoint(args: argparse.Namespace, tmp: Path) -> None:
    """Commit time of a checkpoint state with and without the kept shard statistics."""
    from emdist.engine.incremental import ShardStatistics
    from emdist.io.checkpoint import CheckpointStore, FitState, RestartState
    from emdist.kernels.mixture import MixtureStats

    K, d, S = args.k, args.d, args.shards[0]
    rng = np.random.default_rng(0)
    params = {
        "weights": rng.random(K),
        "means": rng.random((K, d)),
        "covariances": rng.random((K, d, d)),
        "precisions_cholesky": rng.random((K, d, d)),
    }
    stats = [
        MixtureStats(
            1e5, -1e6, rng.random(K), rng.random((K, d)), rng.random((K, d, d)), params["means"]
        )
        for _ in range(S)
    ]
    carry = {"assignment": np.arange(2 * S), **ShardStatistics(stats, [1.0] * S).to_arrays()}
    print(
        f"\n## Checkpoint commit, K={K} d={d} full, S={S}: carry {len(carry)} arrays "
        f"{sum(v.nbytes for v in carry.values()) / 1e6:.2f} MB, parameters "
        f"{sum(v.nbytes for v in params.values()) / 1e6:.2f} MB"
    )
    times: dict[str, list[float]] = {"batch": [], "incremental": []}
    for r in range(args.repeats * 3):
        for kind in ("batch", "incremental") if r % 2 == 0 else ("incremental", "batch"):
            store = CheckpointStore(tmp / f"ckpt-{kind}-{r}")
            store.open({"bench": 1}, {"data": 1}, 0)
            running = RestartState(
                0, params, np.arange(5.0), False, carry=carry if kind == "incremental" else {}
            )
            state = FitState(running=(running,))
            start = time.perf_counter()
            store.save(state)
            times[kind].append(time.perf_counter() - start)
            store.close()
    print(
        format_table(
            ["updates", "commit ms", "(min-max)"],
            [(k, median(v) * 1e3, spread([x * 1e3 for x in v])) for k, v in times.items()],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-rows", type=int, default=12_500)
    parser.add_argument("--shards", type=int, nargs="+", default=[8], help="shard counts")
    parser.add_argument("--passes", type=int, default=60, help="passes per timed fit")
    parser.add_argument("--tol-ref", type=float, default=1e-7, help="tol of the reference")
    parser.add_argument("--gap", type=float, default=1e-4, help="per-sample distance to B*")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vb-n", type=int, default=100_000)
    parser.add_argument("--vb-chunk-rows", type=int, default=10_000)
    parser.add_argument("--vb-tol", type=float, default=1e-5, help="the estimator's default")
    parser.add_argument("--only", choices=("gmm", "bayesian", "checkpoint"), default=None)
    parser.add_argument("--tmp", default=None, help="scratch root (default .bench-data/)")
    args = parser.parse_args()
    print(environment())
    with scratch_dir(args.tmp) as tmp:
        if args.only in (None, "gmm"):
            part_gmm(args, tmp)
        if args.only in (None, "bayesian"):
            part_bayesian(args, tmp)
        if args.only in (None, "checkpoint"):
            part_checkpoint(args, tmp)


if __name__ == "__main__":
    main()
