"""The fleet summary: sums merge across shards exactly, rates and percentiles are what they claim."""

from __future__ import annotations

import pytest
import torch

from fleetloop.edge_agent.summary import (
    COL,
    COLUMNS,
    CONDITIONS,
    FleetSummary,
    SummaryAccumulator,
    condition_codes,
    merge_counts,
)


def _rows(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.zeros(n, len(COLUMNS))
    rows[:, COL["vehicle_ticks"]] = 1.0
    rows[:, COL["distance_m"]] = 2.5 + torch.rand(n, generator=g)
    rows[:, COL["expert_distance_m"]] = 3.0
    rows[:, COL["collisions"]] = (torch.rand(n, generator=g) < 0.1).float()
    rows[:, COL["near_misses"]] = (torch.rand(n, generator=g) < 0.2).float()
    return rows


def test_two_shards_merge_to_the_single_run() -> None:
    n = 40
    version = torch.tensor([0, 1] * (n // 2))
    cond = torch.arange(n) % len(CONDITIONS)
    rows = _rows(n, 0)
    lat = torch.linspace(0.01, 0.03, n)
    whole = SummaryAccumulator()
    whole.add(version, cond, rows)
    whole.add_sim_latency(lat)
    parts = []
    for sl in (slice(0, 15), slice(15, n)):
        acc = SummaryAccumulator()
        acc.add(version[sl], cond[sl], rows[sl])
        acc.add_sim_latency(lat[sl])
        parts.append(acc.result(["none", "1"], sl.stop - sl.start, 1, 0.1, {"uploads": {"frames": sl.stop}}))
    merged = FleetSummary.merge_all(parts).to_dict()
    single = whole.result(["none", "1"], n, 1, 0.1, {"uploads": {"frames": 55}}).to_dict()
    assert merged["events"] == single["events"]
    assert merged["km"] == pytest.approx(single["km"])
    assert merged["latency"] == single["latency"]
    assert merged["by_version_condition"].keys() == single["by_version_condition"].keys()
    assert merged["counts"]["uploads"]["frames"] == 55
    assert merged["vehicles"] == n


def test_rates_per_1000_km_and_progress() -> None:
    acc = SummaryAccumulator()
    rows = torch.zeros(4, len(COLUMNS))
    rows[:, COL["vehicle_ticks"]] = 1
    rows[:, COL["distance_m"]] = 500.0  # 2 km in all
    rows[:, COL["expert_distance_m"]] = 1000.0
    rows[0, COL["collisions"]] = 1
    rows[1, COL["near_misses"]] = 1
    acc.add(torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), rows)
    d = acc.result(["none"], 4, 1, 0.1).to_dict()
    assert d["km"] == pytest.approx(2.0)
    assert d["per_1000_km"]["collisions"] == pytest.approx(500.0)
    assert d["collisions_plus_near_misses_per_1000_km"] == pytest.approx(1000.0)
    assert d["progress_vs_expert"] == pytest.approx(0.5)


def test_latency_percentiles_are_within_one_bin() -> None:
    acc = SummaryAccumulator()
    values = torch.linspace(0.010, 0.020, 1001)
    acc.add_sim_latency(values)
    d = acc.result(["none"], 1, 1, 0.1).to_dict()["latency"]
    assert d["simulated_p50_ms"] == pytest.approx(15.0, rel=0.03)
    assert d["simulated_p99_ms"] == pytest.approx(19.9, rel=0.03)
    assert d["wall_p50_ms"] is None


def test_state_round_trip_is_lossless() -> None:
    acc = SummaryAccumulator()
    acc.add(torch.zeros(3, dtype=torch.int64), torch.tensor([0, 1, 3]), _rows(3, 1))
    s = acc.result(["none"], 3, 7, 0.1, {"a": {"b": 2}})
    again = FleetSummary.from_state(s.to_state())
    assert again.to_dict() == s.to_dict()


def test_condition_codes_follow_the_truth() -> None:
    vis = torch.tensor([10_000.0, 50.0, 1500.0, 10_000.0, 50.0])
    light = torch.tensor([1.0, 1.0, 1.0, 0.08, 0.08])
    rain = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
    names = [CONDITIONS[i] for i in condition_codes(vis, light, rain).tolist()]
    assert names == ["clear", "fog", "rain", "night", "fog"]


def test_merge_counts_adds_nested_numbers_and_refuses_mismatch() -> None:
    assert merge_counts({"a": 1, "b": {"c": 2}}, {"a": 2, "b": {"c": 3, "d": 1}}) == {"a": 3, "b": {"c": 5, "d": 1}}
    with pytest.raises(ValueError, match="cannot merge"):
        merge_counts({"a": 1}, {"a": {"b": 1}})


def test_too_many_versions_is_refused() -> None:
    acc = SummaryAccumulator()
    with pytest.raises(ValueError, match="model versions"):
        acc.add(torch.tensor([99]), torch.tensor([0]), torch.zeros(1, len(COLUMNS)))
