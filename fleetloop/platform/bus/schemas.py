"""Columnar batch schemas: the telemetry frame and the ground-truth audit frame, with their code tables.

A batch schema is a named, versioned list of columns. Each column has a little-endian numpy dtype and a
per-frame shape; a batch of ``n`` frames holds one array of shape ``(n, *shape)`` per column.

Evolution policy (also in docs/bus.md):
- a *minor* version only adds columns, each with a default; readers fill columns missing from an older
  minor with that default, and ignore columns a newer minor added that they do not know;
- anything else (removing, renaming, retyping or reshaping a column, changing a code table's meaning) is a
  new *major* version; a reader rejects a major version it does not know (the consumer dead-letters it).

Telemetry never carries ground truth: what a vehicle uploads is what it sensed, did and estimated.
Ground truth for the same frames travels only in ``groundtruth.frames`` on the ground-truth audit topic.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from math import prod

import numpy as np

__all__ = [
    "GROUND_TRUTH_FRAMES",
    "TELEMETRY_FRAMES",
    "BatchSchema",
    "Column",
    "Driver",
    "FallbackReason",
    "HazardType",
    "TriggerFlag",
    "radar_valid",
]

# Sensor geometry of telemetry v1 (upper bounds set by the vehicle issue).
CAMERA_ROWS = 8
CAMERA_COLS = 16
LIDAR_BEAMS = 32
RADAR_TARGETS = 8


class Driver(enum.IntEnum):
    """Who produced the command applied in a frame (telemetry column ``driver``)."""

    MODEL = 0
    FALLBACK = 1


class FallbackReason(enum.IntEnum):
    """Why the arbiter chose the fallback (telemetry column ``fallback_reason``); NONE when the model drove."""

    NONE = 0
    DEADLINE = 1
    INVALID_OUTPUT = 2
    LOW_CONFIDENCE = 3
    TTC_CRITICAL = 4
    SENSOR_FAULT = 5
    NO_MODEL = 6
    MODEL_SWITCH = 7


class TriggerFlag(enum.IntFlag):
    """Why a frame was uploaded (telemetry column ``trigger_flags``, a bit set)."""

    FALLBACK_ENGAGED = 1 << 0
    HARD_BRAKE = 1 << 1
    NEAR_MISS = 1 << 2
    DISAGREEMENT = 1 << 3
    HIGH_UNCERTAINTY = 1 << 4
    RANDOM_SAMPLE = 1 << 5


class HazardType(enum.IntEnum):
    """The true nearest hazard ahead (ground-truth column ``true_hazard_type``)."""

    NONE = 0
    VEHICLE = 1
    PEDESTRIAN = 2
    STOPPED_OBJECT = 3


@dataclass(frozen=True)
class Column:
    """One column of a batch schema.

    ``dtype`` is a little-endian numpy dtype string (``"<f2"``); ``shape`` is the per-frame shape
    (``()`` for a scalar per frame); ``since_minor`` is the minor version that added the column and
    ``default`` the value readers fill in for payloads older than that; ``finite`` marks a float column the
    loop cannot use with NaN or inf in it (the vehicle's own motion), which collect checks.
    """

    name: str
    dtype: str
    shape: tuple[int, ...] = ()
    doc: str = ""
    since_minor: int = 0
    default: float = 0
    finite: bool = False  # every value must be finite (collect dead-letters a batch with NaN / inf here)

    def __post_init__(self) -> None:
        dt = np.dtype(self.dtype)
        if dt.byteorder == ">" or dt.kind not in "biuf":
            raise ValueError(f"column {self.name}: dtype {self.dtype!r} must be a little-endian bool/int/float")
        if any(d <= 0 for d in self.shape):
            raise ValueError(f"column {self.name}: shape {self.shape} must be positive")

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def frame_bytes(self) -> int:
        """Bytes one frame takes in this column."""
        return self.np_dtype.itemsize * prod(self.shape)

    @property
    def descriptor(self) -> list[object]:
        """How the column is described in a payload header: ``[name, dtype, shape]``."""
        return [self.name, self.np_dtype.str, list(self.shape)]


@dataclass(frozen=True)
class BatchSchema:
    """A named, versioned column layout; ``seq_column`` holds each frame's per-vehicle sequence number."""

    name: str
    major: int
    minor: int
    columns: tuple[Column, ...]
    doc: str = ""
    seq_column: str = "seq"
    by_name: dict[str, Column] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"schema {self.name}: duplicate column names")
        if self.seq_column not in names:
            raise ValueError(f"schema {self.name}: no sequence column {self.seq_column!r}")
        for c in self.columns:
            if c.since_minor > self.minor:
                raise ValueError(f"schema {self.name}: column {c.name} is newer than minor {self.minor}")
        object.__setattr__(self, "by_name", {c.name: c for c in self.columns})

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def frame_bytes(self) -> int:
        """Bytes per frame on the wire, excluding the per-message header and column padding."""
        return sum(c.frame_bytes for c in self.columns)

    def columns_at(self, minor: int) -> tuple[Column, ...]:
        """The columns a writer of ``major.minor`` sends (those added at or before ``minor``)."""
        return tuple(c for c in self.columns if c.since_minor <= minor)

    def zeros(self, n_frames: int) -> dict[str, np.ndarray]:
        """Fresh column arrays for ``n_frames`` frames, filled with each column's default."""
        return {c.name: np.full((n_frames, *c.shape), c.default, dtype=c.np_dtype) for c in self.columns}


_TELEMETRY_COLUMNS = (
    Column("seq", "<u4", doc="per-vehicle frame sequence number, +1 per frame, never reused"),
    Column("tick", "<u4", doc="simulation tick of the frame; time_s = tick * header tick_period_s"),
    Column("model_version", "<u2", doc="registry version of the model on board; 0 = none"),
    Column("road_pos_m", "<f4", doc="position along the shared road, as the vehicle locates itself", finite=True),
    Column("camera", "<u1", (CAMERA_ROWS, CAMERA_COLS), doc="camera grid, brightness 0-255 per cell"),
    Column("lidar_range_m", "<f2", (LIDAR_BEAMS,), doc="lidar range per beam; inf = no return"),
    Column("radar_range_m", "<f2", (RADAR_TARGETS,), doc="radar target range; see radar_valid_bits"),
    Column("radar_range_rate_mps", "<f2", (RADAR_TARGETS,), doc="radar target range rate, + = opening"),
    Column("radar_azimuth_rad", "<f2", (RADAR_TARGETS,), doc="radar target azimuth, + = left"),
    Column("radar_valid_bits", "<u1", doc="bit i set = radar target i is valid (see radar_valid())"),
    Column("ego_speed_mps", "<f2", doc="ego speed", finite=True),
    Column("ego_accel_mps2", "<f2", doc="ego acceleration measured on board", finite=True),
    Column("command_accel_mps2", "<f2", doc="longitudinal command applied this tick", finite=True),
    Column("driver", "<u1", doc="Driver code: who produced the applied command"),
    Column("fallback_reason", "<u1", doc="FallbackReason code; NONE when the model drove"),
    Column("hazard_prob", "<f2", doc="model's hazard probability; NaN when no model ran"),
    Column("uncertainty", "<f2", doc="model's uncertainty; NaN when no model ran"),
    Column("est_visibility_m", "<f2", doc="the vehicle's own estimate of visibility"),
    Column("est_friction", "<f2", doc="the vehicle's own estimate of road friction coefficient"),
    Column("trigger_flags", "<u2", doc="TriggerFlag bits: why this frame was uploaded"),
    Column(
        "est_light",
        "<f2",
        doc="the vehicle's own estimate of ambient light, 0 dark .. 1 daylight; NaN in 1.0 payloads",
        since_minor=1,
        default=float("nan"),
    ),
)

TELEMETRY_FRAMES = BatchSchema(
    name="telemetry.frames",
    major=1,
    minor=1,
    columns=_TELEMETRY_COLUMNS,
    doc="What one vehicle sensed, did and estimated, frame by frame; never ground truth.",
)

_GROUND_TRUTH_COLUMNS = (
    Column("seq", "<u4", doc="the telemetry frame this row audits (same vehicle, same seq)"),
    Column("tick", "<u4", doc="simulation tick"),
    Column("true_hazard_dist_m", "<f4", doc="distance to the nearest hazard ahead; inf = none"),
    Column("true_hazard_type", "<u1", doc="HazardType code of that hazard"),
    Column("true_ttc_s", "<f2", doc="true time to collision with it; inf = not closing"),
    Column("true_visibility_m", "<f2", doc="true meteorological visibility at the ego"),
    Column("true_friction", "<f2", doc="true road friction coefficient at the ego"),
    Column("is_night", "<u1", doc="1 at night"),
    Column("expert_accel_mps2", "<f2", doc="the privileged expert's command for this frame"),
)

GROUND_TRUTH_FRAMES = BatchSchema(
    name="groundtruth.frames",
    major=1,
    minor=0,
    columns=_GROUND_TRUTH_COLUMNS,
    doc="The world's truth for telemetry frames; only for auditing label quality, never for training.",
)


def radar_valid(bits: np.ndarray) -> np.ndarray:
    """Expand ``radar_valid_bits`` (shape ``(n,)``) to a boolean mask of shape ``(n, RADAR_TARGETS)``."""
    return np.unpackbits(bits.astype(np.uint8)[:, None], axis=1, bitorder="little")[:, :RADAR_TARGETS].astype(bool)
