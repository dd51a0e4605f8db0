"""Warnings and errors raised by emdist.

Every error that means "the user's input or setting is wrong" derives from
:class:`EmdistError`, so a command-line front end can print it as one line and exit with
a usage status, while any other exception (a bug) keeps its traceback. Each also derives
from the built-in exception a Python caller would expect (``ValueError``,
``FileExistsError``...), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Self

__all__ = [
    "ConvergenceWarning",
    "EmdistError",
    "EmdistWarning",
    "FeatureNamesWarning",
    "FitError",
    "InvalidDataError",
    "InvalidDataTypeError",
    "InvalidParameterError",
    "NotFittedError",
    "align_with_sklearn",
    "not_fitted_error",
]


class EmdistWarning(UserWarning):
    """Base class of every warning emdist emits."""


class ConvergenceWarning(EmdistWarning):
    """A fit reached ``max_iter`` before the convergence criterion held.

    Once scikit-learn is imported, this class also derives from
    ``sklearn.exceptions.ConvergenceWarning`` (see :func:`align_with_sklearn`), so
    ``warnings.filterwarnings("ignore", category=sklearn.exceptions.ConvergenceWarning)``
    and ``pytest.warns`` of scikit-learn's class catch ours too.
    """


class FeatureNamesWarning(EmdistWarning):
    """Only one of the data and the fit had feature names, so they cannot be compared.

    Feature names are a DataFrame's columns or a Zarr store's ``feature_names``. The
    message is scikit-learn's (``X has feature names, but ... was fitted without feature
    names`` and ``X does not have valid feature names, but ...``), and the class is a
    ``UserWarning`` as scikit-learn's, so filters written for scikit-learn match it.
    """


class EmdistError(Exception):
    """Base class of the errors that report a problem with the user's input or settings.

    Checkpoint, output, model-format, configuration, ingest, data and parameter errors all
    derive from it; the message is one line that says what is wrong and what to do.

    The message speaks Python (``pass source_format=``). Where it names an argument, the
    raiser records the exact words with :meth:`naming`, so that another interface (the
    command line's ``--format``) can say the same in its own words with :meth:`speak`,
    without guessing at the text.
    """

    def naming(self, argument: str, words: str, value: object = None) -> Self:
        """Record that the message names ``argument`` (set to ``value``) as ``words``.

        Parameters
        ----------
        argument : str
            The Python argument (or function, e.g. ``'emdist.io.ingest'``) named.
        words : str
            The exact text of the message that names it, e.g. ``"source_format='hdf5'"``.
        value : object, optional
            The value the message names with it, for :meth:`speak`.

        Returns
        -------
        EmdistError
            ``self``, to raise it: ``raise InvalidDataError(...).naming(...)``.
        """
        self.__dict__.setdefault("named", {})[argument] = (words, value)
        return self

    def speak(self, words: Callable[[str, object], str | None]) -> str:
        """The message with each argument recorded by :meth:`naming` in other words.

        Parameters
        ----------
        words : callable
            ``words(argument, value)``: how the interface names it (e.g. ``'--format hdf5'``),
            or None to keep the Python words.
        """
        text = str(self)
        named: dict[str, tuple[str, object]] = self.__dict__.get("named", {})
        for argument, (said, value) in named.items():
            other = words(argument, value)
            if other is not None:
                text = text.replace(said, other)
        return text


class InvalidParameterError(EmdistError, ValueError):
    """An estimator parameter has a value it cannot take (named in the message)."""


class InvalidDataError(EmdistError, ValueError):
    """The data handed to an estimator cannot be fitted (NaN, wrong shape, too few rows...)."""


class InvalidDataTypeError(InvalidDataError, TypeError):
    """The data holds values that are not numbers (an object array with text or ``None``).

    Also a ``TypeError``, as scikit-learn raises for such arrays (numpy's ``float()``
    refusing the value), while still an :class:`InvalidDataError` (a ``ValueError``).
    """


class FitError(EmdistError, ValueError):
    """The fit itself broke down (a collapsed component, a singular covariance)."""


class NotFittedError(InvalidDataError, AttributeError):
    """An estimator was used before ``fit``.

    Both a ``ValueError`` and an ``AttributeError``, as scikit-learn's
    ``sklearn.exceptions.NotFittedError`` (so ``hasattr`` probes and ``except ValueError``
    both behave as with scikit-learn). It is also an :class:`InvalidDataError`, which
    emdist raised here before this class existed, so existing ``except`` clauses still
    catch it.

    When scikit-learn is installed, what emdist raises (see :func:`not_fitted_error`) is
    also an instance of ``sklearn.exceptions.NotFittedError``, so code written for
    scikit-learn's estimators catches ours unchanged.
    """


_SKLEARN_NOT_FITTED: type[NotFittedError] | None = None
_SKLEARN_LOOKED_UP = False


def _not_fitted_class() -> type[NotFittedError]:
    """:class:`NotFittedError`, also subclassing scikit-learn's one when it is installed.

    ``except sklearn.exceptions.NotFittedError`` matches by the exception's class (Python
    does not consult ``__instancecheck__`` there), so the only way to be caught by it is to
    subclass it. scikit-learn is optional: it is imported here, on the error path, the
    first time an unfitted estimator is used, never when emdist is imported.
    """
    global _SKLEARN_NOT_FITTED, _SKLEARN_LOOKED_UP
    if not _SKLEARN_LOOKED_UP:
        _SKLEARN_LOOKED_UP = True
        try:
            from sklearn.exceptions import NotFittedError as SklearnNotFittedError
        except ImportError:
            pass
        else:
            align_with_sklearn()
            # Named so that pickle finds it again (through the module ``__getattr__``
            # below), e.g. when a Dask worker or a Prefect task sends the error back.
            _SKLEARN_NOT_FITTED = type(
                "NotFittedError",
                (NotFittedError, SklearnNotFittedError),
                {
                    "__module__": __name__,
                    "__qualname__": _SKLEARN_CLASS_NAME,
                    "__doc__": NotFittedError.__doc__,
                },
            )
    return _SKLEARN_NOT_FITTED or NotFittedError


_SKLEARN_CLASS_NAME = "_SklearnNotFittedError"


def __getattr__(name: str) -> object:
    # Built on first use, not at import: scikit-learn stays optional and unimported.
    if name == _SKLEARN_CLASS_NAME:
        return _not_fitted_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def align_with_sklearn() -> None:
    """Make :class:`ConvergenceWarning` a subclass of scikit-learn's, once it is imported.

    A class is a subclass only through its bases, and emdist must not import scikit-learn
    (optional, and seconds to import) to define its own. Code that names scikit-learn's
    class has imported it, so it is enough to add it to our bases when scikit-learn is
    already in ``sys.modules``: at import of this module, at the start of every fit (before
    any warning is emitted) and when scikit-learn calls an estimator. The class stays the
    same object (``__bases__`` is reassigned), so pickles, ``except`` clauses and filters
    on ``emdist.ConvergenceWarning`` or :class:`EmdistWarning` are unchanged.
    """
    module = sys.modules.get("sklearn.exceptions")
    theirs = getattr(module, "ConvergenceWarning", None)
    if isinstance(theirs, type) and not issubclass(ConvergenceWarning, theirs):
        ConvergenceWarning.__bases__ = (EmdistWarning, theirs)


align_with_sklearn()


def not_fitted_error(estimator: object) -> NotFittedError:
    """The error to raise when ``estimator`` is used before ``fit``.

    Parameters
    ----------
    estimator : object
        The unfitted estimator (its class names the message).

    Returns
    -------
    NotFittedError
        Also a ``sklearn.exceptions.NotFittedError`` when scikit-learn is installed.
    """
    return _not_fitted_class()(
        f"This {type(estimator).__name__} instance is not fitted yet; call fit first."
    )
