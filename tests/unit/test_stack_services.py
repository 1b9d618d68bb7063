"""The stack's services are one list the CLI hands to the launcher: its order is the start order."""

from __future__ import annotations

import pytest

from fleetloop.cli.services import services_to_start, stack_services
from fleetloop.pipelines.serve import SERVE_STAGES
from fleetloop.platform import launcher
from fleetloop.platform.errors import NotFoundError


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
