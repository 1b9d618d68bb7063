"""The controller's reducer: a rollout from the first wave to promotion or rollback, and a resume after kill -9."""

from __future__ import annotations

import numpy as np
import pytest
from sim_batches import poisson_policy

from fleetloop.platform.bus.events import FleetHealth
from fleetloop.platform.canary.controller import (
    AssignWave,
    ControllerState,
    Evaluate,
    HeartbeatReceived,
    Operator,
    Promote,
    RecordDecision,
    Refused,
    RollBack,
    start,
    step,
)
from fleetloop.platform.canary.decide import Verdict
from fleetloop.platform.errors import DataError, UserInputError

POLICY = poisson_policy(waves=(0.05, 0.25, 1.0), min_exposure_km=400.0)  # wave 0: 20 rounds, wave 1: 4
STRATA = ("clear/highway_open", "fog/highway_traffic", "night/urban_open", "wet/urban_traffic")
FLEET = {f"v{i}": STRATA[i % len(STRATA)] for i in range(400)}
CANARY_V, PROD_V = 8, 7


def _round(state: ControllerState, rng: np.random.Generator, seq: int, near_ratio: float) -> list[HeartbeatReceived]:
    """One beat (1 km) from every cohort vehicle; the canary's near-miss rate is ``near_ratio`` x production's."""
    out = []
    for v in (*state.canary, *state.baseline):
        canary = v in state.canary
        cond, scen = FLEET[v].split("/")
        beat = FleetHealth(
            vehicle_id=v,
            model_version=CANARY_V if canary else PROD_V,
            beat_seq=seq,
            period_s=40.0,
            distance_m=1000.0,
            planned_distance_m=1020.0,
            near_misses=int(rng.poisson(0.3 * (near_ratio if canary else 1.0))),
            collisions=int(rng.poisson(0.01)),
            harsh_jerks=int(rng.poisson(0.1)),
            condition_class=cond,
            scenario_class=scen,
            est_visibility_m=1500.0,
            est_light=0.9,
            est_friction=0.8,
        )
        out.append(HeartbeatReceived(beat))
    return out


def _drive(
    state: ControllerState, rng: np.random.Generator, rounds: range, near_ratio: float = 1.0
) -> tuple[ControllerState, list[object]]:
    actions: list[object] = []
    for seq in rounds:
        for ev in _round(state, rng, seq, near_ratio):
            state, acts = step(state, ev)
            actions += acts
        state, acts = step(state, Evaluate(now_s=float(seq)))
        actions += acts
        if state.phase in ("promoted", "rolled_back"):
            break
    return state, actions


def test_a_good_model_is_rolled_out_wave_by_wave_to_promotion() -> None:
    state, first = start(POLICY, "r1", CANARY_V, PROD_V, FLEET)
    assert isinstance(first[0], AssignWave) and len(first[0].canary) == 20
    assert len(first[0].baseline) == 20 * POLICY.baseline_ratio == 80  # production drives anyway: 4 per canary
    state, actions = _drive(state, np.random.default_rng(0), range(1, 400))
    waves = [a for a in actions if isinstance(a, AssignWave)]
    assert [w.wave for w in waves] == [1] and len(waves[0].canary) == 100
    assert set(first[0].canary) <= set(waves[0].canary)
    assert isinstance(actions[-1], Promote) and state.phase == "promoted"
    verdicts = [a.decision.verdict for a in actions if isinstance(a, RecordDecision)]
    assert verdicts.count(Verdict.NEXT_WAVE) == 2 and Verdict.ROLLBACK not in verdicts


def test_a_model_with_more_near_misses_is_rolled_back_with_its_evidence() -> None:
    state, _ = start(POLICY, "r2", CANARY_V, PROD_V, FLEET)
    state, actions = _drive(state, np.random.default_rng(1), range(1, 400), near_ratio=3.0)
    assert state.phase == "rolled_back" and isinstance(actions[-1], RollBack)
    assert "near_misses" in actions[-1].reason
    assert not any(isinstance(a, Promote) for a in actions)


def test_a_controller_killed_mid_rollout_resumes_from_its_json_to_the_same_end() -> None:
    s0, _ = start(POLICY, "r3", CANARY_V, PROD_V, FLEET)
    straight, _ = _drive(s0, np.random.default_rng(2), range(1, 400))
    assert len(straight.decisions) > 12  # the kill falls inside the rollout
    # The same rollout, killed after round 10 with beats of round 11 half received: they were not persisted.
    rng = np.random.default_rng(2)
    mid, _ = _drive(s0, rng, range(1, 11))
    beats = _round(mid, rng, 11, 1.0)
    for ev in beats[: len(beats) // 2]:
        mid, _ = step(mid, ev)
    persisted = mid.to_json()
    resumed = ControllerState.from_json(persisted)
    assert resumed.to_json() == persisted
    for ev in beats:  # redelivered from the last committed offset: the ones already believed count once
        resumed, acts = step(resumed, ev)
    assert {a.reason for a in acts if isinstance(a, Refused)} <= {"stale_beat"}
    resumed, _ = step(resumed, Evaluate(now_s=11.0))
    resumed, _ = _drive(resumed, rng, range(12, 400))
    assert resumed.phase == straight.phase == "promoted"
    assert resumed.stats.to_dict() == straight.stats.to_dict()
    assert dict(resumed.refused) == {"stale_beat": len(beats) // 2}  # the redelivered ones, counted
    assert [d.to_dict() for d in resumed.decisions] == [d.to_dict() for d in straight.decisions]


def test_refused_beats_are_counted_by_reason_and_never_tallied() -> None:
    state, _ = start(POLICY, "r4", CANARY_V, PROD_V, FLEET)
    v = state.canary[0]
    good = FleetHealth(
        vehicle_id=v,
        model_version=CANARY_V,
        beat_seq=1,
        period_s=10.0,
        distance_m=100.0,
        condition_class="clear",
        scenario_class="highway_open",
    )
    bad = [
        FleetHealth(vehicle_id=v, model_version=PROD_V, beat_seq=2, period_s=10.0, distance_m=100.0),
        FleetHealth(vehicle_id="stranger", model_version=PROD_V, beat_seq=1, period_s=10.0),
        FleetHealth(vehicle_id=v, model_version=CANARY_V, beat_seq=3, period_s=10.0, distance_m=-5.0),
    ]
    state, _ = step(state, HeartbeatReceived(good))
    for b in bad:
        state, acts = step(state, HeartbeatReceived(b))
        assert isinstance(acts[0], Refused)
    assert dict(state.refused) == {"unassigned_version": 1, "unknown_vehicle": 1, "negative_distance": 1}
    assert state.pending == (good,)


def test_pause_keeps_collecting_but_decides_nothing_and_operators_can_roll_back() -> None:
    state, _ = start(POLICY, "r5", CANARY_V, PROD_V, FLEET)
    state, _ = step(state, Operator("pause", 0.0))
    state, actions = _drive(state, np.random.default_rng(3), range(1, 40))
    assert actions == [] and state.stats.batches == 39 and state.wave == 0
    with pytest.raises(UserInputError, match="cannot 'pause'"):
        step(state, Operator("pause", 1.0))
    state, _ = step(state, Operator("resume", 1.0))
    state, acts = step(state, Operator("rollback", 2.0, "a customer report"))
    assert acts == [RollBack("a customer report")] and state.phase == "rolled_back"
    with pytest.raises(UserInputError, match="rolled_back"):
        step(state, Operator("resume", 3.0))


def test_a_damaged_state_file_says_so() -> None:
    with pytest.raises(DataError, match="damaged"):
        ControllerState.from_json('{"rollout_id": "r"}')
    with pytest.raises(UserInputError, match="already in production"):
        start(POLICY, "r6", 7, 7, FLEET)
