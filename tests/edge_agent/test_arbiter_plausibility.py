"""ADR 0113: the model's braking beyond comfortable needs a reason the vehicle's own radar and lidar see."""

from __future__ import annotations

import math

import torch

from fleetloop.edge_agent.arbiter import DRIVER_MODEL, ArbiterConfig, ArbiterInputs, ArbiterState, arbitrate
from fleetloop.edge_agent.fallback import NO_OBSTACLE_M, STAGE_NONE, STAGE_WARNING, FallbackOutput

B = 4
HOLD = -ArbiterConfig().model_confirm_brake_mps2


def _fb(
    gap_m: float = 40.0,
    ttc_s: float = 8.0,
    need: float = 0.5,
    near_need: float = 0.0,
    near_ttc_s: float = math.inf,
    stage: int = STAGE_NONE,
) -> FallbackOutput:
    """A fallback that tracks an obstacle ``gap_m`` ahead (``NO_OBSTACLE_M``: none) and follows it gently."""
    return FallbackOutput(
        accel_mps2=torch.full((B,), -0.5),
        stage=torch.full((B,), stage, dtype=torch.int64),
        ttc_s=torch.full((B,), ttc_s),
        gap_m=torch.full((B,), gap_m),
        sensor_ok=torch.ones(B, 3, dtype=torch.bool),
        sensor_fault=torch.zeros(B, dtype=torch.bool),
        need_mps2=torch.full((B,), need),
        near_need_mps2=torch.full((B,), near_need),
        near_ttc_s=torch.full((B,), near_ttc_s),
    )


def _inp(accel: float, fb: FallbackOutput) -> ArbiterInputs:
    return ArbiterInputs(
        model_accel_mps2=torch.full((B,), accel),
        model_hazard_prob=torch.full((B,), 0.9),
        model_uncertainty=torch.full((B,), 0.1),
        model_valid=torch.ones(B, dtype=torch.bool),
        deadline_missed=torch.zeros(B, dtype=torch.bool),
        has_model=torch.ones(B, dtype=torch.bool),
        switched=torch.zeros(B, dtype=torch.bool),
        fallback=fb,
    )


def _drive(cfg: ArbiterConfig, accel: float, fbs: list[FallbackOutput]) -> list[float]:
    """The commands for the model asking ``accel`` on every tick while the fallback reports ``fbs``."""
    s = ArbiterState.init(B)
    out = []
    for fb in fbs:
        s, d = arbitrate(cfg, s, _inp(accel, fb))
        assert (d.driver == DRIVER_MODEL).all()
        out.append(float(d.accel_mps2[0]))
    return out


def test_hard_braking_behind_an_obstacle_that_needs_little_is_held_at_comfortable_even_over_several_frames() -> None:
    # the lead 40 m ahead, TTC 8 s, needs 0.5 m/s² (a night-time over-reaction of the clear-weather model): held
    assert _drive(ArbiterConfig(), -4.5, [_fb()] * 4) == [HOLD] * 4
    # and with nothing in or beside the path at all
    clear = _fb(gap_m=NO_OBSTACLE_M, ttc_s=math.inf, need=0.0)
    assert _drive(ArbiterConfig(), -4.5, [clear] * 3) == [HOLD] * 3
    # braking up to comfortable passes
    assert _drive(ArbiterConfig(), -2.0, [_fb()] * 2) == [-2.0] * 2
    # switched off: the model's braking passes once it asked for it on two frames (ADR 0112)
    assert _drive(ArbiterConfig(model_plausible_need_mps2=0.0), -4.5, [_fb()] * 3) == [-4.5] * 3


def test_hard_braking_passes_at_once_with_a_reason_the_sensors_see() -> None:
    reasons = [
        _fb(need=2.5),  # the obstacle needs it (a braking lead: its own braking is counted in the need)
        _fb(ttc_s=3.5),  # the conflict band
        _fb(stage=STAGE_WARNING),  # a TTC stage
        _fb(near_need=2.5, near_ttc_s=6.0),  # something nearer, entering the path, needs it
        _fb(near_need=0.5, near_ttc_s=3.0),  # ... or is inside the conflict band
        _fb(gap_m=NO_OBSTACLE_M, ttc_s=math.inf, need=0.0, near_need=math.inf),  # a pedestrian beside the path
    ]
    for fb in reasons:  # (on the second frame: with nothing closing in the path the first waits, ADR 0112)
        assert _drive(ArbiterConfig(), -4.5, [fb, fb])[-1] == -4.5
    # something entering the path that radar measures and that needs little is no reason
    assert _drive(ArbiterConfig(), -4.5, [_fb(near_need=0.3, near_ttc_s=12.0)] * 2) == [HOLD] * 2


def test_a_reason_holds_half_a_second_through_frames_the_sensors_miss_it() -> None:
    cfg = ArbiterConfig()
    seen, missed = _fb(need=2.5), _fb(need=0.5)
    got = _drive(cfg, -4.5, [seen] + [missed] * (cfg.model_reason_hold_ticks + 2))
    assert got == [-4.5] * (cfg.model_reason_hold_ticks + 1) + [HOLD] * 2
