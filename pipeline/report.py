"""The job's report: a markdown summary, a table, and PNG plots where a picture reads better.

Plots: the lower bound per iteration; BIC/AIC against the number of components (selection
runs); the clusters in a 2-D PCA projection of a sample of the data, with each Gaussian
component's 2-σ ellipse. The data is sampled from a few evenly spaced chunks, never read
whole.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: the job may run where there is no display

import dask.array as da  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

import emdist  # noqa: E402
from emdist.exceptions import FeatureNamesWarning  # noqa: E402
from emdist.io import atomic_output, open_synthetic, open_zarr_array  # noqa: E402
from pipeline.config import RunConfig  # noqa: E402
from pipeline.steps import DatasetRef, FitSummary, PredictionsRef, SelectionResult  # noqa: E402

__all__ = [
    "ReportRef",
    "adjusted_rand_index",
    "data_sample",
    "feature_names",
    "inline_images",
    "lower_bound_figure",
    "report_job",
    "selection_figure",
    "summary_rows",
    "truth_agreement",
    "write_report",
]


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


def _plot_lower_bound(fit: FitSummary, bound_name: str, tol: float | None, path: Path) -> None:
    fig = lower_bound_figure(fit, bound_name, tol)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def lower_bound_figure(fit: FitSummary, bound_name: str, tol: float | None) -> Figure:
    """The bound per iteration, and its change on a log axis against ``tol``."""
    fig, (ax, ax_change) = plt.subplots(1, 2, figsize=(10, 3.5))
    bounds = np.asarray(fit.lower_bounds)
    its = np.arange(1, len(bounds) + 1)
    ax.plot(its, bounds, marker="o", ms=3)
    if len(bounds) > 2:
        # A seeding with tiny covariances makes the first bound enormous and flattens the
        # rest; zoom on the later iterations and say so.
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
    ax.set_ylabel(bound_name)
    ax.set_title(f"Convergence ({'converged' if fit.converged else 'NOT converged'})")
    change = np.abs(np.diff(bounds))
    if len(change):
        # A change of exactly zero has no place on a log axis: draw it as a downward
        # triangle a decade below the smallest value shown.
        shown = [float(v) for v in change[change > 0]] + ([tol] if tol else [])
        floor = (min(shown) if shown else 1.0) / 10
        zero = change == 0
        # NaN breaks the line: a zero change is only its marker at the bottom, with no
        # slope drawn into a value it does not have.
        ax_change.semilogy(its[1:], np.where(zero, np.nan, change), marker="o", ms=3)
        if zero.any():
            ax_change.scatter(
                its[1:][zero],
                np.full(zero.sum(), floor),
                marker="v",
                s=40,
                color="black",
                zorder=3,
                label="exactly 0",
            )
        if tol is not None and tol > 0:
            ax_change.axhline(tol, color="grey", ls="--", label=f"tol = {tol:g}")
        if zero.any() or (tol is not None and tol > 0):
            ax_change.legend(loc="upper right", fontsize=8)
    ax_change.set_xlabel("iteration")
    ax_change.set_ylabel("|change of the bound|")
    ax_change.set_title("Change per iteration")
    for axis in (ax, ax_change):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _plot_selection(selection: SelectionResult, path: Path) -> None:
    fig = selection_figure(selection)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def selection_figure(selection: SelectionResult) -> Figure:
    """The information criteria against the number of components, and the pick."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ks = [r["k"] for r in selection.rows]
    if selection.criterion == "inertia":
        ax.plot(ks, [r["inertia"] for r in selection.rows], marker="o", label="inertia")
        ax.set_ylabel("inertia")
        handles = ax.get_lines()
    else:
        # BIC and AIC differ by their penalties, often by more than either varies with K:
        # on one axis they are two flat lines. Each gets its own axis (and colour).
        bic_colour, aic_colour = "tab:blue", "tab:orange"
        ax.plot(ks, [r["bic"] for r in selection.rows], marker="o", color=bic_colour, label="BIC")
        ax.set_ylabel("BIC", color=bic_colour)
        ax.tick_params(axis="y", colors=bic_colour)
        ax_aic = ax.twinx()
        ax_aic.plot(
            ks, [r["aic"] for r in selection.rows], marker="s", color=aic_colour, label="AIC"
        )
        ax_aic.set_ylabel("AIC", color=aic_colour)
        ax_aic.tick_params(axis="y", colors=aic_colour)
        handles = [*ax.get_lines(), *ax_aic.get_lines()]
    best = ax.axvline(selection.best_k, color="grey", ls="--", label=f"best K = {selection.best_k}")
    ax.set_xlabel("number of components K")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(handles=[*handles, best], fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _component_colours(n_components: int) -> list[Any]:
    cmap = plt.get_cmap("tab10" if n_components <= 10 else "tab20")
    return [cmap(k % cmap.N) for k in range(n_components)]


def _plot_clusters(
    model: Any, X: np.ndarray[Any, Any], counts: list[int] | None, path: Path
) -> None:
    """The sample in its 2-D PCA projection, coloured by component, and the cluster sizes."""
    components = model.components()
    K = len(components.means)
    colours = _component_colours(K)
    with warnings.catch_warnings():
        # X holds rows of the store the model was fitted on, read without its column
        # names: nothing to warn the reader of the report about.
        warnings.simplefilter("ignore", FeatureNamesWarning)
        labels = np.asarray(model.predict(X))
    center = X.mean(axis=0)
    # PCA by SVD of the centred sample: the two directions of largest spread.
    _, sv, vt = np.linalg.svd(X - center, full_matrices=False)
    explained = sv**2 / max(float(np.sum(sv**2)), np.finfo(float).tiny)
    P = vt[:2] if vt.shape[0] >= 2 else np.vstack([vt, np.zeros_like(vt)])
    Z = (X - center) @ P.T
    fig, (ax, ax_sizes) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [3, 2]})
    for k in range(K):
        mine = labels == k
        ax.scatter(Z[mine, 0], Z[mine, 1], color=colours[k], s=4, alpha=0.6, label=str(k))
    M = (components.means - center) @ P.T
    ax.scatter(M[:, 0], M[:, 1], c="black", marker="x", s=60)
    if components.covariances is not None:
        for m, cov, colour in zip(M, components.covariances, colours, strict=True):
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
                    color=colour,
                    lw=1.2,
                )
            )
    ax.legend(
        title="component",
        markerscale=3,
        fontsize=7,
        title_fontsize=8,
        ncol=1 + K // 12,
        loc="best",
    )
    pc = [f"{100 * e:.1f}%" for e in (list(explained[:2]) + [0.0, 0.0])[:2]]
    ax.set_xlabel(f"PC 1 ({pc[0]} of the sample's variance)")
    ax.set_ylabel(f"PC 2 ({pc[1]} of the sample's variance)")
    ax.set_title("Clusters on a sample (2-D PCA projection; ellipses: 2 σ)")
    if counts is not None:
        ax_sizes.bar(range(K), counts, color=colours)
        ax_sizes.set_title("Cluster sizes (all samples)")
        ax_sizes.set_ylabel("samples")
    else:
        sample_counts = np.bincount(labels, minlength=K)
        ax_sizes.bar(range(K), sample_counts, color=colours)
        ax_sizes.set_title("Cluster sizes (in the plotted sample)")
        ax_sizes.set_ylabel("samples in the sample")
    ax_sizes.set_xlabel("component")
    ax_sizes.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_sizes.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def feature_names(path: str) -> list[str] | None:
    """The names of the data's columns recorded at ingest (``feature_names``), if any."""
    names = open_zarr_array(path).attrs.get("feature_names")
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _format_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not np.isfinite(value):
            return str(value)
        return f"{value:,.2f}" if abs(value) >= 1000 else f"{value:.6g}"
    return str(value)


def summary_rows(
    fit: FitSummary, predictions: PredictionsRef | None, names: list[str] | None = None
) -> list[dict[str, Any]]:
    """One row per component: weight, size and share, and the first mean coordinates.

    ``names`` label the coordinates (the data's ``feature_names``; ``x0, x1, ...`` without).
    """
    model = emdist.load_model(fit.model_path)
    means = model.components().means
    d = means.shape[1]
    names = names if names is not None and len(names) == d else [f"x{j}" for j in range(d)]
    total = sum(predictions.counts) if predictions is not None else 0
    shown = min(d, 3)
    header = "mean" if d <= shown else f"mean (first {shown} of {d})"
    rows = []
    for k, mean in enumerate(means):
        row: dict[str, Any] = {"component": k}
        if fit.weights:
            row["weight"] = f"{fit.weights[k]:.6f}"
        if predictions is not None:
            row["n_samples"] = predictions.counts[k]
            row["share"] = f"{100 * predictions.counts[k] / max(total, 1):.1f}%"
        row[header] = ", ".join(f"{names[j]}={mean[j]:.4g}" for j in range(shown))
        rows.append(row)
    return rows


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table; columns with no value in any row are left out."""
    if not rows:
        return ""
    cols = [c for c in rows[0] if any(r.get(c) is not None for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_format_value(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def inline_images(markdown: str, report_dir: str | Path) -> str:
    """``markdown`` with its relative PNG links replaced by embedded ``data:`` images.

    For viewers that cannot follow a link into the report folder (a Prefect artifact is
    shown by the Prefect UI, which has no access to the job's files).
    """
    folder = Path(report_dir)

    def embed(match: re.Match[str]) -> str:
        image = folder / match.group(2)
        if not image.is_file():
            return match.group(0)
        data = base64.b64encode(image.read_bytes()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return re.sub(r"!\[([^\]]*)\]\(([^)/:]+\.png)\)", embed, markdown)


def truth_agreement(data: DatasetRef, predictions: PredictionsRef | None) -> float | None:
    """Adjusted Rand index of the predicted labels against a generated dataset's truth.

    ``None`` when the data has no stored truth or no labels were written. The contingency
    table is counted block by block (one pass over two integer columns).
    """
    if data.truth is None or predictions is None:
        return None
    truth_path = open_synthetic(data.truth).labels_path
    if truth_path is None:
        return None
    truth = da.from_zarr(str(truth_path))
    labels = da.from_zarr(str(Path(predictions.path) / "labels"))
    if truth.shape != labels.shape:
        return None
    k_truth = int(truth.max().compute()) + 1
    k_pred = len(predictions.counts)
    table = da.bincount(
        (truth.astype(np.int64) * k_pred + labels.astype(np.int64)).ravel(),
        minlength=k_truth * k_pred,
    ).compute()
    return adjusted_rand_index(np.asarray(table).reshape(k_truth, k_pred))


def adjusted_rand_index(contingency: np.ndarray[Any, Any]) -> float:
    """Adjusted Rand index (Hubert & Arabie, 1985) from a contingency table of counts."""
    c = np.asarray(contingency, dtype=np.float64)

    def pairs(v: np.ndarray[Any, Any]) -> float:
        return float(np.sum(v * (v - 1) / 2))

    n = float(c.sum())
    index = pairs(c)
    rows, cols = pairs(c.sum(axis=1)), pairs(c.sum(axis=0))
    total = n * (n - 1) / 2
    expected = rows * cols / total if total > 0 else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def _bound_and_score(fit: FitSummary) -> str | None:
    """Why the final lower bound and the mean log-likelihood differ (one sentence)."""
    if fit.score is None or not fit.lower_bounds:
        return None
    bound = fit.lower_bounds[-1]
    if fit.family == "gmm":
        # engine.em: a pass's E-step gives the bound of the parameters it ran with, then the
        # M-step updates them; the model keeps the updated ones (as scikit-learn does).
        return (
            "the final lower bound is the mean log-likelihood of the parameters before the "
            "last M-step (scikit-learn's lower_bound_); the mean log-likelihood above is that "
            f"of the final parameters, after it: the last M-step gained {fit.score - bound:.2e}"
        )
    if fit.family == "bayesian_gmm":
        return (
            "the final lower bound is the ELBO per sample (up to a constant fixed by the "
            "priors), not a log-likelihood; the mean log-likelihood above is that of the "
            "final parameters' expected mixture"
        )
    return None


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
    names = feature_names(data.path)
    rows = summary_rows(fit, predictions, names)
    ari = truth_agreement(data, predictions)
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
        why = _bound_and_score(fit)
        if why:
            lines.append(f"- {why}")
    if fit.inertia is not None:
        lines.append(f"- inertia: {fit.inertia:.6g}")
    if ari is not None:
        lines.append(f"- agreement with the generated truth (adjusted Rand index): {ari:.4f}")
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
        tol = float(model.tol) if model.tol_is_bound_change else None
        _plot_lower_bound(fit, model.bound_name, tol, tmp / "lower_bound.png")
        _plot_clusters(
            model, X, predictions.counts if predictions is not None else None, tmp / "clusters.png"
        )
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


def report_job(
    config: RunConfig,
    data: DatasetRef,
    fit: FitSummary,
    predictions: PredictionsRef | None,
    selection: SelectionResult | None = None,
) -> ReportRef:
    """The job's report stage: :func:`write_report` into ``config``'s report folder.

    Parameters
    ----------
    config : RunConfig
        The run; its ``name`` titles the report, its ``report_dir`` holds it.
    data, fit, predictions, selection
        What the earlier stages returned (``selection`` only when choosing K).

    Returns
    -------
    ReportRef
    """
    return write_report(config.name, data, fit, predictions, config.report_dir, selection)
