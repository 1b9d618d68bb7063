"""The ota-repo service through the launcher, on a private state directory and a free port: what it serves is what
a vehicle's client accepts, and it re-signs a timestamp about to expire by itself."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from fleetloop.edge_agent.ota_verify import OtaClientConfig, fetch_verified_release
from fleetloop.platform import launcher
from fleetloop.platform.metrics import list_targets
from fleetloop.platform.metrics.query import scrape_exporters
from fleetloop.platform.releases import api
from fleetloop.platform.releases.cohorts import VehicleList
from fleetloop.platform.releases.repository import ReleaseRepository
from fleetloop.platform.services import ota_repo
from fleetloop.platform.settings import Settings
from tests.conftest import free_port
from tests.platform.release_data import SCHEMA, release_meta

pytestmark = pytest.mark.integration
RELEASE_EXPIRY_METRIC = "fleetloop_release_metadata_expiry_timestamp_seconds"


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    s = Settings(state_dir=tmp_path / "state", ota_repo_port=free_port(), startup_timeout_s=30)
    yield s
    launcher.down(s, [ota_repo.SPEC])


def test_up_initialises_the_repository_and_serves_what_a_vehicle_accepts(settings: Settings, tmp_path: Path) -> None:
    assert ota_repo.repository_state(settings.state_dir) == "absent"
    [started] = launcher.up(settings, [ota_repo.SPEC])
    assert started.state == "running" and "timestamp v1" in started.detail and "0 release(s)" in started.detail
    keys = sorted((settings.state_dir / "ota" / "keys").glob("*.pem"))
    assert len(keys) == 7 and all(k.stat().st_mode & 0o777 == 0o600 for k in keys)
    assert [t.name for t in list_targets(settings.state_dir).targets] == ["ota-repo"]

    artifact = tmp_path / "policy.safetensors"
    artifact.write_bytes(os.urandom(50_000))
    fields = api.publish(settings.state_dir, "fleet-policy", "4", artifact, release_meta())
    api.assign_wave(settings.state_dir, fields.release, 1, VehicleList(("17",)))
    cfg = OtaClientConfig(
        repo_url=ota_repo.ota_repo_url(settings),
        trusted_root=ReleaseRepository(settings.state_dir).trusted_root(),
        metadata_dir=tmp_path / "vehicle" / "metadata",
        cache_dir=tmp_path / "vehicle" / "cache",
        supported_input_schemas=frozenset({SCHEMA}),
    )
    got = fetch_verified_release(cfg, "fleet-policy", "4", "17")
    assert got.fields == fields and got.wave == 1
    assert got.path.read_bytes() == artifact.read_bytes()

    [again] = launcher.up(settings, [ota_repo.SPEC])  # a second `up` keeps the keys and the release
    assert again.pid == started.pid and len(api.list_releases(settings.state_dir)) == 1
    launcher.down(settings, [ota_repo.SPEC])
    assert list_targets(settings.state_dir).targets == []  # SIGTERM leaves through the clean-up


def test_service_resigns_a_timestamp_about_to_expire(settings: Settings) -> None:
    # signed 20 h ago: the 1-day timestamp has 4 h left, inside its 6 h refresh margin
    repo = ReleaseRepository.initialise(settings.state_dir, api.utc_now() - timedelta(hours=20))
    before = repo.load("timestamp").signed
    assert before.expires - api.utc_now() < timedelta(hours=5)
    launcher.up(settings, [ota_repo.SPEC])
    deadline = time.monotonic() + 20
    while (health := ota_repo.ota_repo_health(settings)).detail.startswith(f"timestamp v{before.version},"):
        assert time.monotonic() < deadline, health.detail
        time.sleep(0.2)
    after = repo.load("timestamp").signed
    assert health.ok and health.detail.startswith(f"timestamp v{before.version + 1},")
    assert after.version == before.version + 1
    assert after.expires - api.utc_now() > timedelta(hours=23)
    # What it exports is the expiry the alert rule reads, for the re-signed timestamp and the other roles.
    deadline = time.monotonic() + 20
    while True:
        samples, _health, _ = scrape_exporters(settings.state_dir)
        expiry = {s.labels["role"]: s.value for s in samples if s.name == RELEASE_EXPIRY_METRIC}
        if expiry.get("timestamp") == after.expires.timestamp() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert expiry["timestamp"] == after.expires.timestamp()
    assert set(expiry) == {"root", "targets", "snapshot", "timestamp"}
    assert expiry["root"] == repo.load("root").signed.expires.timestamp()


def test_up_restarts_a_service_of_ours_that_runs_older_fleetloop_code_and_no_other(settings: Settings) -> None:
    [first] = launcher.up(settings, [ota_repo.SPEC])
    [same] = launcher.up(settings, [ota_repo.SPEC])
    assert same.pid == first.pid  # the same code: `up` twice is a no-op
    record_path = settings.state_dir / "services" / "ota-repo" / "process.json"
    record = json.loads(record_path.read_text())
    assert record["code"] == launcher.code_stamp()
    record_path.write_text(json.dumps({**record, "code": "an-older-release"}))  # as if the package was updated

    [restarted] = launcher.up(settings, [ota_repo.SPEC])

    assert restarted.state == "running" and restarted.pid != first.pid
    assert "restarted: its fleetloop code changed since it started" in restarted.detail
    assert json.loads(record_path.read_text())["code"] == launcher.code_stamp()
    [kept] = launcher.up(settings, [ota_repo.SPEC])
    assert kept.pid == restarted.pid
    assert not launcher.runs_our_code(["java", "-cp", "x", "kafka.Kafka"])  # the broker keeps running
