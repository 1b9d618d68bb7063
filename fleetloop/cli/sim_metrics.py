"""The fleet's safety exposure as Prometheus counters, by model version and driving condition.

``sim run`` hands :class:`GroupCounters` the run's cumulative sums per (model version, condition) after every
chunk (``FleetSummary.groups``); it adds what changed since the last chunk to three labelled counters, so a
dashboard divides events by distance per version and condition (``fleetloop watch``, the Grafana dashboard) and
breaks the arbiter's fallback activations down by reason. The sums are the run summary's own, so the counters
agree with what ``sim run --json`` prints at the end.

With ``--ota``, vehicles told to run a release in shadow mode compare it with their active model every tick;
:class:`ShadowCounters` exports those sums (``counts.ota.shadow``) by the condition class of each vehicle's own
estimate, so the disagreement share is ``differing / compared`` over any window.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetloop.platform.metrics import counter

__all__ = [
    "ACTIVATIONS_BY_REASON_METRIC",
    "DISTANCE_METRIC",
    "EVENTS_BY_CONDITION_METRIC",
    "SHADOW_SUM_METRICS",
    "GroupCounters",
    "ShadowCounters",
    "group_deltas",
    "shadow_deltas",
]

DISTANCE_METRIC = "fleetloop_sim_distance_meters_total"
EVENTS_BY_CONDITION_METRIC = "fleetloop_sim_condition_events_total"
ACTIVATIONS_BY_REASON_METRIC = "fleetloop_sim_fallback_reason_activations_total"

# Summary column -> the event label (singular, like fleetloop_sim_events_total's).
EVENT_LABELS = {
    "collisions": "collision",
    "near_misses": "near_miss",
    "phantom_brakes": "phantom_brake",
    "hard_brakes": "hard_brake",
    "harsh_jerks": "harsh_jerk",
}
_ACTIVATION_PREFIX = "activations."

Groups = Mapping[str, Mapping[str, Mapping[str, float]]]

# Shadow mode's sums (``ota_shadow.SHADOW_SUMS``, per condition class) that become counters.
SHADOW_COMPARED_METRIC = "fleetloop_sim_shadow_compared_vehicle_ticks_total"
SHADOW_DIFFERING_METRIC = "fleetloop_sim_shadow_differing_vehicle_ticks_total"
SHADOW_INVALID_METRIC = "fleetloop_sim_shadow_invalid_vehicle_ticks_total"
SHADOW_SUM_METRICS = {
    "compared_ticks": SHADOW_COMPARED_METRIC,
    "differ_ticks": SHADOW_DIFFERING_METRIC,
    "invalid_ticks": SHADOW_INVALID_METRIC,
}


def group_deltas(before: Groups, now: Groups) -> list[tuple[str, dict[str, str], float]]:
    """``(metric, labels, increase)`` for every column that grew between two cumulative snapshots of the groups.

    Pure. A column absent before counts from 0; one that did not grow yields nothing (no empty series).
    """
    out: list[tuple[str, dict[str, str], float]] = []
    for version, by_condition in now.items():
        for condition, row in by_condition.items():
            prev = before.get(version, {}).get(condition, {})
            base = {"model_version": version, "condition": condition}
            for column, value in row.items():
                delta = float(value) - float(prev.get(column, 0.0))
                if delta <= 0:
                    continue
                if column == "distance_m":
                    out.append((DISTANCE_METRIC, base, delta))
                elif column in EVENT_LABELS:
                    out.append((EVENTS_BY_CONDITION_METRIC, {**base, "event": EVENT_LABELS[column]}, delta))
                elif column.startswith(_ACTIVATION_PREFIX):
                    reason = column.removeprefix(_ACTIVATION_PREFIX)
                    out.append((ACTIVATIONS_BY_REASON_METRIC, {**base, "reason": reason}, delta))
    return out


class GroupCounters:
    """Declares the three counters; ``update(groups)`` adds what grew since the previous call."""

    def __init__(self) -> None:
        self._metrics = {
            DISTANCE_METRIC: counter(
                DISTANCE_METRIC,
                "Distance the egos drove [m], by model version and the condition at the ego: the exposure that "
                "safety rates are divided by.",
                ["model_version", "condition"],
            ),
            EVENTS_BY_CONDITION_METRIC: counter(
                EVENTS_BY_CONDITION_METRIC,
                "Safety events (collision, near_miss, phantom_brake, hard_brake, harsh_jerk) by model version and "
                "the condition at the ego.",
                ["model_version", "condition", "event"],
            ),
            ACTIVATIONS_BY_REASON_METRIC: counter(
                ACTIVATIONS_BY_REASON_METRIC,
                "Model -> fallback transitions by the arbiter's reason, model version and the condition at the ego.",
                ["model_version", "condition", "reason"],
            ),
        }
        self._seen: Groups = {}

    def update(self, groups: Groups) -> None:
        """Add the growth of the cumulative ``groups`` (``FleetSummary.groups``) since the last call."""
        for name, labels, delta in group_deltas(self._seen, groups):
            self._metrics[name].labels(**labels).inc(delta)
        self._seen = {v: {c: dict(row) for c, row in bc.items()} for v, bc in groups.items()}


def shadow_deltas(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """``(sum, condition, increase)`` for every shadow-mode sum of :data:`SHADOW_SUM_METRICS` that grew. Pure."""
    out = []
    for column in SHADOW_SUM_METRICS:
        prev = before.get(column, {})
        for condition, value in now.get(column, {}).items():
            delta = float(value) - float(prev.get(condition, 0.0))
            if delta > 0:
                out.append((column, condition, delta))
    return out


class ShadowCounters:
    """Declares shadow mode's counters; ``update(shadow)`` adds what the cumulative sums grew by since the last call."""

    def __init__(self) -> None:
        self._metrics = {
            "compared_ticks": counter(
                SHADOW_COMPARED_METRIC,
                "Vehicle-ticks on which a model in shadow mode and the active model both gave a valid output, by the "
                "condition class of the vehicle's own estimate.",
                ["condition"],
            ),
            "differ_ticks": counter(
                SHADOW_DIFFERING_METRIC,
                "Compared vehicle-ticks on which the shadow model's commanded acceleration differed from the active "
                "model's by more than the vehicle's threshold (0.5 m/s2 by default), by condition class.",
                ["condition"],
            ),
            "invalid_ticks": counter(
                SHADOW_INVALID_METRIC,
                "Vehicle-ticks on which the shadow model's output was invalid while the active model's was valid, by "
                "condition class.",
                ["condition"],
            ),
        }
        self._seen: Mapping[str, Any] = {}

    def update(self, shadow: Mapping[str, Any]) -> None:
        """Add the growth of the run's shadow sums (``counts()["ota"]["shadow"]``, summed over shards)."""
        for column, condition, delta in shadow_deltas(self._seen, shadow):
            self._metrics[column].labels(condition=condition).inc(delta)
        self._seen = {k: dict(v) for k, v in shadow.items() if isinstance(v, Mapping)}
