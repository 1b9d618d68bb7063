"""Heartbeats: what each vehicle reports from its own sensors and counters, beat by beat."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fleetloop.edge_agent import heartbeat
from fleetloop.edge_agent.arbiter import REASON_CODES, REASON_NAMES
from fleetloop.edge_agent.fallback import NO_OBSTACLE_M
from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.heartbeat import (
    COUNTERS,
    FALLBACK_REASONS,
    Heartbeat,
    HeartbeatConfig,
    HeartbeatSignals,
    HeartbeatState,
    emit_heartbeats,
    heartbeat_step,
    signals_from_tick,
)
from fleetloop.edge_agent.policy import FusionPolicy, PolicyConfig
from fleetloop.platform.bus import FleetHealth, decode, encode
from fleetloop.platform.canary import policy, validate
from fleetloop.platform.errors import FleetConfigError

CFG = HeartbeatConfig()


def _signals(n: int = 1, **over: object) -> HeartbeatSignals:
    """Quiet driving at 20 m/s on a 25 m/s set speed in clear weather, nothing in the path; ``over`` replaces
    fields (plain numbers broadcast to [n])."""
    base: dict[str, object] = {
        "speed_mps": 20.0,
        "accel_mps2": 0.0,
        "desired_speed_mps": 25.0,
        "perceived_ttc_s": math.inf,
        "perceived_gap_m": NO_OBSTACLE_M,
        "perceived_need_mps2": 0.0,
        "impact": False,
        "fallback_started": False,
        "fallback_reason": 0,
        "on_fallback": False,
        "deadline_missed": False,
        "est_visibility_m": 2000.0,
        "est_light": 1.0,
        "est_friction": 0.9,
    }
    base.update(over)

    def t(v: object) -> torch.Tensor:
        if isinstance(v, torch.Tensor):
            return v
        if isinstance(v, bool):
            return torch.full((n,), v, dtype=torch.bool)
        if isinstance(v, int) and not isinstance(v, bool):
            return torch.full((n,), v, dtype=torch.int64)
        return torch.full((n,), float(v))  # type: ignore[arg-type]

    return HeartbeatSignals(**{k: t(v) for k, v in base.items()})


def _drive(ticks: list[HeartbeatSignals], state: HeartbeatState | None = None) -> HeartbeatState:
    st = state or HeartbeatState.init(int(ticks[0].speed_mps.shape[0]))
    for s in ticks:
        st = heartbeat_step(CFG, st, s)
    return st


def _beat(state: HeartbeatState, seq: int = 1) -> tuple[HeartbeatState, Heartbeat]:
    n = int(state.ticks.shape[0])
    new, beats = emit_heartbeats(CFG, state, [f"v{i}" for i in range(n)], [3] * n, ["a"] * n, seq)
    return new, beats[0]


def test_distance_and_plan_come_from_odometry_and_set_speed() -> None:
    _, hb = _beat(_drive([_signals()] * 50))
    assert hb.period_s == pytest.approx(5.0)
    assert hb.distance_m == pytest.approx(100.0, rel=1e-5)
    assert hb.planned_distance_m == pytest.approx(125.0, rel=1e-5)
    assert (hb.condition_class, hb.scenario_class) == ("clear", "highway_open")
    assert sum(getattr(hb, c) for c in COUNTERS) == 0


def test_a_near_miss_counts_once_when_the_perceived_conflict_ends_without_impact() -> None:
    close = _signals(perceived_ttc_s=0.6, perceived_gap_m=8.0)
    _, hb = _beat(_drive([_signals()] * 3 + [close] * 5 + [_signals()] * 3))
    assert hb.near_misses == 1 and hb.collisions == 0
    assert hb.scenario_class == "highway_traffic"


def test_a_conflict_that_ends_in_an_impact_is_a_collision_not_a_near_miss() -> None:
    close = _signals(perceived_ttc_s=0.3, perceived_gap_m=2.0)
    hit = _signals(perceived_ttc_s=0.1, perceived_gap_m=0.2, impact=True)
    _, hb = _beat(_drive([_signals()] * 2 + [close] * 3 + [hit] + [_signals()] * 3))
    assert (hb.collisions, hb.near_misses) == (1, 0)


def test_hard_braking_with_odometry_noise_around_the_threshold_counts_one_episode() -> None:
    decels = [0.0, 4.3, 3.8, 4.2, 3.9, 4.4, 1.0, 0.0, 4.5, 0.0]  # one noisy episode, then a second one
    ticks = [_signals(accel_mps2=-d, perceived_ttc_s=2.0, perceived_gap_m=30.0) for d in decels]
    _, hb = _beat(_drive(ticks))
    assert hb.hard_brakes == 2
    assert hb.phantom_brakes == 0  # the vehicle perceived a reason (TTC 2 s)


def test_braking_with_nothing_perceived_is_phantom_braking() -> None:
    ticks = [_signals()] * 3 + [_signals(accel_mps2=-3.5)] * 4 + [_signals()] * 2
    _, hb = _beat(_drive(ticks))
    assert (hb.phantom_brakes, hb.hard_brakes) == (1, 0)


def test_jerk_counts_while_moving_not_when_the_car_comes_to_rest() -> None:
    moving = [_signals(accel_mps2=0.0), _signals(accel_mps2=-2.0), _signals(accel_mps2=0.5)]
    _, hb = _beat(_drive(moving))
    assert hb.harsh_jerks == 1  # 20 m/s³, then 25 m/s³: one episode
    calm_between = [*moving, _signals(accel_mps2=0.5), _signals(accel_mps2=-1.5)]
    _, hb = _beat(_drive(calm_between))
    assert hb.harsh_jerks == 2  # 0 m/s³ ends the first episode, 20 m/s³ starts a second
    stopping = [_signals(speed_mps=0.3, accel_mps2=-3.0), _signals(speed_mps=0.0, accel_mps2=0.0)]
    _, hb = _beat(_drive(stopping))
    assert hb.harsh_jerks == 0


def test_a_long_jerky_manoeuvre_counts_once() -> None:
    # 3 s of a stop-and-go shudder: the acceleration alternates every tick (jerk 30-40 m/s³, sometimes only
    # 7 m/s³: above the release), with odometry noise; then calm driving.
    gen = torch.Generator().manual_seed(0)
    accels = [0.0] + [(-2.0 if i % 2 else 1.5) + 0.1 * float(torch.randn(1, generator=gen)) for i in range(30)]
    accels[10] = accels[9] + 0.7  # a 7 m/s³ step inside the manoeuvre
    accels += [accels[-1] * 0.5, 0.0, 0.0, 0.0]
    _, hb = _beat(_drive([_signals(accel_mps2=a) for a in accels]))
    assert hb.harsh_jerks == 1


def test_fallback_activations_are_counted_by_reason_and_deadline_misses_per_tick() -> None:
    ticks = [
        _signals(fallback_started=True, fallback_reason=REASON_CODES["low_confidence"], on_fallback=True),
        _signals(on_fallback=True, fallback_reason=REASON_CODES["low_confidence"]),
        _signals(deadline_missed=True),
        _signals(fallback_started=True, fallback_reason=REASON_CODES["ttc_critical"], on_fallback=True),
    ]
    _, hb = _beat(_drive(ticks))
    assert (hb.fallback_low_confidence, hb.fallback_ttc_critical, hb.deadline_misses) == (1, 1, 1)
    assert hb.fallback_active
    assert [f"fallback_{r}" for r in REASON_NAMES[1:]] == [f"fallback_{r}" for r in FALLBACK_REASONS]


def test_the_condition_class_is_the_vehicles_own_estimate_of_most_of_the_beat() -> None:
    fog = _signals(est_visibility_m=90.0)
    night = _signals(est_light=0.2)
    _, hb = _beat(_drive([fog] * 6 + [night] * 4))
    assert hb.condition_class == "fog"
    assert hb.est_visibility_m == pytest.approx((6 * 90 + 4 * 2000) / 10)
    _, hb = _beat(_drive([_signals(est_friction=0.5, desired_speed_mps=12.0)] * 5))
    assert (hb.condition_class, hb.scenario_class) == ("wet", "urban_open")


def test_a_beat_restarts_the_sums_but_an_episode_spanning_beats_counts_once() -> None:
    close = _signals(perceived_ttc_s=0.6, perceived_gap_m=8.0)
    state, first = _beat(_drive([_signals()] * 2 + [close] * 2))
    assert first.near_misses == 0  # still in the episode
    state, second = _beat(_drive([close, _signals(), _signals()], state), seq=2)
    assert second.near_misses == 1 and second.beat_seq == 2
    assert second.period_s == pytest.approx(0.3)


def test_a_vehicle_without_ticks_sends_no_heartbeat_and_the_arguments_are_checked() -> None:
    _, beats = emit_heartbeats(CFG, HeartbeatState.init(2), ["a", "b"], [1, 1], ["a", "a"], 0)
    assert beats == []
    with pytest.raises(FleetConfigError, match="one of each per vehicle"):
        emit_heartbeats(CFG, HeartbeatState.init(2), ["a"], [1, 1], ["a", "a"], 0)
    with pytest.raises(FleetConfigError, match="dt_s"):
        HeartbeatConfig(dt_s=0.0)


def test_a_heartbeat_is_a_fleet_health_1_1_event_that_a_1_0_reader_still_reads() -> None:
    _, hb = _beat(_drive([_signals(accel_mps2=-3.5)] * 3))
    event = FleetHealth(source="sim", **hb.event_fields())  # type: ignore[arg-type]
    back = decode(encode(event))
    assert back == event
    health_fields = {f.name for f in dataclasses.fields(FleetHealth)}
    assert {f.name for f in dataclasses.fields(Heartbeat)} <= health_fields


def test_a_small_fleet_reports_what_its_summary_counts_from_its_own_sensors() -> None:
    torch.manual_seed(0)
    config = FleetConfig(scenario="mixed", weather="mixed", seed=5, progress_reference=False)
    runner = FleetRunner(config, range(16), {"7": FusionPolicy(PolicyConfig())}, "7")
    cfg = HeartbeatConfig(dt_s=runner.world.dt_s)
    state = HeartbeatState.init(16)
    beats: list[Heartbeat] = []
    for k in range(120):
        runner.step()
        assert runner.last_tick is not None and runner.last_events is not None
        sig = signals_from_tick(runner.last_tick, runner.last_events.collision, runner.state.ego_v0_mps)
        state = heartbeat_step(cfg, state, sig)
        if (k + 1) % 40 == 0:
            state, out = emit_heartbeats(cfg, state, [str(i) for i in range(16)], [7] * 16, ["b"] * 16, k // 40)
            beats += out
    assert len(beats) == 3 * 16
    total = runner.summary().totals()
    km_odometry = sum(b.distance_m for b in beats) / 1000.0
    assert km_odometry == pytest.approx(total["distance_m"] / 1000.0, rel=0.01)
    assert sum(b.collisions for b in beats) == total["collisions"]
    for reason in FALLBACK_REASONS:  # the arbiter's own decisions: exact
        assert sum(getattr(b, f"fallback_{reason}") for b in beats) == total[f"activations.{reason}"]
    assert sum(b.deadline_misses for b in beats) == total["deadline_misses"]
    assert all(b.planned_distance_m > 0 and b.model_version == 7 and b.model_slot == "b" for b in beats)


def test_the_controller_knows_the_classes_and_reasons_the_vehicles_report() -> None:
    """The platform may not import the vehicle's code: its copies of the classes and reasons must agree."""
    assert heartbeat.CONDITION_CLASSES == policy.CONDITION_CLASSES
    assert heartbeat.SCENARIO_CLASSES == policy.SCENARIO_CLASSES
    health = {f.name for f in dataclasses.fields(FleetHealth)}
    assert {f"fallback_{r}" for r in FALLBACK_REASONS} <= health
    judged = set(FALLBACK_REASONS) - {"no_model", "model_switch"}
    assert sum(
        validate.fallback_activations(FleetHealth(vehicle_id="v", model_version=1, **{f"fallback_{r}": 1}))
        for r in judged
    ) == len(judged)
    rollout_caused = FleetHealth(vehicle_id="v", model_version=1, fallback_no_model=1, fallback_model_switch=1)
    assert validate.fallback_activations(rollout_caused) == 0
