"""The federated path as a user runs it, each command in a fresh process on real Kafka, MLflow and Ray:

sim run --buffer-seconds -> fl round -> pipeline run --stage validate -> a verdict in the registry
then, with the validate stage served: fl round announces its candidate and waits for the verdict
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from fleetloop.edge_agent.buffer_store import shard_buffer_name
from fleetloop.pipelines.serve import service_name, stage_specs
from fleetloop.pipelines.suite import default_suite, save_suite, suite_dir, tiny_suite
from fleetloop.platform import launcher
from fleetloop.platform.candidates import ORIGIN_TAG, PARTICIPANTS_COUNT_TAG, ROUNDS_TAG, VALIDATION_TAG
from fleetloop.platform.registry import open_registry
from fleetloop.platform.settings import Settings
from fleetloop.platform.tracking import open_tracking
from tests.conftest import cli_env

pytestmark = pytest.mark.integration

VEHICLES = 5  # 3 clients and the 2 held-out vehicles


def _fleetloop(settings: Settings, *args: str) -> Any:
    env = cli_env(
        drop=("MLFLOW_TRACKING_URI",),
        KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        FLEETLOOP_STATE_DIR=str(settings.state_dir),
        FLEETLOOP_MLFLOW_PORT=str(settings.mlflow_port),
        FLEETLOOP_MODEL_NAME=settings.model_name,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fleetloop.cli.main", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert proc.returncode == 0, f"fleetloop {' '.join(args)} exited {proc.returncode}: {proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def test_a_federated_candidate_from_the_fleets_buffers_gets_a_verdict(
    stack_settings: Settings, kafka_bootstrap: str, mlflow_uri: str, initial_model: Path, tmp_path: Path
) -> None:
    settings = stack_settings.model_copy(
        update={"state_dir": tmp_path / "state", "model_name": f"fl-loop-{uuid.uuid4().hex[:8]}"}
    )
    # The held-out suite is frozen on first use: this state directory's is the seconds-long one, under the name
    # validate looks for.
    save_suite(
        suite_dir(settings.state_dir) / f"{default_suite().name}.json",
        dataclasses.replace(tiny_suite(), name=default_suite().name),
    )

    fleet = _fleetloop(
        settings, "sim", "run", "--vehicles", str(VEHICLES), "--minutes", "0.35", "--fallback-only",
        "--buffer-seconds", "20", "--seed", "2",
    )  # fmt: skip
    assert fleet["buffers"]["shards"] == [shard_buffer_name(range(VEHICLES))]
    assert fleet["buffers"]["frames_per_vehicle"] == 200

    fl_round = ("fl", "round", "--rounds", "1", "--clients", "3", "--local-epochs", "1")
    first = _fleetloop(settings, *fl_round, "--initial-model", str(initial_model))
    assert first["rounds"][0]["aggregated"] and sorted(first["participants"]) == [0, 1, 2]
    assert first["validation"]["announced"] is False
    assert "pipeline run --stage validate" in first["validation"]["how"]
    run = open_tracking(settings).get_run(first["run_id"])
    assert (run.tags[ORIGIN_TAG], run.tags[ROUNDS_TAG], run.tags[PARTICIPANTS_COUNT_TAG]) == ("federated", "1", "3")

    validated = _fleetloop(settings, "pipeline", "run", "--stage", "validate")["validate"]
    (verdict,) = validated["validated"]
    assert verdict["status"] == "validated" and verdict["model_name"] == settings.model_name
    version = open_registry(settings).get(settings.model_name, verdict["version"])
    assert version.metadata["origin"] == "federated" and version.metadata["training_run_id"] == first["run_id"]
    assert version.stage is not None and version.stage.value == ("staging" if verdict["passed"] else "rejected")
    assert open_tracking(settings).get_run(first["run_id"]).tags[VALIDATION_TAG] in ("passed", "rejected")
    assert _fleetloop(settings, "pipeline", "run", "--stage", "validate")["validate"]["candidates"] == 0

    # The validate stage served: the next round's candidate is announced and its verdict awaited.
    specs = launcher.select(stage_specs(), [service_name("validate")])
    try:
        assert [s.state for s in launcher.up(settings, specs)] == ["running"]
        second = _fleetloop(settings, *fl_round, "--verdict-wait", "240")
    finally:
        launcher.down(settings, specs)
    assert (second["first_round"], second["validation"]["announced"]) == (2, True)
    assert second["validation"]["verdict"] is not None, second["validation"]["how"]
    assert "passed" in second["validation"]["verdict"]
    assert [v.metadata["training_run_id"] for v in open_registry(settings).list_versions(settings.model_name)] == [
        first["run_id"],
        second["run_id"],
    ]
