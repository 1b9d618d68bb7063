"""Verdicts on simulated cohorts: harm in one slice is caught, a null is not rolled back, a timid model does not pass,
no verdict before the minimum exposure, and the waves follow one another."""

from __future__ import annotations

import dataclasses
import json
import math
from statistics import NormalDist

import numpy as np
import pytest
from sim_batches import SLICES, arm_of_beats, batch, null_rollbacks, poisson_policy, within_alpha

from fleetloop.platform.canary.decide import POOLED, Decision, Verdict, decide
from fleetloop.platform.canary.policy import CanaryPolicy
from fleetloop.platform.canary.stats import ArmTally, CohortStats, SliceTally, update_stats
from fleetloop.platform.errors import DataError, UserInputError

POLICY = poisson_policy()


def _run(
    policy: CanaryPolicy,
    batches: list[dict[str, SliceTally]],
    wave: int = 0,
    every: int = 1,
    stats: CohortStats | None = None,
    stop: tuple[Verdict, ...] = (Verdict.NEXT_WAVE, Verdict.ROLLBACK),
) -> tuple[list[Decision], CohortStats]:
    """Feed the batches, deciding after every ``every``-th; stop at the first verdict in ``stop``."""
    stats = stats or CohortStats()
    wave_km = 0.0
    out: list[Decision] = []
    for i, b in enumerate(batches):
        stats = update_stats(policy, stats, b)
        wave_km += sum(t.canary.km for t in b.values() if t.canary.km > 0 and t.baseline.km > 0)
        if (i + 1) % every:
            continue
        d = decide(policy, stats, wave, wave_km, now_s=float(i))
        out.append(d)
        if d.verdict in stop:
            break
    return out, stats


def test_a_doubled_near_miss_rate_in_one_slice_only_is_rolled_back_naming_that_slice() -> None:
    rng = np.random.default_rng(3)
    bad = ("fog/highway_traffic", "near_misses")
    batches = [batch(rng, 10.0, 10.0, {bad: 2.0}) for _ in range(120)]
    # Early waves may grow before the slice has driven enough; the test runs on through the waves.
    decisions, stats = _run(POLICY, batches, every=5, stop=(Verdict.ROLLBACK,))
    last = decisions[-1]
    assert last.verdict is Verdict.ROLLBACK, [d.reasons for d in decisions[-3:]]
    decisive = [e for e in last.evidence if e.decisive and e.test == "harm"]
    assert [(e.slice, e.metric) for e in decisive] == [bad]
    assert decisive[0].e_value is not None and decisive[0].e_value >= POLICY.harm_threshold
    km = stats.slices[bad[0]].canary.km
    assert km <= 1000.0  # moderate: about 0.6 x 1,000 km of events x 2 in the slice


@pytest.mark.slow
def test_a_canary_as_safe_as_production_is_not_rolled_back_while_watched_continuously() -> None:
    """100 rollouts of a canary equal to production, decided after every batch of 16 slices x 5 metrics: the share
    ever rolled back stays within alpha (it is far below: Bonferroni over 85 tests, each an e-process)."""
    policy = poisson_policy(min_exposure_km=0.0)
    assert within_alpha(policy, null_rollbacks(policy, 100, 20, 5.0, 10.0), 100)


def test_a_timid_model_with_fewer_events_but_much_less_progress_is_rolled_back() -> None:
    rng = np.random.default_rng(4)
    decisions, _ = _run(POLICY, [batch(rng, 5.0, 5.0, 0.5, progress=0.7) for _ in range(30)])
    last = decisions[-1]
    assert last.verdict is Verdict.ROLLBACK
    assert any("progress" in r for r in last.reasons)
    prog = next(e for e in last.evidence if e.test == "progress")
    assert prog.decisive and prog.ratio == pytest.approx(0.7, rel=0.01)
    # A little slower than production: held once the evidence shows it, never rolled back.
    policy = dataclasses.replace(POLICY, min_exposure_km=1600.0)  # 20 batches of 16 slices x 5 km
    decisions, _ = _run(policy, [batch(rng, 5.0, 5.0, 0.5, progress=0.92) for _ in range(40)])
    assert {d.verdict for d in decisions} == {Verdict.CONTINUE, Verdict.HOLD}
    held = next(e for e in decisions[-1].evidence if e.test == "progress")
    assert held.decisive and held.upper_bound is not None and held.upper_bound < policy.progress_min_ratio


def test_no_verdict_before_the_minimum_exposure_even_on_a_blatant_regression() -> None:
    rng = np.random.default_rng(5)
    policy = poisson_policy(min_exposure_km=400.0)
    batches = [batch(rng, 2.0, 2.0, 10.0) for _ in range(20)]  # 32 km of canary per batch
    decisions, _ = _run(policy, batches)
    verdicts = [d.verdict for d in decisions]
    first = verdicts.index(Verdict.ROLLBACK)
    assert set(verdicts[:first]) == {Verdict.CONTINUE}
    assert first == math.ceil(400.0 / 32.0) - 1  # the first batch at or over 400 km
    assert decisions[0].evidence[0].test == "exposure" and decisions[0].evidence[0].decisive


def test_a_good_model_goes_through_every_wave_and_a_worse_one_is_stopped() -> None:
    rng = np.random.default_rng(6)
    stats = CohortStats()
    sequence: list[tuple[int, str]] = []
    for wave, canary_km in enumerate((0.4, 4.0, 10.0)):  # the canary's share of driving grows with the waves
        decisions, stats = _run(POLICY, [batch(rng, canary_km, 10.0) for _ in range(400)], wave, 4, stats)
        sequence += [(wave, d.verdict.value) for d in decisions if d.verdict is not Verdict.CONTINUE]
        assert decisions[-1].verdict is Verdict.NEXT_WAVE
    assert [s for s in sequence if s[1] == "next_wave"] == [(0, "next_wave"), (1, "next_wave"), (2, "next_wave")]
    assert "promote" in decisions[-1].reasons[0]
    # 1.8 x the near misses everywhere: wave 0's 50 km may not show it (a hold needs evidence, not a point ratio),
    # but it is rolled back within the first two waves, never promoted.
    stats, worse = CohortStats(), {(s, "near_misses"): 1.8 for s in SLICES}
    for wave, canary_km in enumerate((0.4, 4.0, 10.0)):
        decisions, stats = _run(POLICY, [batch(rng, canary_km, 10.0, worse) for _ in range(600)], wave, 4, stats)
        if decisions[-1].verdict is Verdict.ROLLBACK:
            break
    assert decisions[-1].verdict is Verdict.ROLLBACK and wave <= 1
    assert any("near_misses" in r for r in decisions[-1].reasons)


def test_the_decision_serialises_to_strict_json_and_back() -> None:
    rng = np.random.default_rng(8)
    decisions, _ = _run(
        poisson_policy(min_exposure_km=10.0),
        [batch(rng, 1.0, 1.0, {("fog/urban_open", "collisions"): 50.0}) for _ in range(3)],
    )
    d = decisions[-1]
    text = d.to_json()
    doc = json.loads(text)
    assert doc["verdict"] == d.verdict.value and "Infinity" not in text
    back = Decision.from_json(text)
    assert back.verdict is d.verdict and len(back.evidence) == len(d.evidence)
    pooled = [e for e in back.evidence if e.slice == POOLED and e.test == "harm"]
    assert {e.metric for e in pooled} == set(POLICY.metrics)  # counter-metrics only hold: no harm test
    held = [e for e in back.evidence if e.test == "rate_ratio"]
    assert {e.metric for e in held} == set(POLICY.judged_metrics)
    assert all(e.lower_bound is not None for e in held if e.canary_count + e.baseline_count)
    assert all(e.describe() for e in back.evidence)
    with pytest.raises(DataError, match="not a canary decision"):
        Decision.from_json('{"verdict": "maybe"}')


def test_the_last_wave_is_not_judged() -> None:
    with pytest.raises(UserInputError, match="not judged"):
        decide(POLICY, CohortStats(), len(POLICY.waves) - 1, 100.0, 0.0)


def test_a_wave_is_held_on_a_canarys_events_only_from_hold_min_events_on() -> None:
    """Three canary events over 1 km against none over 10: the ratio's lower bound is over the margin."""
    tally = {
        "fog/highway_traffic": SliceTally(
            arm_of_beats(1.0, 1.0, {"near_misses": 3}), arm_of_beats(10.0, 1.0, {"near_misses": 0})
        )
    }
    strict = poisson_policy(min_exposure_km=0.1, metrics=("near_misses",), counter_metrics=(), progress_min_beats=2)
    [held], _ = _run(strict, [tally])
    assert held.verdict is Verdict.HOLD and "near_misses" in held.reasons[0]
    [grown], _ = _run(dataclasses.replace(strict, hold_min_events=4), [tally])
    assert grown.verdict is Verdict.NEXT_WAVE
    [still], _ = _run(dataclasses.replace(strict, hold_min_events=3), [tally])
    assert still.verdict is Verdict.HOLD


def _oracle_lower_bound(strata: list[tuple[int, float, int, float]], alpha: float) -> float:
    """The profile-likelihood lower bound by brute force: the conditional binomial log likelihood of a common ratio
    on a fine grid of log r, and the smallest r on it whose log likelihood is within z²/2 of the grid's maximum."""
    log_r = np.linspace(-8.0, 8.0, 1_600_001)
    ll = np.zeros_like(log_r)
    for xc, ec, xb, eb in strata:
        p = 1.0 / (1.0 + eb / (ec * np.exp(log_r)))
        ll += xc * np.log(p) + xb * np.log1p(-p)
    z = NormalDist().inv_cdf(1.0 - alpha)
    return float(np.exp(log_r[np.argmax(ll >= ll.max() - z * z / 2)]))


def test_a_hold_needs_the_ratios_lower_confidence_bound_over_the_margin_not_a_point_ratio() -> None:
    policy = poisson_policy(min_exposure_km=0.0, progress_min_beats=2)
    fog, clear = "fog/highway_traffic", "clear/urban_open"

    def decided(fog_canary: int) -> Decision:
        batch = {
            fog: SliceTally(
                arm_of_beats(5.0, 1.0, {"near_misses": fog_canary}), arm_of_beats(5.0, 1.0, {"near_misses": 18})
            ),
            clear: SliceTally(arm_of_beats(3.0, 1.0, {"near_misses": 4}), arm_of_beats(6.0, 1.0, {"near_misses": 7})),
        }
        return decide(policy, update_stats(policy, CohortStats(), batch), 0, 8.0, 0.0)

    def oracle(fog_canary: int) -> float:
        return _oracle_lower_bound([(fog_canary, 5.0, 18, 5.0), (4, 3.0, 7, 6.0)], policy.hold_alpha)

    first = min(x for x in range(100) if oracle(x) > policy.ratio_boundary)
    assert oracle(first - 1) <= policy.ratio_boundary < oracle(first)
    below, at = decided(first - 1), decided(first)
    rr = {
        d.verdict: next(e for e in d.evidence if e.test == "rate_ratio" and e.metric == "near_misses")
        for d in (below, at)
    }
    assert below.verdict is Verdict.NEXT_WAVE and rr[Verdict.NEXT_WAVE].ratio > policy.ratio_boundary  # point only
    assert rr[Verdict.NEXT_WAVE].lower_bound == pytest.approx(oracle(first - 1), rel=1e-4)
    assert at.verdict is Verdict.HOLD and any("near_misses" in r for r in at.reasons)
    assert rr[Verdict.HOLD].decisive and rr[Verdict.HOLD].lower_bound == pytest.approx(oracle(first), rel=1e-4)
    # One canary event against none (ratio inf, the old rule's hold) is no evidence either.
    lone = SliceTally(arm_of_beats(5.0, 1.0, {"collisions": 1}), arm_of_beats(5.0, 1.0, {}))
    assert decide(policy, update_stats(policy, CohortStats(), {fog: lone}), 0, 5.0, 0.0).verdict is Verdict.NEXT_WAVE


def test_counter_metrics_hold_a_timid_model_but_never_roll_it_back() -> None:
    policy = poisson_policy(min_exposure_km=0.0)
    tally = SliceTally(ArmTally(200.0, 200.0, {"phantom_brakes": 400}), ArmTally(200.0, 200.0, {"phantom_brakes": 40}))
    d = decide(policy, update_stats(policy, CohortStats(), {"fog/urban_open": tally}), 0, 200.0, 0.0)
    assert d.verdict is Verdict.HOLD and any("phantom_brakes" in r for r in d.reasons)
    assert not any(e.test == "harm" and e.metric == "phantom_brakes" and e.decisive for e in d.evidence)
