"""The demo job's embedded defaults: a generated dataset, a LocalCluster, a GMM fit."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import RunConfig, parse_config

__all__ = ["demo_config"]


def demo_config(out_dir: str | Path = "runs/demo", n_samples: int = 1_000_000) -> RunConfig:
    """The demo run: ``n_samples`` x 16 from an 8-component mixture, in 50k-row chunks.

    Parameters
    ----------
    out_dir : str or path
        Where the dataset, checkpoint, model, labels and report go.
    n_samples : int
        Rows to generate (the default spans 20 chunks, ~128 MB).
    """
    return parse_config(
        {
            "name": "demo",
            "input": {
                "generate": {
                    "n_samples": n_samples,
                    "n_features": 16,
                    "n_components": 8,
                    "chunk_rows": 50_000,
                    "random_state": 0,
                }
            },
            "model": {"family": "gmm", "n_components": 8, "covariance_type": "full"},
            "output": {"dir": str(out_dir)},
        },
        source="demo defaults",
    )
