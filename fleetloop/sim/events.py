"""Event definitions, in one place, with their thresholds.

Each is decided per scene per tick from two consecutive states (``detect_events(world, prev, state)``); events are
rising edges, so a long braking manoeuvre counts once.

- collision: the ego's box first overlaps an actor's box (sticky; the scene freezes). ``impact_speed_mps`` is the
  relative speed at the instant of contact (solved exactly within the tick for rear-end impacts).
- near miss: an episode of ground-truth TTC < ``NEAR_MISS_TTC_S`` to an obstacle in the ego's corridor ends
  without contact; reported on the tick it ends, with the episode's minimum TTC.
- hard braking: the ego's deceleration first exceeds ``HARD_BRAKE_MPS2``.
- phantom braking: braking that no hazard required. An episode starts when the ego's deceleration first exceeds
  ``PHANTOM_BRAKE_MPS2`` while, on this tick and the one before, (a) the ground truth demands less than
  ``PHANTOM_REQUIRED_MAX_MPS2`` from the in-path obstacle (none in or entering the path, or one the ego can match
  gently) and (b) the ego is not closing on an obstacle in its corridor within ``PHANTOM_TTC_S`` (the stopping
  envelope: a slower lead that close is a reason to brake, so following one is not phantom braking). Braking for a
  radar ghost (an overhead sign), for fog backscatter or for a pedestrian on the kerb counts; the privileged
  expert scores 0 on it by construction of its policy (measured: 0 per 1,000 km on ``mixed`` in every preset).
- jerk: ``jerk_mps3`` per tick from the acceleration the actuators deliver (not the kinematic one, which jumps to 0
  when the car comes to rest while the brake still holds); ``harsh_jerk`` on a tick where |jerk| exceeds
  ``HARSH_JERK_MPS3`` (a tick, not an episode: the state keeps one tick of acceleration history).
  All thresholds carry a 1e-3 rounding margin: the actuator's exact steps sit on them.
- progress: ``distance_m`` driven this tick; compare with an expert-driven copy of the same scenes
  (``progress_ratio``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from fleetloop.sim.state import World, WorldState

__all__ = [
    "HARD_BRAKE_MPS2",
    "HARSH_JERK_MPS3",
    "NEAR_MISS_TTC_S",
    "PHANTOM_BRAKE_MPS2",
    "PHANTOM_REQUIRED_MAX_MPS2",
    "PHANTOM_TTC_S",
    "Events",
    "detect_events",
    "progress_ratio",
]

# Near miss: minimum TTC under 1 s without contact (the issue's definition; TTC < 1 s is the usual "serious
# conflict" band of traffic-conflict studies).
NEAR_MISS_TTC_S = 1.0  # [s]
# Hard braking: 4 m/s² (~0.4 g), the usual naturalistic-driving "hard braking" cut (telematics use 0.3-0.45 g).
HARD_BRAKE_MPS2 = 4.0  # [m/s²]
# Phantom braking: a brake a passenger notices (~0.3 g, above the 2-2.5 m/s² of comfortable ACC braking).
PHANTOM_BRAKE_MPS2 = 3.0  # [m/s²]
# ... while the truth needs less than this: 1 m/s² is matched by lifting off the throttle (engine drag and
# rolling resistance give 0.5-1 m/s²).
PHANTOM_REQUIRED_MAX_MPS2 = 1.0  # [m/s²]
# ... and nothing in the corridor is closer than this TTC: 4 s is the upper end of the TTC band traffic-conflict
# studies and forward-collision warnings treat as a conflict (Hirst & Graham 1997; Minderhoud & Bovy 2001, TTC*
# 1.5-4 s); inside it braking has a reason even when a gentler brake would do.
PHANTOM_TTC_S = 4.0  # [s]
# Harsh jerk: |jerk| over 10 m/s³, the "critical jerk" of naturalistic-driving studies of harsh braking
# (Bagdadi & Várhelyi 2011, about -9.9 m/s³); comfortable driving stays under ~2.5-5 m/s³ (ISO 15622 ACC).
HARSH_JERK_MPS3 = 10.0  # [m/s³]
# The actuator moves in exact steps (10 m/s³ ramps, 3 m/s² brake increments per tick) that sit on these thresholds;
# without a margin, last-bit rounding (CPU vs CUDA) would decide whether such a step counts.
ROUNDING_MARGIN = 1e-3  # [m/s² or m/s³]


@dataclass(frozen=True)
class Events:
    """Events of one tick, each a [B] tensor (bool flags, float32 values)."""

    collision: torch.Tensor
    impact_speed_mps: torch.Tensor
    near_miss: torch.Tensor
    near_miss_min_ttc_s: torch.Tensor
    hard_brake: torch.Tensor
    phantom_brake: torch.Tensor
    harsh_jerk: torch.Tensor
    decel_mps2: torch.Tensor
    jerk_mps3: torch.Tensor
    ttc_s: torch.Tensor
    distance_m: torch.Tensor

    def counts(self) -> dict[str, int]:
        """Number of scenes with each flag event this tick."""
        return {
            f.name: int(getattr(self, f.name).sum()) for f in fields(self) if getattr(self, f.name).dtype == torch.bool
        }


def detect_events(world: World, prev: WorldState, state: WorldState) -> Events:
    """Events between ``prev`` and ``state`` (the state ``step`` returned from ``prev``)."""
    alive = ~state.collided
    # margins folded into the decelerations compared with thresholds (see ROUNDING_MARGIN)
    decel = -state.ego_a_mps2 - ROUNDING_MARGIN
    prev_decel = -prev.ego_a_mps2 - ROUNDING_MARGIN
    jerk = (state.ego_act_mps2 - prev.ego_act_mps2) / world.dt_s
    collision = state.collided & ~prev.collided
    near = prev.near_active & ~state.near_active & alive
    hard = alive & (decel > HARD_BRAKE_MPS2) & ~(prev_decel > HARD_BRAKE_MPS2)
    unneeded = (
        (state.required_decel_mps2 < PHANTOM_REQUIRED_MAX_MPS2)
        & (prev.required_decel_mps2 < PHANTOM_REQUIRED_MAX_MPS2)
        & (state.ttc_s > PHANTOM_TTC_S)
        & (prev.ttc_s > PHANTOM_TTC_S)
    )
    phantom = alive & unneeded & (decel > PHANTOM_BRAKE_MPS2) & ~(prev_decel > PHANTOM_BRAKE_MPS2)
    harsh = alive & (jerk.abs() > HARSH_JERK_MPS3 + ROUNDING_MARGIN) & ~prev.collided
    nan = torch.full_like(state.ttc_s, float("nan"))
    return Events(
        collision=collision,
        impact_speed_mps=torch.where(collision, state.impact_speed_mps, torch.zeros_like(state.impact_speed_mps)),
        near_miss=near,
        near_miss_min_ttc_s=torch.where(near, prev.near_min_ttc_s, nan),
        hard_brake=hard,
        phantom_brake=phantom,
        harsh_jerk=harsh,
        decel_mps2=torch.where(alive, -state.ego_a_mps2, torch.zeros_like(decel)),
        jerk_mps3=torch.where(alive & ~prev.collided, jerk, torch.zeros_like(jerk)),
        ttc_s=state.ttc_s,
        distance_m=(state.ego_s_m - prev.ego_s_m).to(torch.float32),
    )


def progress_ratio(state: WorldState, expert_state: WorldState) -> torch.Tensor:
    """Distance driven since scene start by each ego over the expert's in the same scene [B] (1.0: as far)."""
    own = state.ego_s_m - state.ego_start_s_m
    ref = expert_state.ego_s_m - expert_state.ego_start_s_m
    return (own / ref.clamp_min(1e-6)).to(torch.float32)
