"""Estimators with scikit-learn's conventions."""

from __future__ import annotations

from emdist.models.bayesian_mixture import BayesianGaussianMixture
from emdist.models.gaussian_mixture import GaussianMixture
from emdist.models.kmeans import KMeans

__all__ = ["BayesianGaussianMixture", "GaussianMixture", "KMeans"]
