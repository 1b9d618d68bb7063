"""The on-board buffer: a bounded ring of compact frames per vehicle, for one shard's vehicles, on disk on demand.

Everything a vehicle sees goes here (uploaded or not); the oldest frame is overwritten when a vehicle's ring is
full, and the overwrites are counted per vehicle. ``save(directory)`` persists the rings as numpy ``.npy`` files
plus a JSON header, atomically: new files carry a fresh generation number, the header naming them replaces the old
one with ``os.replace``, then the old generation is deleted, so a reader (a federated client in another process)
always sees one complete generation. ``OnboardBuffer.open(directory)`` reopens it (memory-mapped, read-only by
default).

The fleet runner writes a whole tick at once from tensors (``append_tensors``, ``mark_uploaded``, ``gather``): on
the CPU the rings are numpy arrays shared with torch views (no copy per tick); with ``device="cuda"`` they live on
the GPU and ``columns`` returns host copies. Storage is slot-major, ``[capacity, V, ...]``: a tick's frames for
every vehicle land in one contiguous block (vehicle-major rings made every column a strided write, about 2 ms a
tick at 10,000 vehicles); ``columns`` shows them vehicle-major, as views.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from fleetloop.edge_agent.features import PolicyInputs, features_from_observation
from fleetloop.platform.atomic import write_text_atomic
from fleetloop.platform.errors import OnboardBufferError
from fleetloop.sim import Observation

__all__ = [
    "FRAME_COLUMNS",
    "OnboardBuffer",
    "OnboardBufferError",
    "pack_camera",
    "policy_inputs_from_frames",
    "unpack_camera",
]

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
FORMAT_VERSION = 2  # 2: arrays stored slot-major [capacity, V, ...]; 1 (read too): vehicle-major
CAMERA_SCALE = 255.0  # camera contrast 0..1 -> 0..255 (as in telemetry)
# numpy dtype -> the torch dtype holding the same bits (torch cannot index-write unsigned 16 / 32-bit tensors)
_TORCH_VIEW = {"<u4": np.int32, "<u2": np.int16}


def pack_camera(camera: np.ndarray) -> np.ndarray:
    """Camera contrast (float, about 0..1) -> uint8 0..255."""
    return np.clip(np.rint(np.asarray(camera, dtype=np.float32) * CAMERA_SCALE), 0, 255).astype(np.uint8)


def pack_camera_tensor(camera: torch.Tensor) -> torch.Tensor:
    """``pack_camera`` on a tensor (same rounding: half to even), on its device."""
    return (camera.to(torch.float32) * CAMERA_SCALE).round_().clamp_(0, 255).to(torch.uint8)


def unpack_camera(camera: np.ndarray) -> np.ndarray:
    """uint8 camera -> float32 contrast."""
    return np.asarray(camera, dtype=np.float32) / CAMERA_SCALE


def policy_inputs_from_frames(cols: Mapping[str, np.ndarray]) -> PolicyInputs:
    """``PolicyInputs`` of recorded frames (the buffer's columns or telemetry's), through the vehicle's own
    ``features_from_observation``, so a model trains on exactly what it sees on board.

    Telemetry carries no camera-health flag: there a lost camera frame arrives as all zeros, so a frame with any
    non-zero cell counts as valid (a night frame is dark but never exactly zero); the buffer's ``camera_valid`` is
    used where present. ``radar_valid`` is the boolean mask [N, targets] (telemetry's bits expanded)."""

    def f32(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(cols[name], dtype=np.float32)))

    cam = np.asarray(cols["camera"])
    cam_ok: np.ndarray
    if "camera_valid" in cols:
        cam_ok = np.asarray(cols["camera_valid"], dtype=bool)
    else:
        cam_ok = np.asarray(cam.reshape(len(cam), -1).any(axis=1))
    rv = np.asarray(cols["radar_valid"], dtype=bool)
    obs = Observation(
        camera=torch.from_numpy(unpack_camera(cam)),
        camera_valid=torch.from_numpy(np.ascontiguousarray(cam_ok)),
        lidar_range_m=torch.nan_to_num(f32("lidar_range_m"), posinf=1e4),
        radar_range_m=f32("radar_range_m"),
        radar_range_rate_mps=f32("radar_range_rate_mps"),
        radar_azimuth_rad=f32("radar_azimuth_rad"),
        radar_valid=torch.from_numpy(np.ascontiguousarray(rv)),
        ego_speed_mps=f32("ego_speed_mps"),
        ego_accel_mps2=f32("ego_accel_mps2"),
    )
    return features_from_observation(obs)


class OnboardBuffer:
    """Rings of ``capacity`` frames for ``vehicle_ids`` (row i belongs to ``vehicle_ids[i]``).

    Memory: about 400 bytes per frame; 10,000 vehicles x 256 frames is about 1 GB, so size ``capacity`` per shard.
    """

    def __init__(self, vehicle_ids: np.ndarray, capacity: int, device: torch.device | str = "cpu") -> None:
        ids = np.asarray(vehicle_ids, dtype=np.int64).reshape(-1)
        if capacity < 1:
            raise OnboardBufferError(f"capacity must be >= 1 frame, got {capacity}")
        if len(np.unique(ids)) != len(ids):
            raise OnboardBufferError("vehicle ids must be unique")
        self.vehicle_ids = ids
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self._np: dict[str, np.ndarray] | None = None
        self._t: dict[str, torch.Tensor] | None = None
        if self.device.type == "cpu":
            self._np = {
                name: np.zeros((capacity, len(ids), *shape), dtype=np.dtype(dt))
                for name, (dt, shape) in FRAME_COLUMNS.items()
            }
            for a in self._np.values():
                # Touch every page now (np.zeros maps them lazily): the first pass through the ring would otherwise
                # pay a page fault per 4 KiB inside the tick.
                a.fill(0)
        else:
            self._t = {
                name: torch.zeros(
                    (capacity, len(ids), *shape),
                    dtype=torch.from_numpy(np.zeros(0, _TORCH_VIEW.get(dt, np.dtype(dt)))).dtype,
                    device=self.device,
                )
                for name, (dt, shape) in FRAME_COLUMNS.items()
            }
        self.written = np.zeros(len(ids), dtype=np.int64)  # frames ever written per vehicle
        self.overwritten = np.zeros(len(ids), dtype=np.int64)  # frames lost to the ring per vehicle
        self.read_only = False
        self._uniform = True  # every vehicle has written the same number of frames (one ring slot for all)

    @property
    def columns(self) -> dict[str, np.ndarray]:
        """The rings as numpy arrays [V, capacity, ...] (views of the slot-major storage; on CUDA: host copies,
        for reading)."""
        return {name: np.moveaxis(a, 0, 1) for name, a in self._storage().items()}

    def _storage(self) -> dict[str, np.ndarray]:
        """The rings as stored, numpy [capacity, V, ...] (on CUDA: host copies)."""
        if self._np is not None:
            return self._np
        assert self._t is not None
        return {name: t.cpu().numpy().view(np.dtype(FRAME_COLUMNS[name][0])) for name, t in self._t.items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The rings as stored, torch tensors [capacity, V, ...] on ``device`` (sharing memory with ``columns`` on the
        CPU; unsigned 16 / 32-bit columns as the signed type of the same width)."""
        if self.read_only:
            raise OnboardBufferError("this buffer was opened read-only; open(..., writable=True) to append")
        if self._t is None:
            assert self._np is not None
            self._t = {
                name: torch.from_numpy(a.view(_TORCH_VIEW[dt]) if dt in _TORCH_VIEW else a)
                for name, a in self._np.items()
                for dt in (FRAME_COLUMNS[name][0],)
            }
        return self._t

    def append_tensors(self, frames: Mapping[str, torch.Tensor]) -> None:
        """Append one frame for every vehicle (in row order) from tensors of any device and dtype (converted as
        numpy's ``astype`` would); the fleet runner's per-tick path."""
        t = self.tensors()
        v = len(self.vehicle_ids)
        if set(frames) != set(FRAME_COLUMNS):
            missing = sorted(set(FRAME_COLUMNS) - set(frames))
            extra = sorted(set(frames) - set(FRAME_COLUMNS))
            raise OnboardBufferError(
                f"frame columns missing {missing} / unknown {extra}; expected {sorted(FRAME_COLUMNS)}"
            )
        if self._uniform:
            slot = int(self.written[0] % self.capacity) if v else 0
            for name, (_, shape) in FRAME_COLUMNS.items():
                value = frames[name]
                if tuple(value.shape) != (v, *shape):
                    raise OnboardBufferError(f"column {name}: expected shape {(v, *shape)}, got {tuple(value.shape)}")
                t[name][slot].copy_(value)
            self.overwritten += self.written >= self.capacity
            self.written += 1
            return
        self.append({name: value.cpu().numpy() for name, value in frames.items()})

    def _slots(self, rows: torch.Tensor, back: int) -> torch.Tensor | int:
        """Ring slot of the frame written ``back`` appends before the last one, for ``rows``."""
        if self._uniform:
            return int((self.written[0] - 1 - back) % self.capacity) if len(self.written) else 0
        written = torch.from_numpy(self.written).to(rows.device)[rows]
        return (written - 1 - back) % self.capacity

    def mark_uploaded(self, rows: torch.Tensor, back: int) -> None:
        """Set ``uploaded`` on the frame ``back`` appends before the last one of vehicle rows ``rows``."""
        col = self.tensors()["uploaded"]
        rows = rows.to(col.device)
        col[self._slots(rows, back), rows] = True

    def gather(self, rows: torch.Tensor, back: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The frames ``back`` appends before the last one of vehicle rows ``rows``, as numpy columns."""
        t = self.tensors()
        rows = rows.to(self.device)
        slot = self._slots(rows, back)
        return {name: t[name][slot, rows].cpu().numpy().view(np.dtype(FRAME_COLUMNS[name][0])) for name in names}

    def append(self, frames: Mapping[str, np.ndarray], rows: np.ndarray | None = None) -> None:
        """Append one frame for each vehicle row in ``rows`` (default: all, in order); ``frames[c]`` has
        ``len(rows)`` entries for every column ``c`` of ``FRAME_COLUMNS``."""
        if self.read_only:
            raise OnboardBufferError("this buffer was opened read-only; open(..., writable=True) to append")
        r = np.arange(len(self.vehicle_ids)) if rows is None else np.asarray(rows, dtype=np.int64)
        missing = sorted(set(FRAME_COLUMNS) - set(frames))
        extra = sorted(set(frames) - set(FRAME_COLUMNS))
        if missing or extra:
            raise OnboardBufferError(
                f"frame columns missing {missing} / unknown {extra}; expected {sorted(FRAME_COLUMNS)}"
            )
        if len(np.unique(r)) != len(r):
            raise OnboardBufferError("one frame per vehicle per append: rows must be unique")
        slot = self.written[r] % self.capacity
        if self._np is None:  # on a device: write through the tensors
            t = self.tensors()
            rt = torch.from_numpy(r).to(self.device)
            st = torch.from_numpy(slot).to(self.device)
        for name, (dt, shape) in FRAME_COLUMNS.items():
            value = np.asarray(frames[name])
            if value.shape != (len(r), *shape):
                raise OnboardBufferError(f"column {name}: expected shape {(len(r), *shape)}, got {value.shape}")
            if self._np is not None:
                self._np[name][slot, r] = value
            else:
                arr = np.ascontiguousarray(value.astype(np.dtype(dt)))
                t[name][st, rt] = torch.from_numpy(arr.view(_TORCH_VIEW[dt]) if dt in _TORCH_VIEW else arr).to(
                    self.device
                )
        if len(r) != len(self.vehicle_ids) or len(np.unique(self.written)) > 1:
            self._uniform = False
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
        out = {name: np.asarray(col[ss, rr]) for name, col in self._storage().items()}
        out["vehicle_id"] = self.vehicle_ids[rr]
        return out

    def save(self, directory: str | Path) -> Path:
        """Persist atomically into ``directory`` (created if missing); returns the header path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        old = _read_header(d) if (d / HEADER).exists() else None
        gen = (old["generation"] + 1) if old else 1
        arrays = {**self._storage(), "vehicle_ids": self.vehicle_ids, "written": self.written}
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
        write_text_atomic(d / HEADER, json.dumps(header, indent=1))
        if old:
            for fname in old["files"].values():
                (d / fname).unlink(missing_ok=True)
        return d / HEADER

    @classmethod
    def open(cls, directory: str | Path, writable: bool = False) -> OnboardBuffer:
        """Reopen a saved buffer: memory-mapped read-only, or (``writable``) loaded into memory to continue."""
        d = Path(directory)
        if not (d / HEADER).exists():
            raise OnboardBufferError(
                f"no on-board buffer in {d} (missing {HEADER}); run the fleet with a state directory"
            )
        header = _read_header(d)
        try:
            arrays = {
                name: np.load(d / fname, mmap_mode=None if writable else "r") for name, fname in header["files"].items()
            }
        except (OSError, ValueError) as exc:
            raise OnboardBufferError(f"on-board buffer in {d} is damaged: {exc}") from exc
        buf = cls.__new__(cls)
        buf.vehicle_ids = np.asarray(arrays.pop("vehicle_ids"))
        buf.written = np.array(arrays.pop("written"))
        buf.overwritten = np.array(arrays.pop("overwritten"))
        buf.capacity = int(header["capacity"])
        if set(arrays) != set(FRAME_COLUMNS):
            raise OnboardBufferError(
                f"on-board buffer in {d} has columns {sorted(arrays)}, expected {sorted(FRAME_COLUMNS)}"
            )
        if header["format_version"] == 1:  # vehicle-major rings: viewed slot-major (copied on the next save)
            arrays = {name: np.moveaxis(a, 1, 0) for name, a in arrays.items()}
        buf._np = arrays
        buf._t = None
        buf.device = torch.device("cpu")
        buf.read_only = not writable
        buf._uniform = len(np.unique(buf.written)) <= 1
        return buf


def _read_header(d: Path) -> dict:
    try:
        header = json.loads((d / HEADER).read_text())
    except (OSError, ValueError) as exc:
        raise OnboardBufferError(f"cannot read {d / HEADER}: {exc}") from exc
    if header.get("format_version") not in (1, FORMAT_VERSION):
        raise OnboardBufferError(
            f"{d / HEADER}: format version {header.get('format_version')}, this code reads 1 to {FORMAT_VERSION}"
        )
    return header
