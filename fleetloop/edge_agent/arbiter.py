"""The arbiter: per vehicle per tick, the model or the fallback drives, and why.

``arbitrate(cfg, state, inputs) -> (state, decision)`` is pure and batched. Reasons, in priority order (the first
that applies is recorded): ``no_model``, ``model_switch``, ``deadline``, ``invalid_output``, ``sensor_fault``,
``ttc_critical``, ``low_confidence``. Codes equal the telemetry schema's ``FallbackReason`` (a unit test checks).

Fallback activations are counted as transitions (model -> fallback), per reason of the transition, with their
durations in ticks once the vehicle is back on the model. A command that is not finite never leaves this module:
the model's output is used only where every one of its numbers is finite and in range, and the fallback's command
is finite by construction (checked again here).

Low confidence is debounced, so an activation is an episode, not a flicker: the model's uncertainty must stay above
``max_uncertainty`` for ``low_conf_enter_ticks`` ticks in a row before the fallback takes over, and the vehicle goes
back to the model only after ``low_conf_min_hold_ticks`` and once the uncertainty is below
``low_conf_exit_ratio * max_uncertainty``. ``ArbiterConfig.for_model(metadata)`` sets ``max_uncertainty`` from the
model's own validation uncertainty (recorded by the bootstrap, in m/s²).

A TTC stage does not override the model for an obstacle the fallback predicts to be leaving the path
(``FallbackOutput.clearing``, ADR 0112) at stages up to ``clearing_max_stage``: the fallback's TTC assumes the
obstacle stays in the corridor, and a pedestrian who has crossed the lane is gone before the brake acts. With that
prediction, a stage the fallback merely holds (its latch) with nothing in the path starts no override.

Braking beyond comfortable (``model_confirm_brake_mps2``) needs two consecutive frames of the model asking for it,
unless the fallback sees a threat (ADR 0112): the per-frame policy's command flickers, most of all on inputs unlike
its training data (night, rain, fog for the clear-weather model), and a one-frame dip is not a reason to brake hard.

Comfort rate (ADR 0198): the model's command deepens braking no faster than ``model_brake_jerk_mps3`` from the
command sent last tick (the model's or the fallback's), unless the model asks for more than ``urgent_brake_mps2``
or its hazard head is sure a hazard is coming (``comfort_free_hazard_prob``): the expert, too, brakes gently
outside emergencies. The actuator alone builds any brake at 30 m/s³, so every flicker of the per-frame
policy's command into braking was a harsh-jerk event (|jerk| > 10 m/s³) and a jolt for the passengers; a planner's
comfort limit is what every ACC and AV stack puts between its planner and the brakes. The fallback's command passes
at the full rate (it is the safety function).

Set-speed governor (ADR 0175): the learned policy has no set-speed input, so the model's command is capped by a
cruise controller toward the driver's set speed, as ACC caps a planner: ``min(model, governor_gain_per_s x (set
speed - measured speed))``, the cap never below 0. It only takes away propulsion: a braking command (<= 0) passes
untouched, and above the set speed the cap is 0 (coast), not a brake. The fallback keeps its own set-speed
following (IDM toward the same set speed), so it is not capped; where no set speed is given, nothing is capped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from fleetloop.edge_agent.fallback import (
    NO_OBSTACLE_M,
    STAGE_FULL,
    STAGE_MRM,
    STAGE_NONE,
    STAGE_PARTIAL,
    FallbackOutput,
)
from fleetloop.platform.errors import FleetConfigError

__all__ = [
    "DRIVER_FALLBACK",
    "DRIVER_MODEL",
    "REASON_CODES",
    "REASON_NAMES",
    "UNCERTAINTY_CALIBRATION_KEY",
    "UNCERTAINTY_CALIBRATION_MARGIN",
    "ArbiterConfig",
    "ArbiterInputs",
    "ArbiterState",
    "Decision",
    "arbitrate",
    "arbitrate_unchecked",
    "check_command",
    "check_fallback_command",
    "governor_cap_mps2",
]

DRIVER_MODEL, DRIVER_FALLBACK = 0, 1
REASON_NAMES = (
    "none",
    "deadline",
    "invalid_output",
    "low_confidence",
    "ttc_critical",
    "sensor_fault",
    "no_model",
    "model_switch",
)
REASON_CODES = {name: code for code, name in enumerate(REASON_NAMES)}
# The model's uncertainty on its own clear-weather validation frames, 99th percentile (bootstrap metrics, m/s²).
UNCERTAINTY_CALIBRATION_KEY = "val_uncertainty_p99_mps2"
# The low-confidence threshold is this multiple of that percentile: 1 % of in-distribution frames already exceed the
# p99, so the margin leaves in-distribution driving on the model and hands over where the model is unsure beyond
# anything it saw in training (fog, night for a clear-weather model).
UNCERTAINTY_CALIBRATION_MARGIN = 1.5  # [-]
_PRIORITY = ("no_model", "model_switch", "deadline", "invalid_output", "sensor_fault", "ttc_critical", "low_confidence")


@dataclass(frozen=True)
class ArbiterConfig:
    """Arbiter thresholds.

    Attributes:
        max_uncertainty: model uncertainty above this (for ``low_conf_enter_ticks`` ticks) hands over to the
            fallback [m/s², the model's own units]; ``for_model`` sets it from the model's metadata. The default
            (0.5) is for models without a calibration.
        low_conf_enter_ticks: consecutive ticks above ``max_uncertainty`` before low confidence takes over
            (3 ticks = 0.3 s: one noisy frame is no loss of confidence; shorter than the world's 0.2 s dead time
            plus a brake build-up would not be safer, since the fallback's own TTC stages override at once).
        low_conf_min_hold_ticks: a low-confidence episode lasts at least this many ticks (10 = 1 s: handing the
            car back and forth every tick is worse than either driver).
        low_conf_exit_ratio: back to the model only once the uncertainty is below this fraction of
            ``max_uncertainty`` (hysteresis against flapping around the threshold).
        governor_gain_per_s: the set-speed governor's gain (ADR 0175): the model may accelerate at most this
            times the speed still missing to the set speed [1/s]; 0.5 leaves the expert's own approach to its
            set speed uncapped above a few m/s (IDM, 1.5 m/s² and delta 4 at 22-32 m/s: slope <= 0.27 /s at its
            set speed) and settles without overshoot over the 0.2 s actuator dead time. ``inf`` switches the
            governor off (the model's command uncapped).
        max_abs_accel_mps2: a model command outside +-this is invalid output, not a command [m/s²].
        switch_hold_ticks: after a model switch the fallback drives this many ticks (the new model's first outputs
            are not trusted until it has seen a few frames; the OTA client activates in a safe state).
        ttc_override_stage: a fallback stage at or above this overrides a model that brakes less.
        clearing_max_stage: up to this stage, the TTC override is withheld where the fallback predicts its obstacle
            will have left the corridor before the ego gets there (``FallbackOutput.clearing``, ADR 0112);
            ``STAGE_NONE`` switches this off.
        model_confirm_brake_mps2: a model command braking harder than this [m/s²] needs the model's command of
            the tick before to brake harder than it too; else it is held at this for one tick (2.5 m/s²: the
            expert's comfortable deceleration, ``fleetloop.sim.expert.EXPERT_IDM``). ``inf`` switches this off.
        model_brake_jerk_mps3: the model's command may deepen braking at most this fast from the last tick's
            command [m/s³] (9: just under the 10 m/s³ harsh-jerk threshold, as the expert builds firm braking,
            ``fleetloop.sim.expert.FIRM_JERK_MPS3``); ``inf`` switches the comfort rate off (ADR 0198).
        urgent_brake_mps2: a model command braking harder than this [m/s²] passes at the actuator's full rate (4: the
            hard-braking event threshold, where the expert too stops limiting its build-up).
        comfort_free_hazard_prob: nor where the model's hazard head is this sure that a hazard is coming [-] (0.9:
            at 0.5 or 0.7 a fine-tune's braking for fog hazards raised harsh jerks as without the limit; ADR 0198).
        dt_s: the tick length [s] (the world's; the comfort rate is per second).
        model_brake_free_need_mps2: no such confirmation where the fallback's perceived obstacle needs more than
            this deceleration [m/s²] (0: any obstacle the ego closes on; the ranging sensors corroborate the
            model) or the fallback is at a TTC stage, unless that obstacle is clearing the path.
    """

    max_uncertainty: float = 0.5
    max_abs_accel_mps2: float = 12.0
    switch_hold_ticks: int = 10
    ttc_override_stage: int = STAGE_PARTIAL
    clearing_max_stage: int = STAGE_FULL
    model_confirm_brake_mps2: float = 2.5
    model_brake_free_need_mps2: float = 0.0
    model_brake_jerk_mps3: float = 9.0
    urgent_brake_mps2: float = 4.0
    comfort_free_hazard_prob: float = 0.9
    dt_s: float = 0.1
    low_conf_enter_ticks: int = 3
    low_conf_min_hold_ticks: int = 10
    low_conf_exit_ratio: float = 0.8
    governor_gain_per_s: float = 0.5

    def __post_init__(self) -> None:
        if not (self.max_uncertainty > 0 and self.max_uncertainty < float("inf")):
            raise FleetConfigError(
                f"max_uncertainty must be a positive finite number [m/s²], got {self.max_uncertainty}"
            )
        if self.low_conf_enter_ticks < 1 or self.low_conf_min_hold_ticks < 0:
            raise FleetConfigError("low_conf_enter_ticks must be >= 1 and low_conf_min_hold_ticks >= 0")
        if not 0 < self.low_conf_exit_ratio <= 1:
            raise FleetConfigError(f"low_conf_exit_ratio must be in (0, 1], got {self.low_conf_exit_ratio}")
        if not self.model_confirm_brake_mps2 > 0:
            raise FleetConfigError(
                f"model_confirm_brake_mps2 must be > 0 (inf: off), got {self.model_confirm_brake_mps2}"
            )
        if not (math.isfinite(self.dt_s) and self.dt_s > 0):
            raise FleetConfigError(f"dt_s must be a positive tick length [s], got {self.dt_s}")
        if not (self.model_brake_jerk_mps3 > 0 and self.urgent_brake_mps2 >= 0):
            raise FleetConfigError(
                "model_brake_jerk_mps3 must be > 0 (inf: off) and urgent_brake_mps2 >= 0, got "
                f"{self.model_brake_jerk_mps3} and {self.urgent_brake_mps2}"
            )
        if not 0 <= self.comfort_free_hazard_prob <= 1:
            raise FleetConfigError(
                "comfort_free_hazard_prob must be a probability in [0, 1] (1: never), got "
                f"{self.comfort_free_hazard_prob}"
            )
        if not self.governor_gain_per_s > 0:
            raise FleetConfigError(f"governor_gain_per_s must be > 0 (inf: off), got {self.governor_gain_per_s}")

    @classmethod
    def for_model(cls, metadata: Any, **overrides: Any) -> ArbiterConfig:
        """Thresholds matched to a model: ``max_uncertainty`` = ``UNCERTAINTY_CALIBRATION_MARGIN`` x the model's
        validation uncertainty p99 (``metadata.metrics[UNCERTAINTY_CALIBRATION_KEY]``; ``metadata`` is an
        ``ArtifactMetadata`` or its metrics mapping). A model without that calibration gets the default threshold."""
        metrics = metadata if isinstance(metadata, Mapping) else getattr(metadata, "metrics", {})
        base = cls(**overrides)
        p99 = metrics.get(UNCERTAINTY_CALIBRATION_KEY)
        try:
            value = float(p99) if p99 is not None else float("nan")
        except (TypeError, ValueError):
            value = float("nan")
        if not (value > 0 and value < float("inf")) or "max_uncertainty" in overrides:
            return base
        return replace(base, max_uncertainty=UNCERTAINTY_CALIBRATION_MARGIN * value)


@dataclass(frozen=True)
class ArbiterInputs:
    """One tick's inputs, tensors [B].

    ``model_*`` are the policy's outputs (anything, NaN included, where ``model_valid`` is False);
    ``deadline_missed`` marks vehicles whose inference did not finish in time; ``has_model`` is False where no
    model is on board; ``switched`` is True on the tick a vehicle's model version changed. ``set_speed_mps`` is
    the driver's set speed and ``ego_speed_mps`` the vehicle's measured speed, both [m/s], for the set-speed
    governor (None: no set speed, the model's command is not capped).
    """

    model_accel_mps2: torch.Tensor
    model_hazard_prob: torch.Tensor
    model_uncertainty: torch.Tensor
    model_valid: torch.Tensor
    deadline_missed: torch.Tensor
    has_model: torch.Tensor
    switched: torch.Tensor
    fallback: FallbackOutput
    set_speed_mps: torch.Tensor | None = None
    ego_speed_mps: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.set_speed_mps is None) != (self.ego_speed_mps is None):
            raise ValueError("the set-speed governor needs both set_speed_mps and ego_speed_mps (or neither)")


@dataclass(frozen=True)
class ArbiterState:
    """Arbiter memory and counters, tensors on the vehicles' device ([B] or [B, R], R = len(REASON_NAMES)).

    Attributes:
        on_fallback: the fallback drove last tick.
        episode_reason: reason code of the current fallback episode (its transition), 0 when on the model.
        episode_ticks: ticks of the current fallback episode so far.
        switch_hold: ticks the fallback still has to drive after a model switch.
        activations: [B, R] int64, model -> fallback transitions per reason.
        fallback_ticks: [B, R] int64, ticks driven by the fallback per episode reason.
        episodes_ended: [B, R] int64, fallback episodes that ended (back on the model) per reason.
        ended_ticks: [B, R] int64, summed durations of those ended episodes [ticks].
        reason_ticks: [B, R] int64, ticks per tick-reason (the reason of each single tick).
        unc_high_ticks: consecutive ticks the model's uncertainty has been above the threshold.
        low_conf: the low-confidence latch is set (the fallback drives for low confidence unless a reason of
            higher priority applies).
        low_conf_hold: ticks the latch still holds at least.
        last_model_mps2: the model's command last tick [m/s²] (float; 0 where it had none).
        last_command_mps2: the command sent to the actuators last tick, the model's or the fallback's [m/s²].
    """

    on_fallback: torch.Tensor
    episode_reason: torch.Tensor
    episode_ticks: torch.Tensor
    switch_hold: torch.Tensor
    activations: torch.Tensor
    fallback_ticks: torch.Tensor
    episodes_ended: torch.Tensor
    ended_ticks: torch.Tensor
    reason_ticks: torch.Tensor
    unc_high_ticks: torch.Tensor
    low_conf: torch.Tensor
    low_conf_hold: torch.Tensor
    last_model_mps2: torch.Tensor
    last_command_mps2: torch.Tensor

    @staticmethod
    def init(batch: int, device: torch.device | str = "cpu", start_on_fallback: bool = False) -> ArbiterState:
        """Fresh counters for ``batch`` vehicles (``start_on_fallback``: the first fallback tick is no transition)."""
        z = torch.zeros(batch, dtype=torch.int64, device=device)
        zr = torch.zeros(batch, len(REASON_NAMES), dtype=torch.int64, device=device)
        flag = torch.full((batch,), start_on_fallback, dtype=torch.bool, device=device)
        return ArbiterState(
            flag,
            z,
            z.clone(),
            z.clone(),
            zr,
            zr.clone(),
            zr.clone(),
            zr.clone(),
            zr.clone(),
            z.clone(),
            torch.zeros(batch, dtype=torch.bool, device=device),
            z.clone(),
            torch.zeros(batch, device=device),
            torch.zeros(batch, device=device),
        )

    def totals(self) -> dict[str, dict[str, int]]:
        """Fleet totals per reason name: activations, fallback ticks, ended episodes and their summed ticks."""
        out: dict[str, dict[str, int]] = {}
        for key in ("activations", "fallback_ticks", "episodes_ended", "ended_ticks", "reason_ticks"):
            col = getattr(self, key).sum(0).tolist()
            out[key] = {name: int(col[i]) for i, name in enumerate(REASON_NAMES) if i > 0}
        return out


@dataclass(frozen=True)
class Decision:
    """One tick's decision, tensors [B].

    Attributes:
        accel_mps2: the command for the actuators (always finite).
        driver: ``DRIVER_MODEL`` or ``DRIVER_FALLBACK`` (int64).
        reason: reason code of this tick (0 when the model drives).
        started: a fallback episode began this tick (model -> fallback).
        ended: a fallback episode ended this tick (fallback -> model); its reason and length below.
        ended_reason, ended_ticks: the ended episode's reason code and duration [ticks] (0 where not ended).
        governed: the model drove and the set-speed governor lowered its command (ADR 0175).
    """

    accel_mps2: torch.Tensor
    driver: torch.Tensor
    reason: torch.Tensor
    started: torch.Tensor
    ended: torch.Tensor
    ended_reason: torch.Tensor
    ended_ticks: torch.Tensor
    governed: torch.Tensor


def governor_cap_mps2(gain_per_s: float, set_speed_mps: torch.Tensor, ego_speed_mps: torch.Tensor) -> torch.Tensor:
    """The set-speed governor's cap on the model's command [m/s²], [B]: ``gain_per_s`` x the speed still missing to
    the set speed, never below 0 (the governor takes away propulsion, it never brakes; ADR 0175)."""
    missing = set_speed_mps.float() - ego_speed_mps.float()
    return (gain_per_s * missing).clamp_min(0.0)


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(x) if x.is_floating_point() else torch.ones_like(x, dtype=torch.bool)


def arbitrate(cfg: ArbiterConfig, state: ArbiterState, inp: ArbiterInputs) -> tuple[ArbiterState, Decision]:
    """Choose model or fallback for every vehicle, count transitions and durations."""
    check_fallback_command(inp.fallback.accel_mps2)
    new_state, decision = arbitrate_unchecked(cfg, state, inp)
    check_command(decision.accel_mps2)
    return new_state, decision


def check_fallback_command(accel_mps2: torch.Tensor) -> None:
    """Raise ``ValueError`` if the fallback's command is not finite (``arbitrate`` checks it first)."""
    if not bool(torch.isfinite(accel_mps2).all()):
        raise ValueError("fallback command is not finite; the fallback must always produce a command")


def check_command(accel_mps2: torch.Tensor) -> None:
    """Raise ``RuntimeError`` if the arbiter's command is not finite (unreachable by construction; a bug must not
    reach the actuators)."""
    if not bool(torch.isfinite(accel_mps2).all()):
        raise RuntimeError("arbiter produced a non-finite command")


def arbitrate_unchecked(cfg: ArbiterConfig, state: ArbiterState, inp: ArbiterInputs) -> tuple[ArbiterState, Decision]:
    """``arbitrate`` without its two host-side checks (no device sync: what a compiled graph runs). The caller
    runs ``check_fallback_command`` and ``check_command`` before any result is used."""
    fb = inp.fallback
    m = inp.model_accel_mps2
    usable = (
        inp.model_valid.bool()
        & _finite(m)
        & _finite(inp.model_hazard_prob)
        & _finite(inp.model_uncertainty)
        & (m.abs() <= cfg.max_abs_accel_mps2)
    )
    hold = torch.where(
        inp.switched.bool(), torch.full_like(state.switch_hold, cfg.switch_hold_ticks), state.switch_hold
    )
    safe_m = torch.where(usable, m, fb.accel_mps2)
    # Braking beyond comfortable on two frames (ADR 0112): a model command beyond -model_confirm_brake_mps2 is passed
    # on only where the model asked for that last tick too, else it is held there for this tick; not where the
    # fallback sees a threat (a TTC stage, or an obstacle that needs more than model_brake_free_need_mps2) that is
    # not leaving the path.
    threat = (fb.stage > STAGE_NONE) & (fb.stage < STAGE_MRM)
    if fb.need_mps2 is not None:
        threat = threat | (fb.need_mps2 > cfg.model_brake_free_need_mps2)
    # Path prediction (ADR 0112), unless switched off: where the fallback's obstacle is leaving the path.
    leaving = fb.clearing.bool() if fb.clearing is not None and cfg.clearing_max_stage > STAGE_NONE else None
    if leaving is not None:
        threat = threat & ~leaving
    prev_m = state.last_model_mps2
    hold_at = torch.full_like(safe_m, -cfg.model_confirm_brake_mps2)
    unconfirmed = usable & ~threat & (safe_m < hold_at) & ~(prev_m < hold_at)
    safe_m = torch.where(unconfirmed, hold_at, safe_m)
    # Set-speed governor (ADR 0175): min(model, cruise toward the set speed); the cap is >= 0, so braking passes
    # untouched, and the TTC override below decides as before (from the partial stage on, the fallback's command
    # is < 0 <= the cap).
    if inp.set_speed_mps is not None and inp.ego_speed_mps is not None and cfg.governor_gain_per_s < float("inf"):
        capped = torch.minimum(safe_m, governor_cap_mps2(cfg.governor_gain_per_s, inp.set_speed_mps, inp.ego_speed_mps))
        governed = usable & (capped < safe_m)
        safe_m = capped
    else:
        governed = torch.zeros_like(usable)
    # Comfort rate (ADR 0198): deeper braking builds from last tick's command at most model_brake_jerk_mps3, unless
    # the model asks for urgent braking or is confident a hazard is coming. Applied last, so it limits what the model
    # actually sends.
    if cfg.model_brake_jerk_mps3 < float("inf"):
        floor = state.last_command_mps2.to(safe_m.dtype) - cfg.model_brake_jerk_mps3 * cfg.dt_s
        hazard = torch.nan_to_num(inp.model_hazard_prob.float(), nan=0.0) > cfg.comfort_free_hazard_prob
        urgent = (safe_m < -cfg.urgent_brake_mps2) | hazard
        safe_m = torch.where(usable & ~urgent & (safe_m < floor), floor, safe_m)
    unc = torch.nan_to_num(inp.model_uncertainty.float(), nan=0.0)
    high = torch.where(unc > cfg.max_uncertainty, state.unc_high_ticks + 1, torch.zeros_like(state.unc_high_ticks))
    enter = high >= cfg.low_conf_enter_ticks
    hold_left = torch.where(
        enter & ~state.low_conf, torch.full_like(state.low_conf_hold, cfg.low_conf_min_hold_ticks), state.low_conf_hold
    )
    calm = unc < cfg.low_conf_exit_ratio * cfg.max_uncertainty
    low_conf = inp.has_model.bool() & (enter | (state.low_conf & ((hold_left > 0) | ~calm)))
    ttc_critical = (fb.stage >= cfg.ttc_override_stage) & (fb.stage < STAGE_MRM) & (fb.accel_mps2 < safe_m)
    if leaving is not None:
        # Path prediction (ADR 0112): no override for an obstacle that leaves the path before the ego gets there;
        # and a stage the fallback only holds (its latch, nothing in the path any more) starts no new override,
        # it only keeps one going (else the brake lands just after a withheld, clearing obstacle has left).
        clearing = leaving & (fb.stage <= cfg.clearing_max_stage)
        in_path = fb.gap_m < NO_OBSTACLE_M
        going = state.on_fallback & (state.episode_reason == REASON_CODES["ttc_critical"])
        ttc_critical = ttc_critical & ~clearing & (in_path | going)
    conditions = {
        "no_model": ~inp.has_model.bool(),
        "model_switch": hold > 0,
        "deadline": inp.deadline_missed.bool(),
        "invalid_output": ~usable,
        "sensor_fault": fb.sensor_fault.bool(),
        "ttc_critical": ttc_critical,
        "low_confidence": low_conf,
    }
    reason = torch.zeros_like(state.episode_reason)
    for name in reversed(_PRIORITY):  # the highest priority is written last
        reason = torch.where(conditions[name], torch.full_like(reason, REASON_CODES[name]), reason)
    on_fb = reason > 0
    cmd = torch.where(on_fb, fb.accel_mps2, safe_m)
    started = on_fb & ~state.on_fallback
    ended = ~on_fb & state.on_fallback
    ep_reason = torch.where(started, reason, torch.where(on_fb, state.episode_reason, torch.zeros_like(reason)))
    ep_ticks = torch.where(on_fb, state.episode_ticks + 1, torch.zeros_like(state.episode_ticks))
    n_r = len(REASON_NAMES)
    one_start = torch.nn.functional.one_hot(torch.where(started, reason, 0), n_r) * started.unsqueeze(-1)
    one_ep = torch.nn.functional.one_hot(ep_reason, n_r) * on_fb.unsqueeze(-1)
    one_tick = torch.nn.functional.one_hot(reason, n_r) * on_fb.unsqueeze(-1)
    ended_reason = torch.where(ended, state.episode_reason, torch.zeros_like(reason))
    ended_ticks = torch.where(ended, state.episode_ticks, torch.zeros_like(reason))
    one_end = torch.nn.functional.one_hot(ended_reason, n_r) * ended.unsqueeze(-1)
    new_state = ArbiterState(
        on_fallback=on_fb,
        episode_reason=ep_reason,
        episode_ticks=ep_ticks,
        switch_hold=(hold - 1).clamp_min(0),
        activations=state.activations + one_start,
        fallback_ticks=state.fallback_ticks + one_ep,
        episodes_ended=state.episodes_ended + one_end,
        ended_ticks=state.ended_ticks + one_end * ended_ticks.unsqueeze(-1),
        reason_ticks=state.reason_ticks + one_tick,
        unc_high_ticks=high,
        low_conf=low_conf,
        low_conf_hold=torch.where(low_conf, (hold_left - 1).clamp_min(0), torch.zeros_like(hold_left)),
        last_model_mps2=torch.where(usable, m, torch.zeros_like(m)).to(state.last_model_mps2.dtype),
        last_command_mps2=cmd.to(state.last_command_mps2.dtype),
    )
    decision = Decision(
        accel_mps2=cmd,
        driver=on_fb.to(torch.int64),
        reason=reason,
        started=started,
        ended=ended,
        ended_reason=ended_reason,
        ended_ticks=ended_ticks,
        governed=governed & ~on_fb,
    )
    return new_state, decision
