"""ADR 0113: the fallback's perception of a car cutting in, of a braking lead, and of creeping up to a stopped car."""

from __future__ import annotations

import math

import torch

from fleetloop.edge_agent.fallback import (
    STAGE_PARTIAL,
    STAGE_WARNING,
    FallbackConfig,
    FallbackState,
    fallback_control,
    perceive_in_path,
)
from fleetloop.sim import World, init_state, observe, step
from fleetloop.sim.scenarios import ActorSpec, ScenarioSpec
from fleetloop.sim.sensors import LIDAR_BEAMS, LIDAR_MAX_RANGE_M

_HALF_FOV = math.radians(15.0)


def _lidar_on(lat_lo: float, lat_hi: float, range_m: float) -> torch.Tensor:
    """A [1, 32] scan with returns at ``range_m`` on the beams whose direction falls between the lateral positions
    ``lat_lo`` and ``lat_hi`` (+ left) at that range."""
    theta = torch.linspace(_HALF_FOV, -_HALF_FOV, LIDAR_BEAMS)
    lat = range_m * torch.tan(theta)
    scan = torch.full((1, LIDAR_BEAMS), LIDAR_MAX_RANGE_M)
    hit = (lat >= lat_lo) & (lat <= lat_hi)
    return torch.where(hit, range_m / torch.cos(theta), scan)


def _radar(targets: list[tuple[float, float, float]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Radar arrays [1, 8] from (longitudinal range [m], lateral centre [m], range rate [m/s]) targets."""
    rng = torch.zeros(1, 8)
    rate = torch.zeros(1, 8)
    az = torch.zeros(1, 8)
    valid = torch.zeros(1, 8, dtype=torch.bool)
    for i, (lon, lat, rr) in enumerate(targets):
        rng[0, i], az[0, i] = math.hypot(lon, lat), math.atan2(lat, lon)
        rate[0, i], valid[0, i] = rr * math.cos(az[0, i]), True
    return rng, rate, az, valid


def test_a_lidar_only_obstacle_that_is_the_near_side_of_a_car_beside_the_path_moves_at_its_radar_speed() -> None:
    ego = torch.tensor([25.0])
    # A car cutting in from the left, 15 m ahead, 3 m/s slower: radar has its centre 1.7 m left (outside the 1.3 m
    # half corridor), the lidar its near side from 0.8 m left outwards (inside).
    lidar = _lidar_on(0.8, 2.6, 15.0)
    p = perceive_in_path(lidar, *_radar([(15.0, 1.7, -3.0)]), ego)
    assert abs(float(p.gap_m[0]) - 15.0) < 0.5
    assert abs(float(p.obstacle_speed_mps[0]) - 22.0) < 0.3 and bool(p.radar_seen[0])
    assert abs(float(p.ttc_s[0]) - 5.0) < 0.3  # taken as standing it would be 0.6 s: full braking
    # The same car cutting in from the right.
    p = perceive_in_path(_lidar_on(-2.6, -0.8, 15.0), *_radar([(15.0, -1.7, -3.0)]), ego)
    assert abs(float(p.obstacle_speed_mps[0]) - 22.0) < 0.3
    # Not explained by that car: a target on the other side, a target whose near edge is not where the lidar sees
    # one (a car in the next lane beside a stationary object in the path), a target at another range, a stationary
    # target; the obstacle then stands (the cautious reading).
    for lidar_, radar in (
        (_lidar_on(0.8, 2.6, 15.0), [(15.0, -1.7, -3.0)]),
        (_lidar_on(-0.5, 0.5, 15.0), [(15.0, 2.6, -3.0)]),
        (_lidar_on(0.8, 2.6, 15.0), [(25.0, 1.7, -3.0)]),
        (_lidar_on(0.8, 2.6, 15.0), [(15.0, 1.7, -25.0)]),
    ):
        p = perceive_in_path(lidar_, *_radar(radar), ego)
        assert float(p.gap_m[0]) < 16.0 and float(p.obstacle_speed_mps[0]) == 0.0


def _cut_in(from_lane: int, gap_enter_m: float, closing_mps: float, lat_speed_mps: float) -> ScenarioSpec:
    """The ``cut_in`` family's scene (``fleetloop.sim.scenarios``): the car enters the ego's corridor
    ``gap_enter_m`` ahead, ``closing_mps`` slower than the ego's 25 m/s."""
    move_at = 1.0
    enter_s = move_at + 1.7 / lat_speed_mps
    car = ActorSpec(
        x_m=4.5 + gap_enter_m + closing_mps * enter_s,
        lane=from_lane,
        speed_mps=25.0 - closing_mps,
        move_at_s=move_at,
        to_lane=1,
        lateral_speed_mps=lat_speed_mps,
    )
    return ScenarioSpec("cut_in", 25.0, 25.0, 1, (car,))


def test_a_car_cutting_in_at_a_small_speed_difference_starts_no_emergency_braking() -> None:
    world = World(hazard_slots=0)
    # they enter the corridor 2.1-2.4 s into the scene, 8-20 m ahead, 1-3 m/s slower (about 4-12 s of TTC)
    scenes = [
        _cut_in(0, 12.0, 2.0, 1.2),
        _cut_in(2, 12.0, 3.0, 1.4),
        _cut_in(0, 20.0, 3.0, 1.6),
        _cut_in(2, 20.0, 2.0, 1.2),
        _cut_in(0, 8.0, 1.0, 1.4),
    ]
    state = init_state(world, scenes, list(range(len(scenes))), seed=3)
    cfg = FallbackConfig.for_world(world)
    fb = FallbackState.init(state.batch)
    seen = torch.zeros(state.batch, dtype=torch.bool)
    for _ in range(36):  # until about 1.2 s after they entered
        fb, out = fallback_control(cfg, fb, observe(world, state), desired_speed_mps=state.ego_v0_mps)
        # taken as standing (a lidar-only obstacle) they would give TTCs of 0.3-0.8 s: full braking
        assert (out.stage < STAGE_PARTIAL).all(), out.stage.tolist()
        seen |= out.gap_m < 25.0
        # constant speed: the sensors alone decide
        state = step(world, state, torch.zeros(state.batch), world.dt_s)
    assert seen.all() and not state.collided.any()


def test_the_track_sees_a_lead_brake_and_the_need_it_reports_counts_it() -> None:
    world = World(hazard_slots=0)
    lead = ActorSpec(x_m=50.0 + 4.5, lane=1, speed_mps=25.0, brake_at_s=1.0, brake_decel_mps2=6.0)
    state = init_state(world, [ScenarioSpec("lb", 25.0, 25.0, 1, (lead,))], [0], seed=3)
    cfg = FallbackConfig.for_world(world)
    fb = FallbackState.init(1)
    accel, need = [], []
    for _ in range(17):
        fb, out = fallback_control(cfg, fb, observe(world, state))
        accel.append(float(fb.track.accel_mps2[0]))
        assert out.need_mps2 is not None
        need.append(float(out.need_mps2[0]))
        state = step(world, state, torch.zeros(1), world.dt_s)
    # before the lead brakes (ticks 0-9): no braking read into radar noise, and a constant-speed need of 0
    assert all(abs(a) < 1.0 for a in accel[2:10]) and max(need[:10]) < 0.1
    # 0.6 s into its 6 m/s² braking the track reads it, and the need counts the lead's stop (about 3 m/s²; taken at
    # constant speed, 3.6 m/s slower 47 m ahead, it would be 0.15 m/s²)
    assert accel[16] < -3.0
    assert need[16] > 2.0


def test_creeping_up_to_a_stopped_car_inside_the_stop_margin_is_no_emergency() -> None:
    world = World(hazard_slots=0)
    car = ActorSpec(kind="stopped_vehicle", x_m=1.7 + 4.5, lane=1)
    state = init_state(world, [ScenarioSpec("creep", 0.8, 0.8, 1, (car,))], [0], seed=3)
    obs = observe(world, state)
    for min_closing, partial in ((FallbackConfig().need_min_closing_mps, False), (0.0, True)):
        cfg = FallbackConfig.for_world(world, need_min_closing_mps=min_closing)
        fb = FallbackState.init(1)
        for _ in range(2):  # confirmed on the second frame
            fb, out = fallback_control(cfg, fb, obs)
        # 0.8 m/s, 1.7 m, inside the 2 m stop margin: TTC 2.1 s, a warning; keeping 2 m would need 6 m/s² (the
        # needed-deceleration criterion alone: full braking)
        assert (int(out.stage[0]) >= STAGE_PARTIAL) == partial and int(out.stage[0]) >= STAGE_WARNING
        assert float(out.accel_mps2[0]) < -1.0  # following control still stops it
