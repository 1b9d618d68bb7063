"""The privacy a run has spent, for Flower's fixed-clipping DP wrappers.

Flower 1.42's wrappers expose ``privacy_spent()`` only with an accountant, and its accountant needs the
``dp-accounting`` package (not a dependency here). The wrappers' mechanism is simple enough to account in
closed form: each round releases the clipped, averaged update plus Gaussian noise of std ``z * C / n``
(``compute_stdv``), i.e. a Gaussian mechanism with noise multiplier ``z`` for one vehicle's contribution
(add or remove one vehicle, no amplification by sampling assumed: conservative). Its Renyi DP at order alpha is
``alpha / (2 z²)`` per release (Mironov 2017), composing additively over T releases, and converts to
``epsilon(delta) = min over alpha of T alpha / (2 z²) + log(1 / delta) / (alpha - 1)``. Adaptive clipping also
spends privacy on the noisy clipped-count; that is not accounted here (reported as not accounted).
"""

from __future__ import annotations

import math

__all__ = ["gaussian_epsilon"]

_ORDERS = tuple([1.0 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128.0, 256.0, 512.0, 1024.0])


def gaussian_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``releases`` Gaussian releases of noise multiplier ``noise_multiplier``
    (0 for no release; inf without noise)."""
    if releases <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    z2 = noise_multiplier * noise_multiplier
    return min(releases * a / (2.0 * z2) + math.log(1.0 / delta) / (a - 1.0) for a in _ORDERS)
