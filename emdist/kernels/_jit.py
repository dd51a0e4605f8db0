"""The one way emdist compiles a per-chunk kernel: numba, GIL-free, cached on disk.

``nogil=True`` lets the Dask threads (and zarr's read threads) run while a kernel computes:
numpy calls hand the GIL over at every call, which on two cores cost the K-means pass
~1.5x the time to merely read the data. ``cache=True`` writes the machine code next to the
module (or, where that is read-only, to numba's per-user cache), so each worker process
compiles a kernel once per installation, not once per start. ``fastmath`` stays off: the
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
    """Compile ``fn`` in nopython mode, without the GIL, cached on disk."""
    return cast(F, numba.njit(nogil=True, cache=True, fastmath=False, error_model="numpy")(fn))
