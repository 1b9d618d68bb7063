"""Where a federation's data lives: the vehicles' on-board buffers, persisted by the fleet run.

Layout: ``<buffer_dir>/<name>/`` holds one saved ``OnboardBuffer`` (its ``buffer.json`` header and generation
files), for one vehicle or for one shard's vehicles (``fleetloop sim run --buffer-seconds`` writes one per shard,
``edge_agent.buffer_store``). ``scan_buffers`` lists the usable vehicles; a directory that is missing its header,
is damaged, or was saved longer ago than ``max_age_s`` is skipped and its vehicles counted by reason, as is a
vehicle with too few frames to label, and a vehicle also held by a more recently saved directory (a run that split
the fleet differently saved it since: the older copy is superseded). ``vehicle_frames`` reads one vehicle's frames
in the layout the hindsight labeller takes (the buffer is opened read-only, memory-mapped).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fleetloop.edge_agent.buffer import HEADER, OnboardBuffer
from fleetloop.edge_agent.buffer_store import fleet_buffer_dir
from fleetloop.platform.errors import OnboardBufferError

__all__ = ["BufferScan", "VehicleBuffer", "buffer_dir", "scan_buffers", "vehicle_frames"]

MISSING = "missing"
STALE = "stale"
CORRUPT = "corrupt"
TOO_FEW_FRAMES = "too few frames"
SUPERSEDED = "superseded"


def buffer_dir(state_dir: Path) -> Path:
    """``<state_dir>/fleet/buffers``: where ``fleetloop sim run --buffer-seconds`` persists the vehicles' buffers."""
    return fleet_buffer_dir(state_dir)


@dataclass(frozen=True)
class VehicleBuffer:
    """One usable vehicle: its id, the buffer directory holding it, and its frames held."""

    vehicle_id: int
    path: Path
    frames: int


@dataclass
class BufferScan:
    """The usable vehicles (by id) and the skipped ones counted by reason."""

    vehicles: list[VehicleBuffer] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    """One line per skipped directory or vehicle, saying why."""


def scan_buffers(directory: Path, *, now_s: float, max_age_s: float | None = None, min_frames: int = 2) -> BufferScan:
    """Every usable vehicle in ``directory`` (see the module doc), sorted by id; ``now_s`` is the clock read once
    by the caller."""
    scan = BufferScan()
    d = Path(directory)
    if not d.is_dir():
        return scan
    found: dict[int, tuple[float, VehicleBuffer]] = {}  # vehicle id -> (saved at, its newest copy)
    for sub in sorted(p for p in d.iterdir() if p.is_dir()):
        header = sub / HEADER
        if not header.exists():
            scan.skipped[MISSING] += 1
            scan.problems.append(f"{sub.name}: no {HEADER} (never saved, or saving was interrupted)")
            continue
        if max_age_s is not None and now_s - header.stat().st_mtime > max_age_s:
            scan.skipped[STALE] += 1
            scan.problems.append(
                f"{sub.name}: saved {now_s - header.stat().st_mtime:.0f} s ago, over {max_age_s:.0f} s"
            )
            continue
        try:
            saved_s = header.stat().st_mtime
            buf = OnboardBuffer.open(sub)
            counts = buf.count()
        except (OnboardBufferError, OSError, ValueError, KeyError) as e:
            scan.skipped[CORRUPT] += 1
            scan.problems.append(f"{sub.name}: {e}")
            continue
        for vid, n in zip(buf.vehicle_ids.tolist(), counts.tolist(), strict=True):
            if n < min_frames:
                scan.skipped[TOO_FEW_FRAMES] += 1
                scan.problems.append(f"vehicle {vid}: {n} frames, fewer than {min_frames}")
                continue
            mine = (saved_s, VehicleBuffer(int(vid), sub, int(n)))
            older = found.get(int(vid))
            if older is not None:
                mine, older = (mine, older) if mine[0] >= older[0] else (older, mine)
                scan.skipped[SUPERSEDED] += 1
                scan.problems.append(f"vehicle {vid}: {older[1].path.name} superseded by {mine[1].path.name}")
            found[int(vid)] = mine
    scan.vehicles = [v for _, v in sorted(found.values(), key=lambda f: f[1].vehicle_id)]
    return scan


def vehicle_frames(path: Path, vehicle_id: int) -> dict[str, np.ndarray]:
    """The held frames of ``vehicle_id`` in the buffer at ``path``, oldest first (``OnboardBuffer.frames``)."""
    buf = OnboardBuffer.open(path)
    rows = np.flatnonzero(buf.vehicle_ids == vehicle_id)
    if len(rows) != 1:
        raise OnboardBufferError(f"vehicle {vehicle_id} is not in the buffer at {path}")
    return buf.frames(rows)
