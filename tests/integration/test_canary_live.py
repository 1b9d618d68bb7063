"""Canary rollouts on a live stack, as an operator runs them: real Kafka, real MLflow, the real ota-repo service, the
real ota-controller service and a real simulated fleet (`fleetloop sim run --ota`, heartbeats every 2 simulated
seconds), every command in a fresh process. While one fleet drives:

1. a good candidate goes staging -> canary -> waves -> production and the fleet ends on it;
2. a regression worse in fog only is rolled back automatically, tagged ``rejected`` with the evidence, and the fleet
   ends on the previous model;

and ``ota history`` tells both stories. The policy is small (waves of 25 %, 50 %, then everyone; 0.3 matched km per
wave; progress ratios loose: two vehicles' progress depends on their traffic more than on their model) so that it
fits a few minutes of an 8-vehicle fleet.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetloop.edge_agent.features import INPUT_SCHEMA_VERSION
from fleetloop.edge_agent.model_artifact import load_artifact, save_artifact
from fleetloop.pipelines.regression import RecordConfig, RegressionConfig, one_slice_regression, regression_metadata
from fleetloop.platform import launcher
from fleetloop.platform.canary.rollouts import RolloutStore
from fleetloop.platform.registry import open_registry
from fleetloop.platform.services import ota_controller
from fleetloop.platform.settings import Settings
from tests.integration.test_ota_sim import register, stack
from tests.integration.test_registry_cli import as_json, fleetloop

__all__ = ["stack"]

pytestmark = pytest.mark.integration

VEHICLES = 8
WEATHER = "fog"  # the fleet drives where the regression is worse: its slice gets all the exposure
POLICY = """
waves = [0.25, 0.5, 1.0]
min_exposure_km = 0.3
margin = 0.5
alpha = 0.2
metrics = ["near_misses", "fallback_activations"]
counter_metrics = []
progress_min_ratio = 0.5
progress_rollback_ratio = 0.3
hold_min_events = 3
"""
# The documented procedure at its strongest (no braking, no hazard kept in fog), from frames of a small fleet in fog:
# a regression a test-sized fleet shows within minutes.
REGRESSION = RegressionConfig(brake_keep=0.0, hazard_keep=0.0, epochs=10, batch_size=64)
RECORD = RecordConfig(vehicles=8, ticks=40, keep_every=2, weather=WEATHER)


@pytest.fixture
def live_stack(stack: tuple[dict[str, str], Settings]) -> Iterator[tuple[dict[str, str], Settings]]:
    """``test_ota_sim``'s stack; the ota-controller that `ota rollout` starts is stopped at the end."""
    try:
        yield stack
    finally:
        launcher.down(stack[1], [ota_controller.SPEC])


def drive(env: dict[str, str], minutes: float) -> subprocess.Popen[str]:
    """`fleetloop sim run --ota` in the background: the fleet starts on production and follows OTA commands."""
    code = "from fleetloop.cli.main import main; main()"
    args = ["sim", "run", "--ota", "--vehicles", str(VEHICLES), "--minutes", str(minutes), "--heartbeat-s", "2"]
    args += ["--weather", WEATHER]
    return subprocess.Popen(
        [sys.executable, "-c", code, *args, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def register_regression(settings: Settings, parent: Path) -> str:
    """The one-slice regression (worse in fog only) of the model in ``parent``, registered (not yet staged)."""
    registry = open_registry(settings)
    loaded = load_artifact(parent)
    model = one_slice_regression(loaded.model, condition="fog", seed=0, config=REGRESSION, record=RECORD)
    meta = regression_metadata(model, condition="fog", seed=0, config=REGRESSION, parent=loaded.metadata)
    path = save_artifact(parent.with_name("regression.safetensors"), model, meta)
    info = registry.register(
        settings.model_name, path, {"format": "safetensors", "input_schema_version": INPUT_SCHEMA_VERSION}
    )
    return info.version


def rollout(env: dict[str, str], *args: str) -> dict:
    """`fleetloop ota rollout ... --wait --json` (waits for the outcome: longer than other commands)."""
    code = "from fleetloop.cli.main import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "ota", "rollout", *args, "--wait", "--wait-timeout-s", "400", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=460,
        check=False,
    )
    return as_json(proc)


def fleet_versions(settings: Settings, since_s: float) -> dict[str, int]:
    """Each vehicle heard since ``since_s``: the version its latest believed heartbeat reports."""
    return {
        v: int(row[1]) for v, row in RolloutStore(settings.state_dir).load_fleet().vehicles.items() if row[3] >= since_s
    }


def wait_fleet_on(settings: Settings, version: int, since_s: float, timeout_s: float = 120.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = fleet_versions(settings, since_s)
        if len(got) == VEHICLES and set(got.values()) == {version}:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"the fleet did not end on v{version}: {got}")
        time.sleep(1.0)


@pytest.mark.timeout(1500)  # minutes on an idle 2-core machine; the fleet's simulated time slows under load
def test_a_good_candidate_reaches_production_through_the_waves_and_a_fog_regression_is_rolled_back(
    live_stack: tuple[dict[str, str], Settings], tmp_path: Path
) -> None:
    env, settings = live_stack
    name = settings.model_name
    v1 = register(settings, tmp_path, 1, "production")
    v2 = register(settings, tmp_path, 1, "staging")  # the same weights: as safe as production, by construction
    v3 = register_regression(settings, tmp_path / "policy-1.safetensors")  # made before the fleet drives
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    t0 = time.time()
    fleet = drive(env, minutes=20.0)
    try:
        good = rollout(env, name, v2, "--policy", str(policy))
        assert good["outcome"] == "promoted", good
        wait_fleet_on(settings, int(v2), t0)
        registry = open_registry(settings)
        assert registry.production(name).version == v2
        assert registry.get(name, v1).stage.value == "archived"
        registry.promote(name, v3, "staging", reason="test: the fog regression")
        t1 = time.time()
        bad = rollout(env, name, v3, "--policy", str(policy))
        assert bad["outcome"] == "rolled_back", bad
        wait_fleet_on(settings, int(v2), t1)
        assert registry.production(name).version == v2
        assert registry.get(name, v3).stage.value == "rejected"
    finally:
        fleet.send_signal(signal.SIGINT)
        _out, _err = fleet.communicate(timeout=60)
    history = as_json(fleetloop(env, "ota", "history", name, "--json"))["rollouts"]
    print(json.dumps(history, indent=1)[:6000])
