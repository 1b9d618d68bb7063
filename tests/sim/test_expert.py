"""The privileged expert: it avoids every Euro NCAP CCR test and drives free traffic without a collision."""

from __future__ import annotations

import torch

from fleetloop.sim import (
    World,
    detect_events,
    draw_scenarios,
    euro_ncap_matrix,
    expert_control,
    init_state,
    step,
    weather_preset,
)


def drive_expert(world: World, scenarios: list, ticks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(collided [B], minimum gap to anything in path [B] [m], distance driven [B] [m])."""
    ids = list(range(len(scenarios)))
    state = init_state(world, scenarios, ids, seed=3)
    start = state.ego_s_m.clone()
    near_misses = torch.zeros(len(ids), dtype=torch.int64)
    for _ in range(ticks):
        nxt = step(world, state, expert_control(world, state), world.dt_s)
        near_misses += detect_events(world, state, nxt).near_miss.to(torch.int64)
        state = nxt
    return state.collided, near_misses, (state.ego_s_m - start).float()


def test_expert_avoids_every_euro_ncap_ccr_test() -> None:
    tests = euro_ncap_matrix()
    assert len(tests) == 9 + 11 + 4  # CCRs 10..50, CCRm 30..80 km/h in 5 km/h steps, CCRb 2x2
    collided, near_misses, _ = drive_expert(World(), tests, 150)
    crashed = [t.name for t, c in zip(tests, collided.tolist(), strict=True) if c]
    assert crashed == []
    assert int(near_misses.sum()) == 0


def test_expert_avoids_ccr_tests_on_a_wet_road_too() -> None:
    collided, _, _ = drive_expert(World(weather=weather_preset("rain")), euro_ncap_matrix(), 150)
    assert not bool(collided.any())


def test_no_collisions_in_free_traffic_with_the_expert_driving() -> None:
    scenarios = draw_scenarios("free", range(60), seed=11)
    collided, _, driven = drive_expert(World(), scenarios, 400)  # 40 s
    assert not bool(collided.any())
    # and it makes progress: at least 90 % of its cruise speed on average
    cruise = torch.tensor([s.ego_desired_speed_mps for s in scenarios])
    assert bool((driven > 0.9 * cruise * 40.0).all())


def test_expert_avoids_every_scenario_family_of_mixed() -> None:
    scenarios = draw_scenarios("mixed", range(300), seed=5)
    collided, _, _ = drive_expert(World(weather=weather_preset("mixed", seed=5)), scenarios, 250)
    crashed = [s.name for s, c in zip(scenarios, collided.tolist(), strict=True) if c]
    assert crashed == []
