"""Test helper: a telemetry lake of good segments plus one that repeats a tick, written through the lake's writer.

The bad segment passes the lake (it is schema-valid) but no label run can use it: one vehicle has two frames
at tick 0 under different sequence numbers, so collect's (vehicle, seq) dedup would have let it through too.
The good segments lend each other frames: vehicle ``veh-b``'s clip starts in one and ends in the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleetloop.pipelines.lake import Chunk, write_segments
from fleetloop.platform.bus.schemas import TELEMETRY_FRAMES

T0_MS = 1_700_000_000_000
SPEED_MPS = 20.0
TICK_S = 0.1


@dataclass(frozen=True)
class BadLake:
    """Segment ids of the lake :func:`write_bad_lake` wrote."""

    good: tuple[str, ...]
    bad: str
    frames_bad: int


def clip_chunk(vehicle: str, ticks: list[int], gap0_m: float | None = None, offset: int = 0) -> Chunk:
    """Frames of one vehicle driving at 20 m/s (seq = position in the clip + ``offset``); with ``gap0_m`` a
    stationary target ahead that radar and lidar both see."""
    n = len(ticks)
    cols = TELEMETRY_FRAMES.zeros(n)
    t = np.asarray(ticks)
    cols["tick"] = t.astype(np.uint32)
    cols["seq"] = (np.arange(n) + offset).astype(np.uint32)
    cols["ego_speed_mps"][:] = SPEED_MPS
    cols["lidar_range_m"][:] = np.inf
    if gap0_m is not None:
        cols["radar_range_m"][:, 0] = gap0_m - SPEED_MPS * TICK_S * (t - t[0])
        cols["radar_range_rate_mps"][:, 0] = -SPEED_MPS
        cols["radar_valid_bits"][:] = 1
        cols["lidar_range_m"][:] = cols["radar_range_m"][:, :1]
    return Chunk(vehicle, cols, "fleetloop.telemetry", 0, offset, T0_MS)


def write_good_segments(state_dir: Path) -> tuple[str, ...]:
    """Two good segments; ``veh-b``'s ticks 0-29 are in the first, 30-59 in the second."""
    first = write_segments(
        state_dir,
        "telemetry",
        TELEMETRY_FRAMES,
        [clip_chunk("veh-a", list(range(60))), clip_chunk("veh-b", list(range(30)), gap0_m=80.0)],
    )
    second = write_segments(
        state_dir, "telemetry", TELEMETRY_FRAMES, [clip_chunk("veh-b", list(range(30, 60)), gap0_m=80.0, offset=30)]
    )
    return tuple(m.segment_id for m in (*first, *second))


def write_bad_segment(state_dir: Path) -> tuple[str, int]:
    """One segment whose vehicle ``veh-c`` has two frames at tick 0 (seqs 0 and 1); returns (id, frames)."""
    (m,) = write_segments(state_dir, "telemetry", TELEMETRY_FRAMES, [clip_chunk("veh-c", [0, *range(40)])])
    return m.segment_id, m.rows


def write_bad_lake(state_dir: Path) -> BadLake:
    """The two good segments, then the bad one."""
    good = write_good_segments(state_dir)
    bad, frames = write_bad_segment(state_dir)
    return BadLake(good, bad, frames)
