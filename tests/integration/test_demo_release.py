"""The demo's canary step on real Kafka, MLflow, ota-repo and the ota-controller service: the candidate that
validate passed (by the printed rule) goes out in canary waves while the fleet drives, reaches production through
the controller's audited transition, and the fleet ends on it.

(The quick demo test reaches this step only when its candidate passes the gates; this one always does.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetloop.cli.demo_rollouts import step_canary
from fleetloop.cli.demo_steps import plan_for
from fleetloop.platform import launcher
from fleetloop.platform.registry import open_registry
from fleetloop.platform.services import ota_controller, ota_repo
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
        launcher.down(s, [ota_controller.SPEC, ota_repo.SPEC])


def test_the_passed_candidate_reaches_production_through_the_canary_waves_and_the_fleet_ends_on_it(
    settings: Settings, tmp_path: Path
) -> None:
    v1 = register(settings, tmp_path, 1, "production")
    v2 = register(settings, tmp_path, 1, "staging")  # production's weights: as safe as production, by construction
    worse = {"origin": "data loop", "version": "0", "passed": False, "fog_cnm_per_1000_km": {"candidate": 0.0}}
    better = {"origin": "data loop", "version": v2, "passed": True, "fog_cnm_per_1000_km": {"candidate": 10.0}}
    plan = plan_for(True, 8, 0.5, 5.0)

    out = step_canary(settings, plan, 0, [worse, better], "demo-canary-test", lambda _d, _t: None, lambda _m: None)

    assert (out["promoted"], out["previous"]) == (v2, v1)  # a rejected candidate is never picked
    r = out["rollout"]
    assert [w["verdict"] for w in r["history"]["waves"]] == ["next_wave", "next_wave"]
    assert [w["label"] for w in r["waves"]] == ["wave 1 (25%)", "wave 2 (50%)", "promoted"]
    assert r["fleet_ends_on"] == {v2: plan.vehicles}
    reg = open_registry(settings)
    assert reg.production(settings.model_name).version == v2
    [to_production] = [t for t in reg.history(settings.model_name, v2) if t.to_stage == "production"]
    assert to_production.via_rollout and not to_production.forced and to_production.actor == "ota-controller"
    assert out["model"] == v2 and out["by_condition"]  # the rates of the vehicle-ticks on the new model
