"""emdist: distributed, out-of-core K-means and Gaussian mixtures fitted by EM.

The data is a row-chunked Dask array (typically backed by Zarr). One EM iteration is one
pass over it: every block maps to sufficient statistics, these are tree-reduced, and the
M-step on the client turns them into new parameters.

The names in ``__all__`` are the library's public surface, with those of :mod:`emdist.io`
(reading, writing and generating data) and :mod:`emdist.exceptions` (errors and warnings).
Everything else is internal and may change: the pipeline and the Prefect flows of this
repository use only these names (a test reads their imports).

Public names
------------
GaussianMixture, BayesianGaussianMixture, KMeans
    The estimators (scikit-learn conventions, fitted over row-chunked Dask arrays).
fit_shared, select_n_components, ComponentSelection, summary_statistics_shared
    Several estimators fitted, or scored, with shared passes over the data.
load_model, save_model, write_predictions, CheckpointStore
    Models, predictions and checkpoints on disk (Zarr arrays and JSON attributes).
IterationState, Observer
    What a fit's ``observer`` callback receives after every EM iteration, and its type.
model_families, family_class
    The registered model families by name (``gmm``, ``kmeans``...), and their classes.
COVARIANCE_TYPES, MAX_N_INIT
    The covariance types the mixtures accept, and the most restarts (``n_init``) of a fit.
ConvergenceWarning, FitError, InvalidDataError, NotFittedError
    The errors and warnings a fit raises most often (all are in :mod:`emdist.exceptions`).
"""

from __future__ import annotations

from emdist._typing import COVARIANCE_TYPES
from emdist._version import __version__ as __version__
from emdist.engine.em import IterationState, Observer
from emdist.exceptions import ConvergenceWarning, FitError, InvalidDataError, NotFittedError
from emdist.io.checkpoint import CheckpointStore
from emdist.io.outputs import write_predictions
from emdist.io.persistence import load_model, save_model
from emdist.models._validation import MAX_N_INIT
from emdist.models.bayesian_mixture import BayesianGaussianMixture
from emdist.models.gaussian_mixture import GaussianMixture
from emdist.models.kmeans import KMeans
from emdist.models.selection import (
    ComponentSelection,
    fit_shared,
    select_n_components,
    summary_statistics_shared,
)
from emdist.registry import family_class, model_families

__all__ = [
    "COVARIANCE_TYPES",
    "MAX_N_INIT",
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
    "Observer",
    "family_class",
    "fit_shared",
    "load_model",
    "model_families",
    "save_model",
    "select_n_components",
    "summary_statistics_shared",
    "write_predictions",
]
