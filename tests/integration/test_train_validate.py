"""label -> train -> validate against a real MLflow: lineage in the registry, staging or rejected with reasons;
an empty dataset stops cleanly with nothing registered."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fleetloop.edge_agent.bootstrap import BootstrapConfig, bootstrap_initial_model
from fleetloop.edge_agent.imitation import ImitationConfig
from fleetloop.edge_agent.model_artifact import read_metadata
from fleetloop.pipelines.label import label_pending
from fleetloop.pipelines.suite import tiny_suite
from fleetloop.pipelines.train import TrainConfig, run_train
from fleetloop.pipelines.validate import ValidateConfig, validate_candidate
from fleetloop.platform.errors import NotFoundError
from fleetloop.platform.registry import Stage, open_registry
from fleetloop.platform.settings import Settings
from tests.pipelines.fleet_lake import write_fleet_lake

pytestmark = pytest.mark.integration

TINY_TRAIN = TrainConfig(epochs=1, batch_size=256, max_seconds=10.0, min_frames=64, torch_threads=1)


def test_an_empty_dataset_trains_nothing_and_registers_nothing(stack_settings: Settings, mlflow_uri: str) -> None:
    settings = stack_settings.model_copy(update={"model_name": "empty-policy"})
    out = run_train(settings, TINY_TRAIN, dataset_ids=[])
    assert out.status == "skipped" and "0 valid frames" in out.reason
    with pytest.raises(NotFoundError):
        open_registry(settings).list_versions("empty-policy")


def test_a_candidate_fine_tuned_from_production_is_registered_with_lineage_and_a_verdict(
    stack_settings: Settings, mlflow_uri: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    settings = stack_settings.model_copy(update={"state_dir": state, "model_name": "loop-policy"})
    reg = open_registry(settings)
    boot = BootstrapConfig(vehicles=32, ticks=60, imitation=ImitationConfig(epochs=1), output_dir=tmp_path)
    path, _ = bootstrap_initial_model(boot)
    v1 = reg.register("loop-policy", path, read_metadata(path).registry_metadata())
    reg.promote("loop-policy", v1.version, Stage.PRODUCTION, reason="genesis release")

    write_fleet_lake(state)
    report, events = label_pending(state)
    assert events and report.labelled_valid >= TINY_TRAIN.min_frames

    trained = run_train(settings, TINY_TRAIN)
    assert trained.status == "trained" and trained.parent_version == v1.version
    assert trained.event is not None and trained.event.artifact_uri.startswith("runs:/")
    again = run_train(settings, TINY_TRAIN)  # the same data does not make a second candidate
    assert again.status == "skipped"

    cfg = ValidateConfig(suite=tiny_suite(), min_train_frames=64)
    out = validate_candidate(settings, trained.event, cfg, registry=reg)
    assert out.status == "validated" and out.version is not None
    info = reg.get("loop-policy", out.version)
    assert info.stage.value == ("staging" if out.passed else "rejected")
    assert info.metadata["parent_version"] == v1.version
    assert info.metadata["training_run_id"] == trained.run_id
    assert info.metadata["training_data_hashes"] == trained.dataset_hashes
    assert info.metadata["validation"]["suite_hash"] == tiny_suite().content_hash
    assert out.passed or out.reasons  # a rejection always says why
    assert out.event is not None and out.event.version == int(out.version)
    assert len(out.table) == len(tiny_suite().slices)


def test_a_candidate_trained_on_too_few_frames_is_not_validated(
    stack_settings: Settings, mlflow_uri: str, tmp_path: Path
) -> None:
    from fleetloop.platform.bus.events import ModelTrained

    boot = BootstrapConfig(vehicles=8, ticks=20, imitation=ImitationConfig(epochs=1), output_dir=tmp_path)
    path, _ = bootstrap_initial_model(boot)
    settings = stack_settings.model_copy(update={"state_dir": tmp_path / "s", "model_name": "small-policy"})
    ev = ModelTrained(model_name="small-policy", run_id="", artifact_uri=str(path))
    out = validate_candidate(
        settings, ev, dataclasses.replace(ValidateConfig(suite=tiny_suite()), min_train_frames=10**9)
    )
    assert out.status == "skipped" and "nothing registered" in out.reason
    with pytest.raises(NotFoundError):
        open_registry(settings).list_versions("small-policy")
