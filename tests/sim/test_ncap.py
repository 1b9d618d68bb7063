"""The Euro NCAP protocol matrix in the world: test geometry, the unbraked oracle, occlusion, the conditions' layout."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from fleetloop.sim import ScenarioError, World, init_state, observe, step, weather_preset
from fleetloop.sim.ncap import (
    CONDITIONS,
    GROUPS,
    ccrb_unbraked_impact_kmh,
    euro_ncap_protocol,
    ncap_layout,
)
from fleetloop.sim.sensors import pedestrians_occluded
from fleetloop.sim.state import EGO_WIDTH_M
from fleetloop.sim.weather import Weather, WeatherPatch, conditions_at


def drive_unbraked(tests: list, ticks: int = 150) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every test with an ego that never brakes: (collided [B], impact speed [B] [km/h], lateral contact offset of
    the target from the ego's right edge [B] [m])."""
    world = World()
    state = init_state(world, [t.spec for t in tests], list(range(len(tests))), seed=0)
    at_y = torch.full((len(tests),), math.nan)
    ego_right = world.lane_center_m(1.0) - 0.5 * EGO_WIDTH_M
    for _ in range(ticks):
        nxt = step(world, state, torch.zeros(len(tests)), world.dt_s)
        new = nxt.collided & ~state.collided
        at_y = torch.where(new, state.actor_y_m[:, 0] - ego_right, at_y)
        state = nxt
    return state.collided, state.impact_speed_mps * 3.6, at_y


def test_the_matrix_holds_every_protocol_test_once() -> None:
    tests = euro_ncap_protocol()
    count = {g: sum(t.group == g for t in tests) for g in GROUPS}
    # 3 overlaps; CCRs 10-80, CCRm 30-80 in 5 km/h steps, CCRb 2 gaps x 2 decelerations; pedestrians 10-60 km/h
    assert count == {"CCRs": 45, "CCRm": 33, "CCRb": 12, "CPNA": 22, "CPFA": 11, "CPNC": 11, "CPLA": 22}
    assert len({t.name for t in tests}) == len(tests)
    assert euro_ncap_protocol(["CCRb"]) == [t for t in tests if t.group == "CCRb"]
    with pytest.raises(ScenarioError, match="valid groups"):
        euro_ncap_protocol(["CCRx"])


def test_car_to_car_tests_start_at_ttc_5_s_with_the_overlap_offset() -> None:
    for t in euro_ncap_protocol(["CCRs", "CCRm"]):
        target = t.spec.actors[0]
        gap = target.x_m - 4.5
        assert gap / ((t.test_kmh - t.target_kmh) / 3.6) == pytest.approx(5.0)
        assert abs(target.y_offset_m) == pytest.approx((1 - abs(t.overlap_pct) / 100) * EGO_WIDTH_M)
        assert math.copysign(1, -target.y_offset_m) == math.copysign(1, t.overlap_pct) or t.overlap_pct == 100


def test_an_unbraked_ego_hits_every_test_at_its_unbraked_speed_and_impact_position() -> None:
    tests = euro_ncap_protocol()
    collided, impact_kmh, at_y = drive_unbraked(tests)
    assert bool(collided.all()), [t.name for t, c in zip(tests, collided.tolist(), strict=True) if not c]
    for t, v, y in zip(tests, impact_kmh.tolist(), at_y.tolist(), strict=True):
        assert v == pytest.approx(t.unbraked_impact_kmh, abs=0.6), t.name
        if t.group in ("CPNA", "CPFA", "CPNC"):
            # the pedestrian's centre is at the impact position when the ego's front arrives (within a tick's walk)
            walk_mps = (8.0 if t.group == "CPFA" else 5.0) / 3.6
            want = t.overlap_pct / 100 * EGO_WIDTH_M
            assert abs(y - want) <= 0.5 + walk_mps * 0.1, t.name  # contact starts up to half a body width early


def test_ccrb_unbraked_impact_speed_matches_the_kinematics() -> None:
    # 12 m at 2 m/s²: the gap closes as t² (a/2): t = sqrt(12) s, closing 2 sqrt(12) m/s
    assert ccrb_unbraked_impact_kmh(50, 12, 2) == pytest.approx(2 * math.sqrt(12) * 3.6)
    # 40 m at 6 m/s²: the target stops (after 16.1 m) before the gap closes: hit standing at 50 km/h
    assert ccrb_unbraked_impact_kmh(50, 40, 6) == 50


def test_parked_cars_hide_the_child_until_it_steps_out() -> None:
    world = World()
    (cpnc,) = [t for t in euro_ncap_protocol(["CPNC"]) if t.test_kmh == 40]
    (cpna,) = [t for t in euro_ncap_protocol(["CPNA"]) if t.test_kmh == 40 and t.overlap_pct == 75]
    # the far parked car is left out so that every radar target near the child's range is the child
    child_and_near_car = dataclasses.replace(cpnc.spec, actors=cpnc.spec.actors[:2])
    state = init_state(world, [child_and_near_car, cpna.spec], [0, 1], seed=0)
    hidden, seen_by_radar = [], []
    child_x = []
    for _ in range(25):
        rel_y = state.actor_y_m - world.lane_center_m(1.0)
        hidden.append(pedestrians_occluded(state, rel_y)[:, 0].tolist())
        obs = observe(world, state)
        near_child = (obs.radar_range_m[0] - (state.actor_x_m[0, 0] - 0.5)).abs() < 1.5
        seen_by_radar.append(bool((obs.radar_valid[0] & near_child).any()))
        child_x.append((float(state.actor_x_m[0, 0] - 0.25), float(rel_y[0, 0])))
        state = step(world, state, torch.zeros(2), world.dt_s)
    # geometry: the sight line to the child clears the near parked car's front corner (0.75 m before the child's
    # line, its left side 2.6 m right of the ego's centre) once the child is less than 2.6 x / (x - 0.75) m out
    # (while the parked car is still ahead of the ego)
    ahead = [i for i, (x, _) in enumerate(child_x) if x > 2.0]
    reveal = [child_x[i][1] > -2.6 * child_x[i][0] / (child_x[i][0] - 0.75) for i in ahead]
    child = [h[0] for h in hidden]
    assert child[0] and not child[-1]
    assert [child[i] for i in ahead] == [not r for r in reveal]
    first_seen = child.index(False)
    assert not any(seen_by_radar[:first_seen])  # the radar (p 0.55 per tick) sees nothing while it is hidden
    assert any(seen_by_radar[first_seen:])
    assert not any(h[1] for h in hidden)  # nothing hides the nearside adult


SUITE_LIKE = {"clear": (), "fog_0.8": (("fog", 0.8),), "night_fog_0.9": (("night", 1.0), ("fog", 0.9))}


@pytest.mark.parametrize("catalogue", [CONDITIONS, SUITE_LIKE], ids=["ncap", "suite-like"])
def test_each_condition_drives_on_its_own_stretch_of_weather(catalogue: dict[str, Any]) -> None:
    conds = tuple(catalogue)
    layout = ncap_layout(156, conds, catalogue=catalogue)
    ids = [i for per in layout.vehicle_ids for i in per]
    assert len(set(ids)) == len(ids) == 156 * len(conds)
    world = World(weather=layout.weather)
    for c, name in enumerate(conds):
        start = torch.tensor(layout.vehicle_ids[c], dtype=torch.float64) * world.scene_spacing_m % world.road_length_m
        for travel_m in (0.0, 400.0):  # the whole of every test stays inside its condition
            got = conditions_at(layout.weather, start + travel_m, 5.0, world.road_length_m)
            want = conditions_at(
                Weather(tuple(WeatherPatch(k, strength=s) for k, s in catalogue[name])), start, 5.0, 50_000.0
            )
            for field in ("friction", "visibility_m", "light", "rain"):
                assert torch.allclose(getattr(got, field), getattr(want, field)), (name, field)
    with pytest.raises(ScenarioError, match="valid conditions"):
        ncap_layout(10, ["dry", "snow"], catalogue=catalogue)


def test_a_condition_drives_the_same_vehicles_whichever_others_are_asked_for() -> None:
    alone = ncap_layout(156, ["fog_0.8"], catalogue=SUITE_LIKE)
    together = ncap_layout(156, list(SUITE_LIKE), catalogue=SUITE_LIKE)
    assert alone.vehicle_ids[0] == together.vehicle_ids[1]


def test_ice_lowers_friction_only() -> None:
    s = torch.tensor([100.0], dtype=torch.float64)
    iced = conditions_at(Weather((WeatherPatch("ice"),)), s, 0.0, 50_000.0)
    clear = conditions_at(weather_preset("clear"), s, 0.0, 50_000.0)
    assert float(iced.friction[0]) == pytest.approx(0.3)
    assert torch.equal(iced.visibility_m, clear.visibility_m) and torch.equal(iced.light, clear.light)
    wet_ice = conditions_at(Weather((WeatherPatch("ice"), WeatherPatch("rain"))), s, 0.0, 50_000.0)
    assert float(wet_ice.friction[0]) == pytest.approx(0.3)
