"""The loop-efficacy benchmark's summary: every arm judged on every seed, uploads against the budget."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "loop_efficacy.py"


def _module() -> Any:
    spec = importlib.util.spec_from_file_location("loop_efficacy", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(coll: int, nm: int, phantom: int, km: float = 100.0) -> dict[str, Any]:
    counts = {"collisions": coll, "near_misses": nm, "phantom_brakes": phantom}
    return {"km": km, "expert_km": km, "counts": counts}


def _evaluation(**candidates: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    """The initial model (6 collisions + 4 near misses in fog) and the reference (2) on one seed, and each
    candidate's (fog, clear) runs."""
    ev = {
        "initial|fog": _run(6, 4, 5),
        "initial|clear": _run(1, 0, 9),
        "reference|fog": _run(2, 0, 7),
        "reference|clear": _run(1, 0, 9),
    }
    for arm, (fog, clear) in candidates.items():
        ev.update({f"candidate:{arm}|fog": fog, f"candidate:{arm}|clear": clear})
    return ev


def _turn(arm: str, uploaded: int, candidate: bool) -> dict[str, Any]:
    t: dict[str, Any] = {
        "arm": arm,
        "frames_uploaded": uploaded,
        "frames_written": 1000,
        "labelled_valid": 100,
        "label_conditions": {"fog": 60, "clear": 40},
    }
    if candidate:
        t.update(candidate_path="x", passed=True, onset_to_validated_s=10.0)
    return t


def test_a_turn_without_a_candidate_counts_as_the_initial_model_and_shares_are_against_the_budget() -> None:
    le = _module()
    ev = _evaluation(triggers=(_run(3, 3, 4), _run(1, 0, 8)))
    seeds = [
        {"seed": 1, "arms": {"triggers": _turn("triggers", 20, True), "random": _turn("random", 15, False)}, "eval": ev}
    ]
    summary = le.summarize(seeds, 0.02)
    trig, rand = summary["arms"]["triggers"], summary["arms"]["random"]
    assert math.isclose(trig["gap_closed_pooled"], (10 - 6) / (10 - 2))
    assert rand["no_candidate"] == 1 and rand["gap_closed_pooled"] == 0.0  # the fleet keeps the initial model
    assert rand["gap_closed"]["n"] == 1  # judged on the seed, not left out
    assert math.isclose(trig["upload_share_of_budget"], 1.0) and math.isclose(rand["upload_share_of_budget"], 0.75)
    assert trig["deployed_vs_initial"]["fog"]["phantom"] < trig["deployed_vs_initial"]["fog"]["initial_phantom"]
    table = le.render(summary, "test")
    assert "| 1.00 of 0.02 |" in table and "| random | clear | 10 vs 10 | 90 vs 90 |" in table
    assert math.isnan(le.summarize(seeds)["arms"]["triggers"]["upload_share_of_budget"])  # no budget given


def test_a_rejected_candidate_closes_nothing_when_only_passed_candidates_are_deployed() -> None:
    le = _module()
    ev = _evaluation(value=(_run(3, 1, 4), _run(1, 0, 8)), random=(_run(2, 0, 9), _run(1, 0, 20)))
    rejected = {**_turn("random", 15, True), "passed": False}
    seeds = [{"seed": 1, "arms": {"value": _turn("value", 20, True), "random": rejected}, "eval": ev}]
    arms = le.summarize(seeds, 0.02)["arms"]
    assert math.isclose(arms["random"]["gap_closed_pooled"], 1.0) and arms["random"]["gap_closed_promoted"] == 0.0
    assert math.isclose(arms["value"]["gap_closed_promoted"], arms["value"]["gap_closed_pooled"])
    assert "| 0/1 | 0.00 |" in le.render(le.summarize(seeds, 0.02), "test")


def test_each_selection_is_compared_with_random_uploads_seed_by_seed() -> None:
    le = _module()
    rejected = {**_turn("random", 15, True), "passed": False}
    seeds = [
        {  # value closes 0.5 of the gap (8), random 1.0 but is rejected
            "seed": 1,
            "arms": {"value": _turn("value", 20, True), "random": rejected},
            "eval": _evaluation(value=(_run(4, 2, 4), _run(1, 0, 8)), random=(_run(2, 0, 9), _run(1, 0, 20))),
        },
        {  # value closes 0.75, random 0.25, both pass
            "seed": 2,
            "arms": {"value": _turn("value", 20, True), "random": _turn("random", 15, True)},
            "eval": _evaluation(value=(_run(3, 1, 4), _run(1, 0, 8)), random=(_run(5, 3, 9), _run(1, 0, 9))),
        },
    ]
    paired = le.summarize(seeds, 0.02)["paired_with_random"]
    assert set(paired) == {"value"}
    assert math.isclose(paired["value"]["candidates"]["mean"], ((0.5 - 1.0) + (0.75 - 0.25)) / 2)
    assert math.isclose(paired["value"]["promoted"]["mean"], ((0.5 - 0.0) + (0.75 - 0.25)) / 2)
    assert paired["value"]["candidates"]["n"] == 2
    assert "value minus random on the same seeds" in le.render(le.summarize(seeds, 0.02), "test")


def test_the_validate_suite_drives_its_seeds_apart_from_each_other_and_from_the_evaluation() -> None:
    mod = _module()
    suite = mod.validate_suite(7, vehicles=16, ticks=50, seeds=3)
    first = mod.HELD_OUT_SEED_BASE + mod.VALIDATE_SEED_OFFSET + 7
    assert suite.seeds == (first, first + 100, first + 200)
    assert [s.condition.name for s in suite.slices] == ["clear", "fog_0.8", "rain_0.7"]
    evaluation = mod.HELD_OUT_SEED_BASE + mod.EVAL_SEED_OFFSET + 7
    assert evaluation not in suite.seeds
    assert mod.validate_suite(7, 16, 50).seeds == (first,)  # one seed: the suite the benchmark drove before
    for bad in (0, 4):
        with pytest.raises(ValueError, match=r"1\.\.3 to stay apart"):
            mod.validate_suite(7, 16, 50, seeds=bad)
