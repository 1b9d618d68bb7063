"""Simulated cohort batches for the canary tests: Poisson events over exposures, per slice and arm."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from fleetloop.platform.canary.decide import Verdict, decide
from fleetloop.platform.canary.policy import (
    CONDITION_CLASSES,
    POISSON_DISPERSION,
    SCENARIO_CLASSES,
    CanaryPolicy,
)
from fleetloop.platform.canary.stats import ArmTally, CohortStats, SliceTally, update_stats

SLICES = tuple(f"{c}/{s}" for c in CONDITION_CLASSES for s in SCENARIO_CLASSES)
BASE_RATES_PER_KM = {  # the baseline's events per km in every slice
    "collisions": 0.01,
    "near_misses": 0.3,
    "fallback_activations": 0.2,
    "phantom_brakes": 0.05,
    "harsh_jerks": 0.1,
}

POISSON = POISSON_DISPERSION  # a policy's dispersion for the Poisson batches below


def batch(
    rng: np.random.Generator,
    canary_km: float,
    baseline_km: float,
    ratio: Mapping[tuple[str, str], float] | float = 1.0,
    progress: float = 1.0,
    slices: tuple[str, ...] = SLICES,
    bursts: Mapping[str, int] | None = None,
) -> dict[str, SliceTally]:
    """One batch: every slice drives ``canary_km`` / ``baseline_km``; the canary's rate of metric m in slice s is
    ``ratio[(s, m)]`` (default 1) or ``ratio`` times the baseline's; its progress is ``progress`` of the plan (the
    baseline's is 1). A metric named in ``bursts`` comes in bursts of that many events (same mean rate; variance
    over mean = the burst size), as a flickering fallback does; the others are Poisson."""
    out: dict[str, SliceTally] = {}
    for s in slices:
        c_counts, b_counts = {}, {}
        for m, lam in BASE_RATES_PER_KM.items():
            r = ratio if isinstance(ratio, float | int) else ratio.get((s, m), 1.0)
            k = (bursts or {}).get(m, 1)
            c_counts[m] = k * int(rng.poisson(lam * r * canary_km / k))
            b_counts[m] = k * int(rng.poisson(lam * baseline_km / k))
        out[s] = SliceTally(
            arm_of_beats(canary_km / progress, progress, c_counts), arm_of_beats(baseline_km, 1.0, b_counts)
        )
    return out


BEAT_SPREAD = (0.2, -0.2, 0.1, -0.1)  # each beat's progress off the arm's (they cancel: the km stay exact)


def arm_of_beats(planned_km: float, progress: float, counts: dict[str, int]) -> ArmTally:
    """An arm's batch as ``len(BEAT_SPREAD)`` heartbeats of equal plan whose progress spreads around ``progress``
    (a fixed spread, no draws: the counts' random stream stays what it was)."""
    out = ArmTally(counts=counts)
    if planned_km <= 0:
        return out
    p = planned_km / len(BEAT_SPREAD)
    for dev in BEAT_SPREAD:
        out = out.plus(ArmTally.one_beat(p * progress * (1.0 + dev), p, {}))
    return out


def null_rollbacks(
    policy: CanaryPolicy,
    rollouts: int,
    batches: int,
    canary_km: float,
    baseline_km: float,
    bursts: Mapping[str, int] | None = None,
) -> int:
    """How many of ``rollouts`` canaries equal to production (seeds 0..) are ever rolled back when decided after
    every one of ``batches`` batches (the continuous looks an always-valid test must survive)."""
    rolled_back = 0
    for seed in range(rollouts):
        rng = np.random.default_rng(seed)
        stats = CohortStats()
        for i in range(batches):
            stats = update_stats(policy, stats, batch(rng, canary_km, baseline_km, bursts=bursts))
            if decide(policy, stats, 0, 80.0 * (i + 1), float(i)).verdict is Verdict.ROLLBACK:
                rolled_back += 1
                break
    return rolled_back


def within_alpha(policy: CanaryPolicy, rolled_back: int, rollouts: int) -> bool:
    """The share rolled back is at most alpha plus three binomial standard errors."""
    return rolled_back / rollouts <= policy.alpha + 3 * math.sqrt(policy.alpha * (1 - policy.alpha) / rollouts)


def poisson_policy(**kwargs: Any) -> CanaryPolicy:
    """A policy that reads every metric as Poisson (``batch``'s counts are, unless given bursts)."""
    return CanaryPolicy(**{"dispersion": POISSON, **kwargs})
