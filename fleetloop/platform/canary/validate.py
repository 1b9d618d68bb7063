"""What the controller believes of a heartbeat: checked at its edge, before any count reaches the statistics. Pure.

A heartbeat is refused (the shell dead-letters it and counts it by ``reason``), never believed, when:

- ``no_exposure``: it covers no time (a 1.0 heartbeat, from before beats carried their counts);
- ``non_finite``: a distance, period or estimate is NaN or infinite;
- ``negative_distance`` / ``negative_count``: a distance or a count below 0;
- ``implausible_distance``: more km than ``max_speed_mps`` over its period could drive;
- ``unknown_vehicle``: the vehicle is neither on the canary nor in the matched baseline;
- ``unassigned_version``: the vehicle reports a model version it is not assigned (a canary vehicle still on the
  old version while it installs, a baseline vehicle that has the canary: its driving is neither arm's);
- ``unknown_stratum``: a condition or scenario class the controller does not know;
- ``stale_beat``: a beat number at or below the last one believed from that vehicle (a replay or redelivery).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from fleetloop.platform.bus.events import FleetHealth
from fleetloop.platform.canary.policy import CONDITION_CLASSES, SCENARIO_CLASSES

__all__ = [
    "HEARTBEAT_COUNTS",
    "REFUSAL_REASONS",
    "Refusal",
    "check_heartbeat",
    "fallback_activations",
    "stratum_of",
]

REFUSAL_REASONS = (
    "no_exposure",
    "non_finite",
    "negative_distance",
    "negative_count",
    "implausible_distance",
    "unknown_vehicle",
    "unassigned_version",
    "unknown_stratum",
    "stale_beat",
)
MAX_SPEED_MPS = 70.0  # [m/s] 252 km/h: no vehicle of the fleet drives faster
_FALLBACK_JUDGED = ("deadline", "invalid_output", "low_confidence", "ttc_critical", "sensor_fault")
HEARTBEAT_COUNTS = tuple(
    f.name
    for f in fields(FleetHealth)
    if f.type in ("int", int) and f.name not in ("model_version", "beat_seq", "buffer_frames", "frames_lost")
)


@dataclass(frozen=True)
class Refusal:
    """Why a heartbeat is not believed: ``reason`` (one of ``REFUSAL_REASONS``) and a message naming the vehicle."""

    reason: str
    message: str


def stratum_of(hb: FleetHealth) -> str:
    """The heartbeat's slice key ``"<condition>/<scenario>"``."""
    return f"{hb.condition_class}/{hb.scenario_class}"


def fallback_activations(hb: FleetHealth) -> int:
    """The fallback activations a model can cause (``no_model`` and ``model_switch`` come from the rollout)."""
    return sum(int(getattr(hb, f"fallback_{r}")) for r in _FALLBACK_JUDGED)


def check_heartbeat(
    hb: FleetHealth,
    assigned_version: Mapping[str, int],
    last_beat_seq: Mapping[str, int],
    max_speed_mps: float = MAX_SPEED_MPS,
) -> Refusal | None:
    """None when the heartbeat can be believed, else why not. ``assigned_version``: vehicle id -> the version it
    must run (canary and baseline vehicles); ``last_beat_seq``: vehicle id -> the last beat believed."""
    v = hb.vehicle_id
    floats = (hb.period_s, hb.distance_m, hb.planned_distance_m, hb.est_visibility_m, hb.est_light, hb.est_friction)
    if not all(math.isfinite(x) for x in floats):
        return Refusal("non_finite", f"vehicle {v!r}: a distance, period or estimate is not finite: {floats}")
    if hb.period_s <= 0:
        return Refusal("no_exposure", f"vehicle {v!r}: heartbeat covers no time (period_s {hb.period_s})")
    if hb.distance_m < 0 or hb.planned_distance_m < 0:
        return Refusal("negative_distance", f"vehicle {v!r}: distance {hb.distance_m} m / {hb.planned_distance_m} m")
    negative = [n for n in HEARTBEAT_COUNTS if getattr(hb, n) < 0]
    if negative:
        return Refusal("negative_count", f"vehicle {v!r}: negative counts {negative}")
    if hb.distance_m > max_speed_mps * hb.period_s * 1.01:
        return Refusal(
            "implausible_distance",
            f"vehicle {v!r}: {hb.distance_m:.0f} m in {hb.period_s:g} s is faster than {max_speed_mps:g} m/s",
        )
    want = assigned_version.get(v)
    if want is None:
        return Refusal("unknown_vehicle", f"vehicle {v!r} is in neither the canary nor the baseline")
    if hb.model_version != want:
        return Refusal("unassigned_version", f"vehicle {v!r} runs version {hb.model_version}, assigned {want}")
    if hb.condition_class not in CONDITION_CLASSES or hb.scenario_class not in SCENARIO_CLASSES:
        return Refusal("unknown_stratum", f"vehicle {v!r}: unknown stratum {stratum_of(hb)!r}")
    last = last_beat_seq.get(v)
    if last is not None and hb.beat_seq <= last:
        return Refusal("stale_beat", f"vehicle {v!r}: beat {hb.beat_seq} at or before the last believed ({last})")
    return None
