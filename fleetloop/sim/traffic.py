"""Traffic: the Intelligent Driver Model and leader search by sorting per lane.

The same code moves the actors inside every scene (rows = scenes, columns = the ego and its actors) and the
benchmark's shared 3-lane road (one row of 100,000 vehicles): leaders are found by one sort per row on the key
``lane * LANE_KEY_M + position``, never pairwise, so the cost is O(N log N).

IDM (Treiber, Hennecke, Helbing 2000)::

    a = a_max * (1 - (v / v0)**delta - (s_star / s)**2),   s_star = s0 + max(0, v*T + v*dv / (2*sqrt(a_max*b)))

with ``dv = v - v_leader`` (approach rate) and ``s`` the bumper-to-bumper gap. Defaults below are the actors'
parameters (documented in docs/sim.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["IdmParams", "LeaderInfo", "ballistic_update", "find_leaders", "idm_acceleration", "road_traffic_step"]

LANE_KEY_M = 1.0e9  # [m] lane separation in the sort key; larger than any road
NO_LEADER_GAP_M = 1.0e6  # [m] gap reported when nobody is ahead in the lane


@dataclass(frozen=True)
class IdmParams:
    """Intelligent Driver Model parameters.

    Attributes:
        v0_mps: desired speed [m/s] (a tensor per vehicle may be passed to ``idm_acceleration`` instead).
        time_headway_s: safe time headway T [s].
        min_gap_m: jam distance s0 [m].
        accel_mps2: maximum acceleration a [m/s²].
        comfort_decel_mps2: comfortable deceleration b [m/s²].
        delta: acceleration exponent [-].
    """

    v0_mps: float = 33.3
    time_headway_s: float = 1.5
    min_gap_m: float = 2.0
    accel_mps2: float = 1.0
    comfort_decel_mps2: float = 1.5
    delta: float = 4.0


@dataclass(frozen=True)
class LeaderInfo:
    """Per vehicle: index of the leader in its row (-1: none), gap [m] and leader speed [m/s] and accel [m/s²]."""

    index: torch.Tensor
    gap_m: torch.Tensor
    speed_mps: torch.Tensor
    accel_mps2: torch.Tensor


def idm_acceleration(
    speed_mps: torch.Tensor,
    gap_m: torch.Tensor,
    approach_mps: torch.Tensor,
    params: IdmParams,
    v0_mps: torch.Tensor | None = None,
) -> torch.Tensor:
    """IDM acceleration [m/s²]; ``approach_mps`` is own speed minus leader speed; gap is clamped at 0.1 m."""
    v0 = params.v0_mps if v0_mps is None else v0_mps.clamp_min(0.1)
    s_star = params.min_gap_m + (
        speed_mps * params.time_headway_s
        + speed_mps * approach_mps / (2.0 * math.sqrt(params.accel_mps2 * params.comfort_decel_mps2))
    ).clamp_min(0.0)
    free = (speed_mps / v0) ** params.delta
    return params.accel_mps2 * (1.0 - free - (s_star / gap_m.clamp_min(0.1)) ** 2)


def find_leaders(
    front_m: torch.Tensor,
    lane: torch.Tensor,
    length_m: torch.Tensor,
    speed_mps: torch.Tensor,
    accel_mps2: torch.Tensor,
    present: torch.Tensor | None = None,
) -> LeaderInfo:
    """Leader of every vehicle in its lane, by one sort per row over the last dimension.

    All inputs have shape [..., N]: front-bumper positions [m], integer lanes, lengths [m], speeds, accelerations
    and an optional ``present`` mask (absent vehicles neither lead nor are led). After sorting by
    (lane, position), a vehicle's leader is simply the next one in the sorted row if it is in the same lane, so all
    the work happens in sorted order and is scattered back once.
    """
    key = lane.to(torch.float64) * LANE_KEY_M + front_m.to(torch.float64)
    if present is not None:
        key = torch.where(present, key, torch.full_like(key, math.inf))
    order = torch.sort(key, dim=-1, stable=True).indices
    # The four per-vehicle quantities travel together: one gather into sorted order, one shift, one scatter back.
    vals = torch.stack(
        [front_m, length_m.to(front_m.dtype), speed_mps.to(front_m.dtype), accel_mps2.to(front_m.dtype)], -2
    )
    vals_s = vals.gather(-1, order.unsqueeze(-2).expand_as(vals))  # [..., 4, N]
    l_s = lane.gather(-1, order)
    same = l_s[..., 1:] == l_s[..., :-1]
    if present is not None:
        p_s = present.gather(-1, order)
        same = same & p_s[..., 1:] & p_s[..., :-1]
    same = torch.cat([same, torch.zeros_like(same[..., :1])], dim=-1)  # the front vehicle of a row has no leader
    ahead = torch.cat([vals_s[..., 1:], vals_s[..., -1:]], dim=-1)  # the next vehicle in sorted order
    gap_s = torch.where(same, ahead[..., 0, :] - ahead[..., 1, :] - vals_s[..., 0, :], NO_LEADER_GAP_M)
    lead_v_s = torch.where(same, ahead[..., 2, :], vals_s[..., 2, :])
    lead_a_s = torch.where(same, ahead[..., 3, :], 0.0)
    nxt = torch.cat([order[..., 1:], order[..., :1]], dim=-1)
    idx_s = torch.where(same, nxt, -1)
    out_s = torch.stack([gap_s, lead_v_s, lead_a_s], -2)
    out = torch.empty_like(out_s).scatter_(-1, order.unsqueeze(-2).expand_as(out_s), out_s)
    index = torch.empty_like(idx_s).scatter_(-1, order, idx_s)
    return LeaderInfo(
        index=index,
        gap_m=out[..., 0, :].to(speed_mps.dtype) if front_m.dtype != speed_mps.dtype else out[..., 0, :],
        speed_mps=out[..., 1, :].to(speed_mps.dtype),
        accel_mps2=out[..., 2, :].to(accel_mps2.dtype),
    )


def ballistic_update(
    pos_m: torch.Tensor, speed_mps: torch.Tensor, accel_mps2: torch.Tensor, dt_s: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance with constant acceleration over ``dt_s``; a vehicle that would reverse stops where v reaches 0."""
    new_v = speed_mps + accel_mps2 * dt_s
    # a vehicle that would reverse stops where its speed reaches zero: distance v^2 / (2 |a|)
    dist = torch.where(
        new_v < 0, speed_mps * speed_mps / (-2.0 * accel_mps2).clamp_min(1e-9), (speed_mps + new_v) * (0.5 * dt_s)
    )
    return pos_m + dist.to(pos_m.dtype), new_v.clamp_min(0.0)


def road_traffic_step(
    front_m: torch.Tensor,
    speed_mps: torch.Tensor,
    accel_mps2: torch.Tensor,
    lane: torch.Tensor,
    length_m: torch.Tensor,
    params: IdmParams,
    dt_s: float,
    v0_mps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One IDM tick of every vehicle on a shared road (no lane changes): returns (front_m, speed_mps, accel_mps2).

    ``v0_mps`` optionally gives each vehicle its own desired speed.
    """
    lead = find_leaders(front_m, lane, length_m, speed_mps, accel_mps2)
    accel = idm_acceleration(speed_mps, lead.gap_m, speed_mps - lead.speed_mps, params, v0_mps=v0_mps)
    new_front, new_speed = ballistic_update(front_m, speed_mps, accel, dt_s)
    return new_front, new_speed, accel
