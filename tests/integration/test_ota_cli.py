"""`fleetloop ota ...` as an operator runs it, in fresh processes, against a real MLflow registry: what ships, what
is refused (and with which exit code), and the offline check of a downloaded file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fleetloop.edge_agent.features import INPUT_SCHEMA_VERSION
from fleetloop.edge_agent.model_artifact import ArtifactMetadata, save_artifact
from fleetloop.edge_agent.policy import ARCHITECTURE, FusionPolicy
from fleetloop.platform.registry import Registry, open_registry
from fleetloop.platform.settings import Settings
from tests.integration.test_registry_cli import as_json, env, fleetloop
from tests.platform.release_data import flip_a_bit

__all__ = ["env"]  # the registry CLI tests' fixture: a private state directory and model name on the test MLflow

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(mlflow_uri: str) -> Registry:
    return open_registry(Settings(mlflow_tracking_uri=mlflow_uri))


def register(registry: Registry, env: dict[str, str], tmp_path: Path, seed: int, stage: str, **meta: Any) -> str:
    """A real policy artifact registered and moved to ``stage``; returns its version."""
    torch.manual_seed(seed)
    model = FusionPolicy()
    path = save_artifact(
        tmp_path / f"policy-{seed}.safetensors",
        model,
        ArtifactMetadata(architecture=ARCHITECTURE, hyperparameters=model.config.to_dict()),
    )
    name = env["FLEETLOOP_MODEL_NAME"]
    info = registry.register(
        name, path, {"format": "safetensors", "input_schema_version": INPUT_SCHEMA_VERSION, **meta}
    )
    if stage != "candidate":
        registry.promote(name, info.version, stage, reason="test")
    return info.version


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_staging_version_is_signed_listed_assigned_and_verified_offline(
    env: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    name, state = env["FLEETLOOP_MODEL_NAME"], Path(env["FLEETLOOP_STATE_DIR"])
    init = as_json(fleetloop(env, "ota", "keys", "init", "--json"))
    assert init["root_threshold"] == 2 and Path(init["keys_dir"]).stat().st_mode & 0o777 == 0o700
    version = register(registry, env, tmp_path, 1, "staging", training_run_id="train-1")
    report = state / "pipelines" / "validation" / "train-1.json"  # what the validate stage writes for the run
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"decision": {"passed": True}}))

    published = as_json(fleetloop(env, "ota", "publish", name, version, "--json"))
    assert published["changed"] and published["stage"] == "staging"
    assert published["notes"] == ["no parent version recorded (a first model)"]

    [listed] = as_json(fleetloop(env, "ota", "releases", "--json"))["releases"]
    artifact = tmp_path / "policy-1.safetensors"
    assert listed == {
        **published["release"],
        "target_path": f"models/{name}/{version}/artifact",
        "waves": [],
    }
    assert (listed["release"], listed["model_name"], listed["version"]) == (1, name, version)
    assert (listed["sha256"], listed["length_bytes"]) == (sha256(artifact), artifact.stat().st_size)
    assert (listed["run_id"], listed["input_schema_version"], listed["parent_version"]) == ("train-1", 1, "")
    assert listed["validation_report_sha256"] == sha256(report)

    again = as_json(fleetloop(env, "ota", "publish", name, version, "--json"))
    assert not again["changed"] and again["release"]["release"] == 1  # a registry version is signed once

    wave = as_json(fleetloop(env, "ota", "assign", "1", "--wave", "1", "--share", "0.1", "--json"))
    assert wave["cohort"] == {"kind": "hash_range", "lo_bucket": 0, "hi_bucket": 1000, "buckets": 10_000}
    [listed] = as_json(fleetloop(env, "ota", "releases", "--json"))["releases"]
    assert [(w["wave"], w["role"]) for w in listed["waves"]] == [(1, "rollout-1-wave-1")]

    verified = as_json(fleetloop(env, "ota", "verify", str(artifact), "--json"))
    assert verified["verified"] and verified["release"] == published["release"]
    flip_a_bit(artifact)
    flipped = fleetloop(env, "ota", "verify", str(artifact), "--json")
    assert flipped.returncode == 5 and flipped.stdout == ""
    said = " ".join(flipped.stderr.split())  # the console wraps long lines
    assert "not its signed sha256" in said and "altered after signing" in said


def test_unvalidated_rejected_unknown_and_archived_versions_are_refused_with_exit_2(
    env: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    name = env["FLEETLOOP_MODEL_NAME"]
    missing = fleetloop(env, "ota", "releases")
    assert missing.returncode == 3 and "fleetloop ota keys init" in " ".join(missing.stderr.split())
    as_json(fleetloop(env, "ota", "keys", "init", "--json"))
    candidate = register(registry, env, tmp_path, 1, "candidate")
    rejected = register(registry, env, tmp_path, 2, "rejected")
    archived = register(registry, env, tmp_path, 3, "staging", parent_version=candidate)
    registry.promote(name, archived, "archived", reason="superseded")

    for version, says in (
        (candidate, "only a version that passed validation"),
        (rejected, "rejected by validation"),
        ("9", "has no version 9"),
        (archived, "--rollback"),
    ):
        proc = fleetloop(env, "ota", "publish", name, version, "--json")
        assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
        assert says in " ".join(proc.stderr.split())
    assert as_json(fleetloop(env, "ota", "releases", "--json"))["releases"] == []

    first = as_json(fleetloop(env, "ota", "publish", name, archived, "--rollback", "--json"))["release"]
    assert (first["release"], first["parent_version"]) == (1, candidate)
    again = as_json(fleetloop(env, "ota", "publish", name, archived, "--rollback", "--json"))["release"]
    assert again["release"] == 2 and again["sha256"] == first["sha256"]  # same bytes, a new, higher number
