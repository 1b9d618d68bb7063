"""Every command that offers `--json` prints exactly one JSON document on stdout, against real Kafka and MLflow.

Each command runs as a user runs it, in a fresh process, in loop order on one small state directory: the stack,
the model registry, a tiny fleet, the pipeline (also a real training run, whose MLflow run used to print
"View run ..." links before the document), the lake and the run records. The library's chatter may go to stderr;
stdout must parse whole. `demo --json` is parsed whole by tests/integration/test_demo_quick.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetloop.pipelines.label import label_pending
from fleetloop.platform.settings import PHONE_HOME_OFF
from tests.conftest import free_port
from tests.pipelines.fleet_lake import write_fleet_lake

pytestmark = pytest.mark.integration

TINY_FLEET = ("--vehicles", "4", "--minutes", "0.05", "--seed", "1")


class Cli:
    """Runs ``fleetloop ...`` in a fresh process on a private state directory, pointing at the test services."""

    def __init__(self, kafka: str, mlflow: str, state: Path) -> None:
        self.state = state
        self.model = f"json-policy-{uuid.uuid4().hex[:8]}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLOOP_")}
        self.env.update(PHONE_HOME_OFF)
        self.env.update(
            KAFKA_BOOTSTRAP_SERVERS=kafka,
            MLFLOW_TRACKING_URI=mlflow,
            FLEETLOOP_STATE_DIR=str(state),
            FLEETLOOP_MODEL_NAME=self.model,
            FLEETLOOP_OTA_REPO_PORT=str(free_port()),  # `up` starts the release server: never on a shared port
            # Prometheus "not installed": `up` and `demo` start none here (and leave none running).
            FLEETLOOP_PROMETHEUS_EXECUTABLE="no-prometheus-here",
            FLEETLOOP_ALERTMANAGER_EXECUTABLE="no-alertmanager-here",
        )

    def json(self, *args: str, timeout_s: float = 300) -> Any:
        """stdout of ``fleetloop ARGS --json``, parsed whole (json.loads refuses anything around the document)."""
        code = "from fleetloop.cli.main import main; main()"
        proc = subprocess.run(
            [sys.executable, "-c", code, *args, "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        assert proc.returncode == 0, f"fleetloop {' '.join(args)} exited {proc.returncode}: {proc.stderr[-3000:]}"
        try:
            return json.loads(proc.stdout)
        except ValueError as e:
            what = f"fleetloop {' '.join(args)} --json"
            raise AssertionError(f"{what} printed more than JSON ({e}):\n{proc.stdout}") from e


@pytest.fixture(scope="module")
def cli(kafka_bootstrap: str, mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    cli = Cli(kafka_bootstrap, mlflow_uri, tmp_path_factory.mktemp("cli-json-state"))
    yield cli
    # `up` leaves its services running, as it does for a user: stop them here, or they outlive the test (a
    # rollout controller left so, in the shared Kafka's consumer group, took half of a later test's heartbeats)
    stopped = {s["name"]: s["action"] for s in cli.json("down", timeout_s=120)["services"]}
    assert stopped["ota-repo"] in ("stopped", "killed"), stopped


def test_every_json_command_prints_one_json_document(cli: Cli, tmp_path: Path) -> None:
    # the stack (Kafka and MLflow are the test's: `up` finds them, starts nothing)
    assert cli.json("config", "show")["model_name"] == cli.model
    up = cli.json("up")
    assert up["healthy"] is True
    assert {s["name"]: s["state"] for s in up["services"]}["prometheus"] == "not installed"
    assert cli.json("status")["healthy"] is True

    # the registry
    boot = cli.json("model", "bootstrap", "--vehicles", "8", "--ticks", "20", "--max-train-seconds", "5")
    assert boot["changed"] is True and boot["version"] == "1"
    assert boot["replay"]["frames"] > 0 and Path(boot["replay"]["path"]).is_file()  # its frames, for fine-tunes
    artifact = tmp_path / "policy.safetensors"
    artifact.write_bytes(b"weights" * 100)
    assert cli.json("model", "register", str(artifact))["version"] == "2"
    assert cli.json("model", "promote", cli.model, "2", "--to", "staging")["changed"] is True
    listed = cli.json("model", "list")
    assert [(v["version"], v["stage"]) for v in listed["versions"]] == [("1", "production"), ("2", "staging")]
    assert len(cli.json("model", "history", cli.model)["transitions"]) == 4  # registered + released, twice

    # a tiny fleet on the production model, and the Euro NCAP matrix
    assert cli.json("sim", "run", *TINY_FLEET)["vehicles"] == 4
    assert len(cli.json("sim", "euroncap", "--conditions", "dry")["tests"]) == 156

    # the pipeline: every stage once, then a real training run (an MLflow run that ends during the command)
    stages = cli.json("pipeline", "run")
    assert list(stages) == ["collect", "groundtruth", "label", "train", "validate"]
    write_fleet_lake(cli.state)
    label_pending(cli.state)
    trained = cli.json("pipeline", "run", "--stage", "train")["train"]
    assert trained["status"] == "trained" and trained["parent_version"] == "1"
    assert trained["replay"]["frames"] == boot["replay"]["frames"]  # the bootstrap's frames replayed
    assert trained["replay"]["sha256"] == boot["replay"]["sha256"]

    served = cli.json("pipeline", "serve", "--stage", "label")
    assert [s["name"] for s in served] == ["pipeline-label"]
    assert [s["name"] for s in cli.json("down", "pipeline-label")["services"]] == ["pipeline-label"]

    # the lake and the run records
    assert cli.json("lake", "inspect")["rows"] > 0
    assert cli.json("lake", "prune")["partitions"] == []
    records = cli.json("runs", "list")
    assert {r["command"] for r in records} >= {"sim run", "sim euroncap", "pipeline run"}
    assert cli.json("runs", "show", records[0]["id"])["id"] == records[0]["id"]
