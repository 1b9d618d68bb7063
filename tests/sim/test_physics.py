"""Physics that does not flatter the brakes: dead time, jerk-limited build-up, friction-limited deceleration."""

from __future__ import annotations

import pytest
import torch

from fleetloop.sim import ScenarioSpec, World, init_state, step, weather_preset
from fleetloop.sim.errors import StateError
from fleetloop.sim.state import GRAVITY_MPS2
from fleetloop.sim.weather import FRICTION_DRY, FRICTION_WET

SPEED_MPS = 25.0


def brake_to_stop(weather: str) -> tuple[float, float, int]:
    """Full braking from 25 m/s: (distance before the brakes act [m], distance after [m], ticks to stop)."""
    world = World(weather=weather_preset(weather))
    state = init_state(world, [ScenarioSpec("brake", SPEED_MPS, SPEED_MPS)], [0], seed=0)
    start = float(state.ego_s_m[0])
    dead_m = None
    for tick in range(200):
        state = step(world, state, torch.tensor([-world.max_brake_mps2]), world.dt_s)
        if dead_m is None and float(state.ego_v_mps[0]) < SPEED_MPS:
            # the first tick whose speed dropped: everything before it was dead time
            dead_m = SPEED_MPS * tick * world.dt_s
        if float(state.ego_v_mps[0]) == 0.0:
            total = float(state.ego_s_m[0]) - start
            assert dead_m is not None
            return dead_m, total - dead_m, tick + 1
    raise AssertionError("never stopped")


def test_wet_road_braking_phase_longer_by_friction_ratio_dead_time_distance_unchanged() -> None:
    dead_dry, brake_dry, _ = brake_to_stop("clear")
    dead_wet, brake_wet, _ = brake_to_stop("rain")
    assert dead_dry == pytest.approx(SPEED_MPS * 0.2) == dead_wet  # 0.2 s dead time, same on any road
    ratio = FRICTION_DRY / FRICTION_WET
    # The only departure from v^2 / (2 mu g) is the jerk-limited build-up: deceleration rises by 30 m/s³ * 0.1 s
    # per tick up to mu g, and each tick short of full braking costs v dt (1 - a_k / (mu g)).
    for brake_m, mu in ((brake_dry, FRICTION_DRY), (brake_wet, FRICTION_WET)):
        decel = mu * GRAVITY_MPS2
        steps = [min(k * 3.0, decel) for k in range(1, 10)]
        ramp_m = SPEED_MPS * 0.1 * sum(1.0 - a / decel for a in steps)
        assert brake_m == pytest.approx(SPEED_MPS**2 / (2 * decel) + ramp_m, rel=0.01)
    assert brake_wet / brake_dry == pytest.approx(ratio, rel=0.08)
    assert brake_wet > 1.6 * brake_dry


def test_command_has_no_effect_before_dead_time() -> None:
    world = World()
    state = init_state(world, [ScenarioSpec("dt", SPEED_MPS, SPEED_MPS)], [0], seed=0)
    speeds = []
    for _ in range(4):
        state = step(world, state, torch.tensor([-8.0]), world.dt_s)
        speeds.append(float(state.ego_v_mps[0]))
    assert speeds[0] == speeds[1] == SPEED_MPS  # 0.2 s of dead time
    assert speeds[2] < SPEED_MPS  # then braking, limited by the jerk limiter
    assert SPEED_MPS - speeds[2] == pytest.approx(30.0 * 0.1 * 0.1, rel=1e-4)


def test_step_rejects_nan_controls_and_wrong_dt() -> None:
    world = World()
    state = init_state(world, [ScenarioSpec("x", 10.0, 10.0)], [0], seed=0)
    with pytest.raises(StateError, match="NaN"):
        step(world, state, torch.tensor([float("nan")]), world.dt_s)
    with pytest.raises(StateError, match="dt_s"):
        step(world, state, torch.tensor([0.0]), 0.05)
    with pytest.raises(StateError, match="shape"):
        step(world, state, torch.tensor([0.0, 1.0]), world.dt_s)
