"""What marks a test, decided in one place (``tests/conftest.py`` applies it).

- ``service``: a test that starts a process or a cluster (a Prefect server, a Dask
  ``LocalCluster`` or scheduler, an ``emdist`` process, a fresh Python interpreter, a
  process it SIGKILLs) carries it.
  Fixtures that start one are declared with :func:`service_fixture`; every test that uses
  one, directly or through another fixture, gets the marker. ``make test-quick`` leaves
  these tests out.
- ``real_deploy`` and ``needs_root``: tests that need root, and (``real_deploy``) the
  Debian packages ``tools/ensure-debian-packages`` installs. A fixture that needs root is
  declared with :func:`root_fixture`; its users get ``needs_root``. Where these are missing, the
  test is skipped with one line saying what is missing and how to run it; with
  ``EMDIST_REQUIRE_ROOT_TESTS=1`` (set by ``.ci/run`` and ``make test-deploy``) it fails
  instead, so that CI never passes without having run them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest

__all__ = [
    "ENSURE_PACKAGES",
    "REQUIRE_ENV",
    "SERVICE_FIXTURES",
    "host_gap",
    "ROOT_FIXTURES",
    "missing_debian_packages",
    "root_fixture",
    "service_fixture",
    "verdict",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: The script that lists and installs the Debian packages of the ``real_deploy`` tests.
ENSURE_PACKAGES = PROJECT_ROOT / "tools" / "ensure-debian-packages"
#: ``=1``: a test that needs root or Debian packages fails where it would be skipped.
REQUIRE_ENV = "EMDIST_REQUIRE_ROOT_TESTS"

#: Names of the fixtures that start a service (filled by :func:`service_fixture`).
SERVICE_FIXTURES: set[str] = set()

#: Names of the fixtures that need root, each with why (filled by :func:`root_fixture`).
ROOT_FIXTURES: dict[str, str] = {}

F = TypeVar("F", bound=Callable[..., Any])


def service_fixture(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """``pytest.fixture`` for a fixture that starts a service: its users are ``service`` tests.

    Takes the arguments of ``pytest.fixture`` (``scope=...``); use it with parentheses.
    """

    def declare(function: F) -> F:
        SERVICE_FIXTURES.add(kwargs.get("name") or function.__name__)
        return pytest.fixture(*args, **kwargs)(function)  # type: ignore[no-any-return]

    return declare


def root_fixture(why: str, *args: Any, **kwargs: Any) -> Callable[[F], F]:
    """``pytest.fixture`` for a fixture that needs root: its users are ``needs_root`` tests.

    ``why`` (what it does that needs root) goes into the skip reason; the other arguments
    are those of ``pytest.fixture``.
    """

    def declare(function: F) -> F:
        ROOT_FIXTURES[kwargs.get("name") or function.__name__] = why
        return pytest.fixture(*args, **kwargs)(function)  # type: ignore[no-any-return]

    return declare


def missing_debian_packages() -> list[str]:
    """The Debian packages of the ``real_deploy`` tests that are not installed here."""
    result = subprocess.run(
        [str(ENSURE_PACKAGES), "--missing"], capture_output=True, text=True, check=True
    )
    return result.stdout.split()


def host_gap(
    markers: Mapping[str, Sequence[Any]],
    *,
    is_root: bool,
    missing_packages: Callable[[], Sequence[str]],
) -> str | None:
    """What this host lacks for a test with ``markers`` (one line), or ``None``.

    Parameters
    ----------
    markers : mapping
        The test's marker names, each with its positional arguments (``needs_root``'s
        first argument says why it needs root).
    is_root : bool
        Whether the tests run as root.
    missing_packages : callable
        Returns the missing Debian packages; called only for ``real_deploy`` tests.
    """
    if "real_deploy" in markers:
        lacking = [] if is_root else ["root"]
        missing = list(missing_packages())
        if missing:
            lacking.append(f"Debian packages {' '.join(missing)}")
        if lacking:
            return (
                f"deploy/ for real needs {' and '.join(lacking)}: run `sudo make test-deploy` "
                "(installs the packages, then runs these tests)"
            )
    if "needs_root" in markers and not is_root:
        why = markers["needs_root"]
        because = f" ({why[0]})" if why else ""
        return f"needs root{because}: run it as root (`sudo make test`)"
    return None


def verdict(gap: str | None, *, required: bool) -> tuple[Literal["run", "skip", "fail"], str]:
    """What becomes of a test with ``gap``: run it, skip it, or (``required``) fail it."""
    if gap is None:
        return "run", ""
    if required:
        return "fail", f"{gap} [{REQUIRE_ENV}=1: this test must run here, not be skipped]"
    return "skip", gap
