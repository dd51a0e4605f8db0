"""emdist: distributed, out-of-core K-means and Gaussian mixtures fitted by EM.

The data is a row-chunked Dask array (typically backed by Zarr). One EM iteration is one
pass over it: every block maps to sufficient statistics, these are tree-reduced, and the
M-step on the client turns them into new parameters.
"""

from __future__ import annotations

from emdist._version import __version__ as __version__
from emdist.engine.em import IterationState
from emdist.exceptions import ConvergenceWarning, FitError, InvalidDataError, NotFittedError
from emdist.io.checkpoint import CheckpointStore
from emdist.io.outputs import write_predictions
from emdist.io.persistence import load_model, save_model
from emdist.models.bayesian_mixture import BayesianGaussianMixture
from emdist.models.gaussian_mixture import GaussianMixture
from emdist.models.kmeans import KMeans
from emdist.models.selection import ComponentSelection, fit_shared, select_n_components

__all__ = [
    "BayesianGaussianMixture",
    "CheckpointStore",
    "ComponentSelection",
    "ConvergenceWarning",
    "FitError",
    "GaussianMixture",
    "InvalidDataError",
    "IterationState",
    "KMeans",
    "NotFittedError",
    "fit_shared",
    "load_model",
    "save_model",
    "select_n_components",
    "write_predictions",
]
