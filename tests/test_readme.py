"""The README's Python examples run as written.

Every ```python block of README.md runs, in order and in one interpreter session (as a
reader pasting them one after the other), in an empty directory: then a second time in
the same directory, because the README promises that rerunning a checkpointed fit resumes
and a user reruns a script after a crash. Nothing is substituted: the README uses sizes
that run in seconds. The only file provided is ``features.csv``, the user's own file that
the ingest example converts. Shell blocks (``emdist ...``) are run by the CLI tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)

# Runs the blocks one after the other in one namespace; our own warnings (e.g. a fit that
# did not converge) are errors, so an example cannot quietly show a failed fit.
_DRIVER = textwrap.dedent(
    """
    import json, sys, traceback, warnings
    import emdist.exceptions
    warnings.simplefilter("error", emdist.exceptions.EmdistWarning)
    blocks = json.load(open(sys.argv[1]))
    namespace = {"__name__": "__main__"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
        except BaseException:
            print(f"README python block {i + 1} failed:\\n{code}", file=sys.stderr)
            traceback.print_exc()
            sys.exit(1)
        print(f"block {i + 1} ok")
    # What the README's comments claim about the results.
    print(json.dumps({
        "n_used": namespace["n_used"],
        "m_converged": bool(namespace["m"].converged_),
        "gm_converged": bool(namespace["gm"].converged_),
    }))
    """
)


def python_blocks(text: str) -> list[str]:
    """The ```python code blocks of a markdown text, in order."""
    return _BLOCK.findall(text)


def test_python_blocks_are_found() -> None:
    blocks = python_blocks("a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n")
    assert blocks == ["x = 1\n", "y = 2\n"]


def _write_features_csv(path: Path) -> None:
    # The user's measurements for the ingest example: three groups of rows, a header.
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0, 0.0, 0.0], [6.0, 0.0, 3.0, 0.0], [0.0, 6.0, 0.0, 3.0]])
    X = np.concatenate([c + rng.standard_normal((400, 4)) for c in centers])
    np.savetxt(path, X, delimiter=",", header="a,b,c,d", comments="", fmt="%.6f")


@pytest.mark.slow
def test_readme_python_blocks_run_as_written_twice(tmp_path: Path) -> None:
    import json

    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4, "README lost its Python examples"
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    (tmp_path / "driver.py").write_text(_DRIVER)
    _write_features_csv(tmp_path / "features.csv")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for run in ("first run", "rerun"):
        result = subprocess.run(
            [sys.executable, "driver.py", "blocks.json"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert result.returncode == 0, f"{run}:\n{result.stderr[-4000:]}"
        lines = result.stdout.strip().split("\n")
        assert lines[:-1] == [f"block {i + 1} ok" for i in range(len(blocks))], run
        # "n_used ... 3 of 10 here: data.zarr was drawn from 3"
        assert json.loads(lines[-1]) == {
            "n_used": 3,
            "m_converged": True,
            "gm_converged": True,
        }, run
