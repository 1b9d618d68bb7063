"""The OTA client driving a real fleet shard: real signed releases (TUF) served over HTTP on 127.0.0.1, real policy
artifacts, the real runner; commands and statuses in memory (the Kafka path: tests/integration/test_ota_sim.py).

Every fault leaves each vehicle with a working model: the one it had, or the new one once healthy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.model_artifact import ArtifactMetadata, save_artifact
from fleetloop.edge_agent.ota_agent import OtaAgent, OtaSpec
from fleetloop.edge_agent.ota_bus import MemoryTransport
from fleetloop.edge_agent.ota_client import HealthConfig
from fleetloop.edge_agent.policy import ARCHITECTURE, FusionPolicy
from fleetloop.edge_agent.telemetry import CollectingSink
from fleetloop.platform.bus.events import OtaCommand, OtaStatus
from fleetloop.platform.releases.api import utc_now
from fleetloop.platform.releases.cohorts import VehicleList
from fleetloop.platform.releases.fields import ReleaseFields
from fleetloop.platform.releases.repository import ReleaseRepository
from fleetloop.platform.releases.server import start_in_thread
from tests.platform.conftest import repo
from tests.platform.release_data import flip_a_bit, served_artifact

__all__ = ["repo"]  # the signed-release tests' fixture: a fresh repository on disk

MODEL = "fleet-policy"
FLEET = 6
ASSIGNED = ("0", "1", "2")
HEALTH = HealthConfig(window_ticks=15)


def policy_file(path: Path, seed: int, scale: float = 1.0) -> Path:
    torch.manual_seed(seed)
    model = FusionPolicy()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)  # 1e15: finite weights whose activations overflow, so the outputs are NaN
    return save_artifact(
        path, model, ArtifactMetadata(architecture=ARCHITECTURE, hyperparameters=model.config.to_dict())
    )


@dataclass
class Fleet:
    runner: FleetRunner
    agent: OtaAgent
    bus: MemoryTransport

    def command(self, version: str, vehicles: tuple[str, ...], release: int = 0) -> None:
        self.bus.inbox += [
            OtaCommand(rollout_id="r-test", vehicle_id=v, model_name=MODEL, version=int(version), release=release)
            for v in vehicles
        ]

    def step(self, ticks: int = 1) -> None:
        """Step, and let each fetch the step started finish before the next (deterministic activation ticks)."""
        for _ in range(ticks):
            self.runner.step()
            for job in list(self.agent.jobs):
                assert job.future is not None
                job.future.result(timeout=30)

    def states(self, vehicle: str) -> list[str]:
        return [s.state for s in self.bus.sent if s.vehicle_id == vehicle]

    def last(self, vehicle: str) -> OtaStatus:
        return [s for s in self.bus.sent if s.vehicle_id == vehicle][-1]

    def versions(self) -> list[str]:
        return [self.runner.labels[i] for i in self.runner.version_index.tolist()]

    def model_switches(self) -> int:
        return self.runner.vstate.arbiter.totals()["activations"]["model_switch"]


@pytest.fixture
def server(repo: ReleaseRepository) -> Iterator[str]:
    srv, url = start_in_thread(repo.root_dir)
    yield url
    srv.shutdown()
    srv.server_close()


def make_fleet(repo: ReleaseRepository, url: str, tmp_path: Path, faults: tuple[str, ...] = ()) -> Fleet:
    spec = OtaSpec(MODEL, url, repo.trusted_root(), str(tmp_path / "ota"), HEALTH, timeout_s=2.0, max_attempts=1)
    bus = MemoryTransport()
    agent = OtaAgent(spec, range(FLEET), bus)
    torch.manual_seed(0)
    # the untrained test models are unsure of everything: a high threshold lets them drive (low confidence is not
    # what these tests are about)
    config = FleetConfig(seed=3, progress_reference=False, faults=faults, max_uncertainty_mps2=100.0)
    runner = FleetRunner(config, range(FLEET), {"1": FusionPolicy()}, "1", hooks=[agent])
    return Fleet(runner, agent, bus)


def publish(
    repo: ReleaseRepository, tmp_path: Path, version: str, scale: float = 1.0, schema: int = 1
) -> ReleaseFields:
    path = policy_file(tmp_path / f"policy-{version}.safetensors", int(version), scale)
    meta = {"run_id": "", "input_schema_version": schema, "parent_version": "1", "validation_report_sha256": ""}
    fields = repo.publish(MODEL, version, path, meta, utc_now())
    repo.assign_wave(fields.release, 1, VehicleList(ASSIGNED), utc_now())
    return fields


def test_assigned_vehicles_commit_the_release_and_a_forged_command_is_refused(
    repo: ReleaseRepository, server: str, tmp_path: Path
) -> None:
    fields = publish(repo, tmp_path, "2")
    fleet = make_fleet(repo, server, tmp_path)
    fleet.step()
    fleet.command("2", tuple(str(i) for i in range(FLEET)), fields.release)  # 3, 4, 5: not in the signed wave
    fleet.step(3 + HEALTH.window_ticks)
    for v in ASSIGNED:
        assert fleet.states(v) == ["downloaded", "verified", "installed", "activated", "committed"]
        assert fleet.last(v).release == fields.release and fleet.last(v).version == 2
    for v in ("3", "4", "5"):
        [refused] = [s for s in fleet.bus.sent if s.vehicle_id == v]
        assert (refused.state, refused.reason) == ("rejected", "not_assigned")
        assert f"vehicle {v} is in none of the 1 signed wave(s)" in refused.detail
    assert fleet.versions() == ["2", "2", "2", "1", "1", "1"]
    assert fleet.model_switches() == 3  # each activation is a switch the arbiter saw
    counts = fleet.runner.counts()["ota"]
    assert counts["status"]["committed"] == 3 and counts["rejected"] == {"not_assigned": 3}
    assert counts["fetch"]["vehicles_verified"] == 3 and counts["fetch"]["jobs"] == 1


def test_flipped_byte_in_the_served_artifact_is_activated_by_no_vehicle(
    repo: ReleaseRepository, server: str, tmp_path: Path
) -> None:
    fields = publish(repo, tmp_path, "2")
    flip_a_bit(served_artifact(repo, fields, MODEL))
    fleet = make_fleet(repo, server, tmp_path)
    fleet.command("2", ASSIGNED)
    fleet.step(5)
    for v in ASSIGNED:
        assert fleet.states(v) == ["rejected"]
        assert fleet.last(v).reason == "bad_hash" and "do not match the signed sha256" in fleet.last(v).detail
    assert fleet.versions() == ["1"] * FLEET and fleet.model_switches() == 0
    assert "2" not in fleet.runner.labels  # never deserialised


def test_release_for_an_unsupported_input_schema_is_refused_before_download(
    repo: ReleaseRepository, server: str, tmp_path: Path
) -> None:
    publish(repo, tmp_path, "2", schema=9)
    fleet = make_fleet(repo, server, tmp_path)
    fleet.command("2", ASSIGNED)
    fleet.step(3)
    assert [fleet.last(v).reason for v in ASSIGNED] == ["unsupported_schema"] * 3
    assert not list((tmp_path / "ota").rglob("sha256/*")) and fleet.versions() == ["1"] * FLEET


def test_model_emitting_nan_after_activation_is_rolled_back_by_the_health_window(
    repo: ReleaseRepository, server: str, tmp_path: Path
) -> None:
    publish(repo, tmp_path, "2", scale=1e15)
    fleet = make_fleet(repo, server, tmp_path)
    fleet.command("2", ASSIGNED)
    fleet.step(6)
    for v in ASSIGNED:
        assert fleet.states(v) == ["downloaded", "verified", "installed", "activated", "rolled_back"]
        assert fleet.last(v).reason == "invalid_output"
    assert fleet.versions() == ["1"] * FLEET
    # there and back again: the switch back falls in the first switch's hold, one model_switch episode each
    assert fleet.model_switches() == 3
    fleet.step(3)
    assert fleet.runner.last_tick is not None and bool(fleet.runner.last_tick.policy.valid.all())


def test_deadline_miss_surge_after_activation_is_rolled_back(
    repo: ReleaseRepository, server: str, tmp_path: Path
) -> None:
    publish(repo, tmp_path, "2")
    fleet = make_fleet(repo, server, tmp_path, faults=("latency_spike:p=1,ms=150,ids=0+1,start=6",))
    fleet.command("2", ("0", "1"))
    fleet.step(6 + HEALTH.window_ticks)
    for v in ("0", "1"):
        assert fleet.states(v)[-1] == "rolled_back" and fleet.last(v).reason == "deadline_surge"
    assert fleet.versions() == ["1"] * FLEET


def test_release_server_down_mid_rollout_vehicles_keep_driving_and_retry(
    repo: ReleaseRepository, tmp_path: Path
) -> None:
    publish(repo, tmp_path, "2")
    srv, url = start_in_thread(repo.root_dir)
    port = int(url.rsplit(":", 1)[1])
    srv.shutdown()
    srv.server_close()  # down before the rollout starts
    fleet = make_fleet(repo, url, tmp_path)
    fleet.command("2", ASSIGNED)
    fleet.step(12)
    assert fleet.bus.sent == [] and fleet.versions() == ["1"] * FLEET
    assert fleet.runner.counts()["ota"]["fetch"]["unavailable"] >= 3
    srv, _ = start_in_thread(repo.root_dir, port=port)  # restarted on its port
    try:
        deadline = time.monotonic() + 60
        while not all("committed" in fleet.states(v) for v in ASSIGNED):
            assert time.monotonic() < deadline, fleet.bus.sent
            fleet.step()
    finally:
        srv.shutdown()
        srv.server_close()
    assert fleet.versions() == ["2", "2", "2", "1", "1", "1"]


def test_a_vehicle_commanded_by_its_bus_id_verifies_and_reports_that_name_and_its_heartbeats_carry_the_slot(
    repo: ReleaseRepository, server: str, tmp_path: Path
) -> None:
    """The rollout controller knows a vehicle by its heartbeats' id ("<run>-<n>"): it signs and commands that name."""
    path = policy_file(tmp_path / "policy-2.safetensors", 2, 1.0)
    meta = {"run_id": "", "input_schema_version": 1, "parent_version": "1", "validation_report_sha256": ""}
    fields = repo.publish(MODEL, "2", path, meta, utc_now())
    repo.assign_wave(fields.release, 1, VehicleList(("run7-0", "run7-1")), utc_now())
    spec = OtaSpec(MODEL, server, repo.trusted_root(), str(tmp_path / "ota"), HEALTH, vehicle_tag="run7", timeout_s=2.0)
    bus, sink = MemoryTransport(), CollectingSink()
    agent = OtaAgent(spec, range(FLEET), bus)
    torch.manual_seed(0)
    config = FleetConfig(seed=3, progress_reference=False, max_uncertainty_mps2=100.0, heartbeat_s=0.5)
    runner = FleetRunner(config, range(FLEET), {"1": FusionPolicy()}, "1", sink=sink, hooks=[agent])
    fleet = Fleet(runner, agent, bus)
    fleet.step()
    fleet.command("2", ("run7-0", "run7-1", "run7-2"), fields.release)  # run7-2: not in the signed wave
    fleet.step(3 + HEALTH.window_ticks)
    for v in ("run7-0", "run7-1"):
        assert fleet.states(v) == ["downloaded", "verified", "installed", "activated", "committed"]
    assert [(s.state, s.reason) for s in bus.sent if s.vehicle_id == "run7-2"] == [("rejected", "not_assigned")]
    assert fleet.versions() == ["2", "2", "1", "1", "1", "1"]
    last = {b.vehicle_id: b for b in sink.heartbeats}
    assert [(last[str(i)].model_version, last[str(i)].model_slot) for i in range(3)] == [(2, "b"), (2, "b"), (1, "a")]
