"""Each vehicle's heartbeat: what it drove and what happened to it since its last beat, as the vehicle itself knows.

The canary controller judges a model on these beats (docs/canary.md), so they hold only the vehicle's own
sensors and counters, never ground truth:

- ``distance_m``: odometry (the vehicle's own speed reading times the tick); ``planned_distance_m``: what its set
  speed (the route's cruise speed the driver or dispatcher gave it, ``desired_speed_mps``) would have covered.
  Their ratio is the vehicle-side progress measure: a model that crawls drives less of its plan. (The expert
  reference of the summary is ground truth and is not used here.)
- ``collisions``: the vehicle's impact sensor. The world has no crash-sensor model, so the runner passes the
  contact flag of its events: a collision is the one event every real vehicle knows directly.
- ``near_misses``: episodes of perceived TTC (the fallback's, from the vehicle's own radar and lidar) under
  ``near_miss_ttc_s`` that end without an impact, counted when they end (the world's definition, on perception).
- ``hard_brakes``: measured deceleration first above ``hard_brake_mps2``; an episode ends once it falls
  ``brake_release_mps2`` below (the odometry is noisy: no double counts around the threshold).
- ``phantom_brakes``: measured deceleration first above ``phantom_brake_mps2`` while, on this tick and the one
  before, the vehicle's own perception saw no reason: perceived TTC above ``phantom_ttc_s`` and the perceived
  obstacle needs less than ``phantom_need_mps2``.
- ``harsh_jerks``: episodes of measured jerk (the change of the measured acceleration per second) first above
  ``harsh_jerk_mps3`` while the car moves; an episode ends once the jerk falls ``jerk_release_mps3`` below, or
  the car stops (the kinematic acceleration drops to 0 when the car comes to rest; that stop is no jerk). One
  manoeuvre is one count: counted per tick, a jerky manoeuvre was a burst of counts (a beat's variance 8.9x its
  mean), which the controller's Poisson test reads as many independent events.
- ``deadline_misses``: inference deadlines missed; ``fallback_<reason>``: fallback activations by arbiter reason
  (the arbiter's hand-over edges: one per activation, however long the fallback drives).

Every event counter but ``deadline_misses`` (a per-inference fault) thus counts episodes, never ticks.
- conditions: the vehicle's own estimate (``fleetloop.edge_agent.conditions``) averaged over the beat, and the
  condition class it drove in most: ``fog`` (estimated visibility under ``fog_visibility_m``), else ``night``
  (estimated light under ``night_light``), else ``wet`` (estimated friction under ``wet_friction``), else
  ``clear``. No vehicle sensor estimates rain itself: a wet road shows as low friction once the brakes found it.
- ``scenario_class``: ``urban`` or ``highway`` by the set speed (under ``urban_speed_mps``: urban), ``_traffic``
  when the vehicle perceived an obstacle in its path closer than ``traffic_range_m`` during the beat, else
  ``_open``.

Pure and batched: ``heartbeat_step(cfg, state, signals) -> state`` once per tick (tensors on the shard's device, no
device sync), ``emit_heartbeats(cfg, state, ...) -> (state, beats)`` once per beat (one transfer). The beats are
plain records with the fields of the bus's ``FleetHealth`` 1.1 event (``Heartbeat.event_fields``); the shell that
sends them builds the event. Imports torch, the edge_agent numeric core and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from fleetloop.edge_agent.arbiter import DRIVER_MODEL, REASON_NAMES
from fleetloop.edge_agent.fallback import NO_OBSTACLE_M
from fleetloop.edge_agent.vehicle_step import VehicleTick
from fleetloop.platform.errors import FleetConfigError

__all__ = [
    "CONDITION_CLASSES",
    "COUNTERS",
    "FALLBACK_REASONS",
    "SCENARIO_CLASSES",
    "Heartbeat",
    "HeartbeatConfig",
    "HeartbeatSignals",
    "HeartbeatState",
    "emit_heartbeats",
    "heartbeat_step",
    "signals_from_tick",
]

CONDITION_CLASSES = ("clear", "fog", "night", "wet")
SCENARIO_CLASSES = ("urban_open", "urban_traffic", "highway_open", "highway_traffic")
FALLBACK_REASONS = REASON_NAMES[1:]
EVENT_COUNTERS = ("collisions", "near_misses", "hard_brakes", "phantom_brakes", "harsh_jerks", "deadline_misses")
COUNTERS = (*EVENT_COUNTERS, *(f"fallback_{r}" for r in FALLBACK_REASONS))
_C = {name: i for i, name in enumerate(COUNTERS)}


@dataclass(frozen=True)
class HeartbeatConfig:
    """Thresholds of the vehicle-side counters and classes (defaults: the world's event thresholds, on perception).

    Attributes:
        dt_s: tick length [s].
        near_miss_ttc_s: perceived TTC under this is a near-miss episode [s].
        hard_brake_mps2: measured deceleration above this is hard braking [m/s²].
        phantom_brake_mps2: measured deceleration above this with no perceived reason is phantom braking [m/s²].
        phantom_ttc_s: ... while nothing perceived in the path is closer than this TTC [s].
        phantom_need_mps2: ... and the perceived obstacle needs less than this deceleration [m/s²].
        brake_release_mps2: a braking episode ends once the deceleration falls this far below its threshold [m/s²]
            (the odometry's noise is about 0.1 m/s²).
        harsh_jerk_mps3: measured jerk above this starts a harsh-jerk episode [m/s³].
        jerk_release_mps3: the episode ends once the jerk falls this far below ``harsh_jerk_mps3`` [m/s³] (the
            odometry's noise, about 0.1 m/s² per tick, is about 1.4 m/s³ of jerk).
        moving_mps: jerk counts only while the odometry reads at least this speed, this tick and the last [m/s].
        fog_visibility_m, night_light, wet_friction: condition-class cuts on the vehicle's own estimate [m], [-], [-].
        urban_speed_mps: a set speed under this is urban driving [m/s] (60 km/h).
        traffic_range_m: a perceived in-path obstacle closer than this makes the beat ``_traffic`` [m].
    """

    dt_s: float = 0.1
    near_miss_ttc_s: float = 1.0
    hard_brake_mps2: float = 4.0
    phantom_brake_mps2: float = 3.0
    phantom_ttc_s: float = 4.0
    phantom_need_mps2: float = 1.0
    brake_release_mps2: float = 1.0
    harsh_jerk_mps3: float = 10.0
    jerk_release_mps3: float = 5.0
    moving_mps: float = 0.5
    fog_visibility_m: float = 200.0
    night_light: float = 0.5
    wet_friction: float = 0.7
    urban_speed_mps: float = 60.0 / 3.6
    traffic_range_m: float = 100.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (math.isfinite(value) and value >= 0):
                raise FleetConfigError(f"HeartbeatConfig.{name} must be a finite number >= 0, got {value!r}")
        if self.dt_s <= 0:
            raise FleetConfigError(f"HeartbeatConfig.dt_s must be > 0, got {self.dt_s}")


@dataclass(frozen=True)
class HeartbeatSignals:
    """One tick of what each vehicle knows, tensors [B].

    Attributes:
        speed_mps, accel_mps2: odometry [m/s], [m/s²].
        desired_speed_mps: the set speed [m/s].
        perceived_ttc_s, perceived_gap_m: the fallback's perceived TTC [s] (inf: nothing closing) and in-path gap
            [m] (``NO_OBSTACLE_M``: none).
        perceived_need_mps2: the deceleration the perceived obstacle needs [m/s²] (0: none).
        impact: the impact sensor fired this tick (bool).
        fallback_started: the arbiter handed the vehicle to the fallback this tick (bool); ``fallback_reason`` why
            (``REASON_NAMES`` code, int64).
        on_fallback: the fallback drives (bool).
        deadline_missed: the model's output missed its deadline (bool).
        est_visibility_m, est_light, est_friction: the vehicle's own conditions estimate.
    """

    speed_mps: torch.Tensor
    accel_mps2: torch.Tensor
    desired_speed_mps: torch.Tensor
    perceived_ttc_s: torch.Tensor
    perceived_gap_m: torch.Tensor
    perceived_need_mps2: torch.Tensor
    impact: torch.Tensor
    fallback_started: torch.Tensor
    fallback_reason: torch.Tensor
    on_fallback: torch.Tensor
    deadline_missed: torch.Tensor
    est_visibility_m: torch.Tensor
    est_light: torch.Tensor
    est_friction: torch.Tensor


def signals_from_tick(vt: VehicleTick, impact: torch.Tensor, desired_speed_mps: torch.Tensor) -> HeartbeatSignals:
    """The heartbeat's signals from one tick of the runner (``FleetRunner.last_tick``), the impact flag (the runner's
    events' ``collision``) and the set speed [B] (``FleetRunner.state.ego_v0_mps``)."""
    fb, d = vt.fallback, vt.decision
    need = fb.need_mps2 if fb.need_mps2 is not None else torch.zeros_like(fb.ttc_s)
    return HeartbeatSignals(
        speed_mps=vt.obs.ego_speed_mps,
        accel_mps2=vt.obs.ego_accel_mps2,
        desired_speed_mps=desired_speed_mps,
        perceived_ttc_s=fb.ttc_s,
        perceived_gap_m=fb.gap_m,
        perceived_need_mps2=need,
        impact=impact.bool(),
        fallback_started=d.started.bool(),
        fallback_reason=d.reason.to(torch.int64),
        on_fallback=d.driver != DRIVER_MODEL,
        deadline_missed=vt.policy.deadline_missed.bool(),
        est_visibility_m=vt.estimate.visibility_m,
        est_light=vt.estimate.light,
        est_friction=vt.estimate.friction,
    )


@dataclass(frozen=True)
class HeartbeatState:
    """Per vehicle since its last beat, tensors with a leading [B]: sums (float64) and counters (int64), the
    classes' tick counts, and the edge detectors' memory of the last tick."""

    ticks: torch.Tensor
    distance_m: torch.Tensor
    planned_m: torch.Tensor
    counts: torch.Tensor  # [B, len(COUNTERS)]
    est_sums: torch.Tensor  # [B, 3] visibility, light, friction
    condition_ticks: torch.Tensor  # [B, len(CONDITION_CLASSES)]
    urban_ticks: torch.Tensor
    traffic_seen: torch.Tensor
    on_fallback: torch.Tensor
    # edge detectors (kept across beats)
    has_prev: torch.Tensor
    prev_accel_mps2: torch.Tensor
    prev_speed_mps: torch.Tensor
    prev_no_reason: torch.Tensor
    near_active: torch.Tensor
    near_impact: torch.Tensor
    hard_active: torch.Tensor
    phantom_active: torch.Tensor
    jerk_active: torch.Tensor

    @staticmethod
    def init(batch: int, device: torch.device | str = "cpu") -> HeartbeatState:
        """A fresh state for ``batch`` vehicles."""
        f64 = torch.zeros(batch, dtype=torch.float64, device=device)
        i64 = torch.zeros(batch, dtype=torch.int64, device=device)
        no = torch.zeros(batch, dtype=torch.bool, device=device)
        f32 = torch.zeros(batch, dtype=torch.float32, device=device)
        return HeartbeatState(
            ticks=i64,
            distance_m=f64,
            planned_m=f64,
            counts=torch.zeros(batch, len(COUNTERS), dtype=torch.int64, device=device),
            est_sums=torch.zeros(batch, 3, dtype=torch.float64, device=device),
            condition_ticks=torch.zeros(batch, len(CONDITION_CLASSES), dtype=torch.int64, device=device),
            urban_ticks=i64,
            traffic_seen=no,
            on_fallback=no,
            has_prev=no,
            prev_accel_mps2=f32,
            prev_speed_mps=f32,
            prev_no_reason=no,
            near_active=no,
            near_impact=no,
            hard_active=no,
            phantom_active=no,
            jerk_active=no,
        )


def _episode(
    active: torch.Tensor, value: torch.Tensor, enter: float, leave: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hysteresis: (started this tick, active now) for ``value`` entering above ``enter``, leaving below ``leave``."""
    started = ~active & (value > enter)
    return started, (active | started) & ~(value < leave)


def condition_class_codes(
    cfg: HeartbeatConfig, vis_m: torch.Tensor, light: torch.Tensor, mu: torch.Tensor
) -> torch.Tensor:
    """[B] index into ``CONDITION_CLASSES`` of the vehicle's own estimate (fog, else night, else wet, else clear)."""
    code = torch.zeros(vis_m.shape, dtype=torch.int64, device=vis_m.device)
    code = torch.where(mu < cfg.wet_friction, torch.full_like(code, 3), code)
    code = torch.where(light < cfg.night_light, torch.full_like(code, 2), code)
    return torch.where(vis_m < cfg.fog_visibility_m, torch.full_like(code, 1), code)


def heartbeat_step(cfg: HeartbeatConfig, state: HeartbeatState, sig: HeartbeatSignals) -> HeartbeatState:
    """Add one tick of every vehicle to its beat (pure; no device sync)."""
    speed = torch.nan_to_num(sig.speed_mps.float(), nan=0.0).clamp_min(0.0)
    accel = torch.nan_to_num(sig.accel_mps2.float(), nan=0.0)
    decel = -accel
    ttc = torch.nan_to_num(sig.perceived_ttc_s.float(), nan=math.inf)
    need = torch.nan_to_num(sig.perceived_need_mps2.float(), nan=0.0)
    impact = sig.impact.bool()

    near_now = ttc < cfg.near_miss_ttc_s
    hit = state.near_impact | impact  # an impact during the episode (this tick included): no near miss
    near_end = state.near_active & ~near_now & ~hit
    hard_start, hard_active = _episode(
        state.hard_active, decel, cfg.hard_brake_mps2, cfg.hard_brake_mps2 - cfg.brake_release_mps2
    )
    no_reason = (ttc > cfg.phantom_ttc_s) & (need < cfg.phantom_need_mps2)
    brake_start, phantom_active = _episode(
        state.phantom_active, decel, cfg.phantom_brake_mps2, cfg.phantom_brake_mps2 - cfg.brake_release_mps2
    )
    phantom = brake_start & no_reason & state.prev_no_reason & state.has_prev
    moving = (speed >= cfg.moving_mps) & (state.prev_speed_mps >= cfg.moving_mps) & state.has_prev
    jerk_mps3 = torch.where(moving, (accel - state.prev_accel_mps2).abs() / cfg.dt_s, torch.zeros_like(accel))
    jerk, jerk_active = _episode(
        state.jerk_active, jerk_mps3, cfg.harsh_jerk_mps3, cfg.harsh_jerk_mps3 - cfg.jerk_release_mps3
    )
    jerk_active = jerk_active & moving  # a stop ends the episode

    reason = sig.fallback_reason.to(torch.int64).clamp(0, len(REASON_NAMES) - 1)
    activations = torch.nn.functional.one_hot(reason, len(REASON_NAMES))[:, 1:] * sig.fallback_started.unsqueeze(-1)
    events = torch.stack(
        [
            impact,
            near_end,
            hard_start,
            phantom,
            jerk,
            sig.deadline_missed.bool(),
        ],
        -1,
    ).to(torch.int64)
    counts = state.counts + torch.cat([events, activations.to(torch.int64)], -1)

    vis = sig.est_visibility_m.to(torch.float64)
    light = sig.est_light.to(torch.float64)
    mu = sig.est_friction.to(torch.float64)
    cond = condition_class_codes(cfg, vis, light, mu)
    gap = torch.nan_to_num(sig.perceived_gap_m.float(), nan=NO_OBSTACLE_M)
    return HeartbeatState(
        ticks=state.ticks + 1,
        distance_m=state.distance_m + speed.to(torch.float64) * cfg.dt_s,
        planned_m=state.planned_m + sig.desired_speed_mps.to(torch.float64).clamp_min(0.0) * cfg.dt_s,
        counts=counts,
        est_sums=state.est_sums + torch.stack([vis, light, mu], -1),
        condition_ticks=state.condition_ticks + torch.nn.functional.one_hot(cond, len(CONDITION_CLASSES)),
        urban_ticks=state.urban_ticks + (sig.desired_speed_mps < cfg.urban_speed_mps).to(torch.int64),
        traffic_seen=state.traffic_seen | (gap < cfg.traffic_range_m),
        on_fallback=sig.on_fallback.bool(),
        has_prev=torch.ones_like(state.has_prev),
        prev_accel_mps2=accel,
        prev_speed_mps=speed,
        prev_no_reason=no_reason,
        near_active=near_now,
        near_impact=hit & near_now,
        hard_active=hard_active,
        phantom_active=phantom_active,
        jerk_active=jerk_active,
    )


@dataclass(frozen=True)
class Heartbeat:
    """One vehicle's beat: the fields of the bus's ``FleetHealth`` 1.1 event (see the module docstring)."""

    vehicle_id: str
    model_version: int
    model_slot: str
    beat_seq: int
    period_s: float
    distance_m: float
    planned_distance_m: float
    fallback_active: bool
    est_visibility_m: float
    est_light: float
    est_friction: float
    condition_class: str
    scenario_class: str
    collisions: int = 0
    near_misses: int = 0
    hard_brakes: int = 0
    phantom_brakes: int = 0
    harsh_jerks: int = 0
    deadline_misses: int = 0
    fallback_deadline: int = 0
    fallback_invalid_output: int = 0
    fallback_low_confidence: int = 0
    fallback_ttc_critical: int = 0
    fallback_sensor_fault: int = 0
    fallback_no_model: int = 0
    fallback_model_switch: int = 0

    def event_fields(self) -> dict[str, object]:
        """Keyword arguments of ``FleetHealth`` (the shell adds the envelope: source, emission time). A shallow copy:
        every field is a scalar, and ``asdict``'s deep copy cost 100 us a beat (most of a large fleet's beat)."""
        return dict(self.__dict__)


def emit_heartbeats(
    cfg: HeartbeatConfig,
    state: HeartbeatState,
    vehicle_keys: Sequence[str],
    model_versions: Sequence[int],
    model_slots: Sequence[str],
    beat_seq: int,
) -> tuple[HeartbeatState, list[Heartbeat]]:
    """Close the beat: one ``Heartbeat`` per vehicle (in state order) and a state whose sums and counters restart
    from 0 (the edge detectors' memory carries on). A vehicle with no tick in the beat gets no heartbeat.

    ``vehicle_keys`` are the vehicles' bus ids, ``model_versions`` the registry version each runs (0: none),
    ``model_slots`` the OTA slot it runs from ("" when there is none); ``beat_seq`` numbers this beat.
    """
    n = int(state.ticks.shape[0])
    if not (len(vehicle_keys) == len(model_versions) == len(model_slots) == n):
        raise FleetConfigError(
            f"emit_heartbeats: {n} vehicles in the state, but {len(vehicle_keys)} keys, {len(model_versions)} "
            f"versions and {len(model_slots)} slots; pass one of each per vehicle, in state order"
        )
    if beat_seq < 0:
        raise FleetConfigError(f"beat_seq must be >= 0, got {beat_seq}")
    ticks = state.ticks.cpu().tolist()
    dist = state.distance_m.cpu().tolist()
    plan = state.planned_m.cpu().tolist()
    counts = state.counts.cpu().tolist()
    est = state.est_sums.cpu().tolist()
    cond = state.condition_ticks.cpu().tolist()
    urban = state.urban_ticks.cpu().tolist()
    traffic = state.traffic_seen.cpu().tolist()
    on_fb = state.on_fallback.cpu().tolist()
    beats: list[Heartbeat] = []
    for i in range(n):
        t = ticks[i]
        if t == 0:
            continue
        best = _majority_class(cond[i])
        road = "urban" if 2 * urban[i] > t else "highway"
        beats.append(
            Heartbeat(
                vehicle_id=vehicle_keys[i],
                model_version=int(model_versions[i]),
                model_slot=model_slots[i],
                beat_seq=beat_seq,
                period_s=t * cfg.dt_s,
                distance_m=dist[i],
                planned_distance_m=plan[i],
                fallback_active=bool(on_fb[i]),
                est_visibility_m=est[i][0] / t,
                est_light=est[i][1] / t,
                est_friction=est[i][2] / t,
                condition_class=CONDITION_CLASSES[best],
                scenario_class=f"{road}_{'traffic' if traffic[i] else 'open'}",
                **dict(zip(COUNTERS, (int(c) for c in counts[i]), strict=True)),
            )
        )
    fresh = HeartbeatState.init(n, state.ticks.device)
    restarted = HeartbeatState(
        **{
            **{name: getattr(fresh, name) for name in _SUMS},
            **{name: getattr(state, name) for name in _MEMORY},
        }
    )
    return restarted, beats


def _majority_class(ticks_per_class: Sequence[int]) -> int:
    """The index into ``CONDITION_CLASSES`` of most ticks; a tie goes to the more demanding (fog, night, wet)."""
    order = (1, 2, 3, 0)
    return max(order, key=lambda c: (ticks_per_class[c], -order.index(c)))


_SUMS = ("ticks", "distance_m", "planned_m", "counts", "est_sums", "condition_ticks", "urban_ticks", "traffic_seen")
_MEMORY = (
    "on_fallback",
    "has_prev",
    "prev_accel_mps2",
    "prev_speed_mps",
    "prev_no_reason",
    "near_active",
    "near_impact",
    "hard_active",
    "phantom_active",
    "jerk_active",
)
