"""Fault parsing (clear errors) and fault application (per vehicle, batch-independent)."""

from __future__ import annotations

import pytest
import torch

from fleetloop.edge_agent.faults import (
    FaultError,
    FaultSpec,
    apply_sensor_dropout,
    fault_effects,
    parse_fault,
    parse_faults,
)
from fleetloop.sim import World, init_state, observe
from fleetloop.sim.scenarios import ActorSpec, ScenarioSpec


def test_parse_cli_strings() -> None:
    assert parse_fault("latency_spike:p=0.05,ms=80") == FaultSpec("latency_spike", p=0.05, ms=80.0)
    assert parse_fault("nan_weights") == FaultSpec("nan_weights")
    assert parse_fault("crash:ids=3+7,start=10,end=20") == FaultSpec("crash", ids=(3, 7), start_tick=10, end_tick=20)
    spec = parse_fault("sensor_dropout:sensor=camera,fraction=0.2")
    assert spec.sensor == "camera" and spec.fraction == 0.2
    assert len(parse_faults(["crash;nan_weights", "sensor_dropout:sensor=radar"])) == 3


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("meteor", "valid faults: latency_spike, nan_weights, crash, sensor_dropout"),
        ("sensor_dropout:sensor=sonar", "camera, lidar, radar"),
        ("latency_spike:p=2,ms=80", "p must be within 0..1"),
        ("latency_spike:p=0.1", "ms > 0"),
        ("crash:speed=3", "valid parameters: fraction, ids, start, end"),
        ("crash:fraction=abc", "fraction must be a number"),
        ("crash:start=5,end=5", "start < end"),
    ],
)
def test_bad_fault_strings_say_what_is_valid(text: str, says: str) -> None:
    with pytest.raises(FaultError, match=says):
        parse_fault(text)


def test_fraction_and_spikes_are_per_vehicle_and_batch_independent() -> None:
    faults = parse_faults(["sensor_dropout:sensor=lidar,fraction=0.3", "latency_spike:p=0.1,ms=50"])
    ids = torch.arange(4000)
    whole = fault_effects(faults, ids, tick=7, seed=1)
    halves = [fault_effects(faults, part, tick=7, seed=1) for part in (ids[1::2], ids[::2])]
    assert torch.equal(whole.drop_lidar[1::2], halves[0].drop_lidar)
    assert torch.equal(whole.latency_spike_ms[::2], halves[1].latency_spike_ms)
    assert abs(whole.drop_lidar.float().mean().item() - 0.3) < 0.03
    assert abs((whole.latency_spike_ms > 0).float().mean().item() - 0.1) < 0.02
    # The same vehicles stay dropped; spikes move from tick to tick.
    later = fault_effects(faults, ids, tick=8, seed=1)
    assert torch.equal(later.drop_lidar, whole.drop_lidar)
    assert not torch.equal(later.latency_spike_ms, whole.latency_spike_ms)


def test_window_and_ids() -> None:
    faults = parse_faults("crash:ids=2,start=5,end=7")
    ids = torch.arange(4)
    hits = [fault_effects(faults, ids, t, seed=0).crash.tolist() for t in range(4, 8)]
    assert hits == [[False] * 4, [False, False, True, False], [False, False, True, False], [False] * 4]


def test_dropout_blanks_the_sensor() -> None:
    world = World()
    lead = ActorSpec(kind="vehicle", x_m=30.0, lane=1, speed_mps=20.0)
    state = init_state(world, [ScenarioSpec("f", 20.0, 20.0, 1, (lead,))] * 3, [0, 1, 2], seed=0)
    obs = observe(world, state)
    faults = parse_faults(["sensor_dropout:sensor=camera,ids=0", "sensor_dropout:sensor=radar,ids=1+2"])
    eff = fault_effects(faults, state.vehicle_ids, 0, seed=0)
    out = apply_sensor_dropout(obs, eff)
    assert out.camera_valid.tolist() == [False, True, True] and float(out.camera[0].abs().sum()) == 0.0
    assert not out.radar_valid[1:].any() and out.radar_valid[0].any()
    assert eff.radar_ok.tolist() == [True, False, False] and eff.lidar_ok.all()
