"""The hindsight labeller on frames the vehicle recorded in the world."""

from __future__ import annotations

import math

import pytest
import torch

from fleetloop.edge_agent.fallback import FallbackConfig, FallbackState, fallback_control
from fleetloop.edge_agent.labeller import LabelConfig, hindsight_labels
from fleetloop.sim import World, init_state, observe, step
from fleetloop.sim.scenarios import ActorSpec, ScenarioSpec

GAP_M = 15.0
SPEED_MPS = 40 / 3.6


def _record(ticks: int) -> dict[str, torch.Tensor]:
    """Vehicle 0 meets a stationary car GAP_M ahead and brakes hard; vehicle 1 drives on a free road."""
    world = World()
    target = ActorSpec(kind="stopped_vehicle", x_m=GAP_M + 4.5, lane=1)
    scenes = [ScenarioSpec("late", SPEED_MPS, SPEED_MPS, 1, (target,)), ScenarioSpec("free", 20.0, 20.0, 1, ())]
    state = init_state(world, scenes, [0, 1], seed=4)
    cfg = FallbackConfig.for_world(world)
    fb = FallbackState.init(2)
    rows: list[dict[str, torch.Tensor]] = []
    for tick in range(ticks):
        obs = observe(world, state)
        fb, out = fallback_control(cfg, fb, obs, desired_speed_mps=state.ego_v0_mps)
        rows.append({**obs.as_dict(), "fallback_stage": out.stage, "tick": torch.full((2,), tick)})
        rows[-1]["vehicle_id"] = state.vehicle_ids
        rows[-1]["command_accel_mps2"] = out.accel_mps2
        state = step(world, state, out.accel_mps2, world.dt_s)
    assert not state.collided.any()
    # Ordered by vehicle, then tick.
    return {k: torch.stack([r[k] for r in rows], 1).flatten(0, 1) for k in rows[0] if k != "camera"}


TICKS = 50


@pytest.fixture(scope="module")
def recorded() -> dict[str, torch.Tensor]:
    return _record(TICKS)


def test_frame_before_a_hard_stop_is_a_hazard_with_the_needed_deceleration(recorded: dict[str, torch.Tensor]) -> None:
    ticks = TICKS
    frames = recorded
    labels = hindsight_labels(LabelConfig(), frames)
    first = 0  # vehicle 0, tick 0
    want = SPEED_MPS**2 / (2 * (GAP_M - LabelConfig().margin_m))
    assert labels.hazard[first] == 1.0 and bool(labels.valid[first])
    assert math.isclose(float(labels.needed_decel_mps2[first]), want, rel_tol=0.1)
    assert math.isclose(float(labels.target_accel_mps2[first]), -want, rel_tol=0.1)
    free = slice(ticks, 2 * ticks)
    assert (labels.hazard[free][:20] == 0).all()
    assert (labels.needed_decel_mps2[free] == 0).all()
    torch.testing.assert_close(labels.target_accel_mps2[free][:20], frames["command_accel_mps2"][free][:20])


def test_horizon_cut_off_lowers_confidence_and_validity(recorded: dict[str, torch.Tensor]) -> None:
    frames = {k: v.view(2, TICKS, *v.shape[1:])[:, :40].flatten(0, 1) for k, v in recorded.items()}
    cfg = LabelConfig(horizon_s=1.0)
    labels = hindsight_labels(cfg, frames)
    free = labels.valid[40:]
    assert free[: 40 - cfg.horizon_ticks].all() and not free[40 - cfg.horizon_ticks :].any()
    assert float(labels.confidence[79]) == 0.0 and math.isclose(float(labels.confidence[75]), 0.4, rel_tol=1e-6)
    # Standing behind the stopped car by then (it stopped at tick 17): following, not a hazard.
    assert labels.valid[25] and labels.hazard[25] == 0.0
    # Cut while it still brakes, closing on the car: what follows confirms the hazard, so it stays valid.
    cut = {k: v.view(2, TICKS, *v.shape[1:])[:, :12].flatten(0, 1) for k, v in recorded.items()}
    early = hindsight_labels(cfg, cut)
    assert float(early.confidence[8]) == 1.0 and early.valid[8] and early.hazard[8] == 1.0


def test_unordered_frames_are_refused(recorded: dict[str, torch.Tensor]) -> None:
    frames = dict(recorded)
    frames["tick"] = frames["tick"].flip(0)
    try:
        hindsight_labels(LabelConfig(), frames)
    except ValueError as exc:
        assert "ordered by vehicle id" in str(exc)
    else:
        raise AssertionError("unordered frames were labelled")


def test_a_phantom_brake_is_neither_a_hazard_nor_a_target(recorded: dict[str, torch.Tensor]) -> None:
    # The free-road vehicle (1) slams on 6 m/s² for half a second with nothing ahead: the labels must not teach
    # it to do that again (target at most the slack below zero) nor call what came before it a hazard.
    frames = {k: v.clone() for k, v in recorded.items()}
    free = torch.arange(TICKS, 2 * TICKS)
    slam = free[20:25]
    frames["ego_accel_mps2"][slam] = -6.0
    frames["command_accel_mps2"][slam] = -6.0
    cfg = LabelConfig()
    labels = hindsight_labels(cfg, frames)
    assert (labels.hazard[free] == 0).all()
    assert (labels.target_accel_mps2[slam] >= -cfg.overbrake_slack_mps2 - 1e-6).all()
    # The same hard brake in front of the stopped car (vehicle 0) stays a hazard with its needed deceleration.
    assert labels.hazard[0] == 1.0


@pytest.mark.parametrize(("v", "gap"), [(25.0, 40.0), (25.0, 20.0), (2.0, 4.0)])
def test_a_lead_car_radar_misses_for_a_tick_is_not_a_wall_to_stop_for(v: float, gap: float) -> None:
    # Ego follows a car at its own speed, seen by lidar on every frame and by radar on all but frame 10. On-board
    # perception reads a lidar-only obstacle as standing (the cautious choice); the labeller has the frames around
    # it and must neither label the frames before it with a full stop nor call them hazards (a 20 m gap at
    # 25 m/s would be a TTC under 1 s against a standing car; a queue at 2 m/s 4 m behind is following).
    n = 40
    lidar = torch.full((n, 32), 120.0)
    lidar[:, 14:18] = gap
    radar_valid = torch.zeros(n, 8, dtype=torch.bool)
    radar_valid[:, 0] = True
    radar_valid[10, 0] = False
    frames = {
        "vehicle_id": torch.zeros(n, dtype=torch.int64),
        "tick": torch.arange(n),
        "ego_speed_mps": torch.full((n,), v),
        "ego_accel_mps2": torch.zeros(n),
        "lidar_range_m": lidar,
        "radar_range_m": torch.full((n, 8), gap),
        "radar_range_rate_mps": torch.zeros(n, 8),
        "radar_azimuth_rad": torch.zeros(n, 8),
        "radar_valid": radar_valid,
    }
    labels = hindsight_labels(LabelConfig(), frames)
    assert (labels.hazard[:10] == 0).all()
    assert (labels.needed_decel_mps2[:10] < 0.5).all()


def _following(n: int, lead_speed: torch.Tensor, v: float = 30.0, gap0: float = 50.0) -> dict[str, torch.Tensor]:
    """Ego at a constant ``v`` behind a lead driving ``lead_speed`` [n] (m/s per tick), seen by lidar and radar."""
    dt = 0.1
    gap = gap0 + torch.cat([torch.zeros(1), torch.cumsum((lead_speed[:-1] - v) * dt, 0)])
    lidar = torch.full((n, 32), 120.0)
    lidar[:, 14:18] = gap.unsqueeze(-1)
    radar_valid = torch.zeros(n, 8, dtype=torch.bool)
    radar_valid[:, 0] = True
    return {
        "vehicle_id": torch.zeros(n, dtype=torch.int64),
        "tick": torch.arange(n),
        "ego_speed_mps": torch.full((n,), v),
        "ego_accel_mps2": torch.zeros(n),
        "lidar_range_m": lidar,
        "radar_range_m": torch.zeros(n, 8) + gap.unsqueeze(-1),
        "radar_range_rate_mps": torch.zeros(n, 8) + (lead_speed - v).unsqueeze(-1),
        "radar_azimuth_rad": torch.zeros(n, 8),
        "radar_valid": radar_valid,
    }


def test_a_lead_still_braking_when_the_horizon_ends_is_stopped_behind_where_it_will_stop() -> None:
    # The lead brakes at 6 m/s² from tick 10 to a stop. From tick 15 on (lead at 27 m/s, 49.25 m ahead) the ego
    # must stop behind where the lead stops: v² / 2 (gap - margin + u² / 2a) = 900 / 216 = 4.2 m/s², the expert's
    # reading. Within the 3 s horizon alone the lead is still moving, and far less braking looks needed.
    n = 80
    t = torch.arange(n, dtype=torch.float32)
    lead = (30.0 - 6.0 * 0.1 * (t - 10).clamp_min(0)).clamp_min(0.0)
    frames = _following(n, lead)
    labels = hindsight_labels(LabelConfig(), frames)
    myopic = hindsight_labels(LabelConfig(lead_braking_mps2=math.inf), frames)
    assert labels.needed_decel_mps2[15].item() == pytest.approx(900 / 216, abs=0.3)
    assert labels.needed_decel_mps2[15] > myopic.needed_decel_mps2[15] + 1.0
    assert labels.hazard[15] == 1.0


def test_a_lead_that_brakes_and_drives_on_within_the_horizon_adds_nothing() -> None:
    # The lead brakes at 6 m/s² for 0.5 s and then holds 27 m/s: by the horizon's end it is not braking, and where
    # it went within the horizon is known, so the labels are those of the myopic labeller.
    n = 80
    t = torch.arange(n, dtype=torch.float32)
    lead = 30.0 - 6.0 * 0.1 * (t - 10).clamp(0, 5)
    frames = _following(n, lead)
    labels = hindsight_labels(LabelConfig(), frames)
    myopic = hindsight_labels(LabelConfig(lead_braking_mps2=math.inf), frames)
    assert torch.equal(labels.needed_decel_mps2[:40], myopic.needed_decel_mps2[:40])
