"""Warnings and errors raised by emdist."""

from __future__ import annotations

__all__ = ["ConvergenceWarning", "EmdistWarning", "FitError", "InvalidDataError"]


class EmdistWarning(UserWarning):
    """Base class of every warning emdist emits."""


class ConvergenceWarning(EmdistWarning):
    """A fit reached ``max_iter`` before the convergence criterion held."""


class InvalidDataError(ValueError):
    """The data handed to an estimator cannot be fitted (NaN, wrong shape, too few rows...)."""


class FitError(ValueError):
    """The fit itself broke down (a collapsed component, a singular covariance)."""
