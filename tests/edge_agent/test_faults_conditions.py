"""The vehicle's own conditions estimate tells fog and night from clear daylight (from sensors only)."""

from __future__ import annotations

import torch

from fleetloop.edge_agent.conditions import ConditionsState, estimate_conditions
from fleetloop.sim import World, init_state, observe, step, weather_preset
from fleetloop.sim.scenarios import ScenarioSpec


def _estimate(weather: str, ticks: int = 60) -> tuple[float, float]:
    world = World(weather=weather_preset(weather))
    state = init_state(world, [ScenarioSpec("free", 20.0, 20.0, 1, ())] * 4, list(range(4)), seed=2)
    cs = ConditionsState.init(4)
    zero = torch.zeros(4)
    for _ in range(ticks):
        cs, est = estimate_conditions(cs, observe(world, state), zero)
        state = step(world, state, zero, world.dt_s)
    return float(est.visibility_m.median()), float(est.light.median())


def test_fog_and_night_are_told_apart_from_clear() -> None:
    clear_vis, clear_light = _estimate("clear")
    fog_vis, _ = _estimate("fog")
    _, night_light = _estimate("night")
    assert clear_vis > 1000.0 and fog_vis < 200.0
    assert clear_light > 0.8 and night_light < 0.4
