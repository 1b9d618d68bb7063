"""Test helper: a small lake written from a real fleet run (telemetry + ground-truth tables), no Kafka.

Shared by the label, train and validate tests; cached per (vehicles, ticks, weather, seed) so a test session
drives the fleet once."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np

from fleetloop.edge_agent.telemetry import CollectingSink, vehicle_key
from fleetloop.pipelines.ground_truth import GROUND_TRUTH_TABLE
from fleetloop.pipelines.lake import Chunk, write_segments
from fleetloop.platform.bus.schemas import GROUND_TRUTH_FRAMES, TELEMETRY_FRAMES

T0_MS = 1_700_000_000_000


@functools.lru_cache(maxsize=4)
def _drive(vehicles: int, ticks: int, weather: str, seed: int) -> tuple[np.ndarray, dict, dict]:
    import torch

    from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
    from fleetloop.edge_agent.triggers import TriggerConfig

    torch.set_num_threads(1)
    sink = CollectingSink()
    # Upload every frame (random sample 100 %, budget 100 %): the label tests need whole horizons, which the
    # default 2 % budget fragments into single frames.
    trig = TriggerConfig(sample_rate=1.0, budget_fraction=1.0)
    cfg = FleetConfig(scenario="mixed", weather=weather, seed=seed, progress_reference=False, triggers=trig)
    runner = FleetRunner(cfg, list(range(vehicles)), None, None, sink)
    runner.run(ticks)
    up = sink.frames()
    assert up is not None and up.ground_truth is not None
    return up.vehicle_ids, dict(up.telemetry), dict(up.ground_truth)


def write_fleet_lake(
    state_dir: Path, vehicles: int = 24, ticks: int = 200, weather: str = "fog", seed: int = 3, segments: int = 2
) -> int:
    """Drive a fallback-only fleet, write its uploads as ``segments`` telemetry segments plus ground truth;
    returns the number of telemetry frames."""
    vids, tel, gt = _drive(vehicles, ticks, weather, seed)
    for table, schema, cols in ((None, TELEMETRY_FRAMES, tel), (GROUND_TRUTH_TABLE, GROUND_TRUTH_FRAMES, gt)):
        chunks = []
        for off, v in enumerate(np.unique(vids)):
            rows = vids == v
            chunks.append(
                Chunk(vehicle_key(int(v)), {c.name: cols[c.name][rows] for c in schema.columns}, "t", 0, off, T0_MS)
            )
        groups = [chunks] if table else [chunks[i::segments] for i in range(segments)]
        for g in groups:
            write_segments(state_dir, table or "telemetry", schema, g)
    return len(vids)


def copy_lake(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
