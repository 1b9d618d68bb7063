"""Observation -> policy input tensors: the one place where sensor readings become model features.

The feature layout is versioned (``INPUT_SCHEMA_VERSION``); every model artifact records the version it was trained
on, and ``load_artifact`` refuses a model whose version differs. Change the layout => bump the version.

Features (all float32, roughly in [-1, 1] or [0, 1]):

- ``camera`` [B, 128]: the 8 x 16 contrast grid, flattened row-major (row 0 nearest); zeros when the frame was lost.
- ``lidar`` [B, 32]: closeness ``1 - range / LIDAR_MAX_RANGE_M`` per beam (0: nothing returned).
- ``radar`` [B, R, 7] per target: range, range-rate, azimuth, longitudinal and lateral position, inverse time to
  collision and ground speed (``range-rate / cos(az) + ego speed``: ~0 for stationary targets such as ghosts);
  zeros where ``radar_mask`` [B, R] is False. R may be trimmed to the batch's last valid target (see
  ``PolicyInputs.trim_radar``): the policy pools over valid targets only, so trimming never changes an output.
- ``ego`` [B, 3]: own speed, own acceleration, camera-frame-valid flag.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from fleetloop.sim.sensors import CAMERA_COLS, CAMERA_ROWS, LIDAR_BEAMS, LIDAR_MAX_RANGE_M, RADAR_TARGETS, Observation

__all__ = [
    "CAMERA_FEATURES",
    "EGO_FEATURES",
    "INPUT_SCHEMA_VERSION",
    "LIDAR_FEATURES",
    "RADAR_FEATURES",
    "RADAR_SLOTS",
    "PolicyInputs",
    "features_from_observation",
]

INPUT_SCHEMA_VERSION = "policy-input/1"
CAMERA_FEATURES = CAMERA_ROWS * CAMERA_COLS
LIDAR_FEATURES = LIDAR_BEAMS
RADAR_FEATURES = 7
RADAR_SLOTS = RADAR_TARGETS
EGO_FEATURES = 3

RANGE_SCALE_M = 100.0  # [m]
RATE_SCALE_MPS = 20.0  # [m/s]
AZIMUTH_SCALE_RAD = 0.5  # [rad]
LANE_SCALE_M = 3.5  # [m] lateral position in lane widths
INV_TTC_MAX_PER_S = 2.0  # [1/s] inverse TTC is clipped here (TTC below 0.5 s is all "now")
SPEED_SCALE_MPS = 30.0  # [m/s]
ACCEL_SCALE_MPS2 = 5.0  # [m/s²]


@dataclass(frozen=True)
class PolicyInputs:
    """Model-ready features of a batch of vehicles (see the module docstring for the layout)."""

    camera: torch.Tensor  # [B, 128]
    lidar: torch.Tensor  # [B, 32]
    radar: torch.Tensor  # [B, R, 7]
    radar_mask: torch.Tensor  # [B, R] bool
    ego: torch.Tensor  # [B, 3]

    @property
    def batch(self) -> int:
        """Number of vehicles B."""
        return int(self.camera.shape[0])

    @property
    def device(self) -> torch.device:
        """Device of the tensors."""
        return self.camera.device

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The tensors in the policy's argument order."""
        return self.camera, self.lidar, self.radar, self.radar_mask, self.ego

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Field name -> tensor (for datasets and telemetry)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @staticmethod
    def from_dict(d: dict[str, torch.Tensor]) -> PolicyInputs:
        """Inverse of ``as_dict``; checks the shapes and says which field is wrong."""
        missing = [f.name for f in dataclasses.fields(PolicyInputs) if f.name not in d]
        if missing:
            raise ValueError(f"policy inputs lack {', '.join(missing)}; expected the fields of PolicyInputs.as_dict()")
        out = PolicyInputs(**{f.name: d[f.name] for f in dataclasses.fields(PolicyInputs)})
        out.validate()
        return out

    def validate(self) -> PolicyInputs:
        """Raise ``ValueError`` naming the field whose shape does not match the schema; return self."""
        b = self.batch
        want = {
            "camera": (b, CAMERA_FEATURES),
            "lidar": (b, LIDAR_FEATURES),
            "ego": (b, EGO_FEATURES),
        }
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"policy input {name!r} has shape {got}, schema {INPUT_SCHEMA_VERSION} wants {shape}")
        r = self.radar.shape
        if len(r) != 3 or r[0] != b or r[2] != RADAR_FEATURES or r[1] > RADAR_SLOTS:
            raise ValueError(
                f"policy input 'radar' has shape {tuple(r)}, want ({b}, R<={RADAR_SLOTS}, {RADAR_FEATURES})"
            )
        if tuple(self.radar_mask.shape) != tuple(r[:2]) or self.radar_mask.dtype != torch.bool:
            raise ValueError(f"'radar_mask' must be bool of shape {tuple(r[:2])}, got {tuple(self.radar_mask.shape)}")
        return self

    def index(self, idx: torch.Tensor | slice) -> PolicyInputs:
        """The vehicles at ``idx`` (index tensor, bool mask or slice)."""
        return PolicyInputs(*(t[idx] for t in self.tensors()))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PolicyInputs:
        """The same inputs on ``device``."""
        return PolicyInputs(*(t.to(device, non_blocking=non_blocking) for t in self.tensors()))

    def radar_extent(self) -> int:
        """1 + index of the last valid radar target in the batch (0 if none)."""
        if self.radar_mask.numel() == 0:
            return 0
        slots = torch.arange(1, self.radar_mask.shape[1] + 1, device=self.radar_mask.device)
        return int((self.radar_mask * slots).amax())

    def trim_radar(self, slots: int) -> PolicyInputs:
        """Keep the first ``slots`` radar slots (padding with invalid slots if there are fewer)."""
        r = self.radar.shape[1]
        if slots <= r:
            return dataclasses.replace(self, radar=self.radar[:, :slots], radar_mask=self.radar_mask[:, :slots])
        pad = slots - r
        return dataclasses.replace(
            self,
            radar=torch.nn.functional.pad(self.radar, (0, 0, 0, pad)),
            radar_mask=torch.nn.functional.pad(self.radar_mask, (0, pad)),
        )

    @staticmethod
    def concat(parts: list[PolicyInputs]) -> PolicyInputs:
        """Vehicles of several batches one after another (radar padded to the widest)."""
        r = max(p.radar.shape[1] for p in parts)
        parts = [p.trim_radar(r) for p in parts]
        return PolicyInputs(*(torch.cat(ts) for ts in zip(*(p.tensors() for p in parts), strict=True)))


def features_from_observation(obs: Observation) -> PolicyInputs:
    """Turn one tick's ``Observation`` (any device) into ``PolicyInputs`` on the same device.

    Uses only what the vehicle's own sensors report: never ground truth or the weather.
    """
    b = int(obs.camera.shape[0])
    cam_ok = obs.camera_valid.to(torch.float32)
    camera = obs.camera.reshape(b, CAMERA_FEATURES) * cam_ok.unsqueeze(-1)
    lidar = (1.0 - obs.lidar_range_m / LIDAR_MAX_RANGE_M).clamp(0.0, 1.0)
    r, rate, az = obs.radar_range_m, obs.radar_range_rate_mps, obs.radar_azimuth_rad
    mask = obs.radar_valid.to(torch.bool)
    cos_az = torch.cos(az)
    ego_v = obs.ego_speed_mps.unsqueeze(-1)
    inv_ttc = ((-rate) / r.clamp_min(1.0)).clamp(0.0, INV_TTC_MAX_PER_S)
    ground_speed = rate / cos_az.clamp_min(0.5) + ego_v
    radar = torch.stack(
        [
            r / RANGE_SCALE_M,
            rate / RATE_SCALE_MPS,
            az / AZIMUTH_SCALE_RAD,
            r * cos_az / RANGE_SCALE_M,
            r * torch.sin(az) / LANE_SCALE_M,
            inv_ttc / INV_TTC_MAX_PER_S,
            ground_speed / RATE_SCALE_MPS,
        ],
        dim=-1,
    ) * mask.unsqueeze(-1)
    ego = torch.stack(
        [obs.ego_speed_mps / SPEED_SCALE_MPS, obs.ego_accel_mps2 / ACCEL_SCALE_MPS2, cam_ok],
        dim=-1,
    )
    return PolicyInputs(camera=camera, lidar=lidar, radar=radar, radar_mask=mask, ego=ego)
