"""Parameter descriptions that several estimators share, written once.

A docstring names a shared block with a line holding only ``{{name}}``; :func:`fill_doc`
replaces it by the block, indented like the marker. The rendered docstring (``help()``,
Sphinx, IDEs) is complete; the source keeps one copy of each description.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["fill_doc"]

T = TypeVar("T")

_BLOCKS = {
    "fit_hooks": """\
observer : callable, optional
    Called with an :class:`emdist.engine.IterationState` after every iteration;
    returning ``True`` stops the fit.
checkpoint : CheckpointStore, str or path, optional
    Where to commit the fit state after iterations (see
    :class:`emdist.io.checkpoint.CheckpointStore`). A fit given a location that holds a
    checkpoint of the same configuration and data resumes from it and ends with exactly
    the model of an uninterrupted fit; one of another configuration or data is refused.""",
}


def fill_doc(obj: T) -> T:
    """Replace every ``{{name}}`` line of ``obj.__doc__`` by the shared block ``name``."""
    doc = getattr(obj, "__doc__", None)
    if not doc:
        return obj
    lines: list[str] = []
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.startswith("{{") and stripped.endswith("}}"):
            indent = line[: len(line) - len(line.lstrip())]
            block = _BLOCKS[stripped[2:-2]]
            lines.extend(indent + b if b else b for b in block.splitlines())
        else:
            lines.append(line)
    obj.__doc__ = "\n".join(lines)
    return obj
