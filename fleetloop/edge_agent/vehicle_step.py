"""One tick of the whole vehicle stack, for every vehicle of a shard at once, on tensors.

    observation --faults--> sensors as the vehicle gets them
        |-> own conditions estimate (visibility, light, friction)
        |-> policy features -> batched inference (simulated latency, stale inputs, deadline)
        |-> rule-based fallback (following, staged AEB, minimal-risk stop)
        '-> arbiter (model or fallback, and why) -> actuator command
    triggers and upload budget (decide frame tick - pre_ticks)

``vehicle_step(cfg, state, obs, engine, slots, tick, switched)`` returns the new ``VehicleState`` and a
``VehicleTick`` with every intermediate the runner needs (the command, the decision, the upload decision and the
columns of this tick's frame). Pure apart from the inference engine's input history (the engine keeps the last few
ticks of inputs so that a late model acts on a stale observation). Imports torch and the edge_agent numeric core
only: runs on a bare GPU box.

A command that is not finite never leaves this module: injected NaN weights and crashes mark the model output
invalid (the arbiter then hands the tick to the fallback, reason ``invalid_output``), and ``arbitrate`` checks the
final command.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from fleetloop.edge_agent.arbiter import (
    ArbiterConfig,
    ArbiterInputs,
    ArbiterState,
    Decision,
    arbitrate,
    arbitrate_unchecked,
    check_command,
    check_fallback_command,
)
from fleetloop.edge_agent.conditions import ConditionsEstimate, ConditionsState, estimate_conditions
from fleetloop.edge_agent.fallback import FallbackConfig, FallbackOutput, FallbackState, fallback_control
from fleetloop.edge_agent.faults import FaultEffects, FaultSpec, apply_sensor_dropout, fault_effects
from fleetloop.edge_agent.features import features_from_observation
from fleetloop.edge_agent.inference import (
    NO_MODEL,
    STATUS_INVALID_OUTPUT,
    STATUS_MODEL_FAILURE,
    STATUS_NO_MODEL,
    InferenceEngine,
    PolicyOutput,
)
from fleetloop.edge_agent.triggers import (
    TriggerConfig,
    TriggerInputs,
    TriggerState,
    UploadDecision,
    trigger_bits,
    triggers_step,
)
from fleetloop.sim.compile import compile_graph
from fleetloop.sim.sensors import Observation
from fleetloop.sim.state import World

__all__ = ["VehicleConfig", "VehicleState", "VehicleTick", "vehicle_step"]


@dataclass(frozen=True)
class VehicleConfig:
    """Everything that configures the on-board stack of every vehicle.

    Attributes:
        fallback: fallback thresholds (``FallbackConfig.for_world``).
        arbiter: arbiter thresholds.
        triggers: trigger thresholds and upload budget.
        faults: injected faults (``faults.parse_faults``).
        seed: keys the counter-based randomness of faults, latency jitter and the random upload sample.
        delay_ticks: actuator dead time in ticks (the command the conditions estimate compares with the measured
            deceleration is the one issued this many ticks ago).
        dt_s: tick length [s].
    """

    fallback: FallbackConfig
    arbiter: ArbiterConfig = field(default_factory=ArbiterConfig)
    triggers: TriggerConfig = field(default_factory=TriggerConfig)
    faults: tuple[FaultSpec, ...] = ()
    seed: int = 0
    delay_ticks: int = 2
    dt_s: float = 0.1

    @classmethod
    def for_world(cls, world: World, seed: int = 0, faults: tuple[FaultSpec, ...] = (), **kw: object) -> VehicleConfig:
        """A configuration matched to ``world``'s actuators and tick."""
        trig = kw.pop("triggers", None) or TriggerConfig(dt_s=world.dt_s)
        return cls(
            fallback=FallbackConfig.for_world(world),
            triggers=trig,  # type: ignore[arg-type]
            faults=tuple(faults),
            seed=seed,
            delay_ticks=world.delay_ticks,
            dt_s=world.dt_s,
            **kw,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class VehicleState:
    """What the vehicles carry between ticks, tensors with a leading [B]."""

    fallback: FallbackState
    arbiter: ArbiterState
    triggers: TriggerState
    conditions: ConditionsState
    cmd_queue_mps2: torch.Tensor  # [B, D] commands issued in the last D ticks, oldest first

    @staticmethod
    def init(cfg: VehicleConfig, batch: int, device: torch.device | str = "cpu") -> VehicleState:
        """Fresh vehicles (no model yet: the first fallback tick counts as no transition)."""
        return VehicleState(
            fallback=FallbackState.init(batch, device),
            arbiter=ArbiterState.init(batch, device),
            triggers=TriggerState.init(batch, device, cfg.triggers),
            conditions=ConditionsState.init(batch, device),
            cmd_queue_mps2=torch.zeros(batch, max(cfg.delay_ticks, 1), device=device),
        )

    def reset_rows(self, mask: torch.Tensor) -> VehicleState:
        """Forget the fallback's track and latches where ``mask`` [B] is set (a new scene started there)."""
        fresh = FallbackState.init(int(mask.shape[0]), mask.device)
        fb = self.fallback
        m1 = mask
        m2 = mask.unsqueeze(-1)
        # Every field of the track, the lateral one (ADR 0112) included: a new scene has a new obstacle.
        track = dataclasses.replace(
            fb.track,
            **{
                f.name: torch.where(m1, getattr(fresh.track, f.name), getattr(fb.track, f.name))
                for f in dataclasses.fields(fb.track)
            },
        )
        new_fb = FallbackState(
            bad_ticks=torch.where(m2, fresh.bad_ticks, fb.bad_ticks),
            latched_stage=torch.where(m1, fresh.latched_stage, fb.latched_stage),
            latch_left=torch.where(m1, fresh.latch_left, fb.latch_left),
            track=track,
        )
        queue = torch.where(m2, torch.zeros_like(self.cmd_queue_mps2), self.cmd_queue_mps2)
        return dataclasses.replace(self, fallback=new_fb, cmd_queue_mps2=queue)


@dataclass(frozen=True)
class VehicleTick:
    """One tick of every vehicle, tensors [B].

    Attributes:
        command_mps2: the command sent to the actuators (finite).
        obs: the observation as the vehicle got it (after injected sensor dropout).
        effects: the injected faults of this tick.
        policy: the inference outputs (with injected NaN / crash applied).
        fallback: the fallback's output.
        decision: the arbiter's decision.
        estimate: the vehicle's own conditions estimate.
        upload: the upload decision for frame ``upload.frame_tick``.
    """

    command_mps2: torch.Tensor
    obs: Observation
    effects: FaultEffects
    policy: PolicyOutput
    fallback: FallbackOutput
    decision: Decision
    estimate: ConditionsEstimate
    upload: UploadDecision


def _apply_model_faults(out: PolicyOutput, effects: FaultEffects) -> PolicyOutput:
    """Injected NaN weights make every output NaN; an injected crash gives no output at all."""
    nan = effects.nan_weights
    crash = effects.crash
    if not bool((nan | crash).any()):
        return out
    bad = nan | crash
    nan_t = torch.full_like(out.accel_mps2, float("nan"))
    status = torch.where(crash & out.valid, torch.full_like(out.status, STATUS_MODEL_FAILURE), out.status)
    status = torch.where(nan & out.valid, torch.full_like(out.status, STATUS_INVALID_OUTPUT), status)
    return dataclasses.replace(
        out,
        accel_mps2=torch.where(nan, nan_t, out.accel_mps2),
        hazard_prob=torch.where(nan, nan_t, out.hazard_prob),
        uncertainty_mps2=torch.where(nan, nan_t, out.uncertainty_mps2),
        valid=out.valid & ~bad,
        status=status,
    )


def vehicle_step(
    cfg: VehicleConfig,
    state: VehicleState,
    obs: Observation,
    engine: InferenceEngine | None,
    slots: torch.Tensor,
    vehicle_ids: torch.Tensor,
    tick: int,
    switched: torch.Tensor,
    desired_speed_mps: torch.Tensor | None = None,
    *,
    compiled: bool = False,
) -> tuple[VehicleState, VehicleTick]:
    """Advance every vehicle's on-board stack by one tick (see the module docstring).

    ``slots`` [B] int64 are the engine slots of each vehicle's model (``NO_MODEL``: none on board; ``engine`` may be
    None when no vehicle runs a model); ``switched`` [B] bool marks vehicles whose model changed since last tick;
    ``desired_speed_mps`` [B] is the driver's set speed: the fallback follows it and the arbiter's set-speed governor
    caps the model toward it (ADR 0175; default: the fallback holds the current speed and the model is not capped).
    ``compiled``: run the conditions estimate, the policy features, the fallback and arbiter + trigger bits as
    ``torch.compile``d graphs (the policy forward: ``EngineConfig.compile``; ADR 0101; floats within rounding of the
    eager result; the first tick compiles).
    """
    ids = vehicle_ids.to(torch.int64)
    effects = fault_effects(cfg.faults, ids, tick, cfg.seed)
    seen = apply_sensor_dropout(obs, effects) if cfg.faults else obs
    if compiled:
        cond_state, estimate = compile_graph(_conditions_graph, fullgraph=False)(cfg, state, seen)
    else:
        cond_state, estimate = estimate_conditions(state.conditions, seen, state.cmd_queue_mps2[:, 0], cfg.dt_s)
    has_model = slots != NO_MODEL
    if engine is not None and bool(has_model.any()):
        inputs = compile_graph(features_from_observation)(seen) if compiled else features_from_observation(seen)
        policy = engine.tick(inputs, slots, tick, ids, cfg.seed, spike_s=effects.latency_spike_ms / 1000.0)
        policy = _apply_model_faults(policy, effects)
    else:
        policy = _no_policy(int(ids.shape[0]), seen.ego_speed_mps.device)
    # Compiled since the fallback tracks lateral motion (ADR 0112): 5.9 vs 8.9 ms eager at 10,000 vehicles (ADR 0101).
    fb_state, fb = (compile_graph(fallback_control, fullgraph=False) if compiled else fallback_control)(
        cfg.fallback,
        state.fallback,
        seen,
        lidar_ok=effects.lidar_ok,
        radar_ok=effects.radar_ok,
        desired_speed_mps=desired_speed_mps,
        friction_est=estimate.friction,
    )
    outs = (policy.accel_mps2, policy.hazard_prob, policy.uncertainty_mps2, policy.valid, policy.deadline_missed)
    if compiled:
        check_fallback_command(fb.accel_mps2)
        arb_state, decision, now_bits = compile_graph(_arbiter_graph)(
            cfg, state.arbiter, fb, outs, has_model, switched, seen, desired_speed_mps
        )
        check_command(decision.accel_mps2)
    else:
        arb_state, decision, now_bits = _arbiter_graph(
            cfg, state.arbiter, fb, outs, has_model, switched, seen, desired_speed_mps, checked=True
        )
    trig_state, upload = triggers_step(
        cfg.triggers,
        state.triggers,
        TriggerInputs(
            fallback_started=decision.started,
            ego_accel_mps2=seen.ego_accel_mps2,
            perceived_ttc_s=fb.ttc_s,
            model_accel_mps2=policy.accel_mps2,
            fallback_accel_mps2=fb.accel_mps2,
            model_valid=policy.valid,
            uncertainty=policy.uncertainty_mps2,
            visibility_m=estimate.visibility_m,
            friction=estimate.friction,
        ),
        ids,
        tick,
        cfg.seed,
        now_bits=now_bits,
        compiled=compiled,
    )
    cmd = decision.accel_mps2
    queue = torch.cat([state.cmd_queue_mps2[:, 1:], cmd.unsqueeze(-1)], dim=-1)
    new_state = VehicleState(fb_state, arb_state, trig_state, cond_state, queue)
    return new_state, VehicleTick(cmd, seen, effects, policy, fb, decision, estimate, upload)


def _conditions_graph(
    cfg: VehicleConfig, state: VehicleState, seen: Observation
) -> tuple[ConditionsState, ConditionsEstimate]:
    return estimate_conditions(state.conditions, seen, state.cmd_queue_mps2[:, 0], cfg.dt_s)


def _arbiter_graph(
    cfg: VehicleConfig,
    state: ArbiterState,
    fb: FallbackOutput,
    policy: tuple[torch.Tensor, ...],
    has_model: torch.Tensor,
    switched: torch.Tensor,
    seen: Observation,
    desired_speed_mps: torch.Tensor | None,
    checked: bool = False,
) -> tuple[ArbiterState, Decision, torch.Tensor]:
    """Arbiter and this tick's trigger bits (``checked``: with the arbiter's host-side checks, as ``arbitrate``; the
    compiled graph leaves them to its caller). The set-speed governor caps the model toward ``desired_speed_mps``
    from the vehicle's own odometry (None: no set speed, no cap)."""
    accel, hazard, unc, valid, deadline_missed = policy
    inputs = ArbiterInputs(
        model_accel_mps2=accel,
        model_hazard_prob=hazard,
        model_uncertainty=unc,
        model_valid=valid,
        deadline_missed=deadline_missed,
        has_model=has_model,
        switched=switched,
        fallback=fb,
        set_speed_mps=desired_speed_mps,
        ego_speed_mps=None if desired_speed_mps is None else seen.ego_speed_mps,
    )
    arb_state, decision = (arbitrate if checked else arbitrate_unchecked)(cfg.arbiter, state, inputs)
    now_bits = trigger_bits(
        cfg.triggers,
        TriggerInputs(
            fallback_started=decision.started,
            ego_accel_mps2=seen.ego_accel_mps2,
            perceived_ttc_s=fb.ttc_s,
            model_accel_mps2=accel,
            fallback_accel_mps2=fb.accel_mps2,
            model_valid=valid,
            uncertainty=unc,
        ),
    )
    return arb_state, decision, now_bits


def _no_policy(batch: int, device: torch.device) -> PolicyOutput:
    """The policy output of vehicles without a model: invalid, status ``no_model``."""
    z = torch.zeros(batch, device=device)
    return PolicyOutput(
        accel_mps2=z,
        hazard_prob=z,
        uncertainty_mps2=z,
        valid=torch.zeros(batch, dtype=torch.bool, device=device),
        status=torch.full((batch,), STATUS_NO_MODEL, dtype=torch.int8, device=device),
        latency_s=z,
        obs_age_ticks=torch.zeros(batch, dtype=torch.int64, device=device),
    )
