"""The hindsight labeller: labels each frame from the frames of the same vehicle that follow it.

The vehicle runs it on its buffer for federated training, and the pipeline's label stage runs the same function on
the lake. It sees only vehicle-known columns (the buffer's / telemetry's): its own radar and lidar, odometry, the
fallback stage. For frame i and the next ``horizon_s`` of frames j of the same vehicle:

- in-path obstacle at j (``perceive_in_path``, the fallback's perception), placed in frame i's coordinates with
  the ego's own odometry: ``D_j = gap_j + (distance driven from i to j) - margin``;
- needed deceleration: the smallest constant deceleration from frame i's speed v that keeps the ego behind every
  such ``D_j`` at time t_j (``v^2 / 2D`` if it stops before t_j, else ``2 (v t_j - D_j) / t_j^2``), and, for an
  obstacle that stands still, behind it for good (``v^2 / 2D_j``); an obstacle still braking when the horizon ends
  (its radar speed over the frames around it) brakes on to a stop, so the ego must stop behind that point:
  ``v^2 / 2 (D_end + u^2 / 2a)``, the expert's reading of a braking lead;
- hazard: within the horizon the vehicle perceived an obstacle closer than ``hazard_gap_m``, or a perceived TTC
  below ``hazard_ttc_s``, or braked harder than ``hard_brake_mps2``, or its fallback went to full braking, each
  *for an obstacle it perceived closing in its path* (TTC under ``brake_reason_ttc_s``); or the needed
  deceleration exceeds ``hazard_decel_mps2``. Close behind a queue is following, and a hard brake with nothing
  perceived closing ahead is phantom braking: neither is a hazard;
- target acceleration: ``-needed`` where braking was needed, else the command the vehicle applied (it turned out
  fine) but never braking harder than needed plus ``overbrake_slack_mps2``: a phantom brake is labelled as the
  gentle command it should have been, so training on uploaded clips unlearns it instead of repeating it;
- confidence: the share of the horizon with frames (1 where the hazard already materialised); ``valid`` where the
  horizon is complete or the hazard is confirmed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fleetloop.edge_agent.fallback import (
    CONFIRM_RANGE_M,
    LEAD_BRAKING_MPS2,
    STAGE_FULL,
    Perceived,
    lead_stop_distance_m,
    perceive_in_path,
)

__all__ = ["LabelConfig", "Labels", "hindsight_labels"]

REQUIRED = (
    "vehicle_id",
    "tick",
    "ego_speed_mps",
    "ego_accel_mps2",
    "lidar_range_m",
    "radar_range_m",
    "radar_range_rate_mps",
    "radar_azimuth_rad",
    "radar_valid",
)


@dataclass(frozen=True)
class LabelConfig:
    """Labeller settings.

    Attributes:
        dt_s: tick length [s].
        horizon_s: how far ahead the labeller looks [s].
        margin_m: distance to keep to the obstacle when stopping [m].
        hazard_gap_m, hazard_ttc_s: a later perceived gap / TTC below these means a hazard materialised (the gap
            only while closing on the obstacle within ``brake_reason_ttc_s``).
        hard_brake_mps2: a later measured deceleration above this, for an obstacle perceived closing within
            ``brake_reason_ttc_s``, means a hazard materialised [m/s²].
        brake_reason_ttc_s: perceived TTC under which a hard brake had a reason (the phantom-braking event's
            stopping envelope, ``fleetloop.sim.events.PHANTOM_TTC_S``) [s].
        overbrake_slack_mps2: where braking was not needed, the target brakes at most this much more than
            needed [m/s²] (below the phantom-braking event's 3 m/s²).
        hazard_decel_mps2: needed deceleration above this is a hazard [m/s²].
        max_decel_mps2: needed deceleration is capped here (the target must be a feasible command) [m/s²].
        lead_braking_mps2: an in-path obstacle decelerating beyond this is braking to a stop [m/s²]: the
            fallback's ``LEAD_BRAKING_MPS2``, so labels and the fallback call the same lead braking (over this
            window about 3 sigmas of radar speed noise: 0.15 m/s a tick at both ends of 0.6 s is 0.35 m/s²).
        lead_brake_window_ticks: its deceleration is read from its radar speed this many ticks before and after.
        chunk_frames: frames labelled per batch (bounds memory at chunk x horizon).
    """

    dt_s: float = 0.1
    horizon_s: float = 3.0
    margin_m: float = 2.0
    hazard_gap_m: float = 5.0
    hazard_ttc_s: float = 1.0
    hard_brake_mps2: float = 4.0
    brake_reason_ttc_s: float = 4.0
    overbrake_slack_mps2: float = 1.0
    hazard_decel_mps2: float = 3.0
    max_decel_mps2: float = 9.5
    lead_braking_mps2: float = LEAD_BRAKING_MPS2
    lead_brake_window_ticks: int = 3
    chunk_frames: int = 65_536

    @property
    def horizon_ticks(self) -> int:
        return max(1, round(self.horizon_s / self.dt_s))


@dataclass(frozen=True)
class Labels:
    """Labels per frame, tensors [N]: target acceleration [m/s²], hazard (0/1 float), needed deceleration
    [m/s²], confidence 0..1, and valid (bool)."""

    target_accel_mps2: torch.Tensor
    hazard: torch.Tensor
    needed_decel_mps2: torch.Tensor
    confidence: torch.Tensor
    valid: torch.Tensor


def _tensor(x: object) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    arr = np.asarray(x)
    return torch.from_numpy(arr.astype(np.float32) if arr.dtype == np.float16 else np.ascontiguousarray(arr))


def _obstacle_speed(p: Perceived, v: torch.Tensor, vid: torch.Tensor, tick: torch.Tensor, dt_s: float) -> torch.Tensor:
    """[N] the in-path obstacle's speed over ground. Where radar did not see it this frame, the perception reads
    it as standing (the cautious on-board choice); with the neighbouring frames at hand, the labeller takes the
    mean radar speed of the frames before and after when radar saw it there, else the ego speed plus the gap
    rate over those frames, so a car ahead that radar missed for a tick does not turn into a wall to stop for.
    Only where this frame's gap lies between its neighbours' (the same obstacle, not another one that stepped
    into the corridor for a tick)."""
    n = int(v.shape[0])
    speed = p.obstacle_speed_mps.clone()
    if n < 3:
        return speed
    i = torch.arange(1, n - 1)
    same = (vid[i - 1] == vid[i]) & (vid[i + 1] == vid[i]) & (tick[i + 1] - tick[i - 1] == 2)
    both = p.present[i - 1] & p.present[i + 1] & p.present[i]
    between = (p.gap_m[i] - 0.5 * (p.gap_m[i - 1] + p.gap_m[i + 1])).abs() < CONFIRM_RANGE_M
    rate = (p.gap_m[i + 1] - p.gap_m[i - 1]) / (2.0 * dt_s)
    from_gap = (v[i] + rate).clamp_min(0.0)
    radar_both = p.radar_seen[i - 1] & p.radar_seen[i + 1]
    from_radar = 0.5 * (p.obstacle_speed_mps[i - 1] + p.obstacle_speed_mps[i + 1])
    est = torch.where(radar_both, from_radar, from_gap)
    use = same & both & between & ~p.radar_seen[i]
    speed[i] = torch.where(use, est, speed[i])
    return speed


def _obstacle_braking(
    p: Perceived, speed: torch.Tensor, vid: torch.Tensor, tick: torch.Tensor, cfg: LabelConfig
) -> torch.Tensor:
    """[N] the in-path obstacle's deceleration [m/s²] from hindsight: its radar speed ``lead_brake_window_ticks``
    before and after each frame, where both are the same vehicle's contiguous frames and radar saw an in-path
    obstacle at both ends; 0 elsewhere or where it does not brake. Whether it is the same obstacle at both ends is
    not checked: a slower one taking a faster one's place reads as braking, and then the stopping distance it adds
    is short (the slower one's speed, the larger apparent deceleration), so the label errs towards braking."""
    n = int(speed.shape[0])
    k = cfg.lead_brake_window_ticks
    out = torch.zeros(n)
    if n <= 2 * k:
        return out
    i = torch.arange(k, n - k)
    a, b = i - k, i + k
    same = (vid[a] == vid[b]) & (tick[b] - tick[a] == 2 * k)
    seen = p.present[a] & p.present[b] & p.radar_seen[a] & p.radar_seen[b]
    decel = (speed[a] - speed[b]) / (2 * k * cfg.dt_s)
    out[i] = torch.where(same & seen, decel, torch.zeros_like(decel)).clamp_min(0.0)
    return out


def hindsight_labels(cfg: LabelConfig, frames: Mapping[str, object]) -> Labels:
    """Label ``frames`` (columns as numpy arrays or tensors, ordered by vehicle then tick; e.g.
    ``OnboardBuffer.frames()``). Optional columns: ``fallback_stage``, ``command_accel_mps2``."""
    missing = [c for c in REQUIRED if c not in frames]
    if missing:
        raise ValueError(f"hindsight_labels needs columns {missing}; give the buffer's or telemetry's frames")
    col = {k: _tensor(v) for k, v in frames.items()}
    vid = col["vehicle_id"].to(torch.int64)
    tick = col["tick"].to(torch.int64)
    n = int(vid.shape[0])
    if n and bool(((vid[1:] < vid[:-1]) | ((vid[1:] == vid[:-1]) & (tick[1:] <= tick[:-1]))).any()):
        raise ValueError("frames must be ordered by vehicle id, then strictly increasing tick")
    v = col["ego_speed_mps"].float()
    p = perceive_in_path(
        col["lidar_range_m"].float(),
        col["radar_range_m"].float(),
        col["radar_range_rate_mps"].float(),
        col["radar_azimuth_rad"].float(),
        col["radar_valid"].bool(),
        v,
    )
    decel = -col["ego_accel_mps2"].float()
    stage = col["fallback_stage"].to(torch.int64) if "fallback_stage" in col else torch.zeros(n, dtype=torch.int64)
    # Hindsight speeds and TTC (a lead radar missed for a frame is not standing; see _obstacle_speed).
    obstacle_speed = _obstacle_speed(p, v, vid, tick, cfg.dt_s)
    # A lead that is braking at the end of the horizon goes on braking to a stop beyond it (the expert's reading,
    # ``fleetloop.sim.expert._required_decel``): where it stops is what the ego must stay behind.
    braking = _obstacle_braking(p, obstacle_speed, vid, tick, cfg)
    lead_stop = lead_stop_distance_m(obstacle_speed, braking, cfg.lead_braking_mps2)
    closing = torch.where(p.present, v - obstacle_speed, torch.zeros_like(v))
    ttc = torch.where(p.present & (closing > 0.1), p.gap_m.clamp_min(0.0) / closing.clamp_min(0.1), math.inf)
    braked_for_it = (decel > cfg.hard_brake_mps2) & (ttc < cfg.brake_reason_ttc_s)
    # Each cue needs an obstacle perceived closing within ``brake_reason_ttc_s``: close behind a car in a queue
    # is following, and a full brake of the fallback with nothing closing ahead was braking for a ghost.
    closing_in = ttc < cfg.brake_reason_ttc_s
    too_close = (p.gap_m < cfg.hazard_gap_m) & closing_in
    event = too_close | (ttc < cfg.hazard_ttc_s) | braked_for_it
    event = event | ((stage == STAGE_FULL) & closing_in)
    # Distance driven since the first frame, by odometry (trapezoid per tick).
    step = torch.zeros(n, dtype=torch.float64)
    if n > 1:
        step[1:] = 0.5 * (v[1:] + v[:-1]).double() * cfg.dt_s
    odo = torch.cumsum(step, 0)
    command = col["command_accel_mps2"].float() if "command_accel_mps2" in col else -decel
    h = cfg.horizon_ticks
    k = torch.arange(1, h + 1)
    out: list[tuple[torch.Tensor, ...]] = []
    for lo in range(0, n, cfg.chunk_frames):
        i = torch.arange(lo, min(n, lo + cfg.chunk_frames))
        j = (i.unsqueeze(-1) + k).clamp(max=max(n - 1, 0))
        # A later frame counts only if it is the same vehicle exactly k ticks later (no gap in the record).
        ok = (i.unsqueeze(-1) + k < n) & (vid[j] == vid[i].unsqueeze(-1)) & (tick[j] - tick[i].unsqueeze(-1) == k)
        t = k.double() * cfg.dt_s
        d = (p.gap_m[j].double() + odo[j] - odo[i].unsqueeze(-1) - cfg.margin_m).clamp_min(0.05)
        vi = v[i].double().unsqueeze(-1)
        stop_by_t = 2.0 * d / vi.clamp_min(1e-3) <= t
        a_stop = vi * vi / (2.0 * d)
        a_reach = (2.0 * (vi * t - d) / (t * t)).clamp_min(0.0)
        need_j = torch.where(stop_by_t, a_stop, a_reach)
        standing = obstacle_speed[j] < 1.0
        need_j = torch.where(standing, torch.maximum(need_j, a_stop), need_j)
        # Only where the horizon ends: within it, where the obstacle went is known.
        beyond = vi * vi / (2.0 * (d[:, -1:] + lead_stop[j[:, -1:]].double()))
        need_j[:, -1:] = torch.maximum(need_j[:, -1:], beyond)
        need_j = torch.where(ok & p.present[j], need_j, torch.zeros_like(need_j))
        need = need_j.max(-1).values.float().clamp(max=cfg.max_decel_mps2)
        seen = (ok & event[j]).any(-1)
        hazard = seen | (need > cfg.hazard_decel_mps2)
        cover = ok.float().mean(-1)
        conf = torch.where(seen, torch.ones_like(cover), cover)
        valid = ok.all(-1) | seen
        gentle = torch.maximum(command[i], -(need + cfg.overbrake_slack_mps2))
        target = torch.where(need > cfg.hazard_decel_mps2, -need, gentle)
        out.append((target, hazard.float(), need, conf, valid))
    if not out:
        empty = torch.zeros(0)
        return Labels(empty, empty, empty, empty, empty.bool())
    cols = [torch.cat(parts) for parts in zip(*out, strict=True)]
    return Labels(*cols)
