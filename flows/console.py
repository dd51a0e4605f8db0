"""The ``emdist`` console script: the command line, or one line saying how to get it.

``pip install emdist`` installs the library alone; the command line (the pipeline's step
commands and the Prefect ones, :mod:`flows.cli`) needs the ``pipeline`` extra. Without
it, ``emdist`` says so in one line (status 2) instead of an import traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["PIPELINE_MODULES", "main"]

#: Top-level modules of the ``pipeline`` extra that the command line imports.
PIPELINE_MODULES = frozenset(
    {"prefect", "fastapi", "sqlalchemy", "bokeh", "click", "pydantic", "yaml", "rich", "matplotlib"}
)

INSTALL_HINT = "pip install 'emdist[pipeline]'"


def _missing_extra(exc: ModuleNotFoundError) -> str | None:
    name = (exc.name or "").partition(".")[0]
    return name if name in PIPELINE_MODULES else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``emdist ARGV``; exit status 2 with one line when the pipeline extra is missing.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status.
    """
    try:
        from flows.cli import main as cli_main

        return cli_main(argv)
    except ModuleNotFoundError as exc:
        # Prefect is imported by the flow commands only once they run: caught here too.
        missing = _missing_extra(exc)
        if missing is None:
            raise
        print(
            f"emdist: the command line needs the pipeline extra (module {missing!r} is not "
            f"installed): {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
