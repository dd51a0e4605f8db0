"""Where the default start leads: final scores over many seeds against scikit-learn's.

For every dataset and model, ``--seeds`` fits at the defaults (one restart; scikit-learn's
own defaults: ``init_params='kmeans'`` for the mixture, k-means++ for K-means) and the mean
and worst final score: the mean log-likelihood per sample for GaussianMixture (higher is
better), the inertia per sample for KMeans (lower is better), and the relative gap of the
mean to scikit-learn's. With ``--old REV`` the same fits also run on the emdist of that git
revision (extracted to a scratch folder), side by side. The passes the start reads are
counted on a Zarr copy of each larger dataset: passes of a one-iteration fit, minus the
scan pass and the iteration.

The mean of a few dozen seeds is noisy (digits' mixtures: 5% from seed to seed), so each
gap comes with a 95% bootstrap interval; ``--seeds 200`` narrows it.

Datasets: scikit-learn's bundled real ones (standardized; smaller than the 10,000-row scan
sample, so every start runs on all their rows in memory) and mixtures of multivariate t (df=3) with
unequal weights (0.6/0.2/0.1/0.05/0.05), 54,000 x 7.

    python benchmarks/bench_starts.py --old 955c8a7          # 30 seeds, this tree as new
    python benchmarks/bench_starts.py --seeds 5 --datasets iris tmix-a   # quick
    python benchmarks/bench_starts.py --seeds 200 --datasets wine digits --models gmm-diag kmeans
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("iris", "wine", "breast_cancer", "digits", "tmix-a", "tmix-b")
MODELS = ("gmm-full", "gmm-diag", "kmeans")


def t_mixture(seed: int, n: int = 54_000, d: int = 7) -> np.ndarray:
    """Multivariate t (df=3) clusters with weights 0.6/0.2/0.1/0.05/0.05, shuffled."""
    weights = (0.6, 0.2, 0.1, 0.05, 0.05)
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(len(weights), d)) * 3.0
    counts = rng.multinomial(n, weights)
    parts = []
    for k, count in enumerate(counts):
        A = rng.normal(size=(d, d)) / np.sqrt(d)
        z = rng.multivariate_normal(np.zeros(d), A @ A.T + 0.3 * np.eye(d), count)
        g = rng.chisquare(3, count) / 3
        parts.append(means[k] + z / np.sqrt(g)[:, None])
    X = np.vstack(parts)
    return X[rng.permutation(n)]


def load(name: str) -> tuple[np.ndarray, int]:
    """The dataset's rows (float64) and its number of clusters."""
    if name.startswith("tmix-"):
        return t_mixture(seed=ord(name[-1]) - ord("a")), 5
    from sklearn import datasets
    from sklearn.preprocessing import StandardScaler

    bunch = getattr(datasets, f"load_{name}")()
    X = StandardScaler().fit_transform(bunch.data.astype(np.float64))
    return X, len(np.unique(bunch.target))


def fit_scores(impl: str, dataset: str, model: str, seeds: int) -> list[float]:
    """Final score of every seed's fit (``impl``: 'sklearn' or 'emdist')."""
    X, k = load(dataset)
    out = []
    for seed in range(seeds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if impl == "sklearn":
                from sklearn.cluster import KMeans
                from sklearn.mixture import GaussianMixture
            else:
                from emdist import GaussianMixture, KMeans  # type: ignore[assignment]
            if model == "kmeans":
                km = KMeans(k, n_init=1, random_state=seed).fit(X)
                out.append(float(km.inertia_) / len(X))
            else:
                cov = model.split("-")[1]
                gm = GaussianMixture(k, covariance_type=cov, random_state=seed).fit(X)
                out.append(float(gm.score(X)))
    return out


def start_passes(dataset: str, model: str) -> int | None:
    """Passes the start reads: a one-iteration fit on a Zarr copy, less scan and iteration."""
    import _common

    X, k = load(dataset)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.zarr"
        _common.write_zarr(path, *X.shape, chunk_rows=len(X) // 6 + 1, fill=X)
        arr, store = _common.CountingStore.open_array(path)
        import emdist

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if model == "kmeans":
                emdist.KMeans(k, n_init=1, max_iter=1, tol=0.0, random_state=0).fit(arr)
            else:
                cov = model.split("-")[1]
                emdist.GaussianMixture(
                    k, covariance_type=cov, max_iter=1, tol=0.0, random_state=0
                ).fit(arr)
        reads = list(store.counts.values())
        if min(reads) != max(reads):
            return None
        # K-means compares its restart under its final centres: one more pass.
        extra = 2 if model == "kmeans" else 1
        return int(reads[0]) - 1 - extra


def worker(args: argparse.Namespace) -> None:
    """Run one implementation's fits and print them as JSON (a subprocess per tree)."""
    result: dict[str, Any] = {}
    for dataset in args.datasets:
        for model in args.models:
            key = f"{dataset}/{model}"
            result[key] = {"scores": fit_scores(args.impl, dataset, model, args.seeds)}
            if args.impl == "emdist" and dataset.startswith("tmix"):
                result[key]["passes"] = start_passes(dataset, model)
            print(f"# {args.impl} {key} done", file=sys.stderr, flush=True)
    print(json.dumps(result))


def run_worker(impl: str, tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--seeds", str(args.seeds)]
    cmd += ["--datasets", *args.datasets, "--models", *args.models]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    parsed: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return parsed


def extract(rev: str, folder: Path) -> Path:
    """emdist as of git revision ``rev``, extracted into ``folder`` (a PYTHONPATH entry)."""
    folder.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "emdist"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def gap_interval(sk: np.ndarray, em: np.ndarray, sign: float, draws: int = 10_000) -> str:
    """95% bootstrap interval of the relative gap of the means (seeds resampled per side)."""
    rng = np.random.default_rng(0)
    a = sk[rng.integers(0, len(sk), (draws, len(sk)))].mean(axis=1)
    b = em[rng.integers(0, len(em), (draws, len(em)))].mean(axis=1)
    lo, hi = np.percentile(sign * (a - b) / abs(sk.mean()), [2.5, 97.5])
    return f"[{lo:+.1e}, {hi:+.1e}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--old", help="git revision whose emdist runs beside this one")
    parser.add_argument("--new", help="git revision to run as the new one (default: this tree)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="emdist", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    import _common

    print(_common.environment())
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.old:
            runs["old"] = run_worker("emdist", extract(args.old, Path(tmp) / "old"), args)
        new_tree = ROOT if args.new is None else extract(args.new, Path(tmp) / "new")
        runs["new"] = run_worker("emdist", new_tree, args)
        runs["sklearn"] = run_worker("sklearn", ROOT, args)
    rows = []
    for key in runs["new"]:
        sk = np.asarray(runs["sklearn"][key]["scores"])
        better_high = not key.endswith("kmeans")
        sign = 1.0 if better_high else -1.0
        row: list[Any] = [key, f"{sk.mean():.4f}", f"{(sk.min() if better_high else sk.max()):.4f}"]
        for label in ("old", "new"):
            if label not in runs:
                continue
            em = np.asarray(runs[label][key]["scores"])
            gap = sign * (sk.mean() - em.mean()) / abs(sk.mean())
            worst = em.min() if better_high else em.max()
            passes = runs[label][key].get("passes")
            row += [
                f"{em.mean():.4f}",
                f"{worst:.4f}",
                f"{gap:+.2e}",
                gap_interval(sk, em, sign),
                "-" if passes is None else passes,
            ]
        rows.append(row)
    header = ["data/model", "sklearn mean", "worst"]
    for label in ("old", "new"):
        if label in runs:
            header += [f"{label} mean", "worst", "gap", "gap 95% CI", "start passes"]
    print(
        f"{args.seeds} seeds; gap: how much worse the mean is than scikit-learn's, relative "
        f"(95% CI: bootstrap over the seeds of both sides)"
    )
    print(_common.format_table(header, rows))


if __name__ == "__main__":
    main()
