"""The on-board buffer: a bounded ring of compact frames per vehicle, for one shard's vehicles, on disk on demand.

Everything a vehicle sees goes here (uploaded or not); the oldest frame is overwritten when a vehicle's ring is
full, and the overwrites are counted per vehicle. ``save(directory)`` persists the rings as numpy ``.npy`` files
plus a JSON header, atomically: new files carry a fresh generation number, the header naming them replaces the old
one with ``os.replace``, then the old generation is deleted, so a reader (a federated client in another process)
always sees one complete generation. ``OnboardBuffer.open(directory)`` reopens it (memory-mapped, read-only by
default).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["FRAME_COLUMNS", "BufferError", "OnboardBuffer", "pack_camera", "unpack_camera"]

# name -> (dtype, per-frame shape). Sensor inputs as compact as telemetry, plus what the labeller needs.
FRAME_COLUMNS: dict[str, tuple[str, tuple[int, ...]]] = {
    "tick": ("<u4", ()),
    "seq": ("<u4", ()),
    "model_version": ("<u2", ()),
    "camera": ("<u1", (8, 16)),
    "camera_valid": ("|b1", ()),
    "lidar_range_m": ("<f2", (32,)),
    "radar_range_m": ("<f2", (8,)),
    "radar_range_rate_mps": ("<f2", (8,)),
    "radar_azimuth_rad": ("<f2", (8,)),
    "radar_valid": ("|b1", (8,)),
    "ego_speed_mps": ("<f4", ()),
    "ego_accel_mps2": ("<f4", ()),
    "command_accel_mps2": ("<f4", ()),
    "driver": ("<u1", ()),
    "fallback_reason": ("<u1", ()),
    "fallback_stage": ("<u1", ()),
    "hazard_prob": ("<f2", ()),
    "uncertainty": ("<f2", ()),
    "trigger_bits": ("<u2", ()),
    "uploaded": ("|b1", ()),
}
HEADER = "buffer.json"
FORMAT_VERSION = 1
CAMERA_SCALE = 255.0  # camera contrast 0..1 -> 0..255 (as in telemetry)


class BufferError(ValueError):
    """Frames that do not fit the buffer, or a buffer directory that is missing or malformed."""


def pack_camera(camera: np.ndarray) -> np.ndarray:
    """Camera contrast (float, about 0..1) -> uint8 0..255."""
    return np.clip(np.rint(np.asarray(camera, dtype=np.float32) * CAMERA_SCALE), 0, 255).astype(np.uint8)


def unpack_camera(camera: np.ndarray) -> np.ndarray:
    """uint8 camera -> float32 contrast."""
    return np.asarray(camera, dtype=np.float32) / CAMERA_SCALE


class OnboardBuffer:
    """Rings of ``capacity`` frames for ``vehicle_ids`` (row i belongs to ``vehicle_ids[i]``).

    Memory: about 400 bytes per frame; 10,000 vehicles x 256 frames is about 1 GB, so size ``capacity`` per shard.
    """

    def __init__(self, vehicle_ids: np.ndarray, capacity: int) -> None:
        ids = np.asarray(vehicle_ids, dtype=np.int64).reshape(-1)
        if capacity < 1:
            raise BufferError(f"capacity must be >= 1 frame, got {capacity}")
        if len(np.unique(ids)) != len(ids):
            raise BufferError("vehicle ids must be unique")
        self.vehicle_ids = ids
        self.capacity = int(capacity)
        self.columns: dict[str, np.ndarray] = {
            name: np.zeros((len(ids), capacity, *shape), dtype=np.dtype(dt))
            for name, (dt, shape) in FRAME_COLUMNS.items()
        }
        self.written = np.zeros(len(ids), dtype=np.int64)  # frames ever written per vehicle
        self.overwritten = np.zeros(len(ids), dtype=np.int64)  # frames lost to the ring per vehicle
        self.read_only = False

    def append(self, frames: Mapping[str, np.ndarray], rows: np.ndarray | None = None) -> None:
        """Append one frame for each vehicle row in ``rows`` (default: all, in order); ``frames[c]`` has
        ``len(rows)`` entries for every column ``c`` of ``FRAME_COLUMNS``."""
        if self.read_only:
            raise BufferError("this buffer was opened read-only; open(..., writable=True) to append")
        r = np.arange(len(self.vehicle_ids)) if rows is None else np.asarray(rows, dtype=np.int64)
        missing = sorted(set(FRAME_COLUMNS) - set(frames))
        extra = sorted(set(frames) - set(FRAME_COLUMNS))
        if missing or extra:
            raise BufferError(f"frame columns missing {missing} / unknown {extra}; expected {sorted(FRAME_COLUMNS)}")
        if len(np.unique(r)) != len(r):
            raise BufferError("one frame per vehicle per append: rows must be unique")
        slot = self.written[r] % self.capacity
        for name, (_, shape) in FRAME_COLUMNS.items():
            value = np.asarray(frames[name])
            if value.shape != (len(r), *shape):
                raise BufferError(f"column {name}: expected shape {(len(r), *shape)}, got {value.shape}")
            self.columns[name][r, slot] = value
        self.overwritten[r] += self.written[r] >= self.capacity
        self.written[r] += 1

    def count(self) -> np.ndarray:
        """Frames held per vehicle [V]."""
        return np.minimum(self.written, self.capacity)

    def frames(self, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """All held frames of ``rows`` (default all) as flat columns ordered by (vehicle row, tick), with a
        ``vehicle_id`` column: the layout the hindsight labeller takes."""
        r = np.arange(len(self.vehicle_ids)) if rows is None else np.asarray(rows, dtype=np.int64)
        n = self.count()[r]
        # Oldest first: slot (written - n + k) % capacity for k < n.
        k = np.arange(self.capacity)
        slots = (self.written[r, None] - n[:, None] + k[None, :]) % self.capacity
        keep = k[None, :] < n[:, None]
        rr = np.broadcast_to(r[:, None], slots.shape)[keep]
        ss = slots[keep]
        out = {name: np.asarray(col[rr, ss]) for name, col in self.columns.items()}
        out["vehicle_id"] = self.vehicle_ids[rr]
        return out

    def save(self, directory: str | Path) -> Path:
        """Persist atomically into ``directory`` (created if missing); returns the header path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        old = _read_header(d) if (d / HEADER).exists() else None
        gen = (old["generation"] + 1) if old else 1
        arrays = {**self.columns, "vehicle_ids": self.vehicle_ids, "written": self.written}
        arrays["overwritten"] = self.overwritten
        files = {}
        for name, arr in arrays.items():
            fname = f"{name}.{gen}.npy"
            with open(d / fname, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr))
                fh.flush()
                os.fsync(fh.fileno())
            files[name] = fname
        header = {"format_version": FORMAT_VERSION, "generation": gen, "capacity": self.capacity, "files": files}
        tmp = d / f"{HEADER}.tmp"
        tmp.write_text(json.dumps(header, indent=1))
        os.replace(tmp, d / HEADER)
        if old:
            for fname in old["files"].values():
                (d / fname).unlink(missing_ok=True)
        return d / HEADER

    @classmethod
    def open(cls, directory: str | Path, writable: bool = False) -> OnboardBuffer:
        """Reopen a saved buffer: memory-mapped read-only, or (``writable``) loaded into memory to continue."""
        d = Path(directory)
        if not (d / HEADER).exists():
            raise BufferError(f"no on-board buffer in {d} (missing {HEADER}); run the fleet with a state directory")
        header = _read_header(d)
        try:
            arrays = {
                name: np.load(d / fname, mmap_mode=None if writable else "r") for name, fname in header["files"].items()
            }
        except (OSError, ValueError) as exc:
            raise BufferError(f"on-board buffer in {d} is damaged: {exc}") from exc
        buf = cls.__new__(cls)
        buf.vehicle_ids = np.asarray(arrays.pop("vehicle_ids"))
        buf.written = np.array(arrays.pop("written"))
        buf.overwritten = np.array(arrays.pop("overwritten"))
        buf.capacity = int(header["capacity"])
        if set(arrays) != set(FRAME_COLUMNS):
            raise BufferError(f"on-board buffer in {d} has columns {sorted(arrays)}, expected {sorted(FRAME_COLUMNS)}")
        buf.columns = arrays
        buf.read_only = not writable
        return buf


def _read_header(d: Path) -> dict:
    try:
        header = json.loads((d / HEADER).read_text())
    except (OSError, ValueError) as exc:
        raise BufferError(f"cannot read {d / HEADER}: {exc}") from exc
    if header.get("format_version") != FORMAT_VERSION:
        raise BufferError(
            f"{d / HEADER}: format version {header.get('format_version')}, this code reads {FORMAT_VERSION}"
        )
    return header
