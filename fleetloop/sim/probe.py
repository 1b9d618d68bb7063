"""Measure the sensor models: how often each sensor detects an object of a kind at a range in a weather.

Used by ``benchmarks/sensor_table.py`` (the table in docs/sensors.md) and by the tests, so the documented numbers
and the tested behaviour come from the same code. A detection is:

- camera: the brightest cell the object covers exceeds ``CAMERA_DETECT_THRESHOLD``;
- lidar: a beam returns within ``LIDAR_MATCH_M`` of the object's true range;
- radar: a valid target lies within ``RADAR_MATCH_M`` of its true range.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fleetloop.sim.scenarios import ActorSpec, ScenarioSpec
from fleetloop.sim.sensors import CAMERA_COLS, CAMERA_ROW_EDGES_M, CAMERA_ROWS, LIDAR_MAX_RANGE_M, observe
from fleetloop.sim.state import World
from fleetloop.sim.world import init_state

__all__ = ["CAMERA_DETECT_THRESHOLD", "LIDAR_MATCH_M", "RADAR_MATCH_M", "detection_probability"]

CAMERA_DETECT_THRESHOLD = 0.25  # [-] apparent contrast
LIDAR_MATCH_M = 1.5  # [m]
RADAR_MATCH_M = 2.0  # [m]


def detection_probability(
    world: World, kind: str, ranges_m: Sequence[float], draws: int = 200, seed: int = 0, ticks: int = 2
) -> dict[str, list[float]]:
    """Per sensor, the fraction of (vehicle, tick) draws in which a ``kind`` object straight ahead in the ego's
    lane, ``ranges_m`` away (near face), is detected; the ego stands still so the range holds."""
    n = len(ranges_m)
    ids = list(range(n * draws))
    length = ActorSpec(kind=kind).size_m[0]
    scen = [
        ScenarioSpec("probe", 0.0, 0.0, 1, (ActorSpec(kind=kind, x_m=r + length, lane=1),))
        for r in ranges_m
        for _ in range(draws)
    ]
    state = init_state(world, scen, ids, seed)
    true_r = torch.tensor([r for r in ranges_m for _ in range(draws)], dtype=torch.float32)
    edges = torch.tensor(CAMERA_ROW_EDGES_M)
    row = (torch.bucketize(true_r, edges, right=True) - 1).clamp(0, CAMERA_ROWS - 1)
    hits = {"camera": torch.zeros(n * draws), "lidar": torch.zeros(n * draws), "radar": torch.zeros(n * draws)}
    for t in range(ticks):
        obs = observe(world, state.replace(tick=t))
        mid = CAMERA_COLS // 2
        cells = obs.camera[torch.arange(n * draws), row][:, mid - 2 : mid + 2]
        cam_ok = (true_r < CAMERA_ROW_EDGES_M[-1]) & (cells.max(-1).values > CAMERA_DETECT_THRESHOLD)
        hits["camera"] += cam_ok.float()
        lidar_ok = ((obs.lidar_range_m - true_r.unsqueeze(-1)).abs() < LIDAR_MATCH_M).any(-1)
        hits["lidar"] += (lidar_ok & (true_r < LIDAR_MAX_RANGE_M - LIDAR_MATCH_M)).float()
        radar = obs.radar_valid & ((obs.radar_range_m - true_r.unsqueeze(-1)).abs() < RADAR_MATCH_M)
        hits["radar"] += radar.any(-1).float()
    return {name: (h / ticks).view(n, draws).mean(-1).tolist() for name, h in hits.items()}
