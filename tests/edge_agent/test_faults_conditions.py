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


def test_camera_noise_sigma_is_read_from_quiet_cells() -> None:
    """The light estimate's noise sigma, on the camera's own noise (triangular, unit variance), from daylight to
    night, within 10 %; a few cells lit by objects move it little."""
    from fleetloop.edge_agent.conditions import _noise_sigma
    from fleetloop.sim.rng import bits_noise

    g = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**31), 2**31 - 1, (4000, 128), generator=g, dtype=torch.int64).to(torch.int32)
    noise = bits_noise(bits)
    for sigma in (0.03, 0.06, 0.09, 0.12, 0.15):
        got = float(_noise_sigma(sigma * noise).mean())
        assert abs(got - sigma) < 0.1 * sigma, (sigma, got)
    lit = 0.03 * noise
    lit[:, :6] = 0.8  # six object cells of 128
    assert float(_noise_sigma(lit).mean()) < 0.036


def _friction_under_full_brake(weather: str) -> tuple[float, float, float]:
    """Min and last friction estimate while braking fully from 20 m/s (commands reach the actuators after the
    dead time, as on the vehicle), and the true friction."""
    world = World(weather=weather_preset(weather))
    state = init_state(world, [ScenarioSpec("free", 20.0, 20.0, 1, ())] * 4, list(range(4)), seed=2)
    cs = ConditionsState.init(4)
    delay = round(world.dead_time_s / world.dt_s)
    issued = [torch.zeros(4)] * delay
    lowest = []
    for tick in range(20):
        cmd = torch.full((4,), -9.5) if tick >= 3 else torch.zeros(4)
        cs, est = estimate_conditions(cs, observe(world, state), issued[-delay])
        lowest.append(float(est.friction.min()))
        issued.append(cmd)
        state = step(world, state, cmd, world.dt_s)
    true_mu = float(state.friction.mean())
    return min(lowest), lowest[-1], true_mu


def test_friction_estimate_ignores_brake_build_up_and_finds_a_wet_road() -> None:
    dry_min, _, dry_mu = _friction_under_full_brake("clear")
    _, wet_last, wet_mu = _friction_under_full_brake("rain")
    assert dry_mu > 0.85 and dry_min > 0.85  # the brake building up is not read as a slippery road
    assert wet_mu < 0.7 and abs(wet_last - wet_mu) < 0.1  # a grip-limited stop finds the wet road's grip
