"""The job's report: a markdown summary, a table, and PNG plots where a picture reads better.

Plots: the lower bound per iteration; BIC/AIC against the number of components (selection
runs); the clusters in a 2-D PCA projection of a sample of the data, with each Gaussian
component's 2-σ ellipse. The data is sampled from a few evenly spaced chunks, never read
whole.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: the job may run where there is no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402

import emdist  # noqa: E402
from emdist.io.atomic import atomic_output  # noqa: E402
from emdist.io.sources import open_zarr_array  # noqa: E402
from pipeline.steps import DatasetRef, FitSummary, PredictionsRef, SelectionResult  # noqa: E402

__all__ = ["ReportRef", "data_sample", "summary_rows", "write_report"]


@dataclass(frozen=True)
class ReportRef:
    """Where the report is, and what it says in short."""

    dir: str
    markdown_path: str
    markdown: str
    images: list[str]
    rows: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def data_sample(
    path: str, max_rows: int = 4000, seed: int = 0
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Rows from a few evenly spaced chunks of a Zarr array, and their global indices."""
    arr = open_zarr_array(path)
    n = int(arr.shape[0])
    rows = int((arr.shards or arr.chunks)[0])
    n_chunks = -(-n // rows)
    picks = np.unique(np.linspace(0, n_chunks - 1, num=min(n_chunks, 4)).astype(int))
    index = np.concatenate([np.arange(c * rows, min(n, (c + 1) * rows)) for c in picks])
    rng = np.random.default_rng(seed)
    if len(index) > max_rows:
        index = np.sort(rng.choice(index, max_rows, replace=False))
    blocks = {c: np.asarray(arr[c * rows : min(n, (c + 1) * rows)]) for c in picks}
    X = np.stack([blocks[i // rows][i - (i // rows) * rows] for i in index])
    return X.astype(np.float64), index


def _plot_lower_bound(fit: FitSummary, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bounds = np.asarray(fit.lower_bounds)
    its = np.arange(1, len(bounds) + 1)
    ax.plot(its, bounds, marker="o", ms=3)
    if len(bounds) > 2:
        # A seeding with tiny covariances (k-means++ init) makes the first bound enormous
        # and flattens the rest; zoom on the later iterations and say so.
        rest = bounds[1:]
        span = float(rest.max() - rest.min()) or 1.0
        if bounds[0] < rest.min() - 10 * span:
            ax.set_ylim(rest.min() - 0.1 * span, rest.max() + 0.1 * span)
            ax.annotate(
                f"iteration 1: {bounds[0]:.4g} (off scale)",
                xy=(0.02, 0.04),
                xycoords="axes fraction",
                fontsize=8,
            )
    ax.set_xlabel("iteration")
    ax.set_ylabel("-inertia / n" if fit.family == "kmeans" else "lower bound per sample")
    ax.set_title(f"Convergence ({'converged' if fit.converged else 'not converged'})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_selection(selection: SelectionResult, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ks = [r["k"] for r in selection.rows]
    if selection.criterion == "inertia":
        ax.plot(ks, [r["inertia"] for r in selection.rows], marker="o", label="inertia")
    else:
        ax.plot(ks, [r["bic"] for r in selection.rows], marker="o", label="BIC")
        ax.plot(ks, [r["aic"] for r in selection.rows], marker="s", label="AIC")
    ax.axvline(selection.best_k, color="grey", ls="--", label=f"best K = {selection.best_k}")
    ax.set_xlabel("number of components K")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_clusters(model: Any, X: np.ndarray[Any, Any], path: Path) -> None:
    labels = model.predict(X)
    center = X.mean(axis=0)
    # PCA by SVD of the centred sample: the two directions of largest spread.
    _, _, vt = np.linalg.svd(X - center, full_matrices=False)
    P = vt[:2] if vt.shape[0] >= 2 else np.vstack([vt, np.zeros_like(vt)])
    Z = (X - center) @ P.T
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(Z[:, 0], Z[:, 1], c=labels, s=4, cmap="tab10", alpha=0.6)
    components = model.components()
    M = (components.means - center) @ P.T
    ax.scatter(M[:, 0], M[:, 1], c="black", marker="x", s=60)
    covs = components.covariances
    if covs is not None:
        for m, cov in zip(M, covs, strict=True):
            c2 = P @ cov @ P.T
            vals, vecs = np.linalg.eigh(c2)
            vals = np.clip(vals, 0, None)
            angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
            ax.add_patch(
                Ellipse(
                    tuple(m),
                    4 * np.sqrt(vals[-1]),
                    4 * np.sqrt(vals[0]),
                    angle=angle,
                    fill=False,
                    color="black",
                    lw=1,
                )
            )
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("Clusters on a sample (2-D PCA projection)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_rows(fit: FitSummary, predictions: PredictionsRef | None) -> list[dict[str, Any]]:
    """One row per component: weight (or share), size, and the first mean coordinates."""
    model = emdist.load_model(fit.model_path)
    rows = []
    for k, mean in enumerate(model.components().means):
        row: dict[str, Any] = {"component": k}
        if fit.weights:
            row["weight"] = round(fit.weights[k], 6)
        if predictions is not None:
            row["n_samples"] = predictions.counts[k]
        row["mean (first 3)"] = ", ".join(f"{v:.4g}" for v in mean[:3])
        rows.append(row)
    return rows


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_report(
    config_name: str,
    data: DatasetRef,
    fit: FitSummary,
    predictions: PredictionsRef | None,
    report_dir: str | Path,
    selection: SelectionResult | None = None,
) -> ReportRef:
    """Write ``report.md`` and its plots into ``report_dir`` (replaced atomically).

    Returns
    -------
    ReportRef
    """
    model = emdist.load_model(fit.model_path)
    rows = summary_rows(fit, predictions)
    report_dir = Path(report_dir)
    per_iter = float(np.median(fit.iteration_seconds)) if fit.iteration_seconds else float("nan")
    images = ["lower_bound.png", "clusters.png"] + (["selection.png"] if selection else [])
    lines = [
        f"# emdist report: {config_name}",
        "",
        f"Generated {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        "## Data",
        f"- `{data.path}`: {data.n_samples:,} samples x {data.n_features} features, "
        f"{data.n_chunks} chunks of {data.chunk_rows:,} rows",
        "",
        "## Fit",
        f"- model: {fit.family}, K = {fit.n_components}",
        f"- iterations: {fit.n_iter} ({'converged' if fit.converged else 'NOT converged'})"
        + (
            f", {fit.resumed_iterations} resumed from a checkpoint"
            if fit.resumed_iterations
            else ""
        ),
        f"- final lower bound: {fit.lower_bounds[-1]:.6f}"
        if fit.lower_bounds
        else "- no iterations",
        (
            f"- fit time: {fit.fit_seconds:.2f} s; median {per_iter:.3f} s per iteration"
            if fit.iteration_seconds
            else f"- fit time: {fit.fit_seconds:.2f} s; every iteration restored from the "
            "checkpoint"
        ),
    ]
    if fit.bic is not None:
        lines.append(
            f"- mean log-likelihood: {fit.score:.6f}; BIC: {fit.bic:.2f}; AIC: {fit.aic:.2f}"
        )
    if fit.inertia is not None:
        lines.append(f"- inertia: {fit.inertia:.6g}")
    lines += ["", "## Components", "", _markdown_table(rows), "", "## Plots", ""]
    lines += [
        "![lower bound per iteration](lower_bound.png)",
        "",
        "![clusters in a 2-D projection](clusters.png)",
    ]
    if selection is not None:
        lines += [
            "",
            "## Choosing K",
            "",
            _markdown_table(
                [{k: v for k, v in r.items() if k != "model_path"} for r in selection.rows]
            ),
            "",
            f"Best K by {selection.criterion}: **{selection.best_k}**",
            "",
            "![information criteria against K](selection.png)",
        ]
    markdown = "\n".join(lines) + "\n"
    X, _ = data_sample(data.path)
    with atomic_output(report_dir, overwrite=True) as tmp:
        tmp.mkdir(parents=True)
        _plot_lower_bound(fit, tmp / "lower_bound.png")
        _plot_clusters(model, X, tmp / "clusters.png")
        if selection is not None:
            _plot_selection(selection, tmp / "selection.png")
        (tmp / "report.md").write_text(markdown)
    return ReportRef(
        dir=str(report_dir),
        markdown_path=str(report_dir / "report.md"),
        markdown=markdown,
        images=[str(report_dir / i) for i in images],
        rows=rows,
    )
