"""Declarative checks of estimator parameters (as scikit-learn's ``_parameter_constraints``).

Every estimator states, in one table, what each of its parameters may be; ``fit``
validates the whole table before reading any data, and the error names the parameter, what
it must be and what it got. Checks that need the data (shapes of user arrays, priors
against ``n_features``) stay with the model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emdist.exceptions import InvalidDataError, InvalidParameterError

__all__ = [
    "MAX_N_INIT",
    "UPDATES",
    "UPDATES_CONSTRAINTS",
    "Constraint",
    "any_of",
    "boolean",
    "check_data_scale",
    "is_none",
    "literal",
    "non_negative_real",
    "one_of",
    "positive_finite_real",
    "positive_int",
    "restart_count",
    "shards_of",
    "validate_parameters",
]


@dataclass(frozen=True)
class Constraint:
    """What a parameter may be: a test and the words for it in an error message."""

    description: str
    test: Callable[[Any], bool]

    def __call__(self, value: Any) -> bool:
        """Whether ``value`` satisfies the constraint."""
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


positive_int = Constraint("a positive int", lambda v: _is_int(v) and int(v) >= 1)
#: Most restarts of one fit. Each is a full EM run whose parameters are held side by side
#: (and seeded up front): a count beyond this would hang the fit long before it helped.
MAX_N_INIT = 10_000
restart_count = Constraint(
    f"a positive int at most {MAX_N_INIT:,}",
    lambda v: _is_int(v) and 1 <= int(v) <= MAX_N_INIT,
)
# A NaN fails ``>= 0`` as it should.
non_negative_real = Constraint(">= 0", lambda v: _is_real(v) and float(v) >= 0)
boolean = Constraint("a bool", lambda v: isinstance(v, bool))
is_none = Constraint("None", lambda v: v is None)
positive_finite_real = Constraint(
    "a positive finite float", lambda v: _is_real(v) and math.isfinite(v) and float(v) > 0
)


def one_of(options: Sequence[str]) -> Constraint:
    """One of the strings ``options``."""
    choices = tuple(options)
    return Constraint(f"one of {choices}", lambda v: isinstance(v, str) and v in choices)


def literal(value: str) -> Constraint:
    """Exactly the string ``value``."""
    return Constraint(repr(value), lambda v: isinstance(v, str) and v == value)


def any_of(*constraints: Constraint) -> Constraint:
    """Any of ``constraints`` (``None or a positive int``)."""
    return Constraint(
        " or ".join(c.description for c in constraints),
        lambda v: any(c(v) for c in constraints),
    )


#: How often the parameters are updated: once per pass, or after every shard.
UPDATES = ("batch", "incremental")
#: The parameters of the update schedule, shared by every estimator's table.
UPDATES_CONSTRAINTS: dict[str, Constraint] = {
    "updates": one_of(UPDATES),
    "n_shards": positive_int,
}


def shards_of(updates: str, n_shards: int) -> int | None:
    """The shard count a fit plan receives: ``None`` for batch EM."""
    return int(n_shards) if updates == "incremental" else None


def validate_parameters(constraints: Mapping[str, Constraint], params: Mapping[str, Any]) -> None:
    """Check every parameter that has a constraint.

    Raises
    ------
    InvalidParameterError
        A ``ValueError``, ``"<name> must be <description>; got <value>"``, for the first
        parameter that fails.
    """
    for name, constraint in constraints.items():
        value = params[name]
        if not constraint(value):
            raise InvalidParameterError(f"{name} must be {constraint.description}; got {value!r}")


def check_data_scale(n_samples: int, variance: Any, sample: Any, model: str = "this model") -> None:
    """Refuse data whose squared distances can overflow float64, from the scan's statistics.

    A row's squared distance from the mean is at most ``n_samples`` times the summed
    per-feature variance, and two rows are at most twice that far apart: when
    ``4 * n_samples * Σ variance`` overflows (or the variance itself did), distances and
    second moments may become infinite, and a fit would report an infinite inertia or
    bound instead of failing. Checked before any pass over the data.

    Parameters
    ----------
    n_samples : int
    variance : ndarray of shape (n_features,)
        Per-feature variance from the scan pass.
    sample : ndarray of shape (m, n_features)
        The scan's sample of rows (its largest magnitude names the scale when the
        variance overflowed).
    model : str
        The estimator, for the message.

    Raises
    ------
    InvalidDataError
        One line: the scale of the data and by how much to scale it down.
    """
    variance = np.asarray(variance, dtype=np.float64)
    limit = float(np.finfo(np.float64).max)
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.sum(variance))
        bound = 4.0 * max(int(n_samples), 1) * total
    if math.isfinite(bound) and bound < limit:
        return
    if math.isfinite(total):
        scale = math.sqrt(total)
    else:
        sample = np.asarray(sample, dtype=np.float64)
        scale = float(np.max(np.abs(sample))) if sample.size else math.inf
    # Bring the summed squares of every row well inside float64 (about 1e300).
    target = math.sqrt(limit / (4.0 * max(int(n_samples), 1) * max(len(variance), 1))) / 1e3
    factor = scale / target if math.isfinite(scale) and scale > 0 else math.inf
    raise InvalidDataError(
        f"X is too large in scale for {model}: values of the order of {scale:.3g} make "
        f"squared distances overflow float64; divide X by about {factor:.1g} (or standardise "
        f"each feature) before fitting."
    )
