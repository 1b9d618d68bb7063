"""Where a fleet run keeps its vehicles' on-board buffers on disk, and how big a ring of a given length is.

Layout (what ``fleetloop.federation.buffers`` reads)::

    <state_dir>/fleet/buffers/vehicles-<first id>-<last id>/   one saved OnboardBuffer per shard (its ids)

Each shard saves its own buffer from its own process (a local shard process, a Ray actor, or the driver for one
shard): every time its ring has turned over once and when it closes, with the buffer's atomic generations, so a
reader always finds one complete generation. A run's driver then removes the folders an earlier run left with
another split of the fleet (``prune_buffers``), so every vehicle id is held once.

Plain paths and numbers; no I/O beyond ``prune_buffers``; imports nothing heavy (the CLI imports it).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from fleetloop.platform.errors import FleetConfigError

__all__ = [
    "FRAME_BYTES",
    "fleet_buffer_dir",
    "prune_buffers",
    "ring_bytes",
    "ring_frames",
    "shard_buffer_name",
]

FRAME_BYTES = 281
"""Bytes one frame takes in a ring, in memory and in the saved ``.npy`` files: the sum of ``buffer.FRAME_COLUMNS``
(tested), spelled out so that the CLI can state it without importing torch."""
NAME_PREFIX = "vehicles-"


def fleet_buffer_dir(state_dir: str | Path) -> Path:
    """``<state_dir>/fleet/buffers``: where ``fleetloop sim run --buffer-seconds`` keeps the vehicles' buffers."""
    return Path(state_dir) / "fleet" / "buffers"


def shard_buffer_name(vehicle_ids: Sequence[int]) -> str:
    """The folder of one shard's buffer: ``vehicles-<first>-<last>`` (zero-padded, so folders sort by id)."""
    ids = [int(i) for i in vehicle_ids]
    if not ids:
        raise FleetConfigError("a shard's buffer needs at least one vehicle id")
    return f"{NAME_PREFIX}{min(ids):07d}-{max(ids):07d}"


def ring_frames(buffer_seconds: float, tick_s: float) -> int:
    """Frames of a ring holding ``buffer_seconds`` of driving at one frame per ``tick_s`` (at least one)."""
    if not (math.isfinite(buffer_seconds) and buffer_seconds > 0 and tick_s > 0):
        raise FleetConfigError(f"buffer seconds must be a positive number, got {buffer_seconds}")
    return max(1, round(buffer_seconds / tick_s))


def ring_bytes(vehicles: int, frames: int) -> int:
    """Memory (and disk) of ``vehicles`` rings of ``frames`` frames [bytes]."""
    return vehicles * frames * FRAME_BYTES


def prune_buffers(directory: str | Path, keep: Iterable[str]) -> list[str]:
    """Remove the shard buffer folders in ``directory`` other than ``keep`` (an earlier run's split of the fleet);
    returns the names removed. Only folders named like ``shard_buffer_name`` are touched."""
    d = Path(directory)
    if not d.is_dir():
        return []
    kept = set(keep)
    removed = []
    for sub in sorted(p for p in d.iterdir() if p.is_dir()):
        if sub.name in kept or not sub.name.startswith(NAME_PREFIX):
            continue
        shutil.rmtree(sub, ignore_errors=True)
        removed.append(sub.name)
    return removed
