"""BLAS thread policy: one BLAS thread per Dask thread.

Under Dask each worker thread calls BLAS; a multi-threaded OpenBLAS in each of them
oversubscribes the cores (measured: GMM 1.9x and K-means 2.5x slower; docs/design.md).
``threadpoolctl`` limits numpy's and scipy's BLAS copies together.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from threadpoolctl import threadpool_limits

__all__ = ["blas_single_threaded", "single_blas_task"]

T = TypeVar("T")
_lock = threading.Lock()
_limited_in_worker = False


def _limit_if_in_worker() -> None:
    """In a ``dask.distributed`` worker process, cap BLAS at one thread, once per process."""
    global _limited_in_worker
    if _limited_in_worker:
        return
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return
    with _lock:
        if not _limited_in_worker:
            # Permanent for the worker process: every task it runs is one of ours or
            # Dask's own, and all of them share the worker's threads.
            threadpool_limits(limits=1, user_api="blas")
            _limited_in_worker = True


def single_blas_task(func: Callable[..., T], *args: Any) -> T:
    """Run ``func(*args)`` as a Dask task with BLAS limited to one thread per worker thread."""
    _limit_if_in_worker()
    return func(*args)


@contextlib.contextmanager
def blas_single_threaded() -> Iterator[None]:
    """Limit BLAS to one thread in this process for the duration (local schedulers)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield
