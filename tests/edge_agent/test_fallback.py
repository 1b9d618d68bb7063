"""Outcome tests of the rule-based fallback in the world's physics."""

from __future__ import annotations

import dataclasses

import torch

from fleetloop.edge_agent.fallback import (
    STAGE_FULL,
    STAGE_MRM,
    STAGE_NONE,
    FallbackConfig,
    FallbackState,
    fallback_control,
)
from fleetloop.sim import World, euro_ncap_matrix, init_state, observe, step
from fleetloop.sim.scenarios import ActorSpec, ScenarioSpec


def _drive(
    world: World, scenarios: list[ScenarioSpec], ticks: int, drop: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Drive the scenes with the fallback alone; ``drop[i]`` names the sensors of vehicle i that fail at once."""
    state = init_state(world, scenarios, list(range(len(scenarios))), seed=3)
    cfg = FallbackConfig.for_world(world)
    fb = FallbackState.init(state.batch)
    b = state.batch
    drop = drop or ("",) * b
    lidar_ok = torch.tensor(["lidar" not in d for d in drop])
    radar_ok = torch.tensor(["radar" not in d for d in drop])
    camera_ok = torch.tensor(["camera" not in d for d in drop])
    first_warn = torch.full((b,), float("nan"))
    stages = []
    for _ in range(ticks):
        obs = observe(world, state)
        obs = dataclasses.replace(obs, camera_valid=obs.camera_valid & camera_ok)
        fb, out = fallback_control(
            cfg, fb, obs, lidar_ok=lidar_ok, radar_ok=radar_ok, desired_speed_mps=state.ego_v0_mps
        )
        fresh = torch.isnan(first_warn) & (out.stage > STAGE_NONE) & (out.stage < STAGE_MRM)
        first_warn = torch.where(fresh, out.ttc_s, first_warn)
        stages.append(out.stage)
        state = step(world, state, out.accel_mps2, world.dt_s)
    return {
        "collided": state.collided,
        "speed": state.ego_v_mps,
        "gap": state.actor_x_m[:, 0] - state.actor_len_m[:, 0],
        "warn_ttc": first_warn,
        "stages": torch.stack(stages, 1),
    }


def test_fallback_alone_stops_before_stationary_target_in_ccrs_up_to_40_kmh() -> None:
    world = World()
    tests = [t for t in euro_ncap_matrix() if t.name.startswith("ccrs") and t.ego_speed_mps <= 40 / 3.6 + 1e-6]
    assert len(tests) == 7
    res = _drive(world, tests, ticks=120)
    assert not res["collided"].any(), [t.name for t, c in zip(tests, res["collided"], strict=True) if c]
    assert (res["speed"] < 0.1).all()
    assert (res["gap"] > 0.5).all() and (res["gap"] < 15.0).all()
    # The forward-collision warning fired from 15 km/h on (at 10 km/h following control slows down earlier).
    assert torch.isfinite(res["warn_ttc"][1:]).all()


def test_full_braking_avoids_a_stationary_target_revealed_late_at_40_kmh() -> None:
    # The obstacle is 15 m ahead at 11.1 m/s (TTC 1.35 s): following control alone cannot stop in time.
    world = World()
    target = ActorSpec(kind="stopped_vehicle", x_m=15.0 + 4.5, lane=1)
    res = _drive(world, [ScenarioSpec("late", 40 / 3.6, 40 / 3.6, 1, (target,))], ticks=60)
    assert not res["collided"].any()
    assert (res["stages"][0] == STAGE_FULL).any()
    assert float(res["speed"][0]) < 0.1 and float(res["gap"][0]) > 0.3


def test_fallback_follows_a_slower_lead_without_emergency_braking() -> None:
    world = World()
    lead = ActorSpec(kind="vehicle", x_m=45.0, lane=1, speed_mps=20.0)
    res = _drive(world, [ScenarioSpec("follow", 25.0, 25.0, 1, (lead,))], ticks=250)
    assert not res["collided"].any()
    assert abs(float(res["speed"][0]) - 20.0) < 1.5
    assert float(res["gap"][0]) > 15.0  # about the 1.5 s time gap
    assert not (res["stages"] >= STAGE_FULL).any()


def test_minimal_risk_stop_under_sensor_dropout() -> None:
    world = World()
    drops = ("lidar+radar", "camera+lidar", "camera+lidar+radar", "camera+radar")
    scenes = [ScenarioSpec("free", 15.0, 15.0, 1, ())] * len(drops)
    res = _drive(world, scenes, ticks=100, drop=drops)
    assert (res["speed"] < 0.1).all()
    assert (res["stages"][:, 5:] == STAGE_MRM).all()
    assert not res["collided"].any()
    # Gentle: never harder than the minimal-risk deceleration.
    assert (res["stages"] != STAGE_FULL).all()


def test_single_lost_camera_frame_is_not_a_sensor_fault() -> None:
    cfg = FallbackConfig()
    world = World()
    state = init_state(world, [ScenarioSpec("free", 20.0, 20.0, 1, ())], [0], seed=0)
    obs = observe(world, state)
    fb = FallbackState.init(1)
    lost = dataclasses.replace(obs, camera_valid=torch.zeros(1, dtype=torch.bool))
    fb, out = fallback_control(cfg, fb, lost)
    assert not bool(out.sensor_fault[0])
    fb, out = fallback_control(cfg, fb, obs)
    assert int(fb.bad_ticks[0, 0]) == 0 and torch.isfinite(out.accel_mps2).all()


def _ghost_obs(world: World, lidar_pair_at_m: float | None) -> object:
    """An observation of an empty road at 25 m/s, with two adjacent central lidar beams returning at a range."""
    state = init_state(world, [ScenarioSpec("empty", 25.0, 25.0)], [0], seed=3)
    obs = observe(world, state)
    lidar = torch.full_like(obs.lidar_range_m, 120.0)
    if lidar_pair_at_m is not None:
        lidar[:, 15:17] = lidar_pair_at_m
    return dataclasses.replace(obs, lidar_range_m=lidar, radar_valid=torch.zeros_like(obs.radar_valid))


def test_a_one_frame_ghost_does_not_fire_the_emergency_brake_but_a_persisting_obstacle_does() -> None:
    world = World(hazard_slots=0)
    cfg = FallbackConfig.for_world(world)
    # fog backscatter: a pair of returns 12 m ahead for one frame, then nothing -> no brake at all
    fb = FallbackState.init(1)
    for r in (None, 12.0, None, None):
        fb, out = fallback_control(cfg, fb, _ghost_obs(world, r))  # type: ignore[arg-type]
        assert int(out.stage[0]) == STAGE_NONE and float(out.accel_mps2[0]) > -1.0
    # a stationary object seen on two frames where the track predicts it (25 m/s x 0.1 s closer) -> full braking
    fb = FallbackState.init(1)
    fb, out = fallback_control(cfg, fb, _ghost_obs(world, 12.0))  # type: ignore[arg-type]
    assert int(out.stage[0]) == STAGE_NONE
    fb, out = fallback_control(cfg, fb, _ghost_obs(world, 9.5))  # type: ignore[arg-type]
    assert int(out.stage[0]) == STAGE_FULL


def _crossing(world: World, scenes: list[ScenarioSpec], ticks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Drive ``scenes`` at constant speed (no braking: the sensors alone decide ``clearing``); per tick, the first
    actor's lateral offset from the ego's lane centre [B, T] and the fallback's ``clearing`` [B, T]."""
    state = init_state(world, scenes, list(range(len(scenes))), seed=5)
    cfg = FallbackConfig.for_world(world)
    fb = FallbackState.init(state.batch)
    dys, clear = [], []
    for _ in range(ticks):
        obs = observe(world, state)
        fb, out = fallback_control(cfg, fb, obs, desired_speed_mps=state.ego_v0_mps)
        assert out.clearing is not None
        dys.append(state.actor_y_m[:, 0] - float(world.lane_center_m(1.0)))
        clear.append(out.clearing)
        state = step(world, state, torch.zeros(state.batch), world.dt_s)
    return torch.stack(dys, 1), torch.stack(clear, 1)


def test_a_pedestrian_leaving_the_path_is_clearing_one_walking_into_it_or_standing_is_not() -> None:
    world = World(hazard_slots=0)
    # 8 m/s; the pedestrian walks from the right kerb (7 m right of the ego's centre line) across the ego's lane to
    # the far side at 1.0-1.8 m/s and is 8-12 m ahead when it walks out of the ego's corridor (1.6 m left).
    scenes = [
        ScenarioSpec(
            f"cross{i}",
            8.0,
            8.0,
            1,
            (ActorSpec(kind="pedestrian", x_m=x, lane=-1, move_at_s=0.0, to_lane=3, lateral_speed_mps=walk),),
        )
        for i, (ahead, walk) in enumerate([(12.0, 1.5), (10.0, 1.8), (9.0, 1.2), (8.0, 1.0)])
        for x in [0.5 + ahead + 8.0 * 8.5 / walk]
    ]
    dy, clear = _crossing(world, scenes, ticks=100)
    # never clearing while it walks towards the middle of the path
    assert not (clear & (dy < 0.0)).any()
    # clearing once it walks towards the far side of the corridor, before it has left it (half width 0.3 m)
    leaving = clear & (dy > 0.0) & (dy < 1.3 + 0.3)
    assert leaving.any(dim=1).all(), dy[~leaving.any(dim=1)]


def test_stationary_and_lead_targets_in_the_path_are_never_clearing() -> None:
    world = World(hazard_slots=0)
    tests = [t for t in euro_ncap_matrix() if t.name.startswith(("ccrs", "ccrm"))]
    _dy, clear = _crossing(world, tests, ticks=45)
    assert not clear.any(), [t.name for t, c in zip(tests, clear.any(1), strict=True) if c]
