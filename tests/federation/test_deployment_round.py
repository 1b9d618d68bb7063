"""Flower's deployment engine as a user runs it, each command in a fresh process, on real MLflow and a real
SuperLink with one SuperNode per vehicle:

a fleet's saved buffers (as `sim run --buffer-seconds` leaves them: one shard folder) -> fl serve (3 SuperNodes)
-> fl round --deployment (1 round) -> a federated candidate in MLflow; a run whose ServerApp fails is reported
failed (never a success); `fleetloop down` leaves no Flower process behind.

Each Flower run starts a ServerApp and three ClientApp processes that import torch: on the shared 2-core machine
under load the test takes minutes, hence its own time limit.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from fleetloop.edge_agent.buffer_store import shard_buffer_name
from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.federation import serve as flower
from fleetloop.federation.buffers import buffer_dir
from fleetloop.federation.deployment import follow_run, submit
from fleetloop.platform import process_tree
from fleetloop.platform.candidates import ORIGIN_TAG, PARTICIPANTS_COUNT_TAG, ROUNDS_TAG
from fleetloop.platform.errors import FederatedRunFailed
from fleetloop.platform.settings import Settings
from fleetloop.platform.tracking import open_tracking
from tests.conftest import cli_env, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

VEHICLES = 5  # 3 SuperNodes and the 2 held-out vehicles


def _fleetloop(settings: Settings, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    env = cli_env(
        drop=("MLFLOW_TRACKING_URI",),
        FLEETLOOP_STATE_DIR=str(settings.state_dir),
        FLEETLOOP_MLFLOW_PORT=str(settings.mlflow_port),
        FLEETLOOP_FLOWER_PORT=str(settings.flower_port),
        FLEETLOOP_MODEL_NAME=settings.model_name,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fleetloop.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert proc.returncode == expect, f"fleetloop {' '.join(args)} exited {proc.returncode}: {proc.stderr[-3000:]}"
    return proc


def _json(settings: Settings, *args: str) -> Any:
    import json

    return json.loads(_fleetloop(settings, *args, "--json").stdout)


def _flower_processes(settings: Settings) -> list[process_tree.Proc]:
    return process_tree.owned(process_tree.snapshot(), process_tree.marker_value(flower.NAME, settings.state_dir), [])


def test_a_deployment_engine_round_makes_a_candidate_and_down_stops_every_flower_process(
    stack_settings: Settings, mlflow_uri: str, initial_model: Path, tmp_path: Path
) -> None:
    settings = stack_settings.model_copy(
        update={
            "state_dir": tmp_path / "state",
            "model_name": f"fl-deploy-{uuid.uuid4().hex[:8]}",
            "flower_port": free_port(),
        }
    )
    fleet = FleetRunner(
        FleetConfig(scenario="mixed", seed=2, buffer_frames=200, ground_truth_audit=False), range(VEHICLES)
    )
    fleet.run(200)
    fleet.buffer.save(buffer_dir(settings.state_dir) / shard_buffer_name(range(VEHICLES)))
    try:
        served = _json(settings, "fl", "serve", "--clients", "3")
        assert served["state"] in ("running", "started"), served
        assert [v["vehicle_id"] for v in served["supernodes"]] == [0, 1, 2]
        assert served["heldout_vehicles"] == [3, 4]
        assert served["superlink"] == f"127.0.0.1:{settings.flower_port}"

        fl = _json(
            settings, "fl", "round", "--deployment", "--rounds", "1", "--clients", "3", "--local-epochs", "1",
            "--initial-model", str(initial_model),
        )  # fmt: skip
        assert fl["engine"] == "deployment"
        (r,) = fl["rounds"]
        assert r["aggregated"] and r["sampled"] == 3 and sorted(fl["participants"]) == [0, 1, 2], r
        assert fl["heldout_after"]["heldout_accel_mse"] != fl["heldout_before"]["heldout_accel_mse"]
        assert fl["event"]["origin"] == "federated" and Path(fl["artifact_path"]).exists()
        run = open_tracking(settings).get_run(fl["run_id"])
        assert (run.tags[ORIGIN_TAG], run.tags[ROUNDS_TAG], run.tags[PARTICIPANTS_COUNT_TAG]) == ("federated", "1", "3")
        assert run.tags["fleetloop.engine"] == "deployment"
        metrics = open_tracking(settings).client.get_run(fl["run_id"]).data.metrics
        assert metrics["participants"] == 3.0  # logged by the ServerApp process, round by round

        # A run whose ServerApp fails (no job where it looks) ends failed: an error, with the SuperLink's reason.
        empty = tmp_path / "no-job"
        empty.mkdir()
        with pytest.raises(FederatedRunFailed, match="finished:failed"):
            follow_run(settings, submit(settings, empty), empty, budget_s=240.0)
    finally:
        _fleetloop(settings, "down")
    assert _flower_processes(settings) == []
