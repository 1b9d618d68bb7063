"""`fleetloop sim run --ota` as an operator runs it: real Kafka, real MLflow, the real ota-repo service, the real CLI
in fresh processes. A published and assigned release is committed by exactly the assigned vehicles; the same with
one flipped byte in the served artifact is activated by none, and each says why."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fleetloop.edge_agent.features import INPUT_SCHEMA_VERSION
from fleetloop.edge_agent.model_artifact import ArtifactMetadata, save_artifact
from fleetloop.edge_agent.policy import ARCHITECTURE, FusionPolicy
from fleetloop.platform import launcher
from fleetloop.platform.bus import OTA_STATUS, BusConsumer, OtaStatus
from fleetloop.platform.registry import open_registry
from fleetloop.platform.services import ota_repo
from fleetloop.platform.settings import Settings
from tests.conftest import cli_env, free_port
from tests.integration.test_registry_cli import as_json, fleetloop
from tests.platform.release_data import flip_a_bit

pytestmark = pytest.mark.integration

FLEET = 6
ASSIGNED = ["0", "1", "2"]


@pytest.fixture
def stack(kafka_bootstrap: str, mlflow_uri: str, tmp_path: Path) -> Iterator[tuple[dict[str, str], Settings]]:
    """The CLI's environment and settings: a private state directory and model name, the session's Kafka and
    MLflow, and an ota-repo service of its own on a free port."""
    settings = Settings(
        state_dir=tmp_path / "state",
        kafka_bootstrap=kafka_bootstrap,
        mlflow_tracking_uri=mlflow_uri,
        ota_repo_port=free_port(),
        model_name=f"fleet-policy-{uuid.uuid4().hex[:8]}",
        startup_timeout_s=30,
    )
    env = cli_env(
        FLEETLOOP_STATE_DIR=str(settings.state_dir),
        FLEETLOOP_KAFKA_BOOTSTRAP=kafka_bootstrap,
        MLFLOW_TRACKING_URI=mlflow_uri,
        FLEETLOOP_OTA_REPO_PORT=str(settings.ota_repo_port),
        FLEETLOOP_MODEL_NAME=settings.model_name,
    )
    [started] = launcher.up(settings, [ota_repo.SPEC])
    assert started.state == "running", started.detail
    try:
        yield env, settings
    finally:
        launcher.down(settings, [ota_repo.SPEC])


def register(settings: Settings, tmp_path: Path, seed: int, stage: str) -> str:
    """A policy registered and moved to ``stage``; calibrated so that the untrained test model drives."""
    torch.manual_seed(seed)
    model = FusionPolicy()
    meta = ArtifactMetadata(
        architecture=ARCHITECTURE,
        hyperparameters=model.config.to_dict(),
        metrics={"val_uncertainty_p99_mps2": 100.0},
    )
    path = save_artifact(tmp_path / f"policy-{seed}.safetensors", model, meta)
    registry = open_registry(settings)
    info = registry.register(
        settings.model_name, path, {"format": "safetensors", "input_schema_version": INPUT_SCHEMA_VERSION}
    )
    registry.promote(settings.model_name, info.version, stage, reason="test")
    return info.version


def published_and_sent(env: dict[str, str], settings: Settings, tmp_path: Path) -> tuple[str, int]:
    """v1 in production (the fleet starts on it); v2 published, wave 1 = vehicles 0-2, install commands sent to
    them and a forged one to vehicle 4. Returns (v2, its release number)."""
    register(settings, tmp_path, 1, "production")
    # the same weights as production: a vehicle's health window judges the release, and another untrained model
    # may truly surge in fallback activations (one vehicle in three CI runs rolled it back for that)
    v2 = register(settings, tmp_path, 1, "staging")
    name = settings.model_name
    release = as_json(fleetloop(env, "ota", "publish", name, v2, "--json"))["release"]["release"]
    as_json(fleetloop(env, "ota", "assign", str(release), "--wave", "1", "--vehicles", "0-2", "--json"))
    sent = as_json(fleetloop(env, "ota", "install", name, v2, "--release", str(release), "--json"))
    assert sent["vehicles"] == ASSIGNED
    forged = as_json(fleetloop(env, "ota", "install", name, v2, "--release", str(release), "--vehicles", "4", "--json"))
    assert forged["vehicles"] == ["4"]
    return v2, release


def run_fleet(env: dict[str, str]) -> dict:
    # 1 simulated minute: the fetch runs in wall time beside the ticks, and a loaded machine's fetch may take a
    # few hundred of a small fleet's ticks before the 100-tick health window can start
    proc = fleetloop(env, "sim", "run", "--ota", "--vehicles", str(FLEET), "--minutes", "1", "--no-telemetry", "--json")
    return as_json(proc)


def statuses(settings: Settings) -> dict[str, list[OtaStatus]]:
    """Every status the vehicles of this test's model sent, per vehicle, in order."""
    out: dict[str, list[OtaStatus]] = {}
    with BusConsumer(settings, [OTA_STATUS], group_id=f"t-{uuid.uuid4().hex[:8]}", client_id="test") as consumer:
        for polled in consumer.poll_batches(idle_timeout_s=5.0):
            for d in polled.deliveries:
                if isinstance(d.value, OtaStatus) and d.value.model_name == settings.model_name:
                    out.setdefault(d.value.vehicle_id, []).append(d.value)
    return out


def test_publish_assign_install_then_sim_run_ota_commits_on_exactly_the_assigned_vehicles(
    stack: tuple[dict[str, str], Settings], tmp_path: Path
) -> None:
    env, settings = stack
    v2, release = published_and_sent(env, settings, tmp_path)
    result = run_fleet(env)
    ota = result["counts"]["ota"]
    assert ota["status"].get("committed") == 3 and ota["rejected"] == {"not_assigned": 1}, ota["status"]
    assert ota["commands"]["followed"] == 4
    assert result["fallback_activations"]["model_switch"] >= 3  # each activation is a model switch
    assert v2 in result["by_version"]
    got = statuses(settings)
    for v in ASSIGNED:
        assert [s.state for s in got[v]] == ["downloaded", "verified", "installed", "activated", "committed"]
        assert {(s.release, s.version) for s in got[v]} == {(release, int(v2))}
    assert [(s.state, s.reason) for s in got["4"]] == [("rejected", "not_assigned")]
    assert set(got) == {*ASSIGNED, "4"}  # vehicles 3 and 5 got no command and said nothing


def test_flipped_byte_in_the_served_artifact_is_activated_by_no_vehicle_and_each_says_why(
    stack: tuple[dict[str, str], Settings], tmp_path: Path
) -> None:
    env, settings = stack
    v2, _ = published_and_sent(env, settings, tmp_path)
    [served] = (settings.state_dir / "ota" / "repo" / "targets" / "models" / settings.model_name / v2).glob("*")
    flip_a_bit(served)
    result = run_fleet(env)
    ota = result["counts"]["ota"]
    assert ota["status"] == {"rejected": 4} and ota["rejected"] == {"bad_hash": 3, "not_assigned": 1}, ota
    assert list(result["by_version"]) == ["1"]
    got = statuses(settings)
    for v in ASSIGNED:
        [refused] = got[v]
        assert (refused.state, refused.reason) == ("rejected", "bad_hash")
        assert "do not match the signed sha256" in refused.detail
