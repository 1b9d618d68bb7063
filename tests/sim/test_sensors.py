"""Sensors: fog shortens camera and lidar range, night darkens the camera, radar misses pedestrians more often,
and the vehicle's observation carries no weather."""

from __future__ import annotations

import dataclasses

import torch

from fleetloop.sim import World, draw_scenarios, init_state, observe, weather_preset
from fleetloop.sim.probe import detection_probability
from fleetloop.sim.sensors import CAMERA_COLS, CAMERA_ROWS, LIDAR_BEAMS, RADAR_TARGETS

RANGES_M = [5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 80.0, 100.0]


def detection_range_m(p: list[float]) -> float:
    """Farthest probed range still detected at least half of the time (0 if none)."""
    return max([r for r, q in zip(RANGES_M, p, strict=True) if q >= 0.5], default=0.0)


def probe(weather: str, kind: str = "stopped_vehicle") -> dict[str, list[float]]:
    return detection_probability(World(weather=weather_preset(weather)), kind, RANGES_M, draws=60)


def test_fog_measurably_shortens_camera_and_lidar_detection_range() -> None:
    clear, fog = probe("clear"), probe("fog")
    for sensor in ("camera", "lidar"):
        assert detection_range_m(clear[sensor]) >= 80.0
        assert 0.0 < detection_range_m(fog[sensor]) <= 30.0, (sensor, fog[sensor])
    # radar does not care about fog
    assert abs(sum(clear["radar"]) - sum(fog["radar"])) < 0.05 * len(RANGES_M)


def test_night_darkens_the_camera_but_not_lidar_or_radar() -> None:
    day, night = probe("clear", "pedestrian"), probe("night", "pedestrian")
    assert detection_range_m(night["camera"]) < detection_range_m(day["camera"])
    assert night["lidar"] == day["lidar"]


def test_radar_misses_pedestrians_more_often_than_vehicles() -> None:
    car, ped = probe("clear"), probe("clear", "pedestrian")
    assert sum(ped["radar"]) < 0.75 * sum(car["radar"])


def test_observation_shapes_and_no_weather_in_it() -> None:
    world = World(weather=weather_preset("fog"))
    ids = list(range(16))
    state = init_state(world, draw_scenarios("mixed", ids, 1), ids, seed=1)
    obs = observe(world, state)
    b = len(ids)
    assert obs.camera.shape == (b, CAMERA_ROWS, CAMERA_COLS) and CAMERA_ROWS * CAMERA_COLS <= 8 * 16
    assert obs.lidar_range_m.shape == (b, LIDAR_BEAMS) and LIDAR_BEAMS <= 32
    assert obs.radar_range_m.shape == obs.radar_valid.shape == (b, RADAR_TARGETS) and RADAR_TARGETS <= 8
    names = {f.name for f in dataclasses.fields(obs)}
    assert not any(w in n for n in names for w in ("visibility", "friction", "light", "rain", "weather"))
    # noise is keyed by tick: the same tick gives the same frame, the next tick another
    assert torch.equal(observe(world, state).camera, obs.camera)
    assert not torch.equal(observe(world, state.replace(tick=state.tick + 1)).camera, obs.camera)
