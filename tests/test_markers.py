"""Which tests are skipped, failed or run for want of root or Debian packages (tests/markers.py).

The decision is a plain function of the test's markers, whether the tests run as root and
which packages are missing; the hooks in ``tests/conftest.py`` apply it. Both are checked
here: the function with given inputs, and the hooks on a small test file run by pytest's
own ``pytester`` (in this process) as a user who is not root and lacks a package.
"""

from __future__ import annotations

import os
import subprocess

import pytest

import tests.conftest
from tests.markers import (
    ENSURE_PACKAGES,
    REQUIRE_ENV,
    host_gap,
    missing_debian_packages,
    verdict,
)

pytest_plugins = ("pytester",)


def no_lookup() -> list[str]:
    raise AssertionError("the packages are looked up for real_deploy tests only")


def test_deploy_test_of_a_user_without_packages_is_skipped_saying_how_to_run_it() -> None:
    missing = ["munge", "docker.io"]
    gap = host_gap({"real_deploy": ()}, is_root=False, missing_packages=lambda: missing)
    assert gap is not None
    assert "root" in gap and "munge docker.io" in gap
    assert "sudo make test-deploy" in gap and "\n" not in gap
    assert verdict(gap, required=False) == ("skip", gap)


def test_deploy_test_as_root_with_a_package_missing_names_only_the_package() -> None:
    gap = host_gap({"real_deploy": ()}, is_root=True, missing_packages=lambda: ["slurm-wlm"])
    assert gap is not None and "Debian packages slurm-wlm" in gap
    assert "needs root" not in gap and "root and" not in gap


def test_deploy_test_runs_as_root_with_every_package() -> None:
    assert host_gap({"real_deploy": ()}, is_root=True, missing_packages=list) is None
    assert verdict(None, required=True) == ("run", "")


def test_required_root_tests_fail_instead_of_skipping() -> None:
    gap = host_gap({"real_deploy": ()}, is_root=False, missing_packages=lambda: ["munge"])
    action, reason = verdict(gap, required=True)
    assert action == "fail"
    assert gap is not None and reason.startswith(gap) and f"{REQUIRE_ENV}=1" in reason


def test_root_only_test_says_why_it_needs_root() -> None:
    markers = {"needs_root": ("mounts a 2 MiB tmpfs",)}
    gap = host_gap(markers, is_root=False, missing_packages=no_lookup)
    assert gap == "needs root (mounts a 2 MiB tmpfs): run it as root (`sudo make test`)"
    assert host_gap(markers, is_root=True, missing_packages=no_lookup) is None


def test_other_tests_are_never_skipped_nor_look_packages_up() -> None:
    assert host_gap({}, is_root=False, missing_packages=no_lookup) is None
    assert host_gap({"slow": ()}, is_root=False, missing_packages=no_lookup) is None


def test_the_package_script_lists_what_it_installs_and_what_is_missing() -> None:
    listed = subprocess.run(
        [str(ENSURE_PACKAGES), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(listed) == {"docker.io", "debootstrap", "slurm-wlm", "munge"}
    missing = missing_debian_packages()
    assert set(missing) <= set(listed)
    for package in missing:  # really not installed, as dpkg sees it
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
        )
        assert "install ok installed" not in status.stdout
    refused = subprocess.run([str(ENSURE_PACKAGES), "--bogus"], capture_output=True, text=True)
    assert refused.returncode == 2 and "usage:" in refused.stderr


HOOKED_TESTS = """
import pytest

@pytest.mark.real_deploy
def test_deploy():
    pass

def test_plain():
    pass
"""


@pytest.fixture
def non_root_without_munge(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pytest run whose conftest is ours, as a user who is not root and lacks munge."""
    pytester.makeconftest(
        "from tests.conftest import pytest_collection_modifyitems, pytest_runtest_setup\n"
    )
    pytester.makepyfile(test_hooked=HOOKED_TESTS)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(tests.conftest, "missing_debian_packages", lambda: ["munge"])
    monkeypatch.delenv(REQUIRE_ENV, raising=False)


@pytest.mark.usefixtures("non_root_without_munge")
def test_hooks_skip_a_deploy_test_with_one_line_saying_what_is_missing(
    pytester: pytest.Pytester,
) -> None:
    result = pytester.runpytest_inprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] test_hooked.py:*: deploy/ for real needs root and Debian packages"
            " munge: run `sudo make test-deploy`*"
        ]
    )


@pytest.mark.usefixtures("non_root_without_munge")
def test_hooks_fail_a_deploy_test_that_ci_requires(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "1")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([f"*needs root and Debian packages munge*{REQUIRE_ENV}=1*"])
    assert result.ret != 0
