"""A user's mistake in a flow run: one line in the run's logs, none on the terminal.

Prefect's engines log a failed task or flow run with its traceback (``exc_info``), at every
retry; for a user's mistake (:mod:`pipeline.errors`) that is ~70 lines around one sentence.
:class:`OneLineUserErrors` (on Prefect's run loggers) turns such a record into the one line
``<ErrorType>: <message>`` the Prefect UI shows; :func:`quiet_console_for_user_errors` (for
the ``emdist`` command, which prints the error itself) keeps those lines off the terminal.
"""

from __future__ import annotations

import logging

from pipeline.errors import is_user_error

__all__ = ["OneLineUserErrors", "install_run_log_filter", "quiet_console_for_user_errors"]

_MARK = "emdist_user_error"


class OneLineUserErrors(logging.Filter):
    """Drop the traceback of a log record about a user's mistake; keep one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place when it carries a user error; keep every record."""
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_user_error(exc):
            record.msg = f"{type(exc).__name__}: {exc}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            setattr(record, _MARK, True)
        return True


#: How Prefect's engines say a run stopped by Ctrl-C (SIGINT): "Crash detected! <this>".
INTERRUPTED = "Execution was aborted by an interrupt signal"


class _DropUserErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _MARK, False):
            return False
        if not record.name.startswith("prefect"):
            return True
        message = record.getMessage()
        # The engines' last lines repeat the failure ("Finished in state Failed(...)"); the
        # command prints it once, in the user's words. A Ctrl-C is no crash to the user
        # ("ERROR ... Crash detected!"): the command says "interrupted" or "stopped" once.
        # The run's own log on the server keeps both.
        return not (
            (
                record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))
                and message.startswith("Finished in state Failed")
            )
            or INTERRUPTED in message
        )


def install_run_log_filter() -> None:
    """Put :class:`OneLineUserErrors` on Prefect's flow- and task-run loggers (idempotent)."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineUserErrors) for f in logger.filters):
            logger.addFilter(OneLineUserErrors())


def quiet_console_for_user_errors() -> None:
    """Keep user-error lines of flow runs off Prefect's console handlers (the CLI says it)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for logger in (logging.getLogger(), logging.getLogger("prefect")):
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, _DropUserErrors) for f in handler.filters
            ):
                handler.addFilter(_DropUserErrors())
