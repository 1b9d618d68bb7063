"""The privileged expert: a ground-truth planner, and the in-path analysis the event monitors share with it.

The expert sees the true state (through fog, at night, actor speeds and lateral motion). It has three uses only:
making the initial model (and the all-conditions reference that is never deployed), auditing label quality, and
the progress reference in evaluation. It never produces hindsight labels or fleet training data.

Its policy: IDM car-following at the scene's cruise speed behind the *in-path obstacle* (an actor overlapping the
ego's corridor now, or whose lateral motion brings it into the corridor before the ego gets there), overridden
by the deceleration needed to stop behind it once the dead time is accounted for. Outside emergencies it builds
up braking no faster than ``COMFORT_JERK_MPS3`` from its last command (a planner's comfort limit; the actuator
alone would build any brake at 30 m/s³), so its own driving shows few harsh-jerk ticks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fleetloop.sim.state import EGO_LENGTH_M, EGO_WIDTH_M, World, WorldState
from fleetloop.sim.traffic import IdmParams, idm_acceleration

__all__ = ["EXPERT_IDM", "InPath", "expert_control", "in_path"]

EXPERT_IDM = IdmParams(v0_mps=33.3, time_headway_s=1.2, min_gap_m=2.5, accel_mps2=1.5, comfort_decel_mps2=2.5, delta=4)
CORRIDOR_MARGIN_M = 0.2  # [m] lateral margin added to the ego's half width
PREDICT_HORIZON_S = 4.0  # [s] how far ahead lateral motion is extrapolated
STOP_MARGIN_M = 1.5  # [m] the expert stops this far behind an obstacle
EMERGENCY_ONSET_MPS2 = 2.0  # [m/s²] the expert brakes at least what is needed beyond this
OVERBRAKE_FACTOR = 1.3  # [-] the expert brakes at most this much more than needed (unless comfortable)
BRAKE_RAMP_ALLOWANCE_S = 0.2  # [s] extra lag for the brake build-up (jerk limit)
FAR_M = 1.0e6  # [m] gap when nothing is in path
# ISO 15622 (ACC) limits the average rate of change of deceleration to 2.5 m/s³ at high and 5 m/s³ at low speed;
# the upper value keeps the expert responsive and well under the 10 m/s³ harsh-jerk event threshold.
COMFORT_JERK_MPS3 = 5.0  # [m/s³]
# Between the emergency onset and a hard stop the expert still builds braking just under the 10 m/s³ harsh-jerk
# threshold; only when it needs more than ``URGENT_DECEL_MPS2`` does it let the actuator build up at full rate.
FIRM_JERK_MPS3 = 9.0  # [m/s³]
URGENT_DECEL_MPS2 = 4.0  # [m/s²] (the hard-braking event threshold)


@dataclass(frozen=True)
class InPath:
    """The nearest obstacle in (or entering) the ego's path, per scene; tensors [B].

    ``gap_m`` is from the ego's front bumper to the obstacle's rear (``FAR_M`` if none); ``ttc_s`` counts only
    obstacles overlapping the corridor now (inf if none or not closing); ``required_decel_mps2`` is the
    deceleration the obstacle demands from now on (0 if none).
    """

    present: torch.Tensor
    gap_m: torch.Tensor
    speed_mps: torch.Tensor
    accel_mps2: torch.Tensor
    ttc_s: torch.Tensor
    required_decel_mps2: torch.Tensor


def _required_decel(gap_m: torch.Tensor, v_e: torch.Tensor, v_l: torch.Tensor, a_l: torch.Tensor) -> torch.Tensor:
    """Constant deceleration that keeps ``STOP_MARGIN_M`` to an obstacle that brakes to a stop at ``a_l`` or keeps
    its speed; 0 when not closing."""
    space = (gap_m - STOP_MARGIN_M).clamp_min(0.05)
    stopping = (a_l < -0.3) | (v_l < 0.5)
    lead_stop_m = torch.where(stopping, v_l * v_l / (2.0 * (-a_l).clamp_min(0.3)), torch.zeros_like(v_l))
    d_stop = v_e * v_e / (2.0 * (space + lead_stop_m))
    closing = (v_e - v_l).clamp_min(0.0)
    d_follow = closing * closing / (2.0 * space)
    return torch.where(stopping, d_stop, d_follow).clamp(0.0, 50.0)


def in_path(world: World, state: WorldState) -> InPath:
    """Find each scene's in-path obstacle from the true state."""
    present = state.actor_kind > 0
    ego_y = world.lane_center_m(state.ego_lane.to(state.actor_y_m.dtype)).unsqueeze(-1)  # type: ignore[union-attr]
    half = 0.5 * (state.actor_width_m + EGO_WIDTH_M) + CORRIDOR_MARGIN_M
    gap = state.actor_x_m - state.actor_len_m
    ahead = present & (state.actor_x_m > 0.0)
    now_in = (state.actor_y_m - ego_y).abs() < half
    v_e = state.ego_v_mps.unsqueeze(-1)
    closing = v_e - state.actor_v_mps
    # Lateral motion matters until the ego has passed the obstacle (or over the horizon if it never does).
    t_reach = ((gap.clamp_min(0.0) + EGO_LENGTH_M + state.actor_len_m) / closing.clamp_min(0.1)).clamp(
        0.0, PREDICT_HORIZON_S
    )
    y_pred = state.actor_y_m + state.actor_vy_mps * t_reach
    lo = torch.minimum(state.actor_y_m, y_pred)
    hi = torch.maximum(state.actor_y_m, y_pred)
    will_in = (lo < ego_y + half) & (hi > ego_y - half)
    relevant = ahead & (now_in | will_in)
    gap_masked = torch.where(relevant, gap, torch.full_like(gap, FAR_M))
    nearest = gap_masked.argmin(dim=-1, keepdim=True)
    has = relevant.any(dim=-1)
    g = torch.gather(gap_masked, -1, nearest).squeeze(-1)
    v_l = torch.where(has, torch.gather(state.actor_v_mps, -1, nearest).squeeze(-1), state.ego_v_mps)
    a_l = torch.where(has, torch.gather(state.actor_a_mps2, -1, nearest).squeeze(-1), torch.zeros_like(g))
    req = torch.where(has, _required_decel(g, state.ego_v_mps, v_l, a_l), torch.zeros_like(g))
    inf = torch.full_like(gap, float("inf"))
    ttc_each = torch.where(ahead & now_in & (closing > 0.01), gap.clamp_min(0.0) / closing.clamp_min(0.01), inf)
    ttc = ttc_each.min(dim=-1).values
    return InPath(present=has, gap_m=g, speed_mps=v_l, accel_mps2=a_l, ttc_s=ttc, required_decel_mps2=req)


def expert_control(world: World, state: WorldState, path: InPath | None = None) -> torch.Tensor:
    """The expert's longitudinal command [B] [m/s²] for the true state (for imitation and as progress reference)."""
    p = in_path(world, state) if path is None else path
    v_e = state.ego_v_mps
    idm = idm_acceleration(v_e, p.gap_m, v_e - p.speed_mps, EXPERT_IDM, v0_mps=state.ego_v0_mps)
    # Dead time and brake build-up: the obstacle comes closer before any braking takes effect.
    lag_s = world.dead_time_s + BRAKE_RAMP_ALLOWANCE_S
    closing = (v_e - p.speed_mps).clamp_min(0.0)
    lead_brake_m = (-p.accel_mps2).clamp_min(0.0) * 0.5 * lag_s * lag_s
    gap_after_lag = p.gap_m - closing * lag_s - lead_brake_m
    need = torch.where(p.present, _required_decel(gap_after_lag, v_e, p.speed_mps, p.accel_mps2), torch.zeros_like(v_e))
    # IDM over-brakes on a fast approach to a far obstacle; never brake much harder than the kinematics need
    # (or than comfortable), and brake at least what they need once that is more than comfortable.
    floor = -torch.maximum(need * OVERBRAKE_FACTOR, torch.full_like(need, EXPERT_IDM.comfort_decel_mps2))
    ceiling = torch.where(need > EMERGENCY_ONSET_MPS2, -need * 1.1, torch.full_like(need, float("inf")))
    cmd = torch.minimum(torch.maximum(idm, floor), ceiling)
    # Braking builds up at the comfort jerk from the last command issued, a firm brake just under the harsh-jerk
    # threshold; an urgent one does not wait.
    if state.ego_cmd_queue.shape[-1] > 0:
        last = state.ego_cmd_queue[:, -1]
        rate = torch.where(need > EMERGENCY_ONSET_MPS2, FIRM_JERK_MPS3, COMFORT_JERK_MPS3)
        limited = torch.maximum(cmd, torch.minimum((last - rate * world.dt_s).clamp_max(0.0), last))
        cmd = torch.where(need > URGENT_DECEL_MPS2, cmd, limited)
    # A stopped ego with an obstacle right ahead holds the brake instead of creeping.
    cmd = torch.where(p.present & (p.gap_m < STOP_MARGIN_M + 1.0) & (v_e < 0.5), -torch.ones_like(cmd), cmd)
    return cmd.clamp(-world.max_brake_mps2, world.max_accel_mps2)
