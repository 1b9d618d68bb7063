"""Believed heartbeats -> one batch of the cohort statistics: per slice, what each arm drove. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fleetloop.platform.bus.events import FleetHealth
from fleetloop.platform.canary.policy import COUNT_METRICS
from fleetloop.platform.canary.stats import ArmTally, SliceTally
from fleetloop.platform.canary.validate import fallback_activations, stratum_of

__all__ = ["BASELINE", "CANARY", "heartbeat_counts", "tally_heartbeats"]

CANARY, BASELINE = "canary", "baseline"


def heartbeat_counts(hb: FleetHealth) -> dict[str, int]:
    """The heartbeat's count of every ``COUNT_METRICS`` metric."""
    return {m: fallback_activations(hb) if m == "fallback_activations" else int(getattr(hb, m)) for m in COUNT_METRICS}


def tally_heartbeats(beats: Iterable[FleetHealth], arm_of: Mapping[str, str]) -> dict[str, SliceTally]:
    """Sum believed heartbeats per slice and arm (``arm_of``: vehicle id -> ``"canary"`` or ``"baseline"``)."""
    arms: dict[str, dict[str, ArmTally]] = {}
    for hb in beats:
        arm = arm_of[hb.vehicle_id]
        one = ArmTally.one_beat(hb.distance_m / 1000.0, hb.planned_distance_m / 1000.0, heartbeat_counts(hb))
        by_arm = arms.setdefault(stratum_of(hb), {})
        by_arm[arm] = by_arm[arm].plus(one) if arm in by_arm else one
    return {k: SliceTally(v.get(CANARY, ArmTally()), v.get(BASELINE, ArmTally())) for k, v in sorted(arms.items())}
