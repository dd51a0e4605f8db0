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
    "updates": """\
updates : {'batch', 'incremental'}, default='batch'
    ``'batch'``: one M-step per pass over the data (classic EM). ``'incremental'``: the
    row-blocks are dealt to ``n_shards`` shards by a seeded permutation and the M-step
    runs after every shard, from the latest statistics of all of them (Neal & Hinton's
    incremental EM; ``max_iter`` then counts passes, convergence is judged per pass,
    ``lower_bounds_`` holds the free energy after each pass's last M-step, and a final
    batch pass gives the exact ``lower_bound_``). Often fewer passes to converge; see
    the README's "Incremental EM".
n_shards : int, default=8
    Shards of ``updates='incremental'`` (at most one per row-block; in-memory data in
    one block is one shard, i.e. batch EM).""",
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
