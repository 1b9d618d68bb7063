"""The stack's services are one list the CLI hands to the launcher: its order is the start order."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from fleetloop.cli.services import services_to_start, stack_services
from fleetloop.pipelines.serve import SERVE_STAGES
from fleetloop.platform import launcher
from fleetloop.platform.bus.loop import StopFlag
from fleetloop.platform.errors import NotFoundError
from fleetloop.platform.services.spec import beat_heartbeat_file, heartbeat_file_health


def test_kafka_starts_first_then_mlflow_the_release_server_prometheus_the_stages_then_the_controller() -> None:
    names = [s.name for s in stack_services()]
    expected = ["kafka", "mlflow", "ota-repo", "alertmanager", "prometheus"]
    assert names == [*expected, *(f"pipeline-{st}" for st in SERVE_STAGES), "ota-controller", "flower"]
    assert len(set(names)) == len(names)  # a name is a folder under services/: two specs must not share one


def test_a_plain_up_starts_the_stack_but_not_the_on_demand_stages() -> None:
    assert [s.name for s in services_to_start()] == ["kafka", "mlflow", "ota-repo", "alertmanager", "prometheus"]
    assert [s.name for s in services_to_start(["pipeline-train"])] == ["pipeline-train"]


def test_selection_keeps_the_start_order_and_names_unknown_services() -> None:
    specs = stack_services()
    assert [s.name for s in launcher.select(specs, ["mlflow", "kafka"])] == ["kafka", "mlflow"]
    with pytest.raises(NotFoundError, match=r"\['kafak'\].*known: kafka, mlflow, ota-repo"):
        launcher.select(specs, ["kafka", "kafak"])


def test_a_service_beating_its_heartbeat_is_healthy_and_stops_beating_when_stopped(tmp_path: Path) -> None:
    path = tmp_path / "services" / "x" / "heartbeat"
    assert not heartbeat_file_health(path, stale_s=15.0).ok  # no heartbeat yet
    stop = StopFlag()
    beat = threading.Thread(target=beat_heartbeat_file, args=(path, stop, 0.05), daemon=True)
    beat.start()
    try:
        assert stop.wait(0.2) is False and beat.is_alive()
        assert path.read_text().split()[0] == str(os.getpid())
        assert heartbeat_file_health(path, stale_s=15.0).ok
    finally:
        stop.set()
        beat.join(2.0)
    assert not beat.is_alive()
