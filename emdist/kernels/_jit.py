"""The one way emdist compiles a per-chunk kernel: numba, GIL-free, cached on disk.

``nogil=True`` lets the Dask threads (and zarr's read threads) run while a kernel computes:
numpy calls hand the GIL over at every call, which on two cores cost the K-means pass
~1.5x the time to merely read the data. ``cache=True`` writes the machine code next to the
module (or, where that is read-only, to numba's per-user cache, ``~/.cache/numba``, or to
``NUMBA_CACHE_DIR``), so each worker process compiles a kernel once per installation, not
once per start. Where none of these is writable (read-only site-packages and no writable
home), numba refuses ``cache=True`` at decoration, which would make ``import emdist`` fail:
the kernel is then compiled without a cache, once per process. ``fastmath`` stays off: the
kernels must reproduce scikit-learn's numbers to the last digits, and reassociating sums
would change them with the chunking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

__all__ = ["jit"]

F = TypeVar("F", bound=Callable[..., Any])


def jit(fn: F) -> F:
    """Compile ``fn`` in nopython mode, without the GIL, cached on disk where possible."""
    options: dict[str, Any] = {"nogil": True, "fastmath": False, "error_model": "numpy"}
    try:
        return cast(F, numba.njit(cache=True, **options)(fn))
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return cast(F, numba.njit(cache=False, **options)(fn))
