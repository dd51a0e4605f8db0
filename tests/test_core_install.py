"""The library installs and runs without the pipeline's stack (``pip install emdist``).

The estimators, their engine and Zarr I/O need only the core dependencies; Prefect and its
server (fastapi, sqlalchemy), bokeh, pydantic, rich and matplotlib belong to the
``pipeline`` extra. A subprocess makes every import of those fail, as in an environment
without them, and runs the library end to end; the console script then says, in one line,
which extra to install.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What only pipeline/ and flows/ import. pyyaml and click are the pipeline's too, but dask
# itself depends on both, so they are in every environment emdist runs in.
PIPELINE_ONLY = ("prefect", "fastapi", "sqlalchemy", "bokeh", "pydantic", "rich", "matplotlib")

_BLOCKER = """
import importlib.abc, sys

BLOCKED = set({blocked!r})
tried = []

class _Absent(importlib.abc.MetaPathFinder):
    # As on a machine without these packages (recording who asked).
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            tried.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _Absent())
"""


def _run(code: str, blocked: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    script = _BLOCKER.format(blocked=blocked) + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.service
def test_library_runs_without_the_pipeline_extra(tmp_path: Path) -> None:
    # scikit-learn and pandas are optional too: absent here as well.
    result = _run(
        f"""
        import numpy as np
        import emdist
        from emdist.io.ingest import ingest
        from emdist.io.synthetic import make_gaussian_mixture

        out = {str(tmp_path)!r}
        X = np.random.default_rng(0).normal(size=(300, 3))
        X[150:] += 6
        km = emdist.KMeans(2, random_state=0).fit(X)
        gm = emdist.GaussianMixture(2, random_state=0).fit(X)
        bgm = emdist.BayesianGaussianMixture(n_components=2, random_state=0).fit(X)
        emdist.save_model(gm, out + "/model")
        loaded = emdist.load_model(out + "/model")
        assert (loaded.predict(X) == gm.predict(X)).all()
        make_gaussian_mixture(out + "/data.zarr", 2_000, 3, 2, random_state=0)
        emdist.GaussianMixture(2, random_state=0).fit(out + "/data.zarr")
        emdist.write_predictions(km, out + "/data.zarr", out + "/pred.zarr")
        np.savetxt(out + "/x.csv", X, delimiter=",", header="a,b,c", comments="")
        ingest(out + "/x.csv", out + "/x.zarr")
        names = emdist.KMeans(2, random_state=0).fit(out + "/x.zarr").feature_names_in_
        print(sorted(np.bincount(km.labels_).tolist()), list(names))
        print("asked for:", sorted(set(n.partition(".")[0] for n in tried)))
        print("loaded:", sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED))
        """,
        # The io extra (pyarrow: ingest's fast CSV reader, which falls back to the csv
        # module) is absent from a core install too.
        (*PIPELINE_ONLY, "sklearn", "pandas", "pyarrow", "h5py"),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "[150, 150] ['a', 'b', 'c']"
    # Nothing but ingest's optional reader even tried to import them (no use of the
    # pipeline's packages hidden behind a try/except ImportError).
    assert lines[1:] == ["asked for: ['pyarrow']", "loaded: []"]


@pytest.mark.service
def test_console_script_without_the_pipeline_extra_says_what_to_install() -> None:
    result = _run(
        """
        from flows.console import main
        sys.exit(main(["--help"]))
        """,
        PIPELINE_ONLY,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    message = result.stderr.strip()
    assert "\n" not in message
    assert "the command line needs the pipeline extra" in message
    assert message.endswith("pip install 'emdist[pipeline]'")


@pytest.mark.service
def test_console_script_with_the_pipeline_extra_runs_the_command_line() -> None:
    result = _run(
        """
        from flows.console import main
        sys.exit(main(["--help"]))
        """,
        (),
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: emdist" in result.stdout


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()


def test_core_dependencies_exclude_the_pipeline_stack() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    pipeline = {_requirement_name(r) for r in extras["pipeline"]}
    stack = {"prefect", "fastapi", "sqlalchemy", "bokeh", "pydantic", "pyyaml", "rich"}
    stack |= {"matplotlib", "click", "scikit-learn", "pandas"}
    assert core.isdisjoint(stack), core & stack
    assert stack - {"scikit-learn", "pandas"} <= pipeline
    # The test suite runs the pipeline: its extra pulls the pipeline's in.
    assert any(r.startswith("emdist[") and "pipeline" in r for r in extras["test"])
    assert project["scripts"]["emdist"] == "flows.console:main"
