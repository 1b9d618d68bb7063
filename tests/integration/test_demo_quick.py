"""`fleetloop demo --quick` end to end, as a user runs it: a fresh process on a private state directory against
the test session's real Kafka and MLflow (its own release server on a free port), then `fleetloop down`.

It asserts the story's outcomes: the genesis model reaches the whole fleet as a signed release, the fleet meets fog,
the data loop's fog candidate and the federated round's candidate reach a verdict, the better of those that
passed, by the stated rule, reaches production through the canary waves (judged by the ota-controller
while the fleet drives) and the fleet ends on it, and the degraded model is rolled back by the controller, with
its evidence, and tagged ``rejected`` while the fleet ends on production. A failing step stops the demo with the
error tree's message and exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from fleetloop.cli.demo_steps import better_candidate
from fleetloop.platform.settings import PHONE_HOME_OFF
from tests.conftest import free_port

pytestmark = pytest.mark.integration

_MAIN = "from fleetloop.cli.main import main; main()"


def _env(state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLOOP_")}
    env.update(PHONE_HOME_OFF)
    env.update(
        FLEETLOOP_STATE_DIR=str(state),
        FLEETLOOP_MODEL_NAME=f"demo-policy-{uuid.uuid4().hex[:8]}",
        FLEETLOOP_OTA_REPO_PORT=str(free_port()),
        FLEETLOOP_PROMETHEUS_EXECUTABLE="no-prometheus-here",
        FLEETLOOP_ALERTMANAGER_EXECUTABLE="no-alertmanager-here",
        **extra,
    )
    return env


def _fleetloop(env: dict[str, str], *args: str, timeout_s: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _MAIN, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


@pytest.fixture(scope="module")
def quick_demo(kafka_bootstrap: str, mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    state = tmp_path_factory.mktemp("demo-state")
    env = _env(state, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, MLFLOW_TRACKING_URI=mlflow_uri)
    try:
        proc = _fleetloop(env, "demo", "--quick", "--seed", "3", "--json")
        assert proc.returncode == 0, f"demo exited {proc.returncode}: {proc.stderr[-3000:]}"
        d: dict[str, Any] = json.loads(proc.stdout)  # one document: json.loads refuses anything around it
        history = _fleetloop(env, "model", "history", env["FLEETLOOP_MODEL_NAME"], "--json")
        d["_history"] = json.loads(history.stdout)["transitions"]
        d["_state"] = str(state)
    finally:
        down = _fleetloop(env, "down", timeout_s=120)
    assert down.returncode == 0, down.stderr[-2000:]
    return d


def test_the_genesis_model_reaches_the_whole_fleet_as_a_signed_release(quick_demo: dict[str, Any]) -> None:
    g = quick_demo["steps"]["genesis"]
    assert g["trained_now"] is True
    assert g["release"] >= 1 and len(g["sha256"]) == 64
    assert quick_demo["production"]["before"] == g["production"]


def test_the_fleet_meets_fog_and_its_uploads_feed_the_data_loop(quick_demo: dict[str, Any]) -> None:
    before = quick_demo["steps"]["before"]
    assert set(before["by_condition"]) >= {"clear", "fog"}
    assert before["uploaded_frames"] > 0
    assert quick_demo["steps"]["data loop"]["stages"]["collect"]["rows_collected"] > 0
    assert [r["condition"] for r in quick_demo["before_after"]]


def test_the_fog_candidate_reaches_a_verdict(quick_demo: dict[str, Any]) -> None:
    candidates = quick_demo["steps"]["data loop"]["candidates"]
    assert len(candidates) == 1
    c = candidates[0]
    assert c["status"] == "validated"
    assert c["stage"] == ("staging" if c["passed"] else "rejected")
    assert any("fog" in row["slice"] for row in c["table"])


def test_the_federated_candidate_from_the_vehicles_buffers_reaches_a_verdict(quick_demo: dict[str, Any]) -> None:
    fed = quick_demo["steps"]["federated"]
    assert not fed.get("skipped") and fed["rounds"] == [1, 1]
    assert len(fed["participants"]) >= 2
    (c,) = fed["candidates"]
    assert c["origin"] == "federated" and c["status"] == "validated"
    assert c["stage"] == ("staging" if c["passed"] else "rejected")
    assert any("fog" in row["slice"] for row in c["table"])


def test_the_better_candidate_reaches_production_through_the_canary_waves_and_the_fleet_ends_on_it(
    quick_demo: dict[str, Any],
) -> None:
    steps = quick_demo["steps"]
    c = better_candidate(steps["data loop"]["candidates"] + steps["federated"]["candidates"])
    release = steps["release"]
    if c is None:  # validate passed neither candidate: nothing goes out, production stays
        assert release["promoted"] is None and "no candidate passed" in release["line"]
        assert quick_demo["production"]["after"] == quick_demo["production"]["before"]
        return
    assert release["promoted"] == c["version"] == quick_demo["production"]["after"]
    assert release["previous"] == quick_demo["production"]["before"]
    rollout = release["rollout"]
    assert rollout["outcome"] == "promoted"
    judged = len(rollout["policy"]["waves"]) - 1
    assert [w["verdict"] for w in rollout["history"]["waves"]] == ["next_wave"] * judged  # every judged wave passed
    assert [w["label"] for w in rollout["waves"]] == ["wave 1 (25%)", "wave 2 (50%)", "promoted"]
    assert rollout["fleet_ends_on"] == {c["version"]: quick_demo["plan"]["vehicles"]}
    assert rollout["installed_after_s"] >= 0
    to_production = [
        t for t in quick_demo["_history"] if t["version"] == c["version"] and t["to_stage"] == "production"
    ]
    assert len(to_production) == 1 and not to_production[0]["forced"]
    assert to_production[0]["actor"] == "ota-controller"


def test_the_degraded_model_is_rolled_back_with_its_evidence_and_tagged_rejected(quick_demo: dict[str, Any]) -> None:
    d = quick_demo["steps"]["degraded"]
    assert d["production"] == quick_demo["production"]["after"]
    assert d["rollout"]["outcome"] == "rolled_back" and d["stage"] == "rejected"
    assert d["rollout"]["fleet_ends_on"] == {d["production"]: quick_demo["plan"]["vehicles"]}
    assert d["rollout"]["installed_after_s"] >= 0  # the drive settled on the whole fleet heard on production
    assert d["rollout"]["waves"][-1]["label"] == "rolled back"
    rejected = [t for t in quick_demo["_history"] if t["version"] == d["degraded"] and t["to_stage"] == "rejected"]
    assert len(rejected) == 1 and rejected[0]["actor"] == "ota-controller"
    e = d["evidence"]  # the decisive evidence: a safety metric's rate on the canary over its matched baseline's
    assert e["test"] == "harm" and e["metric"] in ("collisions", "near_misses", "fallback_activations")
    assert e["canary_km"] > 0 and e["baseline_km"] > 0 and e["e_value"] >= e["threshold"]
    assert e["canary_count"] / e["canary_km"] > e["baseline_count"] / e["baseline_km"]
    assert "rolled back" in d["line"] and "tagged rejected" in d["line"] and "the evidence:" in d["line"]


def test_the_timeline_is_a_png_in_the_state_directory(quick_demo: dict[str, Any]) -> None:
    png = Path(quick_demo["timeline_png"])
    assert png.is_relative_to(quick_demo["_state"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_step_stops_the_demo_with_its_message_and_exit_code(tmp_path: Path) -> None:
    env = _env(
        tmp_path / "state",
        FLEETLOOP_KAFKA_LIBS_DIR=str(tmp_path / "no-kafka-here"),
        FLEETLOOP_KAFKA_PORT=str(free_port()),
        FLEETLOOP_KAFKA_CONTROLLER_PORT=str(free_port()),
        FLEETLOOP_MLFLOW_PORT=str(free_port()),
    )
    try:
        proc = _fleetloop(env, "demo", "--quick", timeout_s=300)
        assert proc.returncode == 3, proc.stderr[-2000:]
        assert "Start the stack failed" in proc.stdout
        assert "error:" in proc.stderr and "kafka" in proc.stderr.lower()
        assert "Release the genesis model" not in proc.stdout
    finally:
        assert _fleetloop(env, "down", timeout_s=120).returncode == 0
