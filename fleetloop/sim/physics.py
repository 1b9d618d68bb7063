"""Longitudinal physics: the ego's actuators, the actors' motion, exact contact detection, shared hazards.

The ego's command passes a dead-time queue (``World.dead_time_s``), then a jerk limiter (braking builds up at
``brake_jerk_mps3``, everything else changes at ``jerk_mps3``), then the vehicle's limits and the road's friction
(|a| <= mu * g at the ego's position). Motion is ballistic within a tick (constant acceleration, stopping where the
speed reaches zero, never reversing).
"""

from __future__ import annotations

import math

import torch

from fleetloop.sim.state import EGO_LENGTH_M, EGO_WIDTH_M, GRAVITY_MPS2, KIND_CODES, World, WorldState
from fleetloop.sim.traffic import ballistic_update, find_leaders, idm_acceleration

__all__ = ["actuate_ego", "contacts", "hazard_slots", "move_actors"]

VEHICLE = KIND_CODES["vehicle"]
PEDESTRIAN = KIND_CODES["pedestrian"]
STOPPED = KIND_CODES["stopped_vehicle"]
HAZARD_WINDOW_M = (-60.0, 250.0)  # [m] shared hazards within this range of the ego fill its hazard slots


def actuate_ego(
    world: World, queue: torch.Tensor, act: torch.Tensor, command: torch.Tensor, friction: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Push ``command`` [B] into the dead-time queue [B, D]; return (new queue, acceleration delivered this tick)."""
    if queue.shape[-1] == 0:
        delayed, new_queue = command, queue
    else:
        delayed = queue[:, 0]
        new_queue = torch.cat([queue[:, 1:], command.unsqueeze(-1)], dim=-1)
    target = delayed.clamp(-world.max_brake_mps2, world.max_accel_mps2)
    dt = world.dt_s
    # Braking builds up fast (brake pressure); throttle and brake release follow the slower powertrain limit.
    change = (target - act).clamp(-world.brake_jerk_mps3 * dt, world.jerk_mps3 * dt)
    change = torch.where((target < act) & (target >= 0), (target - act).clamp_min(-world.jerk_mps3 * dt), change)
    grip = friction * GRAVITY_MPS2
    new_act = torch.maximum(torch.minimum(act + change, grip), -grip)
    return new_queue, new_act


def move_actors(world: World, state: WorldState, friction: torch.Tensor) -> dict[str, torch.Tensor]:
    """Advance every actor one tick (IDM behind its leader, scripted braking and lateral moves).

    Returns the new actor fields (absolute displacement ``dx_m`` instead of a relative position).
    """
    dt = world.dt_s
    kind = state.actor_kind
    present = kind > 0
    b = state.batch
    # Leader search over [ego, actors] per scene: actors can follow the ego and each other.
    lane_a = torch.floor(state.actor_y_m / world.lane_width_m).to(torch.int64)
    front = torch.cat([torch.zeros(b, 1, device=state.device), state.actor_x_m], dim=-1)
    lane = torch.cat([state.ego_lane.unsqueeze(-1), lane_a], dim=-1)
    length = torch.cat([torch.full((b, 1), EGO_LENGTH_M, device=state.device), state.actor_len_m], dim=-1)
    speed = torch.cat([state.ego_v_mps.unsqueeze(-1), state.actor_v_mps], dim=-1)
    accel = torch.cat([state.ego_a_mps2.unsqueeze(-1), state.actor_a_mps2], dim=-1)
    pres = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=state.device), present], dim=-1)
    lead = find_leaders(front, lane, length, speed, accel, pres)
    gap = lead.gap_m[:, 1:]
    a = idm_acceleration(
        state.actor_v_mps, gap, state.actor_v_mps - lead.speed_mps[:, 1:], world.actor_idm, v0_mps=state.actor_v0_mps
    )
    t = state.scene_t_s.unsqueeze(-1)
    braking = t >= state.actor_brake_t_s
    a = torch.where(braking, torch.minimum(a, -state.actor_brake_mps2), a)
    grip = friction.unsqueeze(-1) * GRAVITY_MPS2
    a = torch.maximum(torch.minimum(a, grip), -grip)
    a = torch.where(kind == VEHICLE, a, torch.zeros_like(a))
    a = torch.where((state.actor_v_mps <= 0) & (a < 0), torch.zeros_like(a), a)
    zero = torch.zeros_like(state.actor_x_m)
    dx, v = ballistic_update(zero, state.actor_v_mps, a, dt)
    # Scripted lateral moves (cut-ins, pedestrians crossing) at constant lateral speed up to the target.
    to_go = state.actor_target_y_m - state.actor_y_m
    moving = present & (t >= state.actor_move_t_s) & (to_go.abs() > 1e-6)
    step_y = torch.where(moving, torch.sign(to_go) * torch.minimum(to_go.abs(), state.actor_lat_speed_mps * dt), zero)
    return {
        "dx_m": dx,
        "actor_v_mps": v,
        "actor_a_mps2": a,
        "actor_y_m": state.actor_y_m + step_y,
        "actor_vy_mps": step_y / dt,
    }


def contacts(
    world: World,
    state: WorldState,
    x_new: torch.Tensor,
    y_new: torch.Tensor,
    v_new: torch.Tensor,
    a_actor: torch.Tensor,
    vy_new: torch.Tensor,
    ego_v_new: torch.Tensor,
    ego_a: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which actors touch the ego at the end of the tick [B, K], and the relative impact speed [B, K] [m/s].

    For an actor that was fully ahead, the contact time within the tick is solved exactly for the constant
    accelerations of the tick, and the closing speed is taken at that instant; otherwise (side or rear contact)
    the relative speed at the end of the tick is used.
    """
    ego_y = world.lane_center_m(state.ego_lane.to(y_new.dtype)).unsqueeze(-1)  # type: ignore[union-attr]
    lat = (y_new - ego_y).abs() < 0.5 * (state.actor_width_m + EGO_WIDTH_M)
    lon = (x_new > -EGO_LENGTH_M) & (x_new - state.actor_len_m < 0.0)
    touch = (state.actor_kind > 0) & lat & lon
    gap0 = state.actor_x_m - state.actor_len_m
    v_e0 = state.ego_v_mps.unsqueeze(-1)
    dv0 = state.actor_v_mps - v_e0  # gap rate at the start of the tick
    da = a_actor - ego_a.unsqueeze(-1)
    # gap0 + dv0 t + da t^2 / 2 = 0: smallest root in [0, dt]
    disc = (dv0 * dv0 - 2.0 * da * gap0).clamp_min(0.0)
    quad = (-dv0 - torch.sqrt(disc)) / da.where(da.abs() > 1e-6, torch.ones_like(da))
    quad_alt = (-dv0 + torch.sqrt(disc)) / da.where(da.abs() > 1e-6, torch.ones_like(da))
    lin = gap0 / (-dv0).clamp_min(1e-6)
    quad_ok = torch.where((quad >= 0) & (quad <= world.dt_s), quad, quad_alt)
    t_hit = torch.where(da.abs() > 1e-6, quad_ok, lin).clamp(0.0, world.dt_s)
    closing_front = (v_e0 + ego_a.unsqueeze(-1) * t_hit).clamp_min(0.0) - (
        state.actor_v_mps + a_actor * t_hit
    ).clamp_min(0.0)
    rel_end = torch.sqrt((ego_v_new.unsqueeze(-1) - v_new) ** 2 + vy_new**2)
    front = (gap0 >= 0.0) & lat
    speed = torch.where(front, closing_front.abs(), rel_end)
    return touch, torch.where(touch, speed, torch.zeros_like(speed))


def hazard_slots(world: World, ego_s_m: torch.Tensor, time_s: float) -> dict[str, torch.Tensor]:
    """The nearest active shared hazards around each ego as actor fields [B, hazard_slots]."""
    b, n = ego_s_m.shape[0], world.hazard_slots
    dev = ego_s_m.device
    active = [h for h in world.hazards if h.onset_s <= time_s < h.clear_s]
    kinds = torch.zeros(b, n, dtype=torch.int64, device=dev)
    x = torch.zeros(b, n, device=dev)
    out = {"actor_kind": kinds, "actor_x_m": x}
    sizes = {"stopped_vehicle": (4.5, 1.8), "debris": (0.6, 0.8), "work_zone": (30.0, 1.0)}
    y = torch.zeros(b, n, device=dev)
    length = torch.ones(b, n, device=dev)
    width = torch.ones(b, n, device=dev)
    if n > 0 and active:
        pos = torch.tensor([h.position_m for h in active], dtype=torch.float64, device=dev)
        rel = torch.remainder(pos.unsqueeze(0) - ego_s_m.unsqueeze(-1) + world.road_length_m / 2, world.road_length_m)
        rel = (rel - world.road_length_m / 2).to(torch.float32)  # [B, H] in [-L/2, L/2)
        inside = (rel > HAZARD_WINDOW_M[0]) & (rel < HAZARD_WINDOW_M[1])
        score = torch.where(inside, rel.abs(), torch.full_like(rel, math.inf))
        k = min(n, len(active))
        best = torch.topk(score, k, dim=-1, largest=False).indices  # [B, k]
        ok = torch.isfinite(torch.gather(score, -1, best))
        table = torch.tensor(
            [[KIND_CODES[h.kind], world.lane_center_m(float(h.lane)), *sizes[h.kind]] for h in active],
            device=dev,
        )
        picked = table[best]  # [B, k, 4]
        kinds[:, :k] = torch.where(ok, picked[..., 0].to(torch.int64), torch.zeros_like(best))
        x[:, :k] = torch.where(ok, torch.gather(rel, -1, best), torch.zeros_like(x[:, :k]))
        y[:, :k], length[:, :k], width[:, :k] = picked[..., 1], picked[..., 2], picked[..., 3]
    out.update(actor_y_m=y, actor_len_m=length, actor_width_m=width)
    return out
