"""Synthetic Gaussian-mixture datasets of any size, with their true parameters.

:func:`make_gaussian_mixture` writes a dataset to Zarr one chunk at a time (memory: one
chunk), for demos, tests and benchmarks; :func:`sample_gaussian_mixture` draws a small one
in memory. Both produce the same numbers for the same arguments.

Reproducibility
---------------
The true parameters come from the stream ``SeedSequence(seed).spawn(2)[0]``. Rows are drawn
in fixed *generation blocks* of :data:`GENERATION_BLOCK_ROWS` rows; block ``b`` uses the
stream ``SeedSequence(seed).spawn(2)[1].spawn(b + 1)[b]`` (built directly from its spawn key,
so block ``b`` costs nothing to reach). The data therefore depend only on the seed and the
shape, never on ``chunk_rows`` or the order in which chunks are written: the same seed gives
bit-identical data and labels whatever the chunking, on disk or in memory.

Storage layout
--------------
``path`` is a Zarr v3 group::

    path/                 group; attribute "synthetic": the generator's settings and seed
    path/data             (n_samples, n_features) float64 or float32, row-chunked: fit this
    path/labels           (n_samples,) int32, the true component of each row (optional)
    path/truth/weights    (n_components,)
    path/truth/means      (n_components, n_features)
    path/truth/covariances  shaped as scikit-learn's ``covariances_`` for the covariance type:
                          full (K, d, d), tied (d, d), diag (K, d), spherical (K,)

``emdist.GaussianMixture().fit(path + "/data")`` (or ``dataset.data_path``) fits it;
:func:`open_synthetic` reads the truth back.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from emdist._random import resolve_seed
from emdist._typing import COVARIANCE_TYPES, AnyArray, CovarianceType, FloatArray, IntArray
from emdist._version import __version__
from emdist.exceptions import InvalidDataError, InvalidParameterError
from emdist.io.atomic import atomic_output
from emdist.io.chunking import default_chunk_rows
from emdist.io.ingest import CompressorName, resolve_compressor
from emdist.io.integrity import (
    MAX_CHUNKS,
    CheckedReader,
    create_verified_array,
    memory_limit_bytes,
    seal,
    verify_array,
)
from emdist.kernels.covariance import full_covariances

__all__ = [
    "GENERATION_BLOCK_ROWS",
    "MAX_COMPONENTS",
    "MixtureTruth",
    "SyntheticDataset",
    "make_gaussian_mixture",
    "open_synthetic",
    "sample_gaussian_mixture",
]

GENERATION_BLOCK_ROWS = 8192
"""Rows drawn from one random stream. Part of the data's definition: changing it changes
every dataset generated from a given seed."""

#: The most components a dataset is generated with (their means are placed by rejection
#: sampling, whose cost grows with the square of their number).
MAX_COMPONENTS = 10_000

# Standard deviations along the principal axes are drawn from this range, so that the
# components differ in shape and size but none is degenerate.
_STD_RANGE = (0.5, 1.5)

_FORMAT_VERSION = 1


@dataclass(frozen=True)
class MixtureTruth:
    """The parameters a synthetic dataset was drawn from.

    Attributes
    ----------
    weights : ndarray of shape (n_components,)
    means : ndarray of shape (n_components, n_features)
    covariances : ndarray
        As scikit-learn's ``covariances_``: (K, d, d) full, (d, d) tied, (K, d) diag,
        (K,) spherical.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    """

    weights: FloatArray
    means: FloatArray
    covariances: FloatArray
    covariance_type: CovarianceType

    @property
    def n_components(self) -> int:
        """Number of components."""
        return int(self.weights.shape[0])

    @property
    def n_features(self) -> int:
        """Number of features."""
        return int(self.means.shape[1])

    def full_covariances(self) -> FloatArray:
        """Every component's covariance as a (n_components, n_features, n_features) array."""
        return full_covariances(
            self.covariances, self.covariance_type, self.n_components, self.n_features
        )


@dataclass(frozen=True)
class SyntheticDataset:
    """A synthetic dataset on disk and the truth it was drawn from.

    Attributes
    ----------
    path : pathlib.Path
        The Zarr group (see the module docstring for its layout).
    truth : MixtureTruth
    n_samples, n_features : int
    seed : int
        The seed everything was derived from (resolved from ``random_state``).
    separation : float
    chunk_rows : int
        Rows per Zarr chunk of ``data`` (and ``labels``).
    dtype : str
    has_labels : bool
    """

    path: Path
    truth: MixtureTruth
    n_samples: int
    n_features: int
    seed: int
    separation: float
    chunk_rows: int
    dtype: str
    has_labels: bool

    @property
    def data_path(self) -> Path:
        """Path of the data array: pass it to ``fit``."""
        return self.path / "data"

    @property
    def labels_path(self) -> Path | None:
        """Path of the true labels, or ``None`` when they were not stored."""
        return self.path / "labels" if self.has_labels else None

    @property
    def n_components(self) -> int:
        """Number of components."""
        return self.truth.n_components

    def open_data(self) -> zarr.Array[Any]:
        """The data array, read-only."""
        return zarr.open_array(str(self.data_path), mode="r")

    def load_labels(self) -> IntArray:
        """All true labels in memory (4 bytes per row)."""
        if self.labels_path is None:
            raise FileNotFoundError(f"{self.path} was generated without labels")
        return np.asarray(zarr.open_array(str(self.labels_path), mode="r")[:], dtype=np.int64)


# --------------------------------------------------------------------------------------
# The truth


def _random_rotation(rng: np.random.Generator, d: int) -> FloatArray:
    # QR of a Gaussian matrix with the signs of R's diagonal folded into Q: Haar-uniform.
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))[None, :]


def _random_covariance(rng: np.random.Generator, d: int) -> FloatArray:
    rot = _random_rotation(rng, d)
    variances = rng.uniform(*_STD_RANGE, size=d) ** 2
    cov = (rot * variances[None, :]) @ rot.T
    return (cov + cov.T) / 2  # exactly symmetric


def _draw_truth(
    rng: np.random.Generator,
    n_features: int,
    n_components: int,
    covariance_type: CovarianceType,
    separation: float,
    weights: FloatArray | None,
    center: FloatArray,
) -> MixtureTruth:
    K, d = n_components, n_features
    if weights is None:
        # Unequal but comparable weights (ratio at most 3): every component has data.
        w = rng.uniform(0.5, 1.5, size=K)
        weights = w / w.sum()
    covariances: FloatArray
    if covariance_type == "full":
        covariances = np.stack([_random_covariance(rng, d) for _ in range(K)])
        top = max(float(np.linalg.eigvalsh(c)[-1]) for c in covariances)
    elif covariance_type == "tied":
        covariances = _random_covariance(rng, d)
        top = float(np.linalg.eigvalsh(covariances)[-1])
    elif covariance_type == "diag":
        covariances = rng.uniform(*_STD_RANGE, size=(K, d)) ** 2
        top = float(covariances.max())
    else:
        covariances = rng.uniform(*_STD_RANGE, size=K) ** 2
        top = float(covariances.max())
    sigma = math.sqrt(top)
    means = _separated_means(rng, K, d, separation * sigma) + center[None, :]
    return MixtureTruth(
        weights=np.asarray(weights, dtype=np.float64),
        means=means,
        covariances=covariances,
        covariance_type=covariance_type,
    )


def _separated_means(rng: np.random.Generator, K: int, d: int, min_dist: float) -> FloatArray:
    """K points, each pair at least ``min_dist`` apart, uniform in a box grown as needed.

    Rejection sampling; the box starts just large enough to hold K such points and grows
    by 25% whenever 200 candidates in a row are rejected.
    """
    half = max(min_dist, 1.0) * max(1.0, K ** (1.0 / d)) * 0.75
    means = np.empty((K, d))
    k = 0
    rejected = 0
    while k < K:
        candidate = rng.uniform(-half, half, size=d)
        if k == 0 or np.min(np.linalg.norm(means[:k] - candidate, axis=1)) >= min_dist:
            means[k] = candidate
            k += 1
            rejected = 0
        else:
            rejected += 1
            if rejected == 200:
                half *= 1.25
                rejected = 0
    return means


def _cholesky_factors(truth: MixtureTruth) -> FloatArray:
    return np.linalg.cholesky(truth.full_covariances()).astype(np.float64, copy=False)


# --------------------------------------------------------------------------------------
# The rows


def _block_rng(seed: int, block: int) -> np.random.Generator:
    # Equal to SeedSequence(seed).spawn(2)[1].spawn(block + 1)[block]: a child's spawn key
    # is its parent's key plus its index. Building it directly costs O(1), not O(block).
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, block)))


def _truth_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))


def _generate_block(
    seed: int,
    block: int,
    n_rows: int,
    truth: MixtureTruth,
    chol: FloatArray,
    cum_weights: FloatArray,
) -> tuple[FloatArray, AnyArray]:
    """Rows of generation block ``block`` (``n_rows`` of them) and their labels."""
    rng = _block_rng(seed, block)
    # Inverse-CDF draw of the labels; the last edge is forced to 1 so that rounding in the
    # cumulative sum can never produce label K.
    labels = np.searchsorted(cum_weights, rng.random(n_rows), side="right").astype(np.int32)
    z = rng.standard_normal((n_rows, truth.n_features))
    X = np.empty_like(z)
    for k in range(truth.n_components):
        idx = np.flatnonzero(labels == k)
        if idx.size:
            X[idx] = z[idx] @ chol[k].T + truth.means[k]
    return X, labels


class _RowSource:
    """Rows [start, stop) of the dataset, assembled from generation blocks.

    Keeps the last block it generated, so chunks that do not align with generation blocks
    cost no more than aligned ones when read in order.
    """

    def __init__(self, seed: int, n_samples: int, truth: MixtureTruth) -> None:
        self.seed = seed
        self.n_samples = n_samples
        self.truth = truth
        self.chol = _cholesky_factors(truth)
        cum = np.cumsum(truth.weights)
        cum[-1] = 1.0
        self.cum_weights = cum
        self._cached: tuple[int, FloatArray, AnyArray] | None = None

    def _block(self, b: int) -> tuple[FloatArray, AnyArray]:
        if self._cached is not None and self._cached[0] == b:
            return self._cached[1], self._cached[2]
        G = GENERATION_BLOCK_ROWS
        n = min(G, self.n_samples - b * G)
        X, y = _generate_block(self.seed, b, n, self.truth, self.chol, self.cum_weights)
        self._cached = (b, X, y)
        return X, y

    def rows(self, start: int, stop: int) -> tuple[FloatArray, AnyArray]:
        G = GENERATION_BLOCK_ROWS
        parts_X, parts_y = [], []
        for b in range(start // G, (stop - 1) // G + 1):
            X, y = self._block(b)
            lo = max(start - b * G, 0)
            hi = min(stop - b * G, X.shape[0])
            parts_X.append(X[lo:hi])
            parts_y.append(y[lo:hi])
        if len(parts_X) == 1:
            return parts_X[0], parts_y[0]
        return np.concatenate(parts_X), np.concatenate(parts_y)


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.absolute().parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def check_generation_size(
    n_samples: int,
    n_features: int,
    n_components: int,
    covariance_type: str,
    chunk_rows: int,
    itemsize: int,
    path: Path,
) -> None:
    """Refuse, before anything is written, a dataset this machine cannot generate.

    The bounds: at most :data:`~emdist.io.integrity.MAX_CHUNKS` chunks (a store of more
    chunks is refused when read, and writing millions of one-row chunks takes hours); one
    chunk and the true covariances within the memory a read may take
    (:func:`~emdist.io.integrity.memory_limit_bytes`); the whole array within the free space
    of the disk that will hold it.

    Raises
    ------
    InvalidParameterError
        One line naming the argument and the bound.
    """
    n_chunks = -(-n_samples // chunk_rows)
    if n_chunks > MAX_CHUNKS:
        raise InvalidParameterError(
            f"n_samples={n_samples:,} in chunks of chunk_rows={chunk_rows:,} rows makes "
            f"{n_chunks:,} chunks; at most {MAX_CHUNKS:,} are possible: raise chunk_rows to at "
            f"least {-(-n_samples // MAX_CHUNKS):,}"
        )
    memory = memory_limit_bytes()
    chunk_bytes = chunk_rows * n_features * itemsize
    if chunk_bytes > memory:
        raise InvalidParameterError(
            f"one chunk of {chunk_rows:,} rows x n_features={n_features:,} takes "
            f"{chunk_bytes / 2**30:,.1f} GiB, more than the {memory / 2**30:,.1f} GiB a chunk "
            f"may take on this machine: lower n_features or chunk_rows"
        )
    per_component = {"full": n_features**2, "tied": 0, "diag": n_features, "spherical": 1}
    truth_bytes = 8 * (
        n_components * (per_component.get(covariance_type, n_features**2) + n_features)
        + (n_features**2 if covariance_type == "tied" else 0)
    )
    if truth_bytes > memory:
        raise InvalidParameterError(
            f"the covariances of n_components={n_components:,} components of "
            f"n_features={n_features:,} take {truth_bytes / 2**30:,.1f} GiB, more than this "
            f"machine's {memory / 2**30:,.1f} GiB limit: lower n_features or n_components"
        )
    total = n_samples * n_features * itemsize
    where = _nearest_existing(path.parent if path.parent != path else path)
    free = shutil.disk_usage(where).free
    if total > free:
        raise InvalidParameterError(
            f"n_samples={n_samples:,} x n_features={n_features:,} takes "
            f"{total / 2**30:,.1f} GiB; {where} has {free / 2**30:,.1f} GiB free"
        )


# --------------------------------------------------------------------------------------
# Public entry points


def _validate(
    n_samples: int,
    n_features: int,
    n_components: int,
    covariance_type: str,
    separation: float,
    weights: Any,
    center: Any,
    dtype: Any,
) -> tuple[FloatArray | None, FloatArray, np.dtype[Any]]:
    for name, value in (
        ("n_samples", n_samples),
        ("n_features", n_features),
        ("n_components", n_components),
    ):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise InvalidParameterError(f"{name} must be a positive int; got {value!r}")
    if n_components > MAX_COMPONENTS:
        # The means are placed by rejection sampling, quadratic in their number.
        raise InvalidParameterError(
            f"n_components must be <= {MAX_COMPONENTS:,}; got {n_components}"
        )
    means_bytes = 8 * (n_components + 1) * n_features
    if means_bytes > memory_limit_bytes():
        # Checked before the centre and means are allocated (n_features floats each).
        raise InvalidParameterError(
            f"the means of n_components={n_components:,} components of "
            f"n_features={n_features:,} take {means_bytes / 2**30:,.1f} GiB, more than this "
            f"machine's {memory_limit_bytes() / 2**30:,.1f} GiB limit: lower n_features"
        )
    if covariance_type not in COVARIANCE_TYPES:
        raise InvalidParameterError(
            f"covariance_type must be one of {COVARIANCE_TYPES}; got {covariance_type!r}"
        )
    if not (math.isfinite(separation) and separation >= 0):
        raise InvalidParameterError(f"separation must be a finite number >= 0; got {separation!r}")
    w: FloatArray | None = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n_components,) or not np.all(w > 0) or not np.all(np.isfinite(w)):
            raise InvalidParameterError(
                f"weights must be {n_components} positive numbers; got {weights!r}"
            )
        w = w / w.sum()
    c = np.broadcast_to(np.asarray(center, dtype=np.float64), (n_features,)).copy()
    out_dtype = np.dtype(dtype)
    if out_dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise InvalidParameterError(f"dtype must be float64 or float32; got {out_dtype}")
    return w, c, out_dtype


def sample_gaussian_mixture(
    n_samples: int,
    n_features: int,
    n_components: int,
    *,
    covariance_type: CovarianceType = "full",
    separation: float = 6.0,
    weights: Any = None,
    center: Any = 0.0,
    random_state: Any = None,
    dtype: Any = np.float64,
) -> tuple[AnyArray, IntArray, MixtureTruth]:
    """Draw a Gaussian-mixture dataset in memory.

    The arguments mean what they mean for :func:`make_gaussian_mixture`, and the same
    arguments give the same rows: this is that dataset, without the disk.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
        The true component of each row.
    truth : MixtureTruth
    """
    w, c, out_dtype = _validate(
        n_samples, n_features, n_components, covariance_type, separation, weights, center, dtype
    )
    seed = resolve_seed(random_state)
    truth = _draw_truth(
        _truth_rng(seed), n_features, n_components, covariance_type, separation, w, c
    )
    X, y = _RowSource(seed, int(n_samples), truth).rows(0, int(n_samples))
    return X.astype(out_dtype, copy=False), y.astype(np.int64), truth


def make_gaussian_mixture(
    path: str | os.PathLike[str],
    n_samples: int,
    n_features: int,
    n_components: int,
    *,
    covariance_type: CovarianceType = "full",
    separation: float = 6.0,
    weights: Any = None,
    center: Any = 0.0,
    chunk_rows: int | None = None,
    random_state: Any = None,
    dtype: Any = np.float64,
    compressor: CompressorName | None = None,
    labels: bool = True,
    overwrite: bool = False,
) -> SyntheticDataset:
    """Write a synthetic Gaussian-mixture dataset of any size to Zarr, chunk by chunk.

    Parameters
    ----------
    path : path
        The Zarr group to create (layout in the module docstring). The data array is
        ``path/data``.
    n_samples, n_features, n_components : int
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
        Shape of the true covariances: random rotations and axis standard deviations in
        [0.5, 1.5] ('full', 'tied'), random axis-aligned ('diag'), random isotropic
        ('spherical').
    separation : float, default=6.0
        Minimum distance between any two true means, in units of the largest standard
        deviation of any component along any direction. The Mahalanobis distance between
        two means is at least this, so at 6 fewer than 0.2% of the points of two
        neighbouring components fall on the wrong side; 2-3 makes overlapping clusters.
    weights : array-like of shape (n_components,), optional
        Mixing weights (normalised). Default: random, within a factor 3 of each other.
    center : float or array-like of shape (n_features,), default=0.0
        Added to every mean: put the data far from the origin to test numerics.
    chunk_rows : int, optional
        Rows per Zarr chunk. Default: at most 16 MiB of data per chunk, the rows split into
        near-equal chunks. The data do not depend on it.
    random_state : int, numpy Generator or RandomState, or None
        The seed; ``None`` draws a fresh one (stored in the attributes, so the dataset can
        be regenerated).
    dtype : {float64, float32}, default=float64
        Of the data (the draw is in float64, then cast).
    compressor : {'none', 'zstd', 'lz4', 'blosc-lz4', 'blosc-zstd'}, optional
        Codec of the ``data`` chunks, as :func:`emdist.io.ingest.ingest` names them.
        Default: none (dense floats barely compress and read faster raw). The data do not
        depend on it.
    labels : bool, default=True
        Also store the true component of each row in ``path/labels``.
    overwrite : bool, default=False
        Replace an existing dataset at ``path``. The dataset is written beside ``path`` and
        swapped in whole (:func:`emdist.io.atomic.atomic_output`).

    Returns
    -------
    SyntheticDataset
        Paths and the true parameters.

    Notes
    -----
    Memory is one chunk plus one generation block, whatever ``n_samples``. The rows depend
    only on the seed and the arguments above other than ``chunk_rows``, ``labels`` and
    ``overwrite`` (see the module docstring).
    """
    w, c, out_dtype = _validate(
        n_samples, n_features, n_components, covariance_type, separation, weights, center, dtype
    )
    n, d, K = int(n_samples), int(n_features), int(n_components)
    if chunk_rows is None:
        rows = default_chunk_rows(n, d, out_dtype.itemsize)
    else:
        if not isinstance(chunk_rows, int | np.integer) or chunk_rows < 1:
            raise InvalidParameterError(f"chunk_rows must be a positive int; got {chunk_rows!r}")
        rows = int(chunk_rows)
    rows = min(rows, n)  # Zarr pads edge chunks to full size: no chunk larger than the data
    codecs, codec_name = resolve_compressor(compressor, out_dtype.itemsize)
    target = Path(path)
    check_generation_size(n, d, K, covariance_type, rows, out_dtype.itemsize, target)
    if (
        overwrite
        and target.exists()
        and not (target.is_dir() and ((target / "zarr.json").exists() or not any(target.iterdir())))
    ):
        # atomic_output would delete whatever is there: only ever replace a Zarr node.
        raise FileExistsError(f"refusing to replace {target}: it is not a Zarr store")
    seed = resolve_seed(random_state)
    truth = _draw_truth(_truth_rng(seed), d, K, covariance_type, separation, w, c)
    settings: dict[str, Any] = {
        "format_version": _FORMAT_VERSION,
        "generator": "emdist.io.synthetic.make_gaussian_mixture",
        "n_samples": n,
        "n_features": d,
        "n_components": K,
        "covariance_type": covariance_type,
        "separation": float(separation),
        "seed": seed,
        "generation_block_rows": GENERATION_BLOCK_ROWS,
        "dtype": str(out_dtype),
        "compressor": codec_name,
        "chunk_rows": rows,
        "labels": bool(labels),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "emdist_version": __version__,
    }
    source = _RowSource(seed, n, truth)
    # kind="synthetic": overwrite replaces only a dataset generated by emdist (recognised by
    # its "synthetic" attribute) or an empty folder, never another folder.
    needed = n * d * out_dtype.itemsize + (n * 4 if labels else 0)  # data and int32 labels
    with atomic_output(path, overwrite=overwrite, kind="synthetic", needed=needed) as tmp:
        root = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
        root.attrs["synthetic"] = settings
        # Uncompressed by default (dense floats barely compress and read faster raw), every
        # chunk written, each with a CRC-32C: see emdist.io.integrity.
        data = create_verified_array(
            root,
            "data",
            shape=(n, d),
            chunks=(rows, d),
            dtype=out_dtype,
            compressors=codecs,
            fill_value=0.0,
            dimension_names=("sample", "feature"),
        )
        data.attrs["provenance"] = {"source": "synthetic", "seed": seed}
        label_array = None
        if labels:
            label_array = create_verified_array(
                root,
                "labels",
                shape=(n,),
                chunks=(rows,),
                dtype=np.int32,
                fill_value=0,
                dimension_names=("sample",),
            )
        t = root.create_group("truth")
        for name, value in (
            ("weights", truth.weights),
            ("means", truth.means),
            ("covariances", truth.covariances),
        ):
            node = create_verified_array(t, name, shape=value.shape, dtype=np.float64)
            node[...] = value
            seal(node)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            X, y = source.rows(start, stop)
            data[start:stop] = X.astype(out_dtype, copy=False)
            if label_array is not None:
                label_array[start:stop] = y
        seal(data)
        if label_array is not None:
            seal(label_array)
    return SyntheticDataset(
        path=Path(path),
        truth=truth,
        n_samples=n,
        n_features=d,
        seed=seed,
        separation=float(separation),
        chunk_rows=rows,
        dtype=str(out_dtype),
        has_labels=bool(labels),
    )


def open_synthetic(path: str | os.PathLike[str]) -> SyntheticDataset:
    """Read back a dataset written by :func:`make_gaussian_mixture` (its truth, not its rows).

    Raises
    ------
    ValueError
        When ``path`` is not such a dataset.
    """
    root = zarr.open_group(str(path), mode="r")
    settings = root.attrs.get("synthetic")
    if not isinstance(settings, dict):
        raise InvalidDataError(f"{path} is not a synthetic dataset (no 'synthetic' attribute)")
    truth_group = root["truth"]
    assert isinstance(truth_group, zarr.Group)

    def read(name: str) -> FloatArray:
        node = truth_group[name]
        if not isinstance(node, zarr.Array):
            raise InvalidDataError(f"{path}: truth/{name} is not an array")
        # Datasets written before verification existed have no record and are read as is.
        verify_array(node, f"{path}/truth/{name}")
        return np.asarray(CheckedReader(node, f"{path}/truth/{name}")[...], dtype=np.float64)

    covariance_type = str(settings["covariance_type"])
    if covariance_type not in COVARIANCE_TYPES:
        raise InvalidDataError(f"{path}: unknown covariance_type {covariance_type!r}")
    truth = MixtureTruth(
        weights=read("weights"),
        means=read("means"),
        covariances=read("covariances"),
        covariance_type=covariance_type,
    )
    return SyntheticDataset(
        path=Path(path),
        truth=truth,
        n_samples=int(settings["n_samples"]),
        n_features=int(settings["n_features"]),
        seed=int(settings["seed"]),
        separation=float(settings["separation"]),
        chunk_rows=int(settings["chunk_rows"]),
        dtype=str(settings["dtype"]),
        has_labels=bool(settings["labels"]),
    )
