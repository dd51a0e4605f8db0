"""The scan pass: validation, moments and a uniform sample, all in one read of the data.

Before any EM iteration, estimators read the data once to (1) find the first non-finite
value, (2) compute per-feature mean and variance, and (3) draw a uniform sample of rows for
seeding. The sample uses *priority sampling*: every row gets a uniform key from a
counter-based generator (Philox) positioned at the row's global index, and the rows with the
smallest keys form the sample. Because the key of row ``i`` depends only on ``(seed, i)``,
the sample is identical for every chunking, scheduler and worker count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

from emdist._typing import FloatArray, IntArray
from emdist.kernels.rows import RowBlock

#: 64-bit lanes of the weights' digest.
_U64: TypeAlias = np.ndarray[Any, np.dtype[np.uint64]]

__all__ = ["ScanStats", "row_uniforms", "scan_chunk", "weights_digest"]


def row_uniforms(seed: int, row_start: int, n_rows: int, per_row: int = 1) -> FloatArray:
    """Uniform draws for rows ``row_start .. row_start + n_rows`` of a global stream.

    The stream is Philox keyed by ``seed``; the draws of row ``i`` are the same whichever
    chunk asks for them, which makes random initialisation chunking-invariant.

    Parameters
    ----------
    seed : int
        Key of the counter-based generator.
    row_start : int
        Global index of the first row.
    n_rows : int
        Number of rows.
    per_row : int, default=1
        Draws per row.

    Returns
    -------
    ndarray of shape (n_rows, per_row)
    """
    first = row_start * per_row
    bit_gen = np.random.Philox(key=seed)
    # Philox produces 4 uint64 per counter step and each double consumes one of them.
    bit_gen.advance(first // 4)
    gen = np.random.Generator(bit_gen)
    skip = first % 4
    draws = gen.random(skip + n_rows * per_row)[skip:]
    return draws.reshape(n_rows, per_row)


@dataclass(frozen=True, eq=False)
class ScanStats:
    """Summable result of the scan pass.

    Attributes
    ----------
    n : int
        Number of rows seen.
    mean, m2 : ndarray of shape (n_features,)
        Per-feature mean and sum of squared deviations (merged by Chan et al.'s formula,
        which needs no common shift and loses no precision far from the origin).
    bad_row, bad_col : int
        Global position of the first non-finite value, or -1.
    sample_keys : ndarray of shape (m,)
        Priority keys of the sampled rows (the ``m`` smallest seen so far).
    sample_rows : ndarray of shape (m,)
        Global indices of the sampled rows.
    sample : ndarray of shape (m, n_features)
        The sampled rows (float64).
    sample_size : int
        Capacity of the sample.
    sample_weight : ndarray of shape (m,) or None
        Weights of the sampled rows (``None``: the rows carry none).
    weights_digest : ndarray of shape (2,) uint64 or None
        XOR over the weighted rows of a hash of (row index, weight): the same for any
        chunking, and changed by any changed weight (the checkpoint's fingerprint).
    weight_sum : float or None
        ``Σ w`` over the rows seen (``None``: the rows carry no weights).
    n_obs : ndarray of shape (n_features,) or None
        Observed values per feature, when a scan allowing missing values met a NaN
        (``None``: every feature has ``n`` values; ``mean`` and ``m2`` are then over them).
    bad_is_nan : bool
        Whether the value at ``bad_row, bad_col`` is a NaN (else an infinity).
    empty_row : int
        Global index of the first row with every value missing (scans allowing missing
        values), or -1.
    """

    n: int
    mean: FloatArray
    m2: FloatArray
    bad_row: int
    bad_col: int
    sample_keys: FloatArray
    sample_rows: IntArray
    sample: FloatArray
    sample_size: int
    sample_weight: FloatArray | None = None
    weights_digest: _U64 | None = None
    weight_sum: float | None = None
    n_obs: FloatArray | None = None
    bad_is_nan: bool = False
    empty_row: int = -1

    def __add__(self, other: ScanStats) -> ScanStats:
        n = self.n + other.n
        n_obs = None
        if self.n_obs is not None or other.n_obs is not None:
            mean, m2, n_obs = _merge_observed(self, other)
        elif self.n == 0:
            mean, m2 = other.mean, other.m2
        elif other.n == 0:
            mean, m2 = self.mean, self.m2
        else:
            delta = other.mean - self.mean
            mean = self.mean + delta * (other.n / n)
            # An overflow to inf is the scale check's to report (models._validation).
            with np.errstate(over="ignore", invalid="ignore"):
                m2 = self.m2 + other.m2 + delta**2 * (self.n * other.n / n)
        bad = [
            (r, c, nan)
            for r, c, nan in (
                (self.bad_row, self.bad_col, self.bad_is_nan),
                (other.bad_row, other.bad_col, other.bad_is_nan),
            )
        ]
        bad = [b for b in bad if b[0] >= 0]
        bad_row, bad_col, bad_is_nan = min(bad) if bad else (-1, -1, False)
        empty = [r for r in (self.empty_row, other.empty_row) if r >= 0]
        keys = np.concatenate([self.sample_keys, other.sample_keys])
        rows = np.concatenate([self.sample_rows, other.sample_rows])
        # Order by (key, row): a total order, so the merge is associative and commutative.
        order = np.lexsort((rows, keys))[: self.sample_size]
        sample = np.concatenate([self.sample, other.sample])[order]
        sample_weight = digest = weight_sum = None
        if self.sample_weight is not None and other.sample_weight is not None:
            sample_weight = np.concatenate([self.sample_weight, other.sample_weight])[order]
        if self.weights_digest is not None and other.weights_digest is not None:
            digest = self.weights_digest ^ other.weights_digest
        if self.weight_sum is not None and other.weight_sum is not None:
            weight_sum = self.weight_sum + other.weight_sum
        return ScanStats(
            n,
            mean,
            m2,
            bad_row,
            bad_col,
            keys[order],
            rows[order],
            sample,
            self.sample_size,
            sample_weight,
            digest,
            weight_sum,
            n_obs,
            bad_is_nan,
            min(empty) if empty else -1,
        )

    @property
    def variance(self) -> FloatArray:
        """Per-feature population variance (``ddof=0``, as ``np.var``) of the observed values."""
        if self.n_obs is not None:
            return np.asarray(self.m2 / np.maximum(self.n_obs, 1))
        return self.m2 / max(self.n, 1)


def _merge_observed(a: ScanStats, b: ScanStats) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Chan et al.'s merge feature by feature, each over its own observed values."""
    na = np.full(a.mean.shape, float(a.n)) if a.n_obs is None else a.n_obs
    nb = np.full(b.mean.shape, float(b.n)) if b.n_obs is None else b.n_obs
    n = na + nb
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        delta = b.mean - a.mean
        frac = np.where(n > 0, nb / np.where(n > 0, n, 1), 0.0)
        mean = a.mean + delta * frac
        both = np.where(n > 0, na * nb / np.where(n > 0, n, 1), 0.0)
        m2 = a.m2 + b.m2 + delta**2 * both
    mean = np.where(na == 0, b.mean, np.where(nb == 0, a.mean, mean))
    m2 = np.where(na == 0, b.m2, np.where(nb == 0, a.m2, m2))
    return mean, m2, n


def scan_chunk(
    block: RowBlock, seed: int, sample_size: int, allow_missing: bool = False
) -> ScanStats:
    """Scan one block: first non-finite value, moments, and its share of the sample.

    Parameters
    ----------
    block : RowBlock
        The rows (any real dtype and layout), their global offset and per-row inputs.
    seed : int
        Key of the sampling stream.
    sample_size : int
        Number of rows the whole sample holds.
    allow_missing : bool, default=False
        NaN marks a missing value (``missing='marginalize'``): moments are over the
        observed values of every feature, the first row with every value missing is
        recorded, and only infinity is a bad value.

    Returns
    -------
    ScanStats
    """
    X, row_offset = block.x, block.row_offset
    n, d = X.shape
    Xf = np.asarray(X, dtype=np.float64)
    finite = np.isfinite(Xf)
    n_obs = None
    empty_row = -1
    bad_is_nan = False
    if allow_missing and not finite.all():
        nan = np.isnan(Xf)
        inf = ~finite & ~nan
        bad_row = bad_col = -1
        if inf.any():
            r, c = np.argwhere(inf)[0]
            bad_row, bad_col = int(r) + row_offset, int(c)
        empty = np.flatnonzero(nan.all(axis=1)) if d else np.empty(0, dtype=np.int64)
        if empty.size:
            empty_row = int(empty[0]) + row_offset
        n_obs = (~nan).sum(axis=0).astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            observed = np.where(nan, 0.0, Xf)
            mean = np.where(n_obs > 0, observed.sum(axis=0) / np.maximum(n_obs, 1), 0.0)
            m2 = np.where(nan, 0.0, (Xf - mean) ** 2).sum(axis=0)
        if bad_row >= 0:
            mean = np.zeros(d)
            m2 = np.zeros(d)
    elif finite.all():
        bad_row = bad_col = -1
        mean = Xf.mean(axis=0) if n else np.zeros(d)
        # An overflow to inf is the scale check's to report (models._validation).
        with np.errstate(over="ignore", invalid="ignore"):
            m2 = ((Xf - mean) ** 2).sum(axis=0) if n else np.zeros(d)
    else:
        r, c = np.argwhere(~finite)[0]
        bad_row, bad_col = int(r) + row_offset, int(c)
        bad_is_nan = bool(np.isnan(Xf[r, c]))
        # The fit will stop with an error naming this row; moments are irrelevant now.
        mean = np.zeros(d)
        m2 = np.zeros(d)
    keys = row_uniforms(seed, row_offset, n)[:, 0]
    w = None if block.weights is None else np.asarray(block.weights, dtype=np.float64)
    if w is not None:
        # A row of weight 0 counts for nothing: sampled only when the others are too few.
        keys = np.where(w > 0, keys, np.inf)
    take = min(sample_size, n)
    idx = np.argpartition(keys, take - 1)[:take] if 0 < take < n else np.arange(take)
    order = idx[np.lexsort((idx, keys[idx]))]
    return ScanStats(
        n=n,
        mean=mean,
        m2=m2,
        bad_row=bad_row,
        bad_col=bad_col,
        sample_keys=keys[order],
        sample_rows=(order + row_offset).astype(np.int64),
        sample=Xf[order].copy(),
        sample_size=sample_size,
        sample_weight=None if w is None else w[order].copy(),
        weights_digest=None if w is None else weights_digest(w, row_offset),
        weight_sum=None if w is None else float(np.sum(w)),
        n_obs=n_obs,
        bad_is_nan=bad_is_nan,
        empty_row=empty_row,
    )


_MASKS = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD1B54A32D192ED03))


def _mix64(z: _U64) -> _U64:
    """splitmix64's finaliser: every input bit moves about half of the output bits."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def weights_digest(weights: FloatArray, row_offset: int) -> _U64:
    """Two 64-bit lanes: XOR over the rows of a hash of (global row index, weight bits).

    XOR adds in any order, so the digest of the data is the same for every chunking and
    reduction tree; a weight moved to another row or changed in any bit changes it.
    """
    bits = np.ascontiguousarray(weights, dtype=np.float64).view(np.uint64)
    rows = np.arange(row_offset, row_offset + len(bits), dtype=np.uint64)
    with np.errstate(over="ignore"):
        lanes = [
            np.bitwise_xor.reduce(_mix64(bits ^ _mix64(rows * mask + mask)))
            if len(bits)
            else np.uint64(0)
            for mask in _MASKS
        ]
    return np.array(lanes, dtype=np.uint64)
