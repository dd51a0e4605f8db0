"""One integer seed per fit or dataset, and the independent streams derived from it.

Everything random in emdist (the scan sample, seeding, random responsibilities, synthetic
rows) derives from one seed through ``numpy.random.SeedSequence``, so results do not depend
on the scheduler, the number of workers or the chunking, and the seed can be recorded (in a
checkpoint, in a dataset's attributes) to reproduce them.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from emdist.exceptions import InvalidParameterError

__all__ = ["child_seeds", "resolve_seed"]


def resolve_seed(random_state: Any) -> int:
    """One integer seed for a fit, from ``None``, an int, a ``RandomState`` or a ``Generator``.

    Everything random in a fit derives from this seed through ``SeedSequence``, so the fit
    is reproducible whatever the scheduler and the chunking.
    """
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if int(random_state) < 0:
            raise InvalidParameterError(f"random_state must be non-negative; got {random_state}")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63 - 1))
    raise InvalidParameterError(
        f"random_state must be None, an int, a numpy RandomState or Generator; got {random_state!r}"
    )


def child_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent integer seeds derived from ``seed``."""
    return [int(s.generate_state(1, np.uint64)[0]) for s in np.random.SeedSequence(seed).spawn(n)]
