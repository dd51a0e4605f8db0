"""The quadratic maps of the parameters a pass runs: built once per pass, not per block.

Every block of a pass runs its E-step under the same parameters, and each block built the
same :class:`~emdist.kernels.quadratic.QuadraticMaps` (the precisions, the coefficients)
and, for float32 ``full``/``tied`` data, the same coefficients about each nearest mean:
~1.4 ms of numpy per block at 32 features and K = 16, 2-3% of a 100 000-row float32
block's E-step, and more of smaller blocks (benchmarks/README.md, "float32 features in 8-lane
runs"). The maps of the last few parameter sets are kept here, in the process (a Dask
worker's threads share them), and found again by value: the means' bytes, then the
precisions compared whole. An array changed in place is never served stale, and what is
served is what building it again would give, bit for bit (the same numpy calls on equal
arrays).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from emdist._typing import AnyArray, CovarianceType, FloatArray
from emdist.kernels.quadratic import QuadraticMaps

__all__ = ["RecentMaps", "recent_maps"]

#: Parameter sets kept: restarts and K sweeps sharing a pass each bring their own.
_SIZE = 16
#: Bytes kept at most over every set. A set whose maps alone are larger is not kept, nor
#: coefficients about the means larger than a quarter of it: those are built per block,
#: as before, and a finished fit of a large model leaves nothing behind.
_MAX_BYTES = 64 << 20
#: Groups of means kept per set: blocks whose rows fall near different means differ.
_GROUP_SETS = 4


def _maps_nbytes(
    shift: FloatArray, precisions_cholesky: FloatArray, covariance_type: CovarianceType
) -> int:
    """Bytes a set's maps hold, from the shapes alone (before building them).

    The factors' copy, the precisions and their triangle (at most twice the factors'
    size), and the coefficients: ``q + d + 1`` float64 columns per component.
    """
    K, d = shift.shape
    q = {"full": d * (d + 1) // 2, "tied": d * (d + 1) // 2, "diag": d}.get(covariance_type, 1)
    return int(3 * precisions_cholesky.nbytes + 8 * (q + d + 1) * K)


class RecentMaps:
    """The maps of one parameter set, and its float32 coefficients about groups of means.

    Parameters
    ----------
    shift, precisions_cholesky, covariance_type
        As :class:`~emdist.kernels.quadratic.QuadraticMaps`.
    copy : bool, default=True
        Keep copies of the arrays (a kept set must not change with the caller's arrays).
    """

    def __init__(
        self,
        shift: FloatArray,
        precisions_cholesky: FloatArray,
        covariance_type: CovarianceType,
        copy: bool = True,
    ) -> None:
        self.precisions_cholesky = (
            np.array(precisions_cholesky, copy=True) if copy else np.asarray(precisions_cholesky)
        )
        means = np.array(shift, copy=True) if copy else np.asarray(shift)
        self.maps = QuadraticMaps(means, self.precisions_cholesky, covariance_type)
        self._about: OrderedDict[bytes, tuple[int, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._own = _maps_nbytes(shift, precisions_cholesky, covariance_type)

    @property
    def nbytes(self) -> int:
        """Bytes held: the maps' arrays and the coefficients kept about groups of means."""
        with self._lock:
            return int(self._own + sum(size for size, _ in self._about.values()))

    def _cached(self, groups: AnyArray, build: Any) -> Any:
        key = np.ascontiguousarray(groups, dtype=np.int64).tobytes()
        with self._lock:
            found = self._about.get(key)
            if found is not None:
                self._about.move_to_end(key)
                return found[1]
        value = build()
        size = sum(int(a.nbytes) for a in (value if isinstance(value, tuple) else (value,)))
        if size <= _MAX_BYTES // 4:
            with self._lock:
                self._about[key] = (size, value)
                while len(self._about) > _GROUP_SETS:
                    self._about.popitem(last=False)
        return value

    def coefficients32_about(self, groups: AnyArray) -> FloatArray:
        """``full``: :meth:`~QuadraticMaps.coefficients_about` the means ``groups``, float32."""
        return self._cached(  # type: ignore[no-any-return]
            groups,
            lambda: self.maps.coefficients_about(self.maps.shift[groups]).astype(np.float32),
        )

    def whitening32_about(self, groups: AnyArray) -> tuple[FloatArray, FloatArray]:
        """``tied``: :meth:`~QuadraticMaps.whitening_about` the means ``groups``.

        The maps in float32, the offsets in float64.
        """

        def build() -> tuple[FloatArray, FloatArray]:
            whitening, offsets = self.maps.whitening_about(
                self.precisions_cholesky, self.maps.shift[groups]
            )
            return whitening.astype(np.float32), offsets

        return self._cached(groups, build)  # type: ignore[no-any-return]


_lock = threading.Lock()
_recent: OrderedDict[tuple[Any, ...], RecentMaps] = OrderedDict()


def recent_maps(
    shift: FloatArray, precisions_cholesky: FloatArray, covariance_type: CovarianceType
) -> RecentMaps:
    """The :class:`RecentMaps` of these parameters: kept from an earlier block, or built.

    Parameters
    ----------
    shift : ndarray of shape (n_components, n_features)
    precisions_cholesky : ndarray
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    RecentMaps
        Built from copies of the arrays; equal arrays find it again.
    """
    key = (
        covariance_type,
        shift.shape,
        shift.dtype.str,
        precisions_cholesky.shape,
        precisions_cholesky.dtype.str,
        np.ascontiguousarray(shift).tobytes(),
    )
    with _lock:
        found = _recent.get(key)
        if found is not None and np.array_equal(found.precisions_cholesky, precisions_cholesky):
            _recent.move_to_end(key)
            return found
    if _maps_nbytes(shift, precisions_cholesky, covariance_type) > _MAX_BYTES:
        # Too large to keep: built for this block alone, as before, with no copies.
        return RecentMaps(shift, precisions_cholesky, covariance_type, copy=False)
    made = RecentMaps(shift, precisions_cholesky, covariance_type)
    with _lock:
        _recent[key] = made
        _recent.move_to_end(key)
        while len(_recent) > _SIZE or sum(m.nbytes for m in _recent.values()) > _MAX_BYTES:
            _recent.popitem(last=False)
    return made
