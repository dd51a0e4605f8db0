"""Which exceptions are a user's mistake: reported in one line, never retried.

A user's mistake (a bad configuration, bad data, a missing input, an output that may not be
replaced, a scheduler that does not answer) is fixed by the user, not by trying again: the
CLI prints it as one line with exit status 2, the Prefect tasks do not retry it, and the
flows log it without a traceback. Anything else is a bug or an outage and keeps its
traceback (``--debug`` shows a user error's too).
"""

from __future__ import annotations

from emdist.exceptions import FitError, InvalidDataError
from emdist.io.atomic import OutputExistsError
from emdist.io.checkpoint import CheckpointError, CheckpointMismatchError
from pipeline.cluster import SchedulerLostError, SchedulerUnreachableError
from pipeline.config import ConfigError

__all__ = ["USER_ERRORS", "is_user_error"]

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    InvalidDataError,
    FitError,
    CheckpointError,
    CheckpointMismatchError,
    OutputExistsError,
    FileExistsError,
    FileNotFoundError,
    SchedulerUnreachableError,
    SchedulerLostError,
    ValueError,
)


def is_user_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a user's mistake (see the module docstring)."""
    return isinstance(exc, USER_ERRORS)
