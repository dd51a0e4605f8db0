"""``partial_fit``: which step decay, and stepwise EM against a warm full fit on grown data.

Data: the overlapping blob dataset of ``_common`` (``--n`` rows, ``--d`` features, ``--k``
components, full covariances), in memory. Bounds are mean log-likelihoods per sample on
all the rows, measured untimed.

Part 1 (step decay): a ``GaussianMixture`` is streamed the rows in batches of ``--batch``
rows (a seeded permutation, one per epoch) for ``--epochs`` epochs, from starting
parameters seeded on the first batch; after each epoch its bound on all the rows is
measured and reported as the gap per sample to batch EM run to ``tol=1e-6`` from the same
start (so that a different local optimum of the start does not count against the
stream). One row per ``step_decay``; medians over ``--repeats`` seeds of the stream.

Part 2 (a scheduled job whose input grew): a model is fitted (``tol=1e-6``) on the first
``n / (1 + growth)`` rows; the input grows to ``n`` rows. Then, from that model:

* **warm full fit**: ``warm_start_from(previous)`` and ``fit`` on all rows, one pass per
  iteration (``tol=0``, the bound after each iteration measured from the observer's
  parameters);
* **stepwise**: ``partial_fit`` over all rows in batches of ``--batch`` (epochs of a seeded
  permutation), the bound measured after every quarter epoch.

Reported: passes over the data (an epoch of ``partial_fit`` is one pass) until the bound
is within ``--gap`` per sample of ``B*``, the bound batch EM converges to (``tol=1e-6``)
from the previous model on the grown data, and the gap where each stopped.

    python benchmarks/bench_partial_fit.py                         # 100k x 8, K=8 (~2 min)
    python benchmarks/bench_partial_fit.py --n 30000 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

import emdist
from benchmarks._common import environment, format_table, make_blobs, median


def _bound(model: Any, X: np.ndarray) -> float:
    """Mean log-likelihood per sample of a model on ``X`` (exact, one in-memory pass)."""
    return float(model.score(X))


def _stream(gm: emdist.GaussianMixture, X: np.ndarray, batch: int, rng: Any, fractions: int):
    """Yield (epochs so far, bound) every ``1 / fractions`` epoch of partial_fit over ``X``."""
    epoch = 0
    while True:
        order = rng.permutation(len(X))
        starts = list(range(0, len(X), batch))
        marks = {int(len(starts) * f / fractions) - 1 for f in range(1, fractions + 1)}
        for i, s in enumerate(starts):
            gm.partial_fit(X[order[s : s + batch]])
            if i in marks:
                yield epoch + (i + 1) / len(starts), _bound(gm, X)
        epoch += 1


def _start(X: np.ndarray, k: int, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Starting parameters from the first batch (k-means init, as the stream's first call)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        gm = emdist.GaussianMixture(k, max_iter=1, random_state=seed).fit(X[:batch])
    return {"weights_init": gm.weights_, "means_init": gm.means_, "precisions_init": gm.precisions_}


def decay_table(X: np.ndarray, args: argparse.Namespace) -> str:
    gaps: dict[float, list[list[float]]] = {
        kappa: [[] for _ in range(args.epochs)] for kappa in args.decays
    }
    for rep in range(args.repeats):
        order = np.random.default_rng([rep, 9]).permutation(len(X))
        init = _start(X[order], args.k, args.batch, rep)
        # The batch fit from the same start: the optimum this start leads batch EM to.
        ref = emdist.GaussianMixture(args.k, tol=1e-6, max_iter=1000, **init).fit(X)
        b_ref = _bound(ref, X)
        for kappa in args.decays:
            gm = emdist.GaussianMixture(args.k, step_decay=kappa, **init)
            stream = _stream(gm, X, args.batch, np.random.default_rng([rep, 9]), 1)
            for e in range(args.epochs):
                _, bound = next(stream)
                gaps[kappa][e].append(b_ref - bound)
    rows = [
        [kappa, *(f"{median(g):.4f} ({min(g):.4f} to {max(g):.4f})" for g in gaps[kappa])]
        for kappa in args.decays
    ]
    header = ["step_decay", *(f"gap after epoch {e + 1}" for e in range(args.epochs))]
    return format_table(header, rows)


def grown_table(X: np.ndarray, args: argparse.Namespace) -> str:
    n_old = int(len(X) / (1 + args.growth))
    previous = emdist.GaussianMixture(args.k, tol=1e-6, max_iter=1000, random_state=0)
    previous.fit(X[:n_old])
    # The full-fit bound: batch EM on the grown data from the previous model, converged.
    target = emdist.GaussianMixture(args.k, tol=1e-6, max_iter=1000)
    target.warm_start_from(previous, X.shape[1])
    b_star = _bound(target.fit(X), X)
    start_gap = b_star - _bound(previous, X)

    # Warm full fit: one pass per iteration; the bound of every iteration's parameters.
    bounds: list[float] = []

    def observe(event: Any) -> None:
        params = getattr(event, "params", None)
        if params is not None:
            probe = emdist.GaussianMixture(args.k)
            probe._set_params(params)
            probe.n_features_in_ = X.shape[1]
            bounds.append(_bound(probe, X))

    warm = emdist.GaussianMixture(args.k, tol=0.0, max_iter=args.max_passes, observer=observe)
    warm.warm_start_from(previous, X.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emdist.ConvergenceWarning)
        warm.fit(X)
    warm_passes = next(
        (i + 1 for i, b in enumerate(bounds) if b_star - b <= args.gap), f">{len(bounds)}"
    )
    rows: list[list[Any]] = [
        ["warm full fit", warm_passes, f"{b_star - bounds[-1]:.5f} after {len(bounds)}"]
    ]
    for kappa in args.decays:
        gm = copy.deepcopy(previous).set_params(step_decay=kappa)
        stream = _stream(gm, X, args.batch, np.random.default_rng(3), 4)
        reached: Any = f">{args.max_passes}"
        last = 0.0
        for passes, bound in stream:
            last = b_star - bound
            if last <= args.gap:
                reached = passes
                break
            if passes >= args.max_passes:
                break
        rows.append([f"stepwise, step_decay={kappa}", reached, f"{last:.5f}"])
    table = format_table(["update", f"passes to gap <= {args.gap}", "gap at stop"], rows)
    return (
        f"full-fit bound B* = {b_star:.5f}; gap of the previous model on the grown data: "
        f"{start_gap:.5f}\n\n{table}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decays", type=float, nargs="+", default=[0.55, 0.6, 0.7, 0.8, 1.0])
    parser.add_argument("--growth", type=float, default=0.2)
    parser.add_argument("--gap", type=float, default=2e-4)
    parser.add_argument("--max-passes", type=int, default=10)
    args = parser.parse_args()

    X = make_blobs(args.n, args.d, args.k, seed=0)
    print(environment())
    print(f"\n{args.n} x {args.d}, K={args.k}, full covariances; batches of {args.batch}")
    print(
        "\nPart 1: gap per sample to batch EM from the same start, after each epoch of "
        "partial_fit (median, min to max over seeds)\n"
    )
    print(decay_table(X, args))
    print(f"\nPart 2: grown by {args.growth:.0%}, from the model of the old rows\n")
    print(grown_table(X, args))


if __name__ == "__main__":
    main()
