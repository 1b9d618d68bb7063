"""The fleet runner closes every vehicle's heartbeat each ``heartbeat_s`` of simulated time and hands it to the
sink; the beats are ones the canary controller believes."""

from __future__ import annotations

import pytest

from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.telemetry import CollectingSink
from fleetloop.platform.bus.events import FleetHealth
from fleetloop.platform.canary.validate import check_heartbeat
from fleetloop.platform.errors import FleetConfigError


def _run(heartbeat_s: float | None, ticks: int) -> tuple[FleetRunner, CollectingSink]:
    sink = CollectingSink()
    runner = FleetRunner(
        FleetConfig(scenario="mixed", weather="mixed", seed=3, progress_reference=False, heartbeat_s=heartbeat_s),
        range(6),
        sink=sink,
    )
    for _ in range(ticks):
        runner.step()
    runner.close()
    return runner, sink


def test_every_vehicle_beats_each_period_and_the_partial_last_beat_at_close() -> None:
    _, sink = _run(heartbeat_s=1.0, ticks=25)  # 0.1 s ticks: beats at 1 s, 2 s and a 0.5 s one at close
    by_vehicle: dict[str, list[int]] = {}
    for b in sink.heartbeats:
        by_vehicle.setdefault(b.vehicle_id, []).append(b.beat_seq)
    assert by_vehicle == {str(i): [1, 2, 3] for i in range(6)}
    periods = sorted({round(b.period_s, 6) for b in sink.heartbeats})
    assert periods == [0.5, 1.0]
    assert sum(b.distance_m for b in sink.heartbeats) > 0


def test_the_beats_pass_the_controllers_edge_checks() -> None:
    _, sink = _run(heartbeat_s=0.5, ticks=20)
    assigned = {str(i): 0 for i in range(6)}  # fallback only: model version 0
    last: dict[str, int] = {}
    for b in sink.heartbeats:
        assert check_heartbeat(FleetHealth(**b.event_fields()), assigned, last) is None
        last[b.vehicle_id] = b.beat_seq


def test_no_period_no_heartbeats_and_the_run_is_unchanged() -> None:
    with_beats, _ = _run(heartbeat_s=0.5, ticks=12)
    without, sink = _run(heartbeat_s=None, ticks=12)
    assert sink.heartbeats == []
    assert with_beats.summary().to_dict()["counts"]["respawns"] == without.summary().to_dict()["counts"]["respawns"]
    assert with_beats.summary().to_dict()["events"] == without.summary().to_dict()["events"]


def test_a_period_shorter_than_a_tick_is_refused() -> None:
    with pytest.raises(FleetConfigError, match="heartbeat_s"):
        FleetConfig(heartbeat_s=0.01)
