"""Euro NCAP scoring against numeric oracles: no AEB scores nothing, a perfect stopper everything, band edges."""

from __future__ import annotations

import pytest

from fleetloop.edge_agent.ncap_scoring import (
    SOURCE_EXTRAPOLATED,
    SOURCE_PATTERN,
    SOURCE_PROTOCOL,
    TestResult,
    band_table,
    score_groups,
    score_test,
)
from fleetloop.sim.ncap import CAR_TO_CAR_GROUPS, PEDESTRIAN_GROUPS, euro_ncap_protocol

TOTALS = (("car-to-car", CAR_TO_CAR_GROUPS), ("pedestrian", PEDESTRIAN_GROUPS))


def test_an_ego_without_aeb_scores_zero_in_every_test() -> None:
    tests = euro_ncap_protocol()
    results = [TestResult(t.group, t.test_kmh, t.unbraked_impact_kmh, t.test_kmh) for t in tests]
    assert [score_test(r).points for r in results] == [0.0] * len(tests)
    scores = score_groups(results, TOTALS)
    assert {name: g.points for name, g in scores.items()} == dict.fromkeys(scores, 0.0)


def test_a_perfect_stopper_scores_full_points() -> None:
    tests = euro_ncap_protocol()
    scores = score_groups([TestResult(t.group, t.test_kmh, 0.0, t.test_kmh) for t in tests], TOTALS)
    assert scores["car-to-car"].points == scores["car-to-car"].max_points == 90
    assert scores["pedestrian"].points == scores["pedestrian"].max_points == 66
    assert scores["CCRs"].percent == 100.0 and scores["CCRs"].avoided == 45


@pytest.mark.parametrize(
    ("group", "kmh", "impact_kmh", "points"),
    [
        # CCRs 50 km/h: green below 5, yellow below 15, orange below 30, brown below 40, red from 40
        ("CCRs", 50, 4.9, 1.0),
        ("CCRs", 50, 5.0, 0.75),
        ("CCRs", 50, 14.9, 0.75),
        ("CCRs", 50, 15.0, 0.5),
        ("CCRs", 50, 29.9, 0.5),
        ("CCRs", 50, 30.0, 0.25),
        ("CCRs", 50, 39.9, 0.25),
        ("CCRs", 50, 40.0, 0.0),
        # CCRs up to 20 km/h: avoidance (below 1 km/h) or nothing
        ("CCRs", 20, 0.9, 1.0),
        ("CCRs", 20, 1.0, 0.0),
        # CCRm 40 km/h (closing 20): green below 5, orange below 15
        ("CCRm", 40, 4.9, 1.0),
        ("CCRm", 40, 5.0, 0.5),
        ("CCRm", 40, 15.0, 0.0),
        # CCRm 80 km/h (closing 60)
        ("CCRm", 80, 19.9, 0.75),
        ("CCRm", 80, 49.9, 0.25),
        ("CCRm", 80, 50.0, 0.0),
        # CCRb: avoidance only
        ("CCRb", 50, 0.0, 1.0),
        ("CCRb", 50, 1.0, 0.0),
        # pedestrians: the CCRs table at the test speed
        ("CPNA", 25, 4.9, 1.0),
        ("CPNA", 25, 14.9, 0.5),
        ("CPNC", 15, 1.0, 0.0),
    ],
)
def test_band_edges_score_as_the_tables_say(group: str, kmh: int, impact_kmh: float, points: float) -> None:
    assert score_test(TestResult(group, kmh, impact_kmh, kmh)).points == points


def test_ccrs_above_50_kmh_use_the_equal_closing_speed_table_then_the_stated_extrapolation() -> None:
    assert band_table("CCRs", 50).source == SOURCE_PROTOCOL
    assert band_table("CCRs", 55).edges_kmh == band_table("CCRm", 75).edges_kmh  # both close at 55 km/h
    assert band_table("CCRs", 60).source == SOURCE_PATTERN
    # the extrapolation reproduces the two highest tables it extends...
    for kmh in (55, 60):
        assert band_table("CCRs", kmh).edges_kmh == (kmh - 10, kmh - 25, kmh - 40, 5)
    seventy = band_table("CCRs", 70)
    assert (seventy.edges_kmh, seventy.source) == ((60, 45, 30, 5), SOURCE_EXTRAPOLATED)
    assert band_table("CPLA", 70).edges_kmh == seventy.edges_kmh


def test_a_run_out_of_speed_tolerance_is_invalid_and_scores_nothing() -> None:
    ok = score_test(TestResult("CCRs", 40, 0.0, 41.0))
    fast = score_test(TestResult("CCRs", 40, 0.0, 41.1))
    assert (ok.valid, ok.points) == (True, 1.0)
    assert (fast.valid, fast.points, fast.band) == (False, 0.0, "red")
    scores = score_groups([TestResult("CCRs", 40, 0.0, 41.1), TestResult("CCRs", 45, 0.0, 45.0)])
    assert (scores["CCRs"].invalid, scores["CCRs"].avoided, scores["CCRs"].points) == (1, 1, 1.0)


def test_unknown_groups_and_speeds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown Euro NCAP group"):
        band_table("CCRx", 50)
    with pytest.raises(ValueError, match="5 km/h steps"):
        band_table("CCRs", 52)
    with pytest.raises(ValueError, match="30-80"):
        band_table("CCRm", 25)
    assert score_groups([], TOTALS) == {}
