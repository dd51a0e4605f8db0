"""Which exceptions are a user's mistake: reported in one line, never retried.

A user's mistake (a bad configuration, bad data, a missing input, an output that may not be
replaced, a scheduler that does not answer) is fixed by the user, not by trying again: the
CLI prints it as one line with exit status 2, the Prefect tasks do not retry it, and the
flows log it without a traceback. Anything else is a bug or an outage and keeps its
traceback (``--debug`` shows a user error's too).
"""

from __future__ import annotations

import logging

from emdist.exceptions import EmdistError

__all__ = ["USER_ERRORS", "is_user_error", "silence_cancelled_work"]

# Every emdist error (configuration, data, parameters, checkpoints, outputs, models, ingest,
# schedulers) derives from EmdistError; a missing or existing path is the user's too. A bare
# ValueError is not on the list: it is a bug, and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (EmdistError, FileExistsError, FileNotFoundError)


def is_user_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a user's mistake (see the module docstring)."""
    return isinstance(exc, USER_ERRORS)


def silence_cancelled_work() -> None:
    """Quiet the loggers that report work cancelled by the user's Ctrl-C.

    distributed logs the cancelled futures and the tasks it leaves behind (asyncio's "Task
    exception was never retrieved"), possibly after the cluster closed: tracebacks for a stop
    the user asked for and is told about.
    """
    for name in ("distributed", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
