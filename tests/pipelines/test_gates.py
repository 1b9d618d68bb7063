"""The gates: exact intervals against known values, and the decision as a pure function of slice metrics."""

from __future__ import annotations

import math

import pytest

from fleetloop.pipelines.gates import (
    GateConfig,
    NcapScores,
    RunMetrics,
    SliceMetrics,
    SuiteMetrics,
    decide,
    mean_ci,
    ncap_checks,
    poisson_ci,
    rate_per_1000km,
    rate_ratio_ci,
)


def test_poisson_interval_matches_the_exact_garwood_values() -> None:
    assert poisson_ci(0) == pytest.approx((0.0, 3.6889), abs=1e-4)
    assert poisson_ci(10) == pytest.approx((4.7954, 18.3904), abs=1e-4)
    assert poisson_ci(200) == pytest.approx((173.2409, 229.7220), abs=1e-3)


def test_rate_per_1000km_scales_the_interval_and_is_nan_without_distance() -> None:
    r = rate_per_1000km(10, 5.0)
    assert r.per_1000_km == pytest.approx(2000.0)
    assert (r.ci_low, r.ci_high) == pytest.approx((959.08, 3678.07), abs=0.1)
    assert math.isnan(rate_per_1000km(0, 0.0).per_1000_km)


def test_rate_ratio_interval_is_the_conditional_clopper_pearson() -> None:
    ratio, lo, hi = rate_ratio_ci(5, 10.0, 10, 10.0)
    assert ratio == pytest.approx(0.5)
    assert (lo, hi) == pytest.approx((0.1341, 1.6055), abs=1e-3)
    assert math.isinf(rate_ratio_ci(3, 1.0, 0, 1.0)[0])


def test_mean_interval_uses_student_t() -> None:
    m = mean_ci([1.0, 2.0, 3.0])
    assert (m.mean, m.ci_low, m.ci_high) == pytest.approx((2.0, -0.4843, 4.4843), abs=1e-3)


def run(km: float = 10.0, progress: float = 1.0, latency_s: float | None = 0.02, **counts: int) -> RunMetrics:
    return RunMetrics(km=km, expert_km=km / progress, counts=counts, sim_latency_p99_s=latency_s)


def suite(label: str, clear: RunMetrics, fog: RunMetrics) -> SuiteMetrics:
    return SuiteMetrics(label, (SliceMetrics("ccr/clear", "clear", (clear,)), SliceMetrics("ccr/fog", "fog", (fog,))))


BASE = suite("v1", run(collisions=1), run(collisions=6, near_misses=4))


def test_a_candidate_safer_in_fog_and_not_worse_elsewhere_passes() -> None:
    cand = suite("c", run(collisions=1), run(collisions=2, near_misses=1))
    d = decide(cand, BASE, ["fog"])
    assert d.passed, d.reasons


def test_a_candidate_worse_in_clear_weather_is_rejected_with_that_slice_named() -> None:
    cand = suite("c", run(collisions=4), run(collisions=1))
    d = decide(cand, BASE, ["fog"])
    assert not d.passed
    assert "slice ccr/clear" in d.failed_checks, d.reasons


def test_a_candidate_without_improvement_where_its_data_came_from_is_rejected() -> None:
    cand = suite("c", run(collisions=1), run(collisions=6, near_misses=4))
    d = decide(cand, BASE, ["fog"])
    assert d.failed_checks == ("improvement",), d.reasons


def test_a_timid_model_fails_on_progress_even_with_fewer_collisions() -> None:
    cand = suite("c", run(progress=0.8), run(progress=0.8))
    d = decide(cand, BASE, ["fog"])
    assert not d.passed
    assert "counter progress_vs_expert" in d.failed_checks, d.reasons


def test_phantom_braking_counts_against_the_candidate() -> None:
    cand = suite("c", run(collisions=1, phantom_brakes=9), run(collisions=1))
    d = decide(cand, BASE, ["fog"])
    assert "counter phantom_brakes" in d.failed_checks, d.reasons


def test_a_late_model_fails_the_latency_budget() -> None:
    cand = suite("c", run(collisions=1, latency_s=0.25), run(collisions=1))
    d = decide(cand, BASE, ["fog"], GateConfig(latency_budget_s=0.1))
    assert "latency" in d.failed_checks, d.reasons


def test_a_suite_too_small_to_judge_fails_with_that_reason() -> None:
    tiny = suite("c", run(km=0.01), run(km=0.01))
    d = decide(tiny, BASE, ["fog"])
    assert not d.passed and d.failed_checks == ("suite_size",), d.reasons


def test_mismatched_suites_are_refused() -> None:
    other = SuiteMetrics("c", (SliceMetrics("x", "clear", (run(),)),))
    with pytest.raises(ValueError, match="same suite"):
        decide(other, BASE, ["fog"])


def test_bad_margins_are_refused_with_the_setting_named() -> None:
    with pytest.raises(ValueError, match="progress_margin"):
        GateConfig(progress_margin=-1.0)


def test_every_failed_check_gives_a_reason_in_words() -> None:
    cand = suite("c", run(collisions=4, phantom_brakes=9, progress=0.8), run(collisions=6, near_misses=4))
    d = decide(cand, BASE, ["fog"])
    assert len(d.failed_checks) == len(d.reasons) >= 3
    assert all(r.strip() for r in d.reasons), d.reasons


# -- the Euro NCAP points gate ----------------------------------------------------------------------------------

NCAP_MAX = {"CCRs": 45.0, "CPNC": 11.0}
NCAP_BASE = NcapScores("v1", {"clear": {"CCRs": 45.0, "CPNC": 5.5}, "fog_0.8": {"CCRs": 44.25, "CPNC": 5.0}}, NCAP_MAX)


def ncap(clear_ccrs: float, clear_cpnc: float, fog_ccrs: float, fog_cpnc: float) -> NcapScores:
    return NcapScores(
        "c",
        {"clear": {"CCRs": clear_ccrs, "CPNC": clear_cpnc}, "fog_0.8": {"CCRs": fog_ccrs, "CPNC": fog_cpnc}},
        NCAP_MAX,
    )


def test_a_quarter_point_lost_in_fog_fails_naming_the_group_the_condition_and_the_points() -> None:
    checks = ncap_checks(ncap(45.0, 5.5, 44.25, 4.75), NCAP_BASE)
    assert [c.name for c in checks] == ["ncap clear CCRs", "ncap clear CPNC", "ncap fog_0.8 CCRs", "ncap fog_0.8 CPNC"]
    assert [c.passed for c in checks] == [True, True, True, False]
    assert checks[3].reason == (
        "ncap fog_0.8 CPNC: Euro NCAP points lost in fog_0.8, CPNC: 4.75 of 11 vs 5 for the baseline (-0.25 points; "
        "allowed loss 0)"
    )
    assert checks[3].detail["candidate_points"] == 4.75 and checks[3].detail["baseline_points"] == 5.0


def test_points_gained_in_one_group_do_not_buy_back_a_loss_in_another() -> None:
    checks = ncap_checks(ncap(45.0, 11.0, 44.0, 11.0), NCAP_BASE)  # +11.5 points in all, -0.25 in fog CCRs
    assert [c.name for c in checks if not c.passed] == ["ncap fog_0.8 CCRs"]


def test_equal_points_pass_and_the_margin_allows_exactly_its_points() -> None:
    assert all(c.passed for c in ncap_checks(ncap(45.0, 5.5, 44.25, 5.0), NCAP_BASE))
    lost_quarter, lost_half = ncap(45.0, 5.5, 44.25, 4.75), ncap(45.0, 5.5, 44.25, 4.5)
    assert all(c.passed for c in ncap_checks(lost_quarter, NCAP_BASE, margin_points=0.25))
    assert not ncap_checks(lost_half, NCAP_BASE, margin_points=0.25)[3].passed


def test_ncap_scores_of_other_conditions_are_refused() -> None:
    other = NcapScores("c", {"clear": {"CCRs": 45.0, "CPNC": 5.5}}, NCAP_MAX)
    with pytest.raises(ValueError, match="same Euro NCAP conditions and groups"):
        ncap_checks(other, NCAP_BASE)


def test_decide_fails_a_candidate_that_loses_ncap_points_and_names_the_check() -> None:
    cand = suite("c", run(collisions=1), run(collisions=2, near_misses=1))  # passes every other gate
    d = decide(cand, BASE, ["fog"], ncap=(ncap(45.0, 5.5, 42.0, 5.0), NCAP_BASE))
    assert not d.passed and d.failed_checks == ("ncap fog_0.8 CCRs",), d.reasons
    assert "42 of 45 vs 44.25" in d.reasons[0]
    passed = decide(cand, BASE, ["fog"], ncap=(NCAP_BASE, NCAP_BASE))
    assert passed.passed and sum(c.name.startswith("ncap ") for c in passed.checks) == 4


def test_by_default_decide_allows_a_point_of_a_seed_mean_and_fails_more() -> None:
    """ADR 0192: one seed's points move by up to 2 points on noise; the gate compares seed means with 1 point."""
    cand = suite("c", run(collisions=1), run(collisions=2, near_misses=1))
    assert GateConfig().ncap_points_margin == 1.0
    within = decide(cand, BASE, ["fog"], ncap=(ncap(45.0, 5.5, 44.25, 4.0), NCAP_BASE))  # -1 in fog CPNC
    assert within.passed, within.reasons
    beyond = decide(cand, BASE, ["fog"], ncap=(ncap(45.0, 5.5, 44.25, 5.0 - 13 / 12), NCAP_BASE))  # a 3-seed mean
    assert beyond.failed_checks == ("ncap fog_0.8 CPNC",) and "allowed loss 1)" in beyond.reasons[0], beyond.reasons


def test_without_the_matrix_the_decision_says_no_ncap_gate_ran() -> None:
    cand = suite("c", run(collisions=1), run(collisions=2, near_misses=1))
    d = decide(cand, BASE, ["fog"])
    assert d.passed and not any(c.name.startswith("ncap") for c in d.checks)
    assert any("Euro NCAP matrix not driven" in n for n in d.notes)
