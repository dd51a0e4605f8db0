"""The maps of a pass's parameters are built once and found again by value, never stale.

Every block of a pass runs its E-step under the same parameters; the maps they share
(``recent_maps``) must be exactly what each block would have built, must be found again
only for equal arrays (an array changed in place is a new parameter set), and must not
hold memory without bound.
"""

from __future__ import annotations

import numpy as np
import pytest

from emdist.kernels import compute_precision_cholesky
from emdist.kernels import recent_maps as recent_maps_module
from emdist.kernels.mixture import fused_estep
from emdist.kernels.quadratic import QuadraticMaps
from emdist.kernels.recent_maps import recent_maps


def _parameters(
    covariance_type: str, seed: int = 0, K: int = 4, d: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((K, d)) * 3.0
    A = rng.standard_normal((K, d, d)) * 0.3
    covariances = A @ A.transpose(0, 2, 1) + np.eye(d)
    if covariance_type == "tied":
        covariances = covariances[0]
    return means, compute_precision_cholesky(covariances, covariance_type)


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    with recent_maps_module._lock:
        recent_maps_module._recent.clear()


def test_equal_parameters_find_the_same_maps_and_changed_ones_do_not() -> None:
    means, pc = _parameters("full")
    first = recent_maps(means, pc, "full")
    assert recent_maps(means.copy(), pc.copy(), "full") is first
    # Changed in place: a new parameter set, and the kept maps are not changed with it.
    kept = first.maps.coefficients.copy()
    pc[1, 2, 2] *= 1.5
    changed = recent_maps(means, pc, "full")
    assert changed is not first
    np.testing.assert_array_equal(first.maps.coefficients, kept)
    np.testing.assert_array_equal(
        changed.maps.coefficients, QuadraticMaps(means, pc, "full").coefficients
    )
    means[0, 0] += 1e-12
    assert recent_maps(means, pc, "full") is not changed


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_float32_estep_with_kept_maps_is_the_fresh_one_bit_for_bit(covariance_type: str) -> None:
    means, pc = _parameters(covariance_type, seed=3)
    rng = np.random.default_rng(4)
    X = (means[rng.integers(0, len(means), 3000)] + rng.standard_normal((3000, 5))).astype(
        np.float32
    )
    offsets = np.log(np.full(len(means), 1.0 / len(means)))
    fresh = fused_estep(X, means, pc, covariance_type, offsets)  # builds the maps
    kept = fused_estep(X[::-1].copy(), means, pc, covariance_type, offsets)  # other groups' order
    again = fused_estep(X, means.copy(), pc.copy(), covariance_type, offsets)  # found again
    for a, b in zip(fresh, again, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fresh[:3], kept[:3], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(a).max())
    # The same arrays changed in place: the E-step of the new values, not of the kept maps.
    pc *= 1.1
    changed = fused_estep(X, means, pc, covariance_type, offsets)
    with recent_maps_module._lock:
        recent_maps_module._recent.clear()
    reference = fused_estep(X, means, pc.copy(), covariance_type, offsets)
    for a, b in zip(changed, reference, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(changed[2], fresh[2])


def test_kept_maps_are_bounded_in_number_and_bytes() -> None:
    for seed in range(recent_maps_module._SIZE + 5):
        means, pc = _parameters("full", seed=seed)
        recent = recent_maps(means, pc, "full")
        for g in range(recent_maps_module._GROUP_SETS + 3):
            recent.coefficients32_about(np.arange(g % len(means) + 1))
    with recent_maps_module._lock:
        kept = list(recent_maps_module._recent.values())
    assert len(kept) == recent_maps_module._SIZE
    assert all(len(m._about) <= recent_maps_module._GROUP_SETS for m in kept)
    assert sum(m.nbytes for m in kept) <= recent_maps_module._MAX_BYTES


def test_maps_larger_than_the_bound_are_built_for_the_block_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A model whose maps alone pass the bound is not kept (nor copied): a finished fit of a
    # large model must not leave its maps in the process.
    means, pc = _parameters("full", seed=7)
    monkeypatch.setattr(recent_maps_module, "_MAX_BYTES", 3 * pc.nbytes)
    made = recent_maps(means, pc, "full")
    assert made.precisions_cholesky is pc
    np.testing.assert_array_equal(
        made.maps.coefficients, QuadraticMaps(means, pc, "full").coefficients
    )
    assert recent_maps(means, pc, "full") is not made
    with recent_maps_module._lock:
        assert not recent_maps_module._recent
