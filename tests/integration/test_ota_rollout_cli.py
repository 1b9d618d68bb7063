"""`fleetloop ota rollout | status | pause | history` as an operator runs them, in fresh processes, against the real
MLflow registry: what is refused (exit 2) before anything is signed or started, and what the views show."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetloop.platform.canary.operator import request_rollout
from fleetloop.platform.canary.policy import CanaryPolicy
from fleetloop.platform.canary.rollouts import RolloutStore
from fleetloop.platform.settings import Settings
from tests.canary.test_controller_service import publish_pair
from tests.integration.test_registry_cli import as_json, env, fleetloop

__all__ = ["env"]

pytestmark = pytest.mark.integration


def test_rollout_help_shows_the_policy_defaults(env: dict[str, str]) -> None:
    out = fleetloop(env, "ota", "rollout", "--help")
    said = " ".join(out.stdout.split())
    assert out.returncode == 0 and "waves=[0.01, 0.1, 0.5, 1.0]" in said and "margin=0.2" in said


def test_a_version_not_in_staging_and_a_second_rollout_are_refused_with_exit_2(
    env: dict[str, str], mlflow_uri: str, tmp_path: Path
) -> None:
    state = Path(env["FLEETLOOP_STATE_DIR"])
    settings = Settings(state_dir=state, mlflow_tracking_uri=mlflow_uri, model_name=env["FLEETLOOP_MODEL_NAME"])
    registry, name, release = publish_pair(settings, tmp_path)

    prod = fleetloop(env, "ota", "rollout", name, "1", "--json")
    assert (prod.returncode, prod.stdout) == (2, "")
    assert "only a staging version is rolled out" in " ".join(prod.stderr.split())

    store = RolloutStore(state)
    rid = request_rollout(store, registry, name, 2, release, CanaryPolicy())
    again = fleetloop(env, "ota", "rollout", name, "2", "--json")
    assert (again.returncode, again.stdout) == (2, "")
    assert f"already running ({rid})" in " ".join(again.stderr.split())

    [status] = as_json(fleetloop(env, "ota", "status", name, "--json"))["rollouts"]
    assert (status["rollout_id"], status["phase"], status["canary_version"]) == (rid, "waiting", 2)
    paused = as_json(fleetloop(env, "ota", "pause", name, "--reason", "night shift", "--json"))
    assert paused["rollout_id"] == rid and paused["command"] == "pause"
    assert [r.command for _, r in store.requests()] == ["start", "pause"]
    assert as_json(fleetloop(env, "ota", "history", name, "--json")) == {"rollouts": []}  # not started yet
    readable = fleetloop(env, "ota", "status", name)
    assert readable.returncode == 0 and f"rollout {rid}" in readable.stdout and "waiting" in readable.stdout
