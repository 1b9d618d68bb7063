"""The fleet policy: a compact torch model fusing camera, lidar, radar targets and ego state.

    camera [B,128] --Linear+ReLU--> 16 ─┐
    lidar  [B,32]  --Linear+ReLU--> 16 ─┤
    radar  [B,R,7] --per-target MLP--> masked max + mean pool --> 32 (+ target count) ─┼─> trunk 2x32 ─> M heads
    ego    [B,3] ───────────────────────┘

Each of the M heads predicts (accel mean [m/s²], accel log-variance, hazard logit). The policy's command is the
heads' mean; its uncertainty combines the predicted variance (noise the sensors cannot resolve) with the heads'
disagreement (inputs unlike the training data): ``sqrt(mean var_m + var of means_m)`` in m/s². See
docs/adr/0050-policy-architecture-and-uncertainty.md for why this and not MC dropout or a full ensemble.

About 6,600 parameters; float32; the radar pooling is masked, so padded radar slots never change an output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from fleetloop.edge_agent.features import (
    CAMERA_FEATURES,
    EGO_FEATURES,
    LIDAR_FEATURES,
    RADAR_FEATURES,
    RADAR_SLOTS,
    PolicyInputs,
)

__all__ = [
    "ARCHITECTURE",
    "MODALITIES",
    "FusionPolicy",
    "PolicyConfig",
    "build_policy",
    "nonfinite_parameters",
]

ARCHITECTURE = "fusion-mlp-v1"
MODALITIES = ("camera", "lidar", "radar")
LOGVAR_RANGE = (-8.0, 6.0)  # [ln (m/s²)²] keeps exp() finite and the NLL well conditioned
ACCEL_OUT_SCALE_MPS2 = 4.0  # [m/s²] the heads' raw output is scaled by this (expert commands span about -10..3)


@dataclass(frozen=True)
class PolicyConfig:
    """Hyperparameters of ``FusionPolicy`` (stored in every artifact's metadata)."""

    camera_width: int = 16
    """Width of the camera encoding."""
    lidar_width: int = 16
    """Width of the lidar encoding."""
    radar_width: int = 16
    """Width of the per-target radar encoding (pooled by max and mean, so the fused radar part is twice this)."""
    trunk_width: int = 32
    """Width of the two fused hidden layers."""
    heads: int = 4
    """Number of output heads; their disagreement is the epistemic part of the uncertainty (>= 2)."""
    modalities: tuple[str, ...] = MODALITIES
    """Which sensors the model reads (a subset gives the single-modality baselines); ego state is always read."""
    accel_range_mps2: tuple[float, float] = (-9.5, 3.0)
    """Commands are clamped into this range [m/s²] (the vehicle's braking and acceleration limits)."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.modalities) - set(MODALITIES))
        if unknown or not self.modalities:
            raise ValueError(f"modalities {self.modalities!r} invalid; choose a non-empty subset of {MODALITIES}")
        if self.heads < 2:
            raise ValueError(f"heads must be >= 2 (their spread is the uncertainty), got {self.heads}")
        for name in ("camera_width", "lidar_width", "radar_width", "trunk_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        lo, hi = self.accel_range_mps2
        if not lo < 0 < hi:
            raise ValueError(f"accel_range_mps2 must straddle 0 (brake, accel), got {self.accel_range_mps2}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples become lists)."""
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        d["accel_range_mps2"] = list(self.accel_range_mps2)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PolicyConfig:
        """Inverse of ``to_dict``; unknown keys are an error naming them."""
        known = set(PolicyConfig.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown policy hyperparameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        kw = dict(d)
        if "modalities" in kw:
            kw["modalities"] = tuple(kw["modalities"])
        if "accel_range_mps2" in kw:
            kw["accel_range_mps2"] = tuple(kw["accel_range_mps2"])
        return PolicyConfig(**kw)


class FusionPolicy(nn.Module):
    """Camera + lidar + radar targets + ego state -> command, hazard probability, uncertainty (see module doc)."""

    def __init__(self, config: PolicyConfig | None = None) -> None:
        super().__init__()
        self.config = config or PolicyConfig()
        c = self.config
        width = EGO_FEATURES
        self.camera_enc: nn.Module | None = None
        self.lidar_enc: nn.Module | None = None
        self.radar_enc: nn.Module | None = None
        if "camera" in c.modalities:
            self.camera_enc = nn.Sequential(nn.Linear(CAMERA_FEATURES, c.camera_width), nn.ReLU())
            width += c.camera_width
        if "lidar" in c.modalities:
            self.lidar_enc = nn.Sequential(nn.Linear(LIDAR_FEATURES, c.lidar_width), nn.ReLU())
            width += c.lidar_width
        if "radar" in c.modalities:
            self.radar_enc = nn.Sequential(
                nn.Linear(RADAR_FEATURES, c.radar_width),
                nn.ReLU(),
                nn.Linear(c.radar_width, c.radar_width),
                nn.ReLU(),
            )
            width += 2 * c.radar_width + 1
        self.trunk = nn.Sequential(
            nn.Linear(width, c.trunk_width), nn.ReLU(), nn.Linear(c.trunk_width, c.trunk_width), nn.ReLU()
        )
        self.heads = nn.Linear(c.trunk_width, 3 * c.heads)

    def forward_heads(
        self,
        camera: torch.Tensor,
        lidar: torch.Tensor,
        radar: torch.Tensor,
        radar_mask: torch.Tensor,
        ego: torch.Tensor,
    ) -> torch.Tensor:
        """Per-head outputs [B, M, 3]: accel mean [m/s²], accel log-variance, hazard logit (for training)."""
        parts = [ego]
        if self.camera_enc is not None:
            parts.append(self.camera_enc(camera))
        if self.lidar_enc is not None:
            parts.append(self.lidar_enc(lidar))
        if self.radar_enc is not None:
            m = radar_mask.unsqueeze(-1).to(radar.dtype)  # [B, R, 1]
            enc = self.radar_enc(radar) * m  # ReLU features >= 0, so a masked slot (0) never wins the max
            count = m.sum(1)  # [B, 1]
            pooled_max = enc.amax(1) if enc.shape[1] > 0 else enc.new_zeros(enc.shape[0], enc.shape[2])
            pooled_mean = enc.sum(1) / count.clamp_min(1.0)
            parts += [pooled_max, pooled_mean, count / RADAR_SLOTS]
        h = self.trunk(torch.cat(parts, dim=-1))
        out = self.heads(h).view(h.shape[0], self.config.heads, 3)
        mean = out[..., 0] * ACCEL_OUT_SCALE_MPS2
        logvar = out[..., 1].clamp(*LOGVAR_RANGE)
        return torch.stack([mean, logvar, out[..., 2]], dim=-1)

    def forward(
        self,
        camera: torch.Tensor,
        lidar: torch.Tensor,
        radar: torch.Tensor,
        radar_mask: torch.Tensor,
        ego: torch.Tensor,
    ) -> torch.Tensor:
        """[B, 3]: command accel [m/s²] (clamped to the vehicle's range), hazard probability, uncertainty [m/s²]."""
        heads = self.forward_heads(camera, lidar, radar, radar_mask, ego)
        mean = heads[..., 0]
        accel = mean.mean(-1)
        var = heads[..., 1].exp().mean(-1) + mean.var(-1, unbiased=False)
        hazard = torch.sigmoid(heads[..., 2]).mean(-1)
        lo, hi = self.config.accel_range_mps2
        return torch.stack([accel.clamp(lo, hi), hazard, var.sqrt()], dim=-1)

    def act(self, inputs: PolicyInputs) -> torch.Tensor:
        """``forward`` on a ``PolicyInputs`` batch."""
        return self(*inputs.tensors())


def build_policy(architecture: str, hyperparameters: dict[str, Any]) -> FusionPolicy:
    """Build an untrained policy from an artifact's architecture name and hyperparameters."""
    if architecture != ARCHITECTURE:
        raise ValueError(f"unknown policy architecture {architecture!r}; this build knows {ARCHITECTURE!r}")
    return FusionPolicy(PolicyConfig.from_dict(hyperparameters))


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers holding NaN or Inf (empty for a healthy model)."""
    named = list(model.named_parameters()) + list(model.named_buffers())
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]
