"""Scenarios as plain data, validated with clear errors; the shared weather field; mixed draws per vehicle."""

from __future__ import annotations

import math

import pytest
import torch

from fleetloop.sim import (
    ScenarioError,
    World,
    draw_scenarios,
    init_state,
    scenario_from_dict,
    step,
    weather_preset,
)
from fleetloop.sim.weather import VISIBILITY_CLEAR_M, VISIBILITY_FOG_M, conditions_at


def test_scenario_from_dict_builds_a_valid_scene() -> None:
    spec = scenario_from_dict(
        {
            "name": "my_cut_in",
            "ego": {"speed_mps": 25, "lane": 1},
            "actors": [{"kind": "vehicle", "x_m": 30, "lane": 0, "speed_mps": 20, "move_at_s": 2, "to_lane": 1}],
        }
    )
    assert spec.ego_desired_speed_mps == 25.0 and spec.actors[0].to_lane == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "must be a mapping"),
        ({"ego": {"speed_mps": 10}, "actorz": []}, "unknown key.*actorz.*valid keys"),
        ({"ego": {}}, "speed_mps"),
        ({"ego": {"speed_mps": "fast"}}, "must be a number"),
        ({"ego": {"speed_mps": 10, "lane": 7}}, "ego_lane 7 is outside lanes 0..2"),
        ({"ego": {"speed_mps": 10}, "actors": [{"kind": "tank"}]}, "unknown kind 'tank'; valid kinds"),
        ({"ego": {"speed_mps": 10}, "actors": [{"kind": "debris", "speed_mps": 3}]}, "does not move"),
        ({"ego": {"speed_mps": 10}, "actors": [{"move_at_s": 1}]}, "needs both move_at_s and to_lane"),
        ({"ego": {"speed_mps": math.nan}}, "finite"),
    ],
)
def test_bad_scenarios_are_refused_with_what_to_fix(data: object, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        scenario_from_dict(data)


def test_unknown_names_list_what_is_valid() -> None:
    with pytest.raises(ValueError, match="valid scenarios: free, following"):
        draw_scenarios("highway_chaos", [0], 1)
    with pytest.raises(ValueError, match="valid presets: clear, fog, rain, night, mixed"):
        weather_preset("hail")


def test_mixed_draws_per_vehicle_whatever_the_batch() -> None:
    whole = draw_scenarios("mixed", range(200), seed=4)
    part = draw_scenarios("mixed", range(50, 60), seed=4)
    assert whole[50:60] == part
    assert len({s.name.split("_")[0] for s in whole}) >= 8  # every family shows up
    assert draw_scenarios("mixed", range(200), seed=5) != whole


def test_fog_rolls_in_over_time_and_the_vehicles_behind_meet_the_bank_later() -> None:
    weather = weather_preset("clear", fog_onset_s=60.0, fog_ramp_s=30.0, fog_start_m=2000.0, fog_end_m=4000.0)
    at = torch.tensor([1000.0, 3000.0], dtype=torch.float64)
    before = conditions_at(weather, at, 30.0, 50_000.0).visibility_m
    after = conditions_at(weather, at, 120.0, 50_000.0).visibility_m
    assert before.tolist() == pytest.approx([VISIBILITY_CLEAR_M, VISIBILITY_CLEAR_M])
    assert after.tolist() == pytest.approx([VISIBILITY_CLEAR_M, VISIBILITY_FOG_M])
    # two vehicles 500 m apart on the same road drive into the same bank: the one behind enters it later
    world = World(weather=weather)
    scen = draw_scenarios("free", [0, 1], seed=0)
    state = init_state(world, scen, [0, 1], 0, road_s_m=torch.tensor([1800.0, 1300.0], dtype=torch.float64))
    state = state.replace(tick=900)  # fog is thick from t = 90 s
    entered: list[int | None] = [None, None]
    for t in range(400):
        state = step(world, state, torch.zeros(2), world.dt_s)
        for i in range(2):
            if entered[i] is None and float(state.visibility_m[i]) < 100.0:
                entered[i] = t
    assert entered[0] is not None and entered[1] is not None and entered[1] > entered[0] + 50
