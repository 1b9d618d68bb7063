"""The demo's pure parts: which candidate goes out, how a rollback's evidence reads, the before/after rows."""

from __future__ import annotations

import math
from typing import Any

from fleetloop.cli.demo_report import before_after
from fleetloop.cli.demo_rollouts import decisive_evidence, evidence_text
from fleetloop.cli.demo_steps import CONDITION_COLUMNS, MIN_RATE_KM, _condition_text, _conditions, better_candidate


def _candidate(version: str, passed: bool, fog: float | None) -> dict[str, Any]:
    return {"origin": "data loop", "version": version, "passed": passed, "fog_cnm_per_1000_km": {"candidate": fog}}


def test_a_rejected_candidate_is_never_rolled_out_however_safe_it_looks() -> None:
    picked = better_candidate([_candidate("2", False, 0.0), _candidate("3", True, 40.0), _candidate("4", True, 90.0)])
    assert picked is not None and picked["version"] == "3"
    assert better_candidate([_candidate("2", False, 0.0)]) is None


def _evidence(decisive: bool, **kw: Any) -> dict[str, Any]:
    e = {
        "test": "harm",
        "slice": "fog/ccr",
        "metric": "near_misses",
        "canary_count": 9,
        "canary_km": 0.6,
        "baseline_count": 1,
        "baseline_km": 0.8,
        "ratio": 12.0,
        "e_value": 31.0,
        "threshold": 20.0,
        "decisive": decisive,
        "lower_bound": None,
    }
    return {**e, **kw}


def test_the_rollback_evidence_names_the_slice_the_metric_the_ratio_and_the_exposure() -> None:
    waves = [
        {"wave": 1, "evidence": [_evidence(False, metric="fallback_activations")]},
        {"wave": 2, "evidence": [_evidence(True, test="rate_ratio", e_value=None), _evidence(False), _evidence(True)]},
    ]
    e = decisive_evidence({"rollout": {"history": {"waves": waves}}})
    assert e is not None and (e["wave"], e["test"], e["metric"]) == (2, "harm", "near_misses")
    text = evidence_text(e)
    assert text.startswith("near misses in fog/ccr: 9 in 0.60 canary km against 1 in 0.80 baseline km")
    assert "rate ratio of 12.0x" in text and "e-value 31" in text and "{" not in text
    assert "canary events against none" in evidence_text({**e, "ratio": None, "baseline_count": 0})
    assert decisive_evidence({"rollout": {"history": {"waves": [{"wave": 1, "evidence": [_evidence(False)]}]}}}) is None


def _drive(**rates: float) -> dict[str, Any]:
    row = {
        "collisions_per_1000_km": 0.0,
        "near_misses_per_1000_km": 0.0,
        "phantom_brakes_per_1000_km": 0.0,
        "fallback_activations_per_1000_km": 0.0,
        "progress_vs_expert": 1.0,
    }
    return {"by_condition": {cond: {**row, "near_misses_per_1000_km": r} for cond, r in rates.items()}}


def test_the_table_shows_the_degraded_model_beside_before_and_after_and_a_dash_where_it_never_drove() -> None:
    rows = before_after(_drive(clear=30.0, fog=80.0), _drive(clear=20.0, fog=60.0), _drive(fog=400.0))
    assert [r["condition"] for r in rows] == ["clear", "fog"]
    fog = rows[1]["near_misses_per_1000_km"]
    assert (fog["before"], fog["after"], fog["degraded"]) == (80.0, 60.0, 400.0)
    assert math.isnan(rows[0]["near_misses_per_1000_km"]["degraded"])
    assert "degraded" not in before_after(_drive(fog=1.0), _drive(fog=2.0))[0]["near_misses_per_1000_km"]


def test_a_condition_met_for_a_few_seconds_gets_no_rate_but_its_km() -> None:
    """One activation over 50 m is not 20,000 per 1,000 km: under ``MIN_RATE_KM`` the rates are None, shown "-"."""
    g = {"per_1000_km": dict.fromkeys(CONDITION_COLUMNS, 0.0), "progress_vs_expert": 1.0}
    d = {
        "by_condition": {
            "clear": {**g, "fallback_activations_per_1000_km": 20_000.0, "km": 0.05},
            "fog": {**g, "fallback_activations_per_1000_km": 2_000.0, "km": MIN_RATE_KM},
        }
    }
    rows = _conditions(d)
    assert rows["clear"]["fallback_activations_per_1000_km"] is None and rows["clear"]["km"] == 0.05
    assert rows["fog"]["fallback_activations_per_1000_km"] == 2_000.0
    assert _condition_text(rows["clear"], "{cnm} and {fb}") == "only 0.1 km (too little for a rate)"
    assert _condition_text(rows["fog"], "{cnm} and {fb}") == "0 and 2,000"
    table = before_after({"by_condition": rows}, {"by_condition": rows})
    assert table[0]["fallback_activations_per_1000_km"]["before"] is None
