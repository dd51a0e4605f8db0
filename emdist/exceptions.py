"""Warnings and errors raised by emdist.

Every error that means "the user's input or setting is wrong" derives from
:class:`EmdistError`, so a command-line front end can print it as one line and exit with
a usage status, while any other exception (a bug) keeps its traceback. Each also derives
from the built-in exception a Python caller would expect (``ValueError``,
``FileExistsError``...), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = [
    "ConvergenceWarning",
    "EmdistError",
    "EmdistWarning",
    "FitError",
    "InvalidDataError",
    "InvalidParameterError",
]


class EmdistWarning(UserWarning):
    """Base class of every warning emdist emits."""


class ConvergenceWarning(EmdistWarning):
    """A fit reached ``max_iter`` before the convergence criterion held."""


class EmdistError(Exception):
    """Base class of the errors that report a problem with the user's input or settings.

    Checkpoint, output, model-format, configuration, ingest, data and parameter errors all
    derive from it; the message is one line that says what is wrong and what to do.
    """


class InvalidParameterError(EmdistError, ValueError):
    """An estimator parameter has a value it cannot take (named in the message)."""


class InvalidDataError(EmdistError, ValueError):
    """The data handed to an estimator cannot be fitted (NaN, wrong shape, too few rows...)."""


class FitError(EmdistError, ValueError):
    """The fit itself broke down (a collapsed component, a singular covariance)."""
