"""The world's public operations on batched scenes: build, step, observe, ground truth, events, expert.

All are pure functions of (``World``, ``WorldState``, tensors); the device is the state's. One tick of the fleet::

    obs = observe(world, state)                       # -> vehicle (never the weather, never ground truth)
    gt = ground_truth(world, state)                   # -> audit topic / events / imitation targets
    nxt = step(world, state, controls_mps2, world.dt_s)
    ev = detect_events(world, state, nxt)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fleetloop.sim.compile import compile_graph
from fleetloop.sim.errors import ScenarioError, StateError
from fleetloop.sim.events import NEAR_MISS_TTC_S
from fleetloop.sim.expert import expert_control, in_path
from fleetloop.sim.physics import actuate_ego, contacts, hazard_slots, move_actors
from fleetloop.sim.scenarios import ScenarioSpec
from fleetloop.sim.state import KIND_CODES, World, WorldState
from fleetloop.sim.traffic import ballistic_update
from fleetloop.sim.weather import conditions_at

__all__ = ["GroundTruth", "ground_truth", "init_state", "respawn", "step"]

STOPPED = KIND_CODES["stopped_vehicle"]


@dataclass(frozen=True)
class GroundTruth:
    """The truth about each scene at one tick ([B] or [B, K] tensors): for the audit topic, events and the expert.

    Never part of telemetry or of anything a vehicle receives.
    """

    visibility_m: torch.Tensor
    friction: torch.Tensor
    light: torch.Tensor
    rain: torch.Tensor
    ego_s_m: torch.Tensor
    ego_speed_mps: torch.Tensor
    ego_accel_mps2: torch.Tensor
    actor_kind: torch.Tensor
    actor_x_m: torch.Tensor
    actor_y_m: torch.Tensor
    actor_speed_mps: torch.Tensor
    in_path_gap_m: torch.Tensor
    ttc_s: torch.Tensor
    required_decel_mps2: torch.Tensor
    expert_accel_mps2: torch.Tensor
    collided: torch.Tensor


def init_state(
    world: World,
    scenarios: Sequence[ScenarioSpec],
    vehicle_ids: Sequence[int] | torch.Tensor,
    seed: int,
    device: torch.device | str = "cpu",
    road_s_m: torch.Tensor | None = None,
    tick: int = 0,
) -> WorldState:
    """Build the scenes of ``vehicle_ids`` (one scenario each) at ``tick``.

    ``road_s_m`` [B] places each scene on the shared road; by default vehicle id i starts at
    ``i * world.scene_spacing_m`` (wrapped), so a vehicle's position never depends on its batch.
    """
    ids = torch.as_tensor(vehicle_ids, dtype=torch.int64).reshape(-1).cpu()
    b, k = int(ids.shape[0]), world.slots
    if len(scenarios) != b:
        raise ScenarioError(f"got {len(scenarios)} scenarios for {b} vehicle ids; give exactly one per vehicle")
    if b == 0:
        raise ScenarioError("no vehicles: pass at least one vehicle id")
    if len(set(ids.tolist())) != b:
        raise ScenarioError("vehicle ids must be unique (they key each vehicle's randomness)")
    f32 = np.float32
    a = {name: np.zeros((b, k), f32) for name in ("x", "y", "v", "len", "width", "v0", "brake", "target", "lat")}
    a["brake_t"] = np.full((b, k), np.inf, f32)
    a["move_t"] = np.full((b, k), np.inf, f32)
    kind = np.zeros((b, k), np.int64)
    ego = np.zeros((b, 3), f32)
    lane = np.zeros(b, np.int64)
    for i, spec in enumerate(scenarios):
        spec.validate(world.n_lanes, world.max_actors)
        ego[i] = (spec.ego_speed_mps, spec.ego_desired_speed_mps, 0.0)
        lane[i] = spec.ego_lane
        for j, act in enumerate(spec.actors):
            length, width = act.size_m
            kind[i, j] = KIND_CODES[act.kind]
            y = float(world.lane_center_m(float(act.lane))) + act.y_offset_m
            a["x"][i, j], a["y"][i, j], a["v"][i, j] = act.x_m, y, act.speed_mps
            a["len"][i, j], a["width"][i, j] = length, width
            a["v0"][i, j] = act.speed_mps if act.desired_speed_mps is None else act.desired_speed_mps
            if act.brake_at_s is not None:
                a["brake_t"][i, j], a["brake"][i, j] = act.brake_at_s, act.brake_decel_mps2
            a["target"][i, j] = y if act.to_lane is None else float(world.lane_center_m(float(act.to_lane)))
            if act.move_at_s is not None:
                a["move_t"][i, j], a["lat"][i, j] = act.move_at_s, act.lateral_speed_mps
    dev = torch.device(device)
    t = {name: torch.from_numpy(arr).to(dev) for name, arr in a.items()}
    ids = ids.to(dev)
    if road_s_m is None:
        road_s_m = torch.remainder(ids.to(torch.float64) * world.scene_spacing_m, world.road_length_m)
    s = road_s_m.to(dev, torch.float64)
    time_s = tick * world.dt_s
    hz = hazard_slots(world, s, time_s)
    m = world.max_actors
    kind_t = torch.from_numpy(kind).to(dev)
    kind_t[:, m:] = hz["actor_kind"]
    t["x"][:, m:], t["y"][:, m:] = hz["actor_x_m"], hz["actor_y_m"]
    t["len"][:, m:], t["width"][:, m:] = hz["actor_len_m"], hz["actor_width_m"]
    t["target"][:, m:] = hz["actor_y_m"]
    cond = conditions_at(world.weather, s, time_s, world.road_length_m)
    zeros = torch.zeros(b, device=dev)
    ego_t = torch.from_numpy(ego).to(dev)
    state = WorldState(
        vehicle_ids=ids,
        seed=int(seed),
        tick=int(tick),
        scene_t_s=zeros.clone(),
        ego_s_m=s,
        ego_start_s_m=s.clone(),
        ego_lane=torch.from_numpy(lane).to(dev),
        ego_v_mps=ego_t[:, 0].contiguous(),
        ego_a_mps2=zeros.clone(),
        ego_act_mps2=zeros.clone(),
        ego_cmd_queue=torch.zeros(b, world.delay_ticks, device=dev),
        ego_v0_mps=ego_t[:, 1].contiguous(),
        actor_kind=kind_t,
        actor_x_m=t["x"],
        actor_y_m=t["y"],
        actor_v_mps=t["v"],
        actor_a_mps2=torch.zeros(b, k, device=dev),
        actor_vy_mps=torch.zeros(b, k, device=dev),
        actor_len_m=t["len"],
        actor_width_m=t["width"],
        actor_v0_mps=t["v0"],
        actor_brake_t_s=t["brake_t"],
        actor_brake_mps2=t["brake"],
        actor_move_t_s=t["move_t"],
        actor_target_y_m=t["target"],
        actor_lat_speed_mps=t["lat"],
        visibility_m=cond.visibility_m,
        friction=cond.friction,
        light=cond.light,
        rain=cond.rain,
        collided=torch.zeros(b, dtype=torch.bool, device=dev),
        impact_speed_mps=zeros.clone(),
        ttc_s=torch.full((b,), math.inf, device=dev),
        required_decel_mps2=zeros.clone(),
        near_active=torch.zeros(b, dtype=torch.bool, device=dev),
        near_min_ttc_s=torch.full((b,), math.inf, device=dev),
    )
    return _monitor(world, state, state)


def _monitor(world: World, prev: WorldState, state: WorldState) -> WorldState:
    """Refresh the ground-truth monitors (TTC, required deceleration, near-miss episode) of ``state``."""
    p = in_path(world, state)
    active = (p.ttc_s < NEAR_MISS_TTC_S) & ~state.collided
    running = torch.where(prev.near_active, prev.near_min_ttc_s, torch.full_like(p.ttc_s, math.inf))
    return state.replace(
        ttc_s=p.ttc_s,
        required_decel_mps2=p.required_decel_mps2,
        near_active=active,
        near_min_ttc_s=torch.where(active, torch.minimum(running, p.ttc_s), torch.full_like(p.ttc_s, math.inf)),
    )


def step(
    world: World, state: WorldState, controls_mps2: torch.Tensor, dt_s: float, *, compiled: bool = False
) -> WorldState:
    """Advance every scene one tick with the egos' longitudinal commands ``controls_mps2`` [B] [m/s²].

    Pure: returns a new state and leaves ``state`` untouched. ``dt_s`` must equal ``world.dt_s`` (the dead-time
    queue is built in ticks of it). ``compiled``: run the physics as one ``torch.compile``d graph (ADR 0101; floats
    within rounding of the eager result; a world with static hazards stays eager).
    """
    if abs(dt_s - world.dt_s) > 1e-9:
        raise StateError(f"dt_s {dt_s} differs from the world's {world.dt_s}; build the World with dt_s={dt_s}")
    if controls_mps2.shape != state.ego_v_mps.shape:
        raise StateError(
            f"controls must have shape {tuple(state.ego_v_mps.shape)} (one per scene), got {tuple(controls_mps2.shape)}"
        )
    if not bool(torch.isfinite(controls_mps2).all()):
        raise StateError("controls contain NaN or inf; the vehicle must never send those to the actuators")
    cmd = controls_mps2.to(state.ego_v_mps.device, torch.float32)
    time_s = (state.tick + 1) * world.dt_s
    if compiled and not world.hazards:  # hazard_slots filters hazards by time on the host
        time_t = torch.tensor(time_s, dtype=torch.float64, device=cmd.device)
        # The graph reads neither tick nor seed, but copying the state reads every field: fixed values keep
        # dynamo from guarding on (and recompiling for) each tick's number and each run's seed.
        fields = compile_graph(_step_graph)(world, state.replace(tick=0, seed=0), cmd, time_t)
    else:
        fields = _step_graph(world, state, cmd, time_s)
    return state.replace(tick=state.tick + 1, **dict(zip(_STEP_FIELDS, fields, strict=True)))


_STEP_FIELDS = (
    "scene_t_s",
    "ego_s_m",
    "ego_v_mps",
    "ego_a_mps2",
    "ego_act_mps2",
    "ego_cmd_queue",
    "actor_kind",
    "actor_x_m",
    "actor_y_m",
    "actor_v_mps",
    "actor_a_mps2",
    "actor_vy_mps",
    "actor_len_m",
    "actor_width_m",
    "actor_target_y_m",
    "visibility_m",
    "friction",
    "light",
    "rain",
    "collided",
    "impact_speed_mps",
    "ttc_s",
    "required_decel_mps2",
    "near_active",
    "near_min_ttc_s",
)


def _step_graph(
    world: World, state: WorldState, cmd: torch.Tensor, time_s: float | torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """The tensors of ``step`` (``_STEP_FIELDS`` order); ``time_s`` is the time after the tick (a 0-d float64 tensor
    in the compiled graph, so one graph serves every tick)."""
    crashed = state.collided
    queue, act = actuate_ego(world, state.ego_cmd_queue, state.ego_act_mps2, cmd, state.friction)
    act = torch.where(crashed, torch.zeros_like(act), act)
    ego_ds, ego_v = ballistic_update(torch.zeros_like(state.ego_v_mps), state.ego_v_mps, act, world.dt_s)
    moved = move_actors(world, state, state.friction)
    x = state.actor_x_m + moved["dx_m"] - ego_ds.unsqueeze(-1)
    y, v, a, vy = moved["actor_y_m"], moved["actor_v_mps"], moved["actor_a_mps2"], moved["actor_vy_mps"]
    kind, length, width, target = state.actor_kind, state.actor_len_m, state.actor_width_m, state.actor_target_y_m
    ego_s = state.ego_s_m + ego_ds.to(torch.float64)
    m = world.max_actors
    if world.hazard_slots:
        # The hazard slots are refilled each tick (a concatenation, not slice assignment: the same values, and
        # inductor's CPU vectorizer miscompiles the masked stores of slice assignment into this graph).
        hz = hazard_slots(world, ego_s, time_s)  # type: ignore[arg-type]

        def own(t: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
            return torch.cat([t[:, :m], fill.to(t.dtype)], dim=-1)

        zero = torch.zeros_like(x[:, m:])
        kind, x, y = own(kind, hz["actor_kind"]), own(x, hz["actor_x_m"]), own(y, hz["actor_y_m"])
        length, width, target = (
            own(length, hz["actor_len_m"]),
            own(width, hz["actor_width_m"]),
            own(target, hz["actor_y_m"]),
        )
        v, a, vy = own(v, zero), own(a, zero), own(vy, zero)
    ego_a_kin = (ego_v - state.ego_v_mps) / world.dt_s
    touched, speed = contacts(world, state.replace(actor_kind=kind), x, y, v, a, vy, ego_v, act)
    new_hit = touched.any(-1) & ~crashed
    collided = crashed | new_hit
    impact = torch.where(new_hit, speed.max(-1).values, state.impact_speed_mps)
    # A crash freezes the ego and wrecks what it hit.
    wreck = touched & new_hit.unsqueeze(-1)
    kind = torch.where(wreck & (kind == KIND_CODES["vehicle"]), torch.full_like(kind, STOPPED), kind)
    v = torch.where(wreck, torch.zeros_like(v), v)
    a = torch.where(wreck, torch.zeros_like(a), a)
    target = torch.where(wreck, y, target)
    ego_v = torch.where(collided, torch.zeros_like(ego_v), ego_v)
    act = torch.where(collided, torch.zeros_like(act), act)
    queue = torch.where(collided.unsqueeze(-1), torch.zeros_like(queue), queue)
    cond = conditions_at(world.weather, ego_s, time_s, world.road_length_m)  # type: ignore[arg-type]
    nxt = state.replace(
        scene_t_s=state.scene_t_s + world.dt_s,
        ego_s_m=ego_s,
        ego_v_mps=ego_v,
        ego_a_mps2=ego_a_kin,
        ego_act_mps2=act,
        ego_cmd_queue=queue,
        actor_kind=kind,
        actor_x_m=x,
        actor_y_m=y,
        actor_v_mps=v,
        actor_a_mps2=a,
        actor_vy_mps=vy,
        actor_len_m=length,
        actor_width_m=width,
        actor_target_y_m=target,
        visibility_m=cond.visibility_m,
        friction=cond.friction,
        light=cond.light,
        rain=cond.rain,
        collided=collided,
        impact_speed_mps=impact,
    )
    nxt = _monitor(world, state, nxt)
    return tuple(getattr(nxt, name) for name in _STEP_FIELDS)


def ground_truth(world: World, state: WorldState) -> GroundTruth:
    """The truth of each scene at this tick, with the expert's command (for the audit topic and imitation)."""
    p = in_path(world, state)
    return GroundTruth(
        visibility_m=state.visibility_m,
        friction=state.friction,
        light=state.light,
        rain=state.rain,
        ego_s_m=state.ego_s_m,
        ego_speed_mps=state.ego_v_mps,
        ego_accel_mps2=state.ego_a_mps2,
        actor_kind=state.actor_kind,
        actor_x_m=state.actor_x_m,
        actor_y_m=state.actor_y_m,
        actor_speed_mps=state.actor_v_mps,
        in_path_gap_m=p.gap_m,
        ttc_s=p.ttc_s,
        required_decel_mps2=p.required_decel_mps2,
        expert_accel_mps2=expert_control(world, state, p),
        collided=state.collided,
    )


def respawn(world: World, state: WorldState, mask: torch.Tensor, scenarios: Sequence[ScenarioSpec]) -> WorldState:
    """Start new scenes (``scenarios``, one per True in ``mask`` [B]) where ``mask`` is set, at the egos' current road
    positions; the other scenes continue untouched."""
    idx = torch.nonzero(mask.to(state.device)).squeeze(-1)
    if len(scenarios) != int(idx.numel()):
        raise ScenarioError(f"respawn got {len(scenarios)} scenarios for {int(idx.numel())} masked scenes")
    if idx.numel() == 0:
        return state
    fresh = init_state(
        world, scenarios, state.vehicle_ids[idx], state.seed, state.device, state.ego_s_m[idx], tick=state.tick
    )
    out: dict[str, object] = {}
    for name, value in vars(state).items():
        if isinstance(value, torch.Tensor):
            merged = value.clone()
            merged[idx] = getattr(fresh, name)
            out[name] = merged
    return state.replace(**out)
