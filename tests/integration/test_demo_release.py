"""The demo's release step and second drive on real Kafka, MLflow and ota-repo: a candidate that validate passed
becomes production through the registry's audited transitions, is signed for the whole fleet, and every vehicle
of the next drive installs it over the air and drives on it.

(The quick demo test reaches this step only when its candidate passes the gates; this one always does.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetloop.cli.demo_steps import plan_for, step_drive, step_release
from fleetloop.platform import launcher
from fleetloop.platform.registry import open_registry
from fleetloop.platform.services import ota_repo
from fleetloop.platform.settings import Settings
from tests.conftest import free_port
from tests.integration.test_ota_sim import register

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(kafka_bootstrap: str, mlflow_uri: str, tmp_path: Path) -> Iterator[Settings]:
    s = Settings(
        state_dir=tmp_path / "state",
        kafka_bootstrap=kafka_bootstrap,
        mlflow_tracking_uri=mlflow_uri,
        ota_repo_port=free_port(),
        model_name=f"demo-release-{uuid.uuid4().hex[:8]}",
        startup_timeout_s=30,
    )
    [started] = launcher.up(s, [ota_repo.SPEC])
    assert started.state == "running", started.detail
    try:
        yield s
    finally:
        launcher.down(s, [ota_repo.SPEC])


def test_the_passed_candidate_reaches_production_and_every_vehicle_installs_it_over_the_air(
    settings: Settings, tmp_path: Path
) -> None:
    v1 = register(settings, tmp_path, 1, "production")
    v2 = register(settings, tmp_path, 2, "staging")
    worse = {"origin": "data loop", "version": "0", "passed": False, "fog_cnm_per_1000_km": {"candidate": 0.0}}
    better = {"origin": "data loop", "version": v2, "passed": True, "fog_cnm_per_1000_km": {"candidate": 10.0}}
    plan = plan_for(True, 6, 0.4, 5.0)

    release = step_release(settings, plan, [worse, better], False, lambda _msg: None)

    assert (release["promoted"], release["previous"]) == (v2, v1)  # a rejected candidate is never picked
    assert release["install_commands"] == plan.vehicles
    reg = open_registry(settings)
    assert reg.production(settings.model_name).version == v2
    [to_production] = [r for r in reg.history(settings.model_name, v2) if r.to_stage == "production"]
    assert to_production.forced and "canary rollout controller" in to_production.reason

    after = step_drive(settings, plan, 0, "demo-release-test", lambda _d, _t: None, start_version=v1, installs=v2)

    ota = after["ota_statuses"]
    assert ota["verified"] == ota["activated"] == plan.vehicles
    assert after["model"] == v2 and after["by_condition"]  # the rates of the vehicle-ticks on the new model
    assert f"{plan.vehicles} of {plan.vehicles} vehicles installed and activated v{v2} over the air" in after["line"]
