"""Byzantine vehicles for tests and benchmarks: what an attacking vehicle sends instead of its honest update.

Pure numpy on ``name -> array`` dicts; ``g`` is the global model the round sent, ``w`` the attacker's honest
local update:

- ``sign-flip``: ``g - scale * (w - g)``, the update reversed and amplified;
- ``scale``: ``g + scale * (w - g)``, the update amplified (model-replacement style);
- ``noise``: ``g + N(0, noise_std²)`` per weight;
- ``alie`` ("A Little Is Enough", Baruch et al., NeurIPS 2019): ``g + mu - z * sigma``, where mu and sigma are the
  per-weight mean and standard deviation of honest updates and z the largest shift that the median-based rules
  still count among the honest: ``z = Phi^-1((n - s) / n)`` with ``s = floor(n / 2 + 1) - f``. The attacker
  sees no other vehicle's update: it estimates mu and sigma from several updates on disjoint parts of its own
  buffer (``honest_samples``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np

from fleetloop.federation.config import AttackConfig

__all__ = ["alie_z_max", "attack_update"]

Arrays = Mapping[str, np.ndarray]


def alie_z_max(n: int, f: int) -> float:
    """ALIE's z for ``n`` replies of which ``f`` attack (at least 0.5 so the shift is never nil)."""
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0 < p < 1:
        return 1.0
    return max(0.5, NormalDist().inv_cdf(p))


def attack_update(
    cfg: AttackConfig,
    global_arrays: Arrays,
    honest: Arrays,
    rng: np.random.Generator,
    *,
    honest_samples: Sequence[Arrays] = (),
    clients: int = 0,
    attackers: int = 0,
) -> dict[str, np.ndarray]:
    """The arrays an attacker of ``cfg.kind`` sends (same keys, shapes and dtype as ``honest``)."""
    out: dict[str, np.ndarray] = {}
    if cfg.kind == "alie":
        samples = list(honest_samples) or [honest]
        z = cfg.alie_z if cfg.alie_z is not None else alie_z_max(max(clients, 2), max(attackers, 1))
    for k, g in global_arrays.items():
        w = honest[k]
        if cfg.kind == "sign-flip":
            v = g - cfg.scale * (w - g)
        elif cfg.kind == "scale":
            v = g + cfg.scale * (w - g)
        elif cfg.kind == "noise":
            v = g + rng.normal(0.0, cfg.noise_std, size=g.shape)
        else:
            deltas = np.stack([s[k] - g for s in samples])
            v = g + deltas.mean(0) - z * deltas.std(0)
        out[k] = np.asarray(v, dtype=w.dtype)
    return out
