"""Shards: the same seed gives the same totals on 1 process, on 2 local processes and on 2 Ray actors."""

from __future__ import annotations

import pytest

from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.shards import ShardedFleet, ShardSpec, split_ids
from fleetloop.platform.errors import FleetConfigError

CONFIG = FleetConfig(scenario="mixed", weather="mixed", seed=3, progress_reference=False)
IDS = tuple(range(24))
TICKS = 60


@pytest.fixture(scope="module")
def single() -> dict[str, object]:
    return FleetRunner(CONFIG, IDS).run(TICKS).to_dict()


@pytest.mark.parametrize("backend", ["processes", "ray"])
def test_sharded_totals_equal_the_single_process_run(backend: str, single: dict[str, object]) -> None:
    fleet = ShardedFleet(ShardSpec(CONFIG, IDS, torch_threads=1), 2, backend)
    try:
        part = fleet.advance(TICKS // 2)
        last = fleet.advance(TICKS - TICKS // 2)
        merged = fleet.close().to_dict()
    finally:
        if not fleet.closed:
            fleet.kill()
    assert part["vehicle_steps"] == len(IDS) * (TICKS // 2)
    for key in ("events", "fallback_activations", "vehicle_steps", "vehicles"):
        assert merged[key] == single[key], key
    assert merged["km"] == pytest.approx(single["km"], rel=1e-6)
    assert merged["counts"]["uploads"] == single["counts"]["uploads"]  # type: ignore[index]
    # The live sums of the last chunk, by version and condition, are the run's own (what sim run's metrics export).
    rows = [row for by_condition in last["groups"].values() for row in by_condition.values()]
    assert sum(r["distance_m"] for r in rows) / 1000 == pytest.approx(merged["km"], rel=1e-9)
    assert sum(r["collisions"] + r["near_misses"] for r in rows) == sum(
        merged["events"][e]
        for e in ("collisions", "near_misses")  # type: ignore[index]
    )


def test_split_ids_is_contiguous_and_complete() -> None:
    parts = split_ids(range(10), 3)
    assert parts == [(0, 1, 2), (3, 4, 5, 6), (7, 8, 9)]
    assert split_ids(range(2), 5) == [(0,), (1,)]
    with pytest.raises(FleetConfigError, match="shards must be >= 1"):
        split_ids(range(3), 0)


def test_unknown_backend_lists_the_valid_ones() -> None:
    with pytest.raises(FleetConfigError, match="valid backends: processes, ray"):
        ShardedFleet(ShardSpec(CONFIG, IDS), 2, "threads")
