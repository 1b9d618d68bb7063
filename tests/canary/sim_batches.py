"""Simulated cohort batches for the canary tests: Poisson events over exposures, per slice and arm."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fleetloop.platform.canary.policy import CONDITION_CLASSES, SCENARIO_CLASSES
from fleetloop.platform.canary.stats import ArmTally, SliceTally

SLICES = tuple(f"{c}/{s}" for c in CONDITION_CLASSES for s in SCENARIO_CLASSES)
BASE_RATES_PER_KM = {  # the baseline's events per km in every slice
    "collisions": 0.01,
    "near_misses": 0.3,
    "fallback_activations": 0.2,
    "phantom_brakes": 0.05,
    "harsh_jerks": 0.1,
}


def batch(
    rng: np.random.Generator,
    canary_km: float,
    baseline_km: float,
    ratio: Mapping[tuple[str, str], float] | float = 1.0,
    progress: float = 1.0,
    slices: tuple[str, ...] = SLICES,
) -> dict[str, SliceTally]:
    """One batch: every slice drives ``canary_km`` / ``baseline_km``; the canary's rate of metric m in slice s is
    ``ratio[(s, m)]`` (default 1) or ``ratio`` times the baseline's; its progress is ``progress`` of the plan (the
    baseline's is 1)."""
    out: dict[str, SliceTally] = {}
    for s in slices:
        c_counts, b_counts = {}, {}
        for m, lam in BASE_RATES_PER_KM.items():
            r = ratio if isinstance(ratio, float | int) else ratio.get((s, m), 1.0)
            c_counts[m] = int(rng.poisson(lam * r * canary_km))
            b_counts[m] = int(rng.poisson(lam * baseline_km))
        out[s] = SliceTally(
            ArmTally(canary_km, canary_km / progress, c_counts), ArmTally(baseline_km, baseline_km, b_counts)
        )
    return out
