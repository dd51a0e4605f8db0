"""Exact Lloyd K-means on in-memory data that skips the distances which cannot change a label.

Hamerly's algorithm (G. Hamerly, "Making k-means even faster", SDM 2010): every row keeps an
upper bound ``u`` on its distance to its own centre and one lower bound ``l`` on its
distance to every other centre. When the centres move, ``u`` grows by its centre's drift
and ``l`` shrinks by the largest other drift (triangle inequality); a row whose ``u`` stays
below ``max(l, s_a)`` — ``s_a`` half the distance from its centre to the nearest other
centre — keeps its label without a single distance computed. Otherwise its distance to its
own centre is computed (``u`` tightened) and, if the test still fails, its distances to
every centre.

The answer is Lloyd's, exactly:

- A label is decided only by the float64 differences ``Σ_j (x_j - c_j)²`` to every centre,
  lowest index on ties (as ``numpy.argmin``). A row is skipped only when its bounds prove,
  with a relative safety margin (``_DELTA``, far above the rounding of any distance or
  drift computed here) plus an absolute one for underflow (``_TINY``), that every other
  centre is strictly farther: so the computed argmin could not have differed.
- A centre is ``r + Σ (x - r) / n_k`` over its rows in row order, about a fixed reference
  point ``r`` (the mean of the starting centres: exact far from the origin, as the
  differences stay at the data's spread). It depends on the cluster's rows only, so a
  cluster whose rows did not change keeps its centre bit for bit and its sums and
  inertia need not be recomputed: only the rows of clusters whose membership or centre
  changed are summed again ("dirty" clusters). Once no label changes, no centre moves and
  a fit with ``tol=0`` stops, as scikit-learn's strict convergence does.
- Every row's ``‖x - c_label‖²`` is kept, from differences (exact far from the origin): the
  inertia and the far points that re-seed an empty cluster (the farthest row from its own
  centre, ties by row, as :func:`emdist.kernels.kmeans.kmeans_mstep` and scikit-learn do).

Memory: four numbers per row (label, two bounds, the squared distance), beside the data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

# numba's np.dot calls scipy's BLAS (see emdist.kernels.kmeans): loaded for threadpoolctl.
import scipy.linalg.cython_blas  # noqa: F401
from threadpoolctl import threadpool_limits

from emdist._typing import AnyArray, FloatArray, IntArray
from emdist.kernels._blocks import as_row_major
from emdist.kernels._jit import jit
from emdist.kernels.kmeans import _DELTA, _TINY, _half_gaps_kernel, _sq_dist

__all__ = ["BoundedLloyd", "LloydState", "lloyd_bounds"]


def _gather_rows(n_clusters: int, n_features: int) -> int:
    """Rows gathered per GEMM: the rows and their scores fill ~1 MB (half the L2 cache).

    Longer than the passes' sub-blocks (:mod:`emdist.kernels.kmeans`): the gathered rows
    are copied anyway, and a GEMM of a few hundred rows runs nearer BLAS's full rate
    (measured at K = 256: 512 rows 6% faster than 113).
    """
    return int(min(4096, max(256, (1 << 20) // (8 * (n_clusters + n_features)))))


@jit
def _sq_distance_seq(X: AnyArray, i: int, centers: FloatArray, k: int) -> float:
    """``Σ_j (x_ij - c_kj)²`` from float64 differences, ``j`` in order: what decides a label."""
    s = 0.0
    for j in range(X.shape[1]):
        t = np.float64(X[i, j]) - centers[k, j]
        s += t * t
    return s


@jit
def _resolve(
    X: AnyArray,
    i: int,
    centers: FloatArray,
    scores: FloatArray,
    r: int,
    cnorm: FloatArray,
    xnorm: float,
    band: float,
) -> tuple[int, float, float]:
    """The label of row ``i`` from its expansion scores, exact where they cannot tell.

    ``scores[r, k] + cnorm[k] + xnorm`` is ``‖x - c_k‖²`` to within ``band``. Every centre
    within ``3 band`` of the smallest could be the argmin of the exact differences: their
    differences decide (lowest index on ties). Returns the label, the exact squared distance
    to it and a lower bound on the squared distance to every other centre.
    """
    K = centers.shape[0]
    # One pass: the two smallest scores. Almost always the smallest is alone within the
    # rounding band, and it is the label.
    low = np.inf
    second = np.inf
    arg = 0
    for k in range(K):
        v = scores[r, k] + cnorm[k]
        if v < low:
            second = low
            low = v
            arg = k
        elif v < second:
            second = v
    if second > low + 3.0 * band:
        return arg, _sq_distance_seq(X, i, centers, arg), max(second + xnorm - band, 0.0)
    cut = low + 3.0 * band
    best = -1
    best_sq = np.inf
    for k in range(K):
        if scores[r, k] + cnorm[k] <= cut:
            sq = _sq_distance_seq(X, i, centers, k)
            if sq < best_sq:
                best_sq = sq
                best = k
    other = np.inf
    for k in range(K):
        if k != best:
            v = scores[r, k] + cnorm[k]
            if v < other:
                other = v
    return best, best_sq, max(other + xnorm - band, 0.0)


@jit
def _score_gathered(
    X: AnyArray,
    m: int,
    idx: IntArray,
    xbuf: FloatArray,
    xnorm: FloatArray,
    centers: FloatArray,
    neg2_t: FloatArray,
    cnorm: FloatArray,
    cmax: float,
    scores: FloatArray,
    labels: IntArray,
    upper: FloatArray,
    lower: FloatArray,
    counts: IntArray,
    changed: AnyArray,
    delta: float,
    tiny: float,
) -> int:
    """Label the ``m`` gathered rows from one GEMM; their new bounds; rows whose label changed."""
    # Rounding of the expansion: dot products of d terms, the shifts, the norms.
    rel = 8.0 * (X.shape[1] + 4) * 2.220446049250313e-16
    up = 1.0 + delta
    down = 1.0 - delta
    np.dot(xbuf[:m], neg2_t, scores[:m])
    n_changed = 0
    for r in range(m):
        i = idx[r]
        reach = np.sqrt(xnorm[r]) + cmax
        band = rel * reach * reach
        best, best_sq, other_sq = _resolve(X, i, centers, scores, r, cnorm, xnorm[r], band)
        upper[i] = np.sqrt(best_sq) * up + tiny
        lower[i] = np.sqrt(other_sq) * down - tiny
        a = labels[i]
        if best != a:
            if a >= 0:
                counts[a] -= 1
                changed[a] = True
            counts[best] += 1
            changed[best] = True
            labels[i] = best
            n_changed += 1
    return n_changed


@jit
def _assign(
    X: AnyArray,
    centers: FloatArray,
    ref: FloatArray,
    neg2_t: FloatArray,
    cnorm: FloatArray,
    cmax: float,
    half_gap: FloatArray,
    labels: IntArray,
    upper: FloatArray,
    lower: FloatArray,
    counts: IntArray,
    changed: AnyArray,
    rows: int,
    delta: float,
    tiny: float,
) -> tuple[int, int]:
    """Nearest centre of every row, skipping rows whose bounds prove their label.

    Rows whose bounds fail are gathered, ``rows`` at a time, shifted by ``ref``, and scored
    against every centre with one GEMM (``‖c̃‖² - 2 x̃·c̃``, ``c̃ = c - ref``); the scores pick
    the label unless several centres are within their rounding error, which exact
    differences then settle (:func:`_resolve`). ``labels[i] < 0`` means unassigned. Updates
    ``counts`` and marks in ``changed`` the clusters a row left or joined. Returns the rows
    whose label changed and the rows scored against every centre.
    """
    n, d = X.shape
    K = centers.shape[0]
    xbuf = np.empty((rows, d))
    scores = np.empty((rows, K))
    idx = np.empty(rows, dtype=np.int64)
    xnorm = np.empty(rows)
    up = 1.0 + delta
    n_changed = 0
    n_full = 0
    m = 0
    for i in range(n):
        a = labels[i]
        if a >= 0:
            bound = max(lower[i], half_gap[a])
            if upper[i] < bound:
                continue
            u = np.sqrt(_sq_dist(X, i, a, centers)) * up + tiny
            upper[i] = u
            if u < bound:
                continue
        # Gathered until the buffer is full: a GEMM of a few rows runs far below the rate of
        # a full one.
        idx[m] = i
        s = 0.0
        for j in range(d):
            t = np.float64(X[i, j]) - ref[j]
            xbuf[m, j] = t
            s += t * t
        xnorm[m] = s
        m += 1
        if m == rows:
            n_changed += _score_gathered(
                X, m, idx, xbuf, xnorm, centers, neg2_t, cnorm, cmax, scores, labels, upper,
                lower, counts, changed, delta, tiny,
            )  # fmt: skip
            n_full += m
            m = 0
    if m:
        n_changed += _score_gathered(
            X, m, idx, xbuf, xnorm, centers, neg2_t, cnorm, cmax, scores, labels, upper,
            lower, counts, changed, delta, tiny,
        )  # fmt: skip
        n_full += m
    return n_changed, n_full


@jit
def _sweep(
    X: AnyArray,
    labels: IntArray,
    centers: FloatArray,
    ref: FloatArray,
    dirty: AnyArray,
    sums: FloatArray,
    inertia: FloatArray,
    sq_dist: FloatArray,
    upper: FloatArray,
    delta: float,
    tiny: float,
) -> int:
    """Sums about ``ref``, inertia and squared distances of the rows of the dirty clusters.

    Rows are added in row order, so a cluster's sums depend on its rows only. Each row's
    upper bound is tightened to its exact distance on the way. Returns the rows visited.
    """
    n, d = X.shape
    K = centers.shape[0]
    up = 1.0 + delta
    for k in range(K):
        if dirty[k]:
            inertia[k] = 0.0
            for j in range(d):
                sums[k, j] = 0.0
    visited = 0
    for i in range(n):
        k = labels[i]
        if not dirty[k]:
            continue
        visited += 1
        s0 = s1 = s2 = s3 = 0.0
        j = 0
        while j + 4 <= d:
            x0 = np.float64(X[i, j])
            x1 = np.float64(X[i, j + 1])
            x2 = np.float64(X[i, j + 2])
            x3 = np.float64(X[i, j + 3])
            sums[k, j] += x0 - ref[j]
            sums[k, j + 1] += x1 - ref[j + 1]
            sums[k, j + 2] += x2 - ref[j + 2]
            sums[k, j + 3] += x3 - ref[j + 3]
            t0 = x0 - centers[k, j]
            t1 = x1 - centers[k, j + 1]
            t2 = x2 - centers[k, j + 2]
            t3 = x3 - centers[k, j + 3]
            s0 += t0 * t0
            s1 += t1 * t1
            s2 += t2 * t2
            s3 += t3 * t3
            j += 4
        while j < d:
            x0 = np.float64(X[i, j])
            sums[k, j] += x0 - ref[j]
            t0 = x0 - centers[k, j]
            s0 += t0 * t0
            j += 1
        s = (s0 + s1) + (s2 + s3)
        sq_dist[i] = s
        inertia[k] += s
        u = np.sqrt(s) * up + tiny
        if u < upper[i]:
            upper[i] = u
    return visited


@jit
def _move_bounds(
    labels: IntArray,
    upper: FloatArray,
    lower: FloatArray,
    drift: FloatArray,
    delta: float,
    tiny: float,
) -> None:
    """Hamerly's update: ``u += drift[a]``, ``l -= max drift of the other centres``."""
    K = drift.shape[0]
    first = 0
    for k in range(1, K):
        if drift[k] > drift[first]:
            first = k
    second = 0.0
    for k in range(K):
        if k != first and drift[k] > second:
            second = drift[k]
    up = 1.0 + delta
    for i in range(labels.shape[0]):
        a = labels[i]
        upper[i] = (upper[i] + drift[a]) * up + tiny
        v = lower[i] - (second if a == first else drift[first])
        lower[i] = v - abs(v) * delta - tiny


def _half_gaps(centers: FloatArray) -> FloatArray:
    """Half the distance from every centre to its nearest other one (a safe lower bound)."""
    out = np.empty(centers.shape[0])
    _half_gaps_kernel(centers, _DELTA, _TINY, out)
    return out


@dataclass
class LloydState:
    """The per-row state of one run, kept beside the data between iterations.

    Attributes
    ----------
    labels : ndarray of shape (n_samples,)
        Current labels (``-1`` before the first assignment).
    upper, lower : ndarray of shape (n_samples,)
        Hamerly's bounds under the current centres.
    sq_dist : ndarray of shape (n_samples,)
        ``‖x - c_label‖²`` under the centres the last assignment ran under.
    counts : ndarray of shape (n_clusters,)
    sums : ndarray of shape (n_clusters, n_features)
        ``Σ (x - ref)`` over each cluster's rows.
    inertia : ndarray of shape (n_clusters,)
        Each cluster's ``Σ ‖x - c‖²``.
    moved : ndarray of shape (n_clusters,), bool
        Clusters whose centre changed in the last update.
    """

    labels: IntArray
    upper: FloatArray
    lower: FloatArray
    sq_dist: FloatArray
    counts: IntArray
    sums: FloatArray
    inertia: FloatArray
    moved: np.ndarray
    #: Rows whose distances to every centre were computed, and rows summed, per step.
    full_rows: list[int]
    swept_rows: list[int]

    @classmethod
    def empty(cls, n: int, K: int, d: int) -> LloydState:
        """Nothing assigned yet: every row is computed at the first step."""
        return cls(
            labels=np.full(n, -1, dtype=np.int64),
            upper=np.full(n, np.inf),
            lower=np.zeros(n),
            sq_dist=np.zeros(n),
            counts=np.zeros(K, dtype=np.int64),
            sums=np.zeros((K, d)),
            inertia=np.zeros(K),
            moved=np.ones(K, dtype=np.bool_),
            full_rows=[],
            swept_rows=[],
        )


#: Rows below which the loop runs on one thread: handing a step to threads costs about
#: 0.1 ms, more than a step of a small block.
_THREADED_MIN_ROWS = 65_536


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _Threads:
    """The steps of one loop split over threads, each running a GIL-free kernel.

    The assignment and the bounds' update split the rows: every row's outcome is its own,
    and the counts each part changes are integers, added after. The sums split the
    clusters: each cluster's rows are still added in row order by one thread. So the
    results are the one-thread loop's, bit for bit, whatever the number of threads.
    """

    def __init__(self, n_rows: int, n_threads: int) -> None:
        self.n_threads = n_threads
        edges = np.linspace(0, n_rows, n_threads + 1).astype(np.int64)
        self.parts = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        self.pool = ThreadPoolExecutor(n_threads, thread_name_prefix="emdist-lloyd")

    def close(self) -> None:
        self.pool.shutdown()

    def by_rows(self, fn: Callable[[int, int, int], int]) -> list[int]:
        """``fn(part, start, stop)`` for every part of the rows, on the threads."""
        futures = [self.pool.submit(fn, t, a, b) for t, (a, b) in enumerate(self.parts)]
        return [f.result() for f in futures]

    def cluster_sets(self, dirty: np.ndarray, counts: IntArray) -> list[np.ndarray]:
        """``dirty`` split into one mask per thread, balanced by the clusters' rows."""
        load = np.zeros(self.n_threads, dtype=np.int64)
        masks = [np.zeros_like(dirty) for _ in range(self.n_threads)]
        for k in sorted(np.flatnonzero(dirty), key=lambda k: -int(counts[k])):
            t = int(np.argmin(load))
            masks[t][k] = True
            load[t] += max(int(counts[k]), 1)
        return [m for m in masks if m.any()]


def _assign_step(
    X: AnyArray,
    centers: FloatArray,
    ref: FloatArray,
    state: LloydState,
    threads: _Threads | None = None,
) -> tuple[float, np.ndarray]:
    """Assign every row under ``centers``; the inertia and the clusters that were re-summed."""
    K, d = centers.shape
    shifted = centers - ref
    cnorm = np.einsum("kd,kd->k", shifted, shifted)
    neg2_t = np.ascontiguousarray(-2.0 * shifted.T)
    cmax = float(np.sqrt(cnorm.max()))
    half = _half_gaps(centers)
    rows = _gather_rows(K, d)

    def assign(a: int, b: int, counts: IntArray, changed: np.ndarray) -> int:
        _, n_full = _assign(
            X[a:b], centers, ref, neg2_t, cnorm, cmax, half, state.labels[a:b],
            state.upper[a:b], state.lower[a:b], counts, changed, rows, _DELTA, _TINY,
        )  # fmt: skip
        return int(n_full)

    def sweep(dirty: np.ndarray) -> int:
        return int(
            _sweep(
                X,
                state.labels,
                centers,
                ref,
                dirty,
                state.sums,
                state.inertia,
                state.sq_dist,
                state.upper,
                _DELTA,
                _TINY,
            )  # fmt: skip
        )

    if threads is None:
        changed = np.zeros(K, dtype=np.bool_)
        n_full = assign(0, X.shape[0], state.counts, changed)
    else:
        # Each part counts its rows' moves from zero: added after, as integers.
        moves = [np.zeros(K, dtype=np.int64) for _ in threads.parts]
        marks = [np.zeros(K, dtype=np.bool_) for _ in threads.parts]
        n_full = sum(threads.by_rows(lambda t, a, b: assign(a, b, moves[t], marks[t])))
        state.counts += np.sum(moves, axis=0)
        changed = np.logical_or.reduce(marks)
    dirty = changed | state.moved
    swept = 0
    if dirty.any():
        if threads is None:
            swept = sweep(dirty)
        else:
            sets = threads.cluster_sets(dirty, state.counts)
            swept = sum(f.result() for f in [threads.pool.submit(sweep, m) for m in sets])
    state.full_rows.append(int(n_full))
    state.swept_rows.append(int(swept))
    # Summed cluster by cluster in index order: the total depends on the clusters only.
    return float(np.sum(state.inertia)), changed


def _update(
    X: AnyArray, centers: FloatArray, ref: FloatArray, state: LloydState
) -> tuple[FloatArray, int]:
    """New centres from the kept sums; empty clusters re-seeded from the farthest rows.

    As :func:`emdist.kernels.kmeans.kmeans_mstep`: the ``j``-th empty cluster takes the
    ``j``-th row farthest from its own centre (ties by row; rows on their centre are no
    candidates), which leaves its old cluster's sums; a cluster with no rows otherwise
    keeps its centre.
    """
    counts = state.counts.copy()
    sums = state.sums.copy()
    new = centers.copy()
    empty = np.flatnonzero(counts == 0)
    relocated: dict[int, FloatArray] = {}
    if empty.size:
        dist = state.sq_dist
        n_candidates = min(int(np.count_nonzero(dist > 0)), empty.size)
        order = np.lexsort((np.arange(len(dist)), -dist))[:n_candidates]
        for j, k in enumerate(empty[:n_candidates]):
            row = int(order[j])
            x = np.asarray(X[row], dtype=np.float64)
            old = int(state.labels[row])
            sums[old] -= x - ref
            counts[old] -= 1
            relocated[int(k)] = x
    for k in range(len(counts)):
        if k in relocated:
            new[k] = relocated[k]
        elif counts[k] > 0:
            new[k] = ref + sums[k] / counts[k]
    return new, len(relocated)


def _move_all_bounds(state: LloydState, drift: FloatArray, threads: _Threads | None) -> None:
    """Hamerly's update of every row's bounds (:func:`_move_bounds`), split by rows."""

    def move(t: int, a: int, b: int) -> int:
        _move_bounds(state.labels[a:b], state.upper[a:b], state.lower[a:b], drift, _DELTA, _TINY)
        return 0

    if threads is None:
        move(0, 0, state.labels.shape[0])
    else:
        threads.by_rows(move)


def _drift(old: FloatArray, new: FloatArray) -> tuple[FloatArray, float]:
    """Each centre's (safely rounded up) move, and the summed squared shift."""
    step = new - old
    sq = np.einsum("kd,kd->k", step, step)
    drift: FloatArray = np.sqrt(sq) * (1.0 + _DELTA) + np.where(sq > 0, _TINY, 0.0)
    return drift, float(np.sum(step**2))


@dataclass(frozen=True)
class BoundedLloyd:
    """The outcome of :func:`lloyd_bounds`.

    Attributes
    ----------
    centers : ndarray of shape (n_clusters, n_features)
        Centres after the last update.
    labels : ndarray of shape (n_samples,)
        Labels under the centres the last assignment ran under.
    inertias : tuple of float
        Inertia of every iteration, under the centres it assigned with.
    n_iter : int
    converged : bool
    final_inertia : float
        Inertia under ``centers`` (an extra assignment when the last update moved them).
    final_labels : ndarray of shape (n_samples,)
        Labels under ``centers``.
    full_rows, swept_rows : tuple of int
        Per assignment step: rows whose distances to every centre were computed, rows
        whose sums were recomputed (what the bounds saved).
    label_history : tuple of ndarray
        The labels of every iteration, when asked for (``record_labels``); else empty.
    """

    centers: FloatArray
    labels: IntArray
    inertias: tuple[float, ...]
    n_iter: int
    converged: bool
    final_inertia: float
    final_labels: IntArray
    full_rows: tuple[int, ...]
    swept_rows: tuple[int, ...]
    label_history: tuple[IntArray, ...] = ()


IterationHook = Callable[[int, float, FloatArray, bool], bool | None]
"""``hook(iteration, inertia, new_centers, converged)``; returning ``True`` stops the run."""


def lloyd_bounds(
    X: AnyArray,
    centers: FloatArray,
    *,
    max_iter: int,
    tol: float,
    on_iteration: IterationHook | None = None,
    record_labels: bool = False,
    n_threads: int | None = None,
) -> BoundedLloyd:
    """Lloyd's algorithm from ``centers`` with Hamerly's bounds, on one in-memory block.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        float32 stays float32 (its distances are float64 differences); other dtypes are
        converted to float64 once.
    centers : ndarray of shape (n_clusters, n_features)
        Starting centres.
    max_iter : int
        Iteration budget.
    tol : float
        Converged when the summed squared centre shift is at most ``tol`` (absolute).
    on_iteration : callable, optional
        Called after every update (see :data:`IterationHook`).
    record_labels : bool, default=False
        Keep a copy of every iteration's labels (tests).
    n_threads : int, optional
        Threads to split each step over. Default: every usable core from 65,536 rows up,
        else one. The results do not depend on it, bit for bit.

    Returns
    -------
    BoundedLloyd
    """
    block = as_row_major(X)
    centers = np.array(centers, dtype=np.float64, order="C")
    n, d = block.shape
    K = centers.shape[0]
    ref = np.ascontiguousarray(centers.mean(axis=0))
    state = LloydState.empty(n, K, d)
    if n_threads is None:
        n_threads = usable_cores() if n >= _THREADED_MIN_ROWS else 1
    threads = _Threads(n, min(n_threads, n)) if n_threads > 1 and n > 1 else None
    # BLAS's own threads would only spin beside the loop's: its GEMMs are of a few rows.
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            return _run(
                block, centers, ref, state, threads, max_iter, tol, on_iteration, record_labels
            )
    finally:
        if threads is not None:
            threads.close()


def _run(
    block: AnyArray,
    centers: FloatArray,
    ref: FloatArray,
    state: LloydState,
    threads: _Threads | None,
    max_iter: int,
    tol: float,
    on_iteration: IterationHook | None,
    record_labels: bool,
) -> BoundedLloyd:
    """The loop of :func:`lloyd_bounds`."""
    inertias: list[float] = []
    history: list[IntArray] = []
    converged = False
    for iteration in range(1, max_iter + 1):
        inertia, _ = _assign_step(block, centers, ref, state, threads)
        inertias.append(inertia)
        if record_labels:
            history.append(state.labels.copy())
        new, _ = _update(block, centers, ref, state)
        drift, shift = _drift(centers, new)
        converged = shift <= tol
        # Compared, not taken from the drift: a move whose square underflows still moved.
        state.moved = np.any(new != centers, axis=1)
        _move_all_bounds(state, drift, threads)
        centers = new
        stop = on_iteration is not None and bool(on_iteration(iteration, inertia, new, converged))
        if converged or stop:
            break
    labels = state.labels.copy()
    if state.moved.any():
        # The last update moved some centre: assign once more under the final centres.
        final_inertia, _ = _assign_step(block, centers, ref, state, threads)
    else:
        final_inertia = inertias[-1]
    return BoundedLloyd(
        centers=centers,
        labels=labels,
        inertias=tuple(inertias),
        n_iter=len(inertias),
        converged=converged,
        final_inertia=final_inertia,
        final_labels=state.labels.copy(),
        full_rows=tuple(state.full_rows),
        swept_rows=tuple(state.swept_rows),
        label_history=tuple(history),
    )
