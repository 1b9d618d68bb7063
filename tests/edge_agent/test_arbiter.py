"""The arbiter: reasons, transitions and durations, and no NaN ever reaching the actuators."""

from __future__ import annotations

import math

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
from fleetloop.edge_agent.fallback import STAGE_FULL, STAGE_NONE, FallbackOutput
from fleetloop.platform.bus.schemas import FallbackReason

B = 4


def _fb(accel: float = -0.5, stage: int = STAGE_NONE, fault: bool = False) -> FallbackOutput:
    return FallbackOutput(
        accel_mps2=torch.full((B,), accel),
        stage=torch.full((B,), stage, dtype=torch.int64),
        ttc_s=torch.full((B,), math.inf),
        gap_m=torch.full((B,), 1e6),
        sensor_ok=torch.full((B, 3), not fault),
        sensor_fault=torch.full((B,), fault),
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
