"""The arbiter: reasons, transitions and durations, and no NaN ever reaching the actuators."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetloop.edge_agent.arbiter import (
    DRIVER_FALLBACK,
    DRIVER_MODEL,
    REASON_CODES,
    REASON_NAMES,
    ArbiterConfig,
    ArbiterInputs,
    ArbiterState,
    arbitrate,
)
from fleetloop.edge_agent.fallback import STAGE_FULL, STAGE_NONE, STAGE_PARTIAL, STAGE_WARNING, FallbackOutput
from fleetloop.platform.bus.schemas import FallbackReason
from fleetloop.platform.errors import FleetConfigError

B = 4


def _fb(
    accel: float = -0.5,
    stage: int = STAGE_NONE,
    fault: bool = False,
    clearing: list[bool] | None = None,
    gap_m: float | None = None,
) -> FallbackOutput:
    return FallbackOutput(
        accel_mps2=torch.full((B,), accel),
        stage=torch.full((B,), stage, dtype=torch.int64),
        ttc_s=torch.full((B,), math.inf),
        gap_m=torch.full((B,), gap_m if gap_m is not None else 12.0 if stage > STAGE_NONE else 1e6),
        sensor_ok=torch.full((B, 3), not fault),
        sensor_fault=torch.full((B,), fault),
        clearing=None if clearing is None else torch.tensor(clearing),
    )


def _inp(accel: list[float] | float = 0.5, fb: FallbackOutput | None = None, **kw: object) -> ArbiterInputs:
    a = torch.tensor(accel if isinstance(accel, list) else [accel] * B)
    base: dict[str, object] = {
        "model_accel_mps2": a,
        "model_hazard_prob": torch.full((B,), 0.1),
        "model_uncertainty": torch.full((B,), 0.1),
        "model_valid": torch.ones(B, dtype=torch.bool),
        "deadline_missed": torch.zeros(B, dtype=torch.bool),
        "has_model": torch.ones(B, dtype=torch.bool),
        "switched": torch.zeros(B, dtype=torch.bool),
        "fallback": fb or _fb(),
    }
    base.update(kw)
    return ArbiterInputs(**base)  # type: ignore[arg-type]


def test_reason_codes_match_the_telemetry_schema() -> None:
    assert {n: c for n, c in REASON_CODES.items()} == {r.name.lower(): int(r) for r in FallbackReason}


def test_nan_or_inf_model_output_never_reaches_the_actuators() -> None:
    cfg = ArbiterConfig()
    s = ArbiterState.init(B)
    s, d = arbitrate(cfg, s, _inp([float("nan"), float("inf"), -float("inf"), 1.0]))
    assert torch.isfinite(d.accel_mps2).all()
    assert d.driver.tolist() == [DRIVER_FALLBACK] * 3 + [DRIVER_MODEL]
    assert d.reason[:3].tolist() == [REASON_CODES["invalid_output"]] * 3
    # NaN in the hazard head or the uncertainty also disqualifies the command.
    s, d = arbitrate(cfg, s, _inp(1.0, model_hazard_prob=torch.tensor([float("nan"), 0.1, 0.1, 0.1])))
    assert int(d.driver[0]) == DRIVER_FALLBACK and float(d.accel_mps2[0]) == -0.5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=B, max_size=B))
def test_any_model_output_gives_a_finite_bounded_command(values: list[float]) -> None:
    _, d = arbitrate(ArbiterConfig(), ArbiterState.init(B), _inp(values))
    assert torch.isfinite(d.accel_mps2).all() and (d.accel_mps2.abs() <= 12.0).all()


def test_reason_priority_and_each_reason() -> None:
    cfg = ArbiterConfig(low_conf_enter_ticks=1)  # low confidence at once (its debounce is tested below)
    s = ArbiterState.init(B)
    yes, no = torch.ones(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)
    cases = {
        "deadline": _inp(deadline_missed=yes),
        "invalid_output": _inp(model_valid=no),
        "low_confidence": _inp(model_uncertainty=torch.full((B,), 0.9)),
        "ttc_critical": _inp(0.5, fb=_fb(-9.5, STAGE_FULL)),
        "sensor_fault": _inp(fb=_fb(fault=True)),
        "no_model": _inp(has_model=no, deadline_missed=yes),
        "model_switch": _inp(switched=yes, model_valid=no),
    }
    for name, inp in cases.items():
        _, d = arbitrate(cfg, s, inp)
        assert d.reason.tolist() == [REASON_CODES[name]] * B, name
    # A model that already brakes harder than the emergency brake keeps driving.
    _, d = arbitrate(cfg, s, _inp(-9.8, fb=_fb(-9.5, STAGE_FULL)))
    assert (d.driver == DRIVER_MODEL).all()
    assert REASON_NAMES[0] == "none"


def test_transitions_and_durations_are_counted_once_per_episode() -> None:
    cfg = ArbiterConfig(switch_hold_ticks=3)
    s = ArbiterState.init(B)
    nan = [float("nan"), 0.5, 0.5, 0.5]
    # vehicle 0: invalid for 4 ticks, then fine; vehicle 1: model switch (held 3 ticks); others always on the model.
    script = [(nan, [False, True, False, False])] + [(nan, [False] * 4)] * 3 + [([0.5] * B, [False] * 4)] * 3
    ended_at = []
    for t, (acc, sw) in enumerate(script):
        s, d = arbitrate(cfg, s, _inp(acc, switched=torch.tensor(sw)))
        ended_at += [
            (t, int(i), int(d.ended_ticks[i]), REASON_NAMES[int(d.ended_reason[i])]) for i in d.ended.nonzero()
        ]
    tot = s.totals()
    assert tot["activations"]["invalid_output"] == 1 and tot["activations"]["model_switch"] == 1
    assert sum(tot["activations"].values()) == 2
    assert ended_at == [(3, 1, 3, "model_switch"), (4, 0, 4, "invalid_output")]
    assert tot["ended_ticks"] == {**{n: 0 for n in REASON_NAMES[1:]}, "invalid_output": 4, "model_switch": 3}
    assert tot["fallback_ticks"]["invalid_output"] == 4 and tot["fallback_ticks"]["model_switch"] == 3
    assert not s.on_fallback.any()


def test_reason_change_within_an_episode_is_not_a_new_activation() -> None:
    cfg = ArbiterConfig()
    s = ArbiterState.init(B)
    yes = torch.ones(B, dtype=torch.bool)
    s, _ = arbitrate(cfg, s, _inp(deadline_missed=yes))
    s, d = arbitrate(cfg, s, _inp(model_valid=~yes))
    assert not d.started.any() and (d.reason == REASON_CODES["invalid_output"]).all()
    assert s.totals()["activations"]["deadline"] == B and s.totals()["activations"]["invalid_output"] == 0
    assert s.totals()["fallback_ticks"]["deadline"] == 2 * B  # ticks count to the episode's reason
    assert s.totals()["reason_ticks"]["invalid_output"] == B


def _unc(values: list[float]) -> ArbiterInputs:
    return _inp(model_uncertainty=torch.tensor(values))


def test_a_single_uncertain_frame_does_not_hand_over_to_the_fallback() -> None:
    cfg = ArbiterConfig(max_uncertainty=0.5, low_conf_enter_ticks=3)
    s = ArbiterState.init(B)
    # uncertainty spikes on every other tick: never 3 in a row, so the model keeps driving
    for t in range(20):
        s, d = arbitrate(cfg, s, _unc([0.9 if t % 2 else 0.1] * B))
        assert (d.driver == DRIVER_MODEL).all()
    assert s.totals()["activations"]["low_confidence"] == 0


def test_low_confidence_is_one_episode_of_at_least_the_minimum_hold_not_a_flicker() -> None:
    cfg = ArbiterConfig(
        max_uncertainty=0.5, low_conf_enter_ticks=3, low_conf_min_hold_ticks=10, low_conf_exit_ratio=0.8
    )
    s = ArbiterState.init(B)
    # 3 uncertain ticks, then an uncertainty flapping around the threshold (0.45 / 0.55): one episode, which lasts
    # the minimum hold and then as long as the uncertainty stays above 0.8 x 0.5 = 0.4
    trace = [0.9] * 3 + [0.45, 0.55] * 10 + [0.3] * 5
    drivers = []
    for u in trace:
        s, d = arbitrate(cfg, s, _unc([u] * B))
        drivers.append(int(d.driver[0]))
    assert drivers[:2] == [DRIVER_MODEL] * 2
    assert drivers[2:23] == [DRIVER_FALLBACK] * 21  # held through the flapping
    assert drivers[23:] == [DRIVER_MODEL] * 5
    tot = s.totals()
    assert tot["activations"]["low_confidence"] == B and tot["episodes_ended"]["low_confidence"] == B


def test_for_model_sets_the_threshold_from_the_models_validation_uncertainty() -> None:
    from fleetloop.edge_agent.arbiter import UNCERTAINTY_CALIBRATION_KEY, UNCERTAINTY_CALIBRATION_MARGIN

    cfg = ArbiterConfig.for_model({UNCERTAINTY_CALIBRATION_KEY: 1.2, "val_accel_mse": 0.2})
    assert math.isclose(cfg.max_uncertainty, UNCERTAINTY_CALIBRATION_MARGIN * 1.2, rel_tol=1e-9)
    # uncalibrated models (or non-finite values) keep the default; explicit overrides win
    assert ArbiterConfig.for_model({}).max_uncertainty == ArbiterConfig().max_uncertainty
    assert ArbiterConfig.for_model({UNCERTAINTY_CALIBRATION_KEY: "nan"}).max_uncertainty == 0.5
    assert ArbiterConfig.for_model({UNCERTAINTY_CALIBRATION_KEY: 1.2}, max_uncertainty=2.0).max_uncertainty == 2.0


def test_a_ttc_stage_does_not_override_the_model_for_an_obstacle_leaving_the_path() -> None:
    s = ArbiterState.init(B)
    smooth = ArbiterConfig(model_brake_jerk_mps3=math.inf)  # the model's -1 m/s² passes at once (no comfort rate)
    clearing = [True, False, True, False]
    for stage, accel in ((STAGE_PARTIAL, -4.0), (STAGE_FULL, -9.5)):
        _, d = arbitrate(smooth, s, _inp(-1.0, fb=_fb(accel, stage, clearing=clearing)))
        assert d.driver.tolist() == [DRIVER_MODEL, DRIVER_FALLBACK, DRIVER_MODEL, DRIVER_FALLBACK], stage
        assert d.accel_mps2.tolist() == [-1.0, accel, -1.0, accel]
    # up to clearing_max_stage only: a full stage then overrides whatever the fallback predicts
    cfg = ArbiterConfig(clearing_max_stage=STAGE_PARTIAL)
    _, d = arbitrate(cfg, s, _inp(-1.0, fb=_fb(-9.5, STAGE_FULL, clearing=clearing)))
    assert (d.driver == DRIVER_FALLBACK).all()
    _, d = arbitrate(cfg, s, _inp(-1.0, fb=_fb(-4.0, STAGE_PARTIAL, clearing=clearing)))
    assert d.driver.tolist() == [DRIVER_MODEL, DRIVER_FALLBACK, DRIVER_MODEL, DRIVER_FALLBACK]
    # switched off, or no prediction from the fallback: the override as before
    for cfg, fb in (
        (ArbiterConfig(clearing_max_stage=STAGE_NONE), _fb(-4.0, STAGE_PARTIAL, clearing=clearing)),
        (ArbiterConfig(), _fb(-4.0, STAGE_PARTIAL)),
    ):
        _, d = arbitrate(cfg, s, _inp(-1.0, fb=fb))
        assert (d.driver == DRIVER_FALLBACK).all()
    # a warning stage never overrides, clearing or not
    _, d = arbitrate(ArbiterConfig(), s, _inp(-1.0, fb=_fb(-3.0, STAGE_WARNING, clearing=clearing)))
    assert (d.driver == DRIVER_MODEL).all()


def test_with_path_prediction_a_stage_held_with_nothing_in_the_path_starts_no_override_but_keeps_one() -> None:
    cfg = ArbiterConfig()
    no = [False] * B
    s = ArbiterState.init(B)
    # the fallback only holds its latched stage (nothing in the path any more): the model keeps driving
    s1, d = arbitrate(cfg, s, _inp(-1.0, fb=_fb(-4.0, STAGE_PARTIAL, clearing=no, gap_m=1e6)))
    assert (d.driver == DRIVER_MODEL).all()
    # an obstacle in the path: the override starts, and the latch keeps it going once the obstacle is gone
    s1, d = arbitrate(cfg, s1, _inp(-1.0, fb=_fb(-4.0, STAGE_PARTIAL, clearing=no)))
    assert (d.driver == DRIVER_FALLBACK).all()
    s1, d = arbitrate(cfg, s1, _inp(-1.0, fb=_fb(-4.0, STAGE_PARTIAL, clearing=no, gap_m=1e6)))
    assert (d.driver == DRIVER_FALLBACK).all() and (d.started == 0).all()
    # without path prediction (clearing None) or switched off, a held stage overrides as before
    for c, fb in (
        (cfg, _fb(-4.0, STAGE_PARTIAL, gap_m=1e6)),
        (ArbiterConfig(clearing_max_stage=STAGE_NONE), _fb(-4.0, STAGE_PARTIAL, clearing=no, gap_m=1e6)),
    ):
        _, d = arbitrate(c, s, _inp(-1.0, fb=fb))
        assert (d.driver == DRIVER_FALLBACK).all()


def test_hard_braking_needs_two_frames_unless_the_fallback_sees_something_to_brake_for() -> None:
    cfg = ArbiterConfig(model_brake_jerk_mps3=math.inf)  # the comfort rate has its own test
    hold = -cfg.model_confirm_brake_mps2
    s = ArbiterState.init(B)
    # a one-frame dip to -4.5 m/s² with nothing ahead: held at the comfortable deceleration, then passed on once the
    # model asks for it a second time in a row
    s, d = arbitrate(cfg, s, _inp(-1.0))
    s, d = arbitrate(cfg, s, _inp(-4.5))
    assert d.accel_mps2.tolist() == [hold] * B and (d.driver == DRIVER_MODEL).all()
    s, d = arbitrate(cfg, s, _inp(-1.0))
    assert d.accel_mps2.tolist() == [-1.0] * B
    s, d = arbitrate(cfg, s, _inp(-4.5))
    s, d = arbitrate(cfg, s, _inp(-4.0))
    assert d.accel_mps2.tolist() == [-4.0] * B
    # braking up to the threshold passes at once
    _, d = arbitrate(cfg, ArbiterState.init(B), _inp(-2.4))
    assert d.accel_mps2.tolist() == pytest.approx([-2.4] * B)
    # the fallback closes on an obstacle (it needs braking) or is at a TTC stage: no wait
    for fb in (
        FallbackOutput(**{**_fb(0.5).__dict__, "need_mps2": torch.full((B,), 0.5)}),
        _fb(-2.0, STAGE_WARNING),
    ):
        _, d = arbitrate(cfg, ArbiterState.init(B), _inp(-4.5, fb=fb))
        assert d.accel_mps2.tolist() == [-4.5] * B
    # ... unless what the fallback sees is leaving the path: that is no reason to brake hard at once
    leaving = FallbackOutput(**{**_fb(-2.0, STAGE_WARNING, clearing=[True, False, True, False]).__dict__})
    _, d = arbitrate(cfg, ArbiterState.init(B), _inp(-4.5, fb=leaving))
    assert d.accel_mps2.tolist() == [hold, -4.5, hold, -4.5]
    # switched off
    _, d = arbitrate(ArbiterConfig(model_confirm_brake_mps2=math.inf), ArbiterState.init(B), _inp(-4.5))
    assert d.accel_mps2.tolist() == [-4.5] * B


def test_the_models_braking_builds_at_the_comfort_rate_unless_urgent() -> None:
    cfg = ArbiterConfig()
    step = cfg.model_brake_jerk_mps3 * cfg.dt_s
    s = ArbiterState.init(B)
    # cruising at +0.5, then the model asks for -2: the command deepens by at most 0.9 m/s² a tick
    s, d = arbitrate(cfg, s, _inp(0.5))
    sent = [float(d.accel_mps2[0])]
    for _ in range(4):
        s, d = arbitrate(cfg, s, _inp(-2.0))
        sent.append(float(d.accel_mps2[0]))
    assert sent == pytest.approx([0.5, 0.5 - step, 0.5 - 2 * step, -2.0, -2.0])
    assert (d.driver == DRIVER_MODEL).all()
    # releasing and accelerating are not limited here (the actuator's own 10 m/s³ limit does that)
    s, d = arbitrate(cfg, s, _inp(1.0))
    assert d.accel_mps2.tolist() == [1.0] * B
    # urgent braking (beyond urgent_brake_mps2, confirmed on two frames) passes at the actuator's full rate
    s, d = arbitrate(cfg, s, _inp(-5.0, fb=FallbackOutput(**{**_fb(0.5).__dict__, "need_mps2": torch.full((B,), 5.0)})))
    assert d.accel_mps2.tolist() == [-5.0] * B
    # nor where the model is sure a hazard is coming (its hazard head above comfort_free_hazard_prob)
    s = ArbiterState.init(B)
    s, _ = arbitrate(cfg, s, _inp(0.5))
    sure = torch.tensor([0.95, 0.85, 0.5, float("nan")])
    _, d = arbitrate(cfg, s, _inp(-2.0, model_hazard_prob=sure))
    assert d.driver.tolist() == [DRIVER_MODEL, DRIVER_MODEL, DRIVER_MODEL, DRIVER_FALLBACK]
    assert d.accel_mps2[:3].tolist() == pytest.approx([-2.0, 0.5 - step, 0.5 - step])
    # the fallback's command is never limited: a TTC override brakes at once, and the model's braking afterwards
    # builds from the fallback's command, not from the model's last one
    s = ArbiterState.init(B)
    s, d = arbitrate(cfg, s, _inp(0.5, fb=_fb(-4.0, STAGE_PARTIAL)))
    assert d.driver.tolist() == [DRIVER_FALLBACK] * B and d.accel_mps2.tolist() == [-4.0] * B
    s, d = arbitrate(cfg, s, _inp(-2.0))
    assert d.driver.tolist() == [DRIVER_MODEL] * B and d.accel_mps2.tolist() == [-2.0] * B
    # switched off: the model's command passes as it is
    _, d = arbitrate(ArbiterConfig(model_brake_jerk_mps3=math.inf), ArbiterState.init(B), _inp(-2.0))
    assert d.accel_mps2.tolist() == [-2.0] * B


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"model_brake_jerk_mps3": 0.0}, "model_brake_jerk_mps3 must be > 0"),
        ({"urgent_brake_mps2": -1.0}, "urgent_brake_mps2 >= 0"),
        ({"dt_s": 0.0}, "dt_s must be a positive tick length"),
        ({"comfort_free_hazard_prob": 1.5}, "comfort_free_hazard_prob must be a probability"),
    ],
)
def test_bad_comfort_rate_settings_are_refused(kw: dict[str, float], match: str) -> None:
    with pytest.raises(FleetConfigError, match=match):
        ArbiterConfig(**kw)
