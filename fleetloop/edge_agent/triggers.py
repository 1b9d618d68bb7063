"""On-board triggers and the upload budget: which buffered frames go to the cloud, and why.

Triggers use only what the vehicle knows (its sensors, its commands, the fallback's stage and perceived TTC, the
model's outputs); never ground truth. Trigger bits (uint16, the telemetry column ``trigger_flags``; a unit test
checks them against the bus schema's ``TriggerFlag``)::

    bit 0  FALLBACK_ENGAGED   the arbiter handed the vehicle to the fallback (model -> fallback transition)
    bit 1  HARD_BRAKE         measured deceleration above ``hard_brake_mps2``
    bit 2  NEAR_MISS          perceived TTC below ``near_miss_ttc_s`` (as the vehicle sees it)
    bit 3  DISAGREEMENT       model and fallback commands differ by more than ``disagreement_mps2``
    bit 4  HIGH_UNCERTAINTY   model uncertainty above ``high_uncertainty``
    bit 5  RANDOM_SAMPLE      the unbiased random sample (counter-based per vehicle id and tick)

A trigger at tick t asks for the clip [t - pre_s, t + post_s]. Frame f is therefore decided at tick
f + pre_ticks, when every trigger that could cover it is known: ``step`` returns the decision for frame
``tick - pre_ticks`` (the frame itself is read back from the on-board buffer). Uploads spend tokens of a
per-vehicle token bucket filled at ``budget_fraction`` per tick, which starts empty, so a vehicle never uploads
more than ``budget_fraction`` of its frames. Frames the budget refuses stay in the buffer; they are counted per
primary reason (the lowest bit set). The last ``pre_ticks`` frames of a run are never decided (they stay buffered).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fleetloop.sim import rng

__all__ = [
    "TRIGGER_BITS",
    "TriggerConfig",
    "TriggerInputs",
    "TriggerState",
    "UploadDecision",
    "trigger_bits",
    "triggers_step",
]

TRIGGER_BITS = {
    "fallback_engaged": 1 << 0,
    "hard_brake": 1 << 1,
    "near_miss": 1 << 2,
    "disagreement": 1 << 3,
    "high_uncertainty": 1 << 4,
    "random_sample": 1 << 5,
}
N_BITS = len(TRIGGER_BITS)
_STREAM_SAMPLE = 0x5452  # "TR": the random sample's counter-based stream, apart from the sim's
_NEVER = -(1 << 40)


@dataclass(frozen=True)
class TriggerConfig:
    """Trigger thresholds and the upload budget.

    Attributes:
        pre_s, post_s: a trigger's clip reaches this far before and after it [s].
        dt_s: tick length [s].
        hard_brake_mps2: measured deceleration that counts as hard braking [m/s²] (the world's event threshold).
        near_miss_ttc_s: perceived TTC below this is a near miss as the vehicle sees it [s].
        disagreement_mps2: model and fallback differ by more than this [m/s²].
        high_uncertainty: model uncertainty above this (model units).
        sample_rate: probability a frame is taken as the random sample [-].
        budget_fraction: at most this share of frames is uploaded [-] (default 2 %).
        bucket_frames: token bucket capacity [frames]: how much of a burst (clips) can be saved up.
    """

    pre_s: float = 2.0
    post_s: float = 2.0
    dt_s: float = 0.1
    hard_brake_mps2: float = 4.0
    near_miss_ttc_s: float = 1.0
    disagreement_mps2: float = 3.0
    high_uncertainty: float = 0.5
    sample_rate: float = 0.002
    budget_fraction: float = 0.02
    bucket_frames: float = 100.0

    def __post_init__(self) -> None:
        for name in ("pre_s", "post_s", "sample_rate", "budget_fraction"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"TriggerConfig.{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not self.dt_s > 0 or not self.bucket_frames >= 1:
            raise ValueError("TriggerConfig needs dt_s > 0 and bucket_frames >= 1")

    @property
    def pre_ticks(self) -> int:
        return round(self.pre_s / self.dt_s)

    @property
    def post_ticks(self) -> int:
        return round(self.post_s / self.dt_s)


@dataclass(frozen=True)
class TriggerInputs:
    """One tick of vehicle-known signals, tensors [B]."""

    fallback_started: torch.Tensor
    ego_accel_mps2: torch.Tensor
    perceived_ttc_s: torch.Tensor
    model_accel_mps2: torch.Tensor
    fallback_accel_mps2: torch.Tensor
    model_valid: torch.Tensor
    uncertainty: torch.Tensor


@dataclass(frozen=True)
class TriggerState:
    """Per vehicle: the last tick each trigger bit fired [B, N_BITS], bucket tokens [B], and counters [B, N_BITS]:
    frames uploaded and frames the budget refused, by primary reason; plus frames decided [B]."""

    last_fired: torch.Tensor
    tokens: torch.Tensor
    uploaded: torch.Tensor
    refused: torch.Tensor
    decided: torch.Tensor

    @staticmethod
    def init(batch: int, device: torch.device | str = "cpu") -> TriggerState:
        """A fresh state (empty bucket) for ``batch`` vehicles."""
        zb = torch.zeros(batch, N_BITS, dtype=torch.int64, device=device)
        return TriggerState(
            last_fired=torch.full((batch, N_BITS), _NEVER, dtype=torch.int64, device=device),
            tokens=torch.zeros(batch, dtype=torch.float64, device=device),
            uploaded=zb,
            refused=zb.clone(),
            decided=torch.zeros(batch, dtype=torch.int64, device=device),
        )

    def totals(self) -> dict[str, dict[str, int]]:
        """Fleet totals: uploaded and refused frames per primary reason, and frames decided."""
        names = list(TRIGGER_BITS)
        up, ref = self.uploaded.sum(0).tolist(), self.refused.sum(0).tolist()
        return {
            "uploaded": dict(zip(names, up, strict=True)),
            "refused_by_budget": dict(zip(names, ref, strict=True)),
            "decided": {"frames": int(self.decided.sum())},
        }


@dataclass(frozen=True)
class UploadDecision:
    """Decision for frame ``frame_tick`` of every vehicle (no frame when negative), tensors [B].

    ``upload``: send it; ``bits``: uint16-valued trigger bits covering it (int32 tensor; why it was wanted);
    ``refused``: wanted but over budget (stays in the buffer). ``current_bits``: bits that fired at this tick
    itself (to store with the current frame in the buffer).
    """

    frame_tick: int
    upload: torch.Tensor
    bits: torch.Tensor
    refused: torch.Tensor
    current_bits: torch.Tensor


def trigger_bits(cfg: TriggerConfig, inp: TriggerInputs) -> torch.Tensor:
    """The trigger bits [B] (int32) that fire on this tick's signals (without the random sample)."""
    decel = -torch.nan_to_num(inp.ego_accel_mps2.float())
    model_ok = inp.model_valid.bool() & torch.isfinite(inp.model_accel_mps2)
    diff = (torch.nan_to_num(inp.model_accel_mps2.float()) - inp.fallback_accel_mps2.float()).abs()
    unc = torch.nan_to_num(inp.uncertainty.float(), nan=0.0)
    flags = (
        inp.fallback_started.bool(),
        decel > cfg.hard_brake_mps2,
        torch.nan_to_num(inp.perceived_ttc_s.float(), nan=math.inf) < cfg.near_miss_ttc_s,
        model_ok & (diff > cfg.disagreement_mps2),
        model_ok & (unc > cfg.high_uncertainty),
    )
    bits = torch.zeros(decel.shape, dtype=torch.int32, device=decel.device)
    for i, flag in enumerate(flags):
        bits = bits | (flag.to(torch.int32) << i)
    return bits


def triggers_step(
    cfg: TriggerConfig, state: TriggerState, inp: TriggerInputs, vehicle_ids: torch.Tensor, tick: int, seed: int
) -> tuple[TriggerState, UploadDecision]:
    """Record this tick's triggers and decide frame ``tick - pre_ticks``."""
    now_bits = trigger_bits(cfg, inp)
    shifts = torch.arange(N_BITS, device=now_bits.device)
    fired = ((now_bits.unsqueeze(-1) >> shifts) & 1).bool()
    last = torch.where(fired, torch.full_like(state.last_fired, tick), state.last_fired)
    tokens = (state.tokens + cfg.budget_fraction).clamp(max=cfg.bucket_frames)
    f = tick - cfg.pre_ticks
    b = now_bits.shape[0]
    if f < 0:
        none = torch.zeros(b, dtype=torch.bool, device=now_bits.device)
        new = TriggerState(last, tokens, state.uploaded, state.refused, state.decided)
        return new, UploadDecision(f, none, torch.zeros_like(now_bits), none, now_bits)
    # Frame f lies in the clip of any trigger fired within [f - post, f + pre] = [f - post, tick].
    covered = last >= f - cfg.post_ticks
    key = rng.vehicle_key(seed, vehicle_ids.to(torch.int64), f, _STREAM_SAMPLE)
    sample = rng.uniform(key, (1,)).squeeze(-1) < cfg.sample_rate
    covered[:, N_BITS - 1] = sample
    bits = (covered.to(torch.int32) << shifts.to(torch.int32)).sum(-1, dtype=torch.int32)
    wanted = bits > 0
    upload = wanted & (tokens >= 1.0)
    refused = wanted & ~upload
    tokens = tokens - upload.to(tokens.dtype)
    # Primary reason: the lowest bit set (the bit order is the priority order).
    primary = torch.nn.functional.one_hot(covered.to(torch.int64).argmax(-1), N_BITS)
    new = TriggerState(
        last_fired=last,
        tokens=tokens,
        uploaded=state.uploaded + primary * upload.unsqueeze(-1),
        refused=state.refused + primary * refused.unsqueeze(-1),
        decided=state.decided + 1,
    )
    return new, UploadDecision(f, upload, bits, refused, now_bits)
