"""pipeline/ and flows/ use only emdist's public names.

The public surface is :data:`PUBLIC_MODULES` and, in each, the names of its ``__all__``
(dunders such as ``__version__`` aside). Everything else in emdist (the ``_x`` modules,
``emdist.engine.em``, ``emdist.io.checkpoint``...) is internal and may change without the
pipeline noticing it. The imports are read from the source with :mod:`ast` (every
``import`` and ``from ... import`` at any depth, function-local and ``TYPE_CHECKING`` ones
included, and attribute reads ``emdist.<name>`` after ``import emdist``), so nothing is run.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import emdist

ROOT = Path(emdist.__file__).resolve().parent.parent
#: The emdist modules the pipeline and the flows may import from.
PUBLIC_MODULES = ("emdist", "emdist.io", "emdist.exceptions")


def _public(module: str, name: str) -> bool:
    if name.startswith("__") and name.endswith("__"):
        return True
    exported = getattr(importlib.import_module(module), "__all__", ())
    return name in exported


def violations(source: str, where: str = "<source>") -> list[str]:
    """Every use of an emdist module or name outside the public surface, one line each."""
    found: list[str] = []
    tree = ast.parse(source, where)
    bound: dict[str, str] = {}  # local name -> the public emdist module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "emdist":
                    continue
                if alias.name not in PUBLIC_MODULES:
                    found.append(f"{where}:{node.lineno}: import {alias.name}")
                elif alias.asname is not None:
                    bound[alias.asname] = alias.name
                else:
                    bound["emdist"] = "emdist"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "emdist":
                continue
            if node.module not in PUBLIC_MODULES:
                found.append(f"{where}:{node.lineno}: from {node.module} import ...")
                continue
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in PUBLIC_MODULES:
                    bound[alias.asname or alias.name] = submodule
                elif not _public(node.module, alias.name):
                    found.append(
                        f"{where}:{node.lineno}: {alias.name} is not in {node.module}.__all__"
                    )
    for node in ast.walk(tree):
        # emdist.io.X / emdist.X read through a module bound above.
        if not isinstance(node, ast.Attribute):
            continue
        chain: list[str] = [node.attr]
        value = node.value
        while isinstance(value, ast.Attribute):
            chain.insert(0, value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in bound:
            continue
        module = bound[value.id]
        while chain and f"{module}.{chain[0]}" in PUBLIC_MODULES:
            module = f"{module}.{chain.pop(0)}"
        if chain and not _public(module, chain[0]):
            found.append(f"{where}:{node.lineno}: {module}.{chain[0]} is not public")
    return sorted(set(found))


def _sources() -> list[Path]:
    return sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "flows").rglob("*.py")])


def test_the_sources_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in _sources()}
    assert {"pipeline/steps.py", "pipeline/config.py", "flows/tasks.py"} <= names


@pytest.mark.parametrize("path", _sources(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_pipeline_and_flows_import_only_public_emdist_names(path: Path) -> None:
    assert violations(path.read_text(), path.relative_to(ROOT).as_posix()) == []


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_exists(module: str) -> None:
    loaded = importlib.import_module(module)
    exported = loaded.__all__
    assert exported and len(exported) == len(set(exported))
    assert [name for name in exported if not hasattr(loaded, name)] == []


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("from emdist._typing import COVARIANCE_TYPES", "from emdist._typing"),
        ("from emdist.io.checkpoint import MAX_KEEP", "from emdist.io.checkpoint"),
        ("import emdist.engine.em", "import emdist.engine.em"),
        ("def f():\n    from emdist.registry import family_class", "from emdist.registry"),
        ("from emdist.io import sources", "sources is not in emdist.io.__all__"),
        ("from emdist import engine", "engine is not in emdist.__all__"),
        ("import emdist\nemdist.engine.em.Observer", "emdist.engine is not public"),
        ("import emdist\nemdist.io.checkpoint", "emdist.io.checkpoint is not public"),
        ("from emdist import io\nio.integrity.RECORD_KEY", "emdist.io.integrity is not public"),
    ],
)
def test_the_check_catches_internal_names(source: str, caught: str) -> None:
    found = violations(source)
    assert len(found) == 1 and caught in found[0], found


@pytest.mark.parametrize(
    "source",
    [
        "import emdist\nemdist.load_model\nemdist.__version__",
        "from emdist import io\nio.ingest",
        "from emdist.io import RECORD_KEY\nfrom emdist.exceptions import EmdistError",
        "import numpy\nnumpy.linalg.norm",
    ],
)
def test_the_check_passes_public_names(source: str) -> None:
    assert violations(source) == []
