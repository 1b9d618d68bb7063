"""The deployment engine's pieces that need no server: what it refuses before anything starts, how a SuperNode
knows its vehicle, how the servers are started (insecure on loopback, no runtime installs), the round reports'
way back to the submitting command."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fleetloop.federation.client_app import NotInThisRun, vehicle_train
from fleetloop.federation.config import DpConfig, RoundsConfig
from fleetloop.federation.deployment import (
    RunStatus,
    _failure,
    _read_reports,
    append_report,
    check_deployable,
    write_error,
)
from fleetloop.federation.serve import (
    ServedVehicle,
    read_vehicles,
    superlink_command,
    supernode_command,
    write_vehicles,
)
from fleetloop.federation.server_app import RoundReport
from fleetloop.platform.errors import FederatedRunFailed, OnboardBufferError, SetupError, UserInputError
from fleetloop.platform.settings import Settings

from .test_vehicle_client import train_message


def test_injected_vehicle_behaviour_is_refused_on_the_deployment_engine() -> None:
    for cfg in (RoundsConfig(byzantine=0.2), RoundsConfig(dropout=0.1), RoundsConfig(dp=DpConfig(mode="client-fixed"))):
        with pytest.raises(UserInputError, match="simulation engine only"):
            check_deployable(cfg)
    check_deployable(RoundsConfig(dp=DpConfig(mode="server-fixed")))


def _node(vehicle_id: int, buffer: Path) -> Context:
    config = {"vehicle-id": vehicle_id, "buffer-path": str(buffer)}
    return Context(run_id=1, node_id=9, node_config=config, state=RecordDict(), run_config={})  # type: ignore[arg-type]


def test_a_supernode_trains_its_own_vehicle_on_its_own_buffer(fleet_buffers: Path, initial_model: Path) -> None:
    # The message lists vehicle 3's buffer at the node's position; the node is vehicle 4 and reads its own.
    msg = train_message([fleet_buffers / "vehicle-3", fleet_buffers / "vehicle-3"], [3, 4], initial_model)
    out = vehicle_train(msg, _node(4, fleet_buffers / "vehicle-4"), None, None)
    assert next(iter(out.content.metric_records.values()))["vehicle-id"] == 4


def test_a_supernode_whose_vehicle_is_not_in_the_run_declines(fleet_buffers: Path, initial_model: Path) -> None:
    msg = train_message([fleet_buffers / "vehicle-3"], [3], initial_model)
    with pytest.raises(NotInThisRun, match="vehicle 11 is not among"):
        vehicle_train(msg, _node(11, fleet_buffers / "vehicle-11"), None, None)


def test_the_servers_are_insecure_on_loopback_only_and_install_nothing(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, flower_port=29411)
    link = superlink_command(settings)
    assert "--insecure" in link and "--disable-runtime-dependency-installation" in link
    assert link[link.index("--host") + 1] == "127.0.0.1" and link[link.index("--port") + 1] == "29411"
    node = supernode_command(settings, ServedVehicle(7, "/state/fleet/buffers/vehicles-0-9"), 29500)
    assert node[node.index("--superlink") + 1] == "127.0.0.1:29411" and node[node.index("--host") + 1] == "127.0.0.1"
    assert "--allow-runtime-dependency-installation" not in node
    assert node[-1] == 'vehicle-id=7 buffer-path="/state/fleet/buffers/vehicles-0-9"'


def test_served_vehicles_round_trip_and_a_path_a_node_config_cannot_carry_is_refused(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    vehicles = [ServedVehicle(0, "/a/vehicles-0-4"), ServedVehicle(1, "/a/vehicles-0-4")]
    write_vehicles(settings, vehicles)
    assert read_vehicles(settings) == vehicles
    with pytest.raises(SetupError, match="node config"):
        write_vehicles(settings, [ServedVehicle(0, "/my state/buffers")])


def test_round_reports_reach_the_submitting_command_once_each(tmp_path: Path) -> None:
    reports = [
        RoundReport(r, 3, 3, 3, 0, [0, 1, 2], {"non-finite": 0}, True, heldout={"heldout_accel_mse": 0.5})
        for r in (1, 2)
    ]
    seen: list[RoundReport] = []
    assert _read_reports(tmp_path, 0, seen.append) == 0  # nothing yet
    append_report(tmp_path, reports[0])
    n = _read_reports(tmp_path, 0, seen.append)
    append_report(tmp_path, reports[1])
    assert _read_reports(tmp_path, n, seen.append) == 2
    assert seen == reports


def test_a_failed_run_is_an_error_with_the_servers_reason() -> None:
    err = _failure(Path("/nonexistent"), RunStatus(42, "finished:failed", "ServerApp failed with exception: boom"))
    assert isinstance(err, FederatedRunFailed) and err.exit_code == 1
    assert "run 42 ended finished:failed" in str(err) and "boom" in str(err)
    assert not RunStatus(1, "finished:stopped", "").completed and RunStatus(1, "finished:stopped", "").finished
    assert not RunStatus(1, "running", "").finished


def test_a_run_ended_by_one_of_our_errors_exits_with_that_errors_code(tmp_path: Path) -> None:
    write_error(tmp_path, OnboardBufferError("vehicle 3 is not in the buffer at /x"))
    err = _failure(tmp_path, RunStatus(7, "finished:failed", "ServerApp failed with exception: ..."))
    assert err.exit_code == 5 and "OnboardBufferError: vehicle 3 is not in the buffer" in str(err)
