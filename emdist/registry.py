"""The model families emdist knows, by name: the one list every other layer reads.

An estimator class joins with the :func:`register_family` decorator where it is defined.
The pipeline's configuration and CLI (the choices of ``model.family`` / ``--model``),
model persistence (which class a saved model names) and the report all look families up
here, so adding a model family touches its own module and nothing else.

This module imports nothing from the rest of emdist, so that any layer may read it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

__all__ = ["estimator_class", "family_class", "model_families", "register_family"]

T = TypeVar("T", bound=type[Any])

_FAMILIES: dict[str, type[Any]] = {}


def register_family(name: str, *, summary: str) -> Callable[[T], T]:
    """Class decorator: register an estimator as the model family ``name``.

    Parameters
    ----------
    name : str
        The family's name in configurations and on the command line (``gmm``).
    summary : str
        One line for help texts.

    Returns
    -------
    callable
        The decorator; it sets ``family_name`` and ``family_summary`` on the class.
    """

    def register(cls: T) -> T:
        if name in _FAMILIES and _FAMILIES[name] is not cls:
            raise ValueError(f"model family {name!r} is already registered")
        cls.family_name = name
        cls.family_summary = summary
        _FAMILIES[name] = cls
        return cls

    return register


def model_families() -> Mapping[str, type[Any]]:
    """Every registered family: name -> estimator class (read-only)."""
    return MappingProxyType(_FAMILIES)


def family_class(name: str) -> type[Any]:
    """The estimator class of family ``name``.

    Raises
    ------
    ValueError
        Naming the known families.
    """
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"unknown model family {name!r}; known families: {', '.join(sorted(_FAMILIES))}"
        ) from None


def estimator_class(class_name: str) -> type[Any] | None:
    """The registered estimator class called ``class_name``, or ``None``.

    Saved models name their class; only registered classes are ever built from a store.
    """
    for cls in _FAMILIES.values():
        if cls.__name__ == class_name:
            return cls
    return None
