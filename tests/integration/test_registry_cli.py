"""`fleetloop model ...` against a real MLflow server: JSON output, readable tables, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

from fleetloop.platform.errors import TransitionNotAllowed
from tests.conftest import cli_env

with warnings.catch_warnings():
    # typer 0.20 imports a helper that click 8.5 deprecates; the warning is theirs, not ours.
    warnings.simplefilter("ignore", DeprecationWarning)
    from typer.testing import CliRunner

    from fleetloop.cli import model

pytestmark = pytest.mark.integration


@pytest.fixture
def env(mlflow_uri: str, tmp_path: Path) -> dict[str, str]:
    return cli_env(
        MLFLOW_TRACKING_URI=mlflow_uri,
        FLEETLOOP_STATE_DIR=str(tmp_path / "state"),
        FLEETLOOP_MODEL_NAME=f"fleet-policy-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    f = tmp_path / "policy.safetensors"
    f.write_bytes(b"weights" * 100)
    return f


def fleetloop(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a fresh process (as a user would)."""
    code = "from fleetloop.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # the whole of stdout is one JSON document


def test_register_promote_history_as_json_in_separate_processes(env: dict[str, str], artifact: Path) -> None:
    name = env["FLEETLOOP_MODEL_NAME"]
    reg = as_json(fleetloop(env, "model", "register", str(artifact), "--meta", "format=safetensors", "--json"))
    assert (reg["model"], reg["version"], reg["stage"]) == (name, "1", "candidate")
    assert reg["metadata"] == {"format": "safetensors"}

    promoted = as_json(fleetloop(env, "model", "promote", name, "1", "--to", "production", "--json"))
    assert promoted["changed"] and promoted["transitions"][0]["genesis"] is True

    listed = as_json(fleetloop(env, "model", "list", "--json"))
    assert [(v["version"], v["stage"], v["aliases"]) for v in listed["versions"]] == [
        ("1", "production", ["production"])
    ]

    log = as_json(fleetloop(env, "model", "history", name, "--json"))
    assert [(t["from_stage"], t["to_stage"]) for t in log["transitions"]] == [
        (None, "candidate"),
        ("candidate", "production"),
    ]


def test_forbidden_transition_exits_2_and_says_how_to_force(env: dict[str, str], artifact: Path) -> None:
    name = env["FLEETLOOP_MODEL_NAME"]
    as_json(fleetloop(env, "model", "register", str(artifact), "--json"))
    proc = fleetloop(env, "model", "promote", name, "1", "--to", "canary")
    assert proc.returncode == 2
    assert "cannot go from candidate to canary" in proc.stderr and "--force" in proc.stderr
    assert fleetloop(env, "model", "promote", name, "1", "--to", "prod").returncode == 2


def test_unreachable_mlflow_exits_4_quickly(env: dict[str, str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        proc = fleetloop({**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}, "model", "list")
    assert proc.returncode == 4
    assert "fleetloop up" in proc.stderr


def test_human_output_shows_tables_and_transitions(
    env: dict[str, str], artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    monkeypatch.setattr(model, "console", Console(width=200))  # wide enough that no cell wraps
    runner = CliRunner()
    name = env["FLEETLOOP_MODEL_NAME"]
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"input_schema_version": "1.2", "training_data_hashes": ["sha256:1", "sha256:2"]}))

    out = runner.invoke(model.app, ["list"], env=env)
    assert out.exit_code == 0 and "no versions yet" in out.output

    out = runner.invoke(model.app, ["register", str(artifact), "--metadata-file", str(meta)], env=env)
    assert out.exit_code == 0, out.output
    assert f"registered {name} v1 as candidate" in out.output

    out = runner.invoke(model.app, ["promote", name, "1", "--to", "staging", "--reason", "gates ok"], env=env)
    assert "candidate → staging" in out.output and "gates ok" in out.output
    out = runner.invoke(model.app, ["promote", name, "1", "--to", "staging"], env=env)
    assert "already in staging; nothing changed" in out.output

    out = runner.invoke(model.app, ["list"], env=env)
    assert "staging" in out.output and "schema 1.2" in out.output and "2 data hashes" in out.output

    out = runner.invoke(model.app, ["history", name], env=env)
    assert "transition log" in out.output and "gates ok" in out.output

    out = runner.invoke(model.app, ["promote", name, "1", "--to", "candidate"], env=env)
    assert isinstance(out.exception, TransitionNotAllowed)  # main() maps it to exit code 2
