"""The sim's counters by model version and condition add exactly what the run's cumulative sums grew by."""

from __future__ import annotations

from fleetloop.cli.sim_metrics import (
    ACTIVATIONS_BY_REASON_METRIC,
    DISTANCE_METRIC,
    EVENTS_BY_CONDITION_METRIC,
    SHADOW_DIFFERING_METRIC,
    GroupCounters,
    ShadowCounters,
    group_deltas,
    shadow_deltas,
)
from fleetloop.platform.metrics import REGISTRY


def _row(distance_m: float, collisions: float = 0, deadline: float = 0) -> dict[str, float]:
    return {"vehicle_ticks": 10, "distance_m": distance_m, "collisions": collisions, "activations.deadline": deadline}


def test_only_what_grew_becomes_an_increase_with_its_version_and_condition() -> None:
    before = {"v3": {"fog": _row(100.0, collisions=1)}}
    now = {"v3": {"fog": _row(250.0, collisions=1, deadline=2)}, "v4": {"clear": _row(40.0)}}
    deltas = group_deltas(before, now)
    assert (DISTANCE_METRIC, {"model_version": "v3", "condition": "fog"}, 150.0) in deltas
    assert (ACTIVATIONS_BY_REASON_METRIC, {"model_version": "v3", "condition": "fog", "reason": "deadline"}, 2.0) in (
        deltas
    )
    assert (DISTANCE_METRIC, {"model_version": "v4", "condition": "clear"}, 40.0) in deltas
    # The collision count did not change, vehicle_ticks is no exported column: neither yields an increase.
    assert not [d for d in deltas if d[0] == EVENTS_BY_CONDITION_METRIC]
    assert len(deltas) == 3


def test_the_counters_end_at_the_run_totals_after_several_chunks() -> None:
    counters = GroupCounters()
    labels = {"model_version": "test-sim-metrics", "condition": "rain"}
    for km in (1, 2, 3):
        counters.update({"test-sim-metrics": {"rain": _row(km * 1000.0, collisions=km)}})
    c = REGISTRY.collector_registry
    assert c.get_sample_value(DISTANCE_METRIC, labels) == 3000.0
    assert c.get_sample_value(EVENTS_BY_CONDITION_METRIC, {**labels, "event": "collision"}) == 3.0


def test_shadow_counters_add_what_the_shadow_sums_grew_by_per_condition() -> None:
    before = {"compared_ticks": {"fog": 10.0, "clear": 4.0}, "differ_ticks": {"fog": 2.0}, "vehicle_ticks": 20}
    now = {"compared_ticks": {"fog": 15.0, "clear": 4.0}, "differ_ticks": {"fog": 2.0, "wet": 1.0}, "vehicle_ticks": 30}
    assert sorted(shadow_deltas(before, now)) == [("compared_ticks", "fog", 5.0), ("differ_ticks", "wet", 1.0)]
    counters = ShadowCounters()
    c = REGISTRY.collector_registry
    start = c.get_sample_value(SHADOW_DIFFERING_METRIC, {"condition": "night"}) or 0.0
    counters.update({"differ_ticks": {"night": 3.0}, "compared_ticks": {"night": 9.0}})
    counters.update({"differ_ticks": {"night": 5.0}, "compared_ticks": {"night": 9.0}})
    assert c.get_sample_value(SHADOW_DIFFERING_METRIC, {"condition": "night"}) == start + 5.0
