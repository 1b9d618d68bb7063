"""The controller's edges: the policy file, the cohort draw, and which heartbeats are believed."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest

from fleetloop.platform.bus.events import FleetHealth
from fleetloop.platform.canary.cohorts import assign_cohorts
from fleetloop.platform.canary.policy import CanaryPolicy, load_policy
from fleetloop.platform.canary.tally import heartbeat_counts, tally_heartbeats
from fleetloop.platform.canary.validate import REFUSAL_REASONS, check_heartbeat
from fleetloop.platform.errors import ConfigError, UserInputError

# -- policy -----------------------------------------------------------------------------------------------


def test_a_policy_file_overrides_the_documented_defaults() -> None:
    assert load_policy("") == CanaryPolicy()
    p = load_policy('waves = [0.05, 0.25, 1]\nmargin = 0.1\nalpha = 0.01\ncounter_metrics = ["harsh_jerks"]\nseed = 3')
    assert p.waves == (0.05, 0.25, 1.0) and p.margin == 0.1 and p.seed == 3
    # Safety metrics only (counter-metrics hold): 4 conditions + all pooled at weight 1, 16 slices at 1/4, progress.
    assert p.harm_threshold == pytest.approx(((4 + 1) * 3 + 0.25 * 16 * 3 + 1) / 0.01)
    assert p.slice_harm_threshold == pytest.approx(4 * p.harm_threshold)
    assert p.progress_alpha == pytest.approx(0.01 / 28)
    assert p.hold_alpha == pytest.approx(0.01 / 4)
    assert load_policy(_toml(p.to_dict())) == p


def _toml(d: dict[str, object]) -> str:
    def v(x: object) -> str:
        if isinstance(x, list):
            return "[" + ", ".join(v(i) for i in x) + "]"
        if isinstance(x, dict):  # an inline table
            return "{" + ", ".join(f"{k} = {v(i)}" for k, i in x.items()) + "}"
        return f'"{x}"' if isinstance(x, str) else repr(x)

    return "\n".join(f"{k} = {v(x)}" for k, x in d.items())


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("waves = [0.5, 0.1, 1.0]", "increase"),
        ("waves = [0.1, 0.5]", "end at 1.0"),
        ("waves = [1.0]", "at least one judged wave"),
        ("alpha = 1.5", "alpha"),
        ('metrics = ["speeding"]', "speeding"),
        ('metrics = ["collisions"]\ncounter_metrics = ["collisions"]', "each once"),
        ("margin = -0.1", "margin"),
        ("progress_rollback_ratio = 0.99", "progress ratios"),
        ("wave = [0.1, 1.0]", "unknown keys"),
        ('margin = "big"', "number"),
        ("margin = ", "not valid TOML"),
    ],
)
def test_a_bad_policy_says_what_to_fix(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_policy(text, "rollout.toml")


# -- cohorts ----------------------------------------------------------------------------------------------


def _fleet(n: int = 1000) -> dict[str, str]:
    kinds = ["clear/highway_open"] * 6 + ["fog/highway_traffic"] * 3 + ["night/urban_open"]
    return {f"v{i}": kinds[i % len(kinds)] for i in range(n)}


def test_a_wave_is_stratified_like_the_fleet_with_a_matched_baseline_in_the_same_strata() -> None:
    fleet = _fleet()
    a = assign_cohorts(fleet, 0.10, seed=1)
    assert len(a.canary) == 100
    assert dict(a.canary_per_stratum) == {"clear/highway_open": 60, "fog/highway_traffic": 30, "night/urban_open": 10}
    assert dict(a.baseline_per_stratum) == dict(a.canary_per_stratum)
    assert not set(a.canary) & set(a.baseline)
    assert Counter(fleet[v] for v in a.baseline) == Counter(fleet[v] for v in a.canary)
    assert assign_cohorts(fleet, 0.10, seed=1) == a
    assert assign_cohorts(fleet, 0.10, seed=2).canary != a.canary


def test_waves_only_grow_even_when_vehicles_change_strata() -> None:
    fleet = _fleet()
    first = assign_cohorts(fleet, 0.01, seed=4)
    moved = {**fleet, **dict.fromkeys(first.canary[:5], "fog/highway_traffic")}  # fog rolled in on a few
    second = assign_cohorts(moved, 0.10, seed=4, current_canary=first.canary)
    assert set(first.canary) <= set(second.canary) and len(second.canary) == 100
    half = assign_cohorts(moved, 0.5, seed=4, current_canary=second.canary)
    assert set(second.canary) <= set(half.canary) and len(half.canary) == 500
    assert len(half.baseline) == 1000 - 500 - 1  # one stratum of odd size has one vehicle fewer left
    with pytest.raises(UserInputError, match="without a stratum"):
        assign_cohorts(fleet, 0.1, seed=4, current_canary=["ghost"])
    with pytest.raises(UserInputError, match="fraction"):
        assign_cohorts(fleet, 0.0, seed=4)


def test_a_tiny_wave_of_a_small_fleet_still_has_a_vehicle() -> None:
    a = assign_cohorts({"a": "clear/urban_open", "b": "clear/urban_open", "c": "fog/urban_open"}, 0.01, seed=0)
    assert len(a.canary) == 1 and len(a.baseline) <= 1


# -- heartbeats at the controller's edge -------------------------------------------------------------------


def _hb(**over: object) -> FleetHealth:
    base: dict[str, object] = {
        "vehicle_id": "v1",
        "model_version": 7,
        "beat_seq": 3,
        "period_s": 10.0,
        "distance_m": 250.0,
        "planned_distance_m": 260.0,
        "near_misses": 2,
        "fallback_low_confidence": 1,
        "fallback_model_switch": 1,
        "condition_class": "fog",
        "scenario_class": "highway_traffic",
        "est_visibility_m": 120.0,
        "est_light": 0.9,
        "est_friction": 0.8,
    }
    return FleetHealth(**{**base, **over})  # type: ignore[arg-type]


ASSIGNED = {"v1": 7, "v2": 6}


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"distance_m": -1.0}, "negative_distance"),
        ({"near_misses": -2}, "negative_count"),
        ({"fallback_deadline": -1}, "negative_count"),
        ({"distance_m": math.nan}, "non_finite"),
        ({"period_s": 0.0}, "no_exposure"),
        ({"distance_m": 5000.0}, "implausible_distance"),
        ({"vehicle_id": "v99"}, "unknown_vehicle"),
        ({"model_version": 6}, "unassigned_version"),
        ({"condition_class": "snow"}, "unknown_stratum"),
        ({"beat_seq": 2}, "stale_beat"),
    ],
)
def test_a_heartbeat_that_cannot_be_true_is_refused_with_its_reason(over: dict[str, object], reason: str) -> None:
    refusal = check_heartbeat(_hb(**over), ASSIGNED, {"v1": 2})
    assert refusal is not None and refusal.reason == reason and refusal.reason in REFUSAL_REASONS
    assert "v" in refusal.message


def test_a_plausible_heartbeat_is_believed_and_tallied_into_its_slice() -> None:
    assert check_heartbeat(_hb(), ASSIGNED, {"v1": 2}) is None
    old = FleetHealth(vehicle_id="v1", model_version=7)  # a 1.0 beat
    refusal = check_heartbeat(old, ASSIGNED, {})
    assert refusal is not None and refusal.reason == "no_exposure"
    beats = [_hb(), _hb(vehicle_id="v2", model_version=6, near_misses=1), _hb(beat_seq=4)]
    batch = tally_heartbeats(beats, {"v1": "canary", "v2": "baseline"})
    fog = batch["fog/highway_traffic"]
    assert fog.canary.km == pytest.approx(0.5) and fog.canary.count("near_misses") == 4
    assert fog.baseline.km == pytest.approx(0.25) and fog.baseline.count("near_misses") == 1
    # model_switch activations come from the rollout itself: not the model's
    assert heartbeat_counts(_hb())["fallback_activations"] == 1


def test_every_count_of_a_heartbeat_is_checked_for_sign() -> None:
    counts = [f.name for f in dataclasses.fields(FleetHealth) if f.type == "int" and f.name.startswith("fallback_")]
    for name in counts:
        refusal = check_heartbeat(_hb(**{name: -1}), ASSIGNED, {})
        assert refusal is not None and refusal.reason == "negative_count", name
