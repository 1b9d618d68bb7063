"""Rounds on Flower's simulation engine (real Ray, real MLflow): the round is logged, the model written and
announced with its lineage, and a second call continues the same federation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fleetloop.edge_agent.model_artifact import load_artifact
from fleetloop.federation.config import ClientTrainConfig, RoundsConfig
from fleetloop.federation.runner import run_rounds
from fleetloop.federation.state_store import load_state, state_path
from fleetloop.pipelines.models import unvalidated_candidates
from fleetloop.platform.candidates import ORIGIN_TAG, PARENT_VERSION_TAG, PARTICIPANTS_COUNT_TAG, ROUNDS_TAG
from fleetloop.platform.settings import Settings
from fleetloop.platform.tracking import open_tracking


@pytest.mark.integration
def test_two_calls_run_one_federation_on_ray_logged_to_mlflow(
    stack_settings: Settings, mlflow_uri: str, fleet_buffers: Path, initial_model: Path, tmp_path: Path
) -> None:
    buffers = tmp_path / "buffers"
    for vid in (0, 1, 2, 10, 11):  # 3 vehicles train, the last 2 are the held-out set
        shutil.copytree(fleet_buffers / f"vehicle-{vid}", buffers / f"vehicle-{vid}")
    (buffers / "vehicle-99").mkdir()  # a vehicle whose buffer never got saved: skipped, counted
    settings = stack_settings.model_copy(update={"state_dir": tmp_path / "state", "model_name": "fl-policy"})
    cfg = RoundsConfig(
        rounds=1,
        clients=3,
        strategy="fedadam",
        buffer_dir=buffers,
        initial_model=initial_model,
        local=ClientTrainConfig(epochs=1),
        round_timeout_s=90.0,
    )
    first = run_rounds(settings, cfg)
    assert (first.first_round, first.last_round) == (1, 1)
    assert first.skipped_vehicles == {"missing": 1}
    assert first.rounds[0].aggregated and sorted(first.rounds[0].participants) == [0, 1, 2]
    saved = load_state(state_path(settings.state_dir, "fl-policy"))
    assert saved is not None and saved.server_round == 1 and "m_t" in saved.strategy_state  # FedAdam's moments

    second = run_rounds(settings, cfg)
    assert (second.first_round, second.last_round) == (2, 2)
    assert second.participants == [0, 1, 2]
    event = second.event
    assert event is not None and event.origin == "federated" and event.model_name == "fl-policy"
    artifact = load_artifact(event.artifact_uri)
    assert artifact.metadata.notes["rounds"] == "2" and artifact.metadata.notes["participants"] == "0,1,2"
    assert artifact.metadata.notes["origin"] == "federated"
    # Its hand-over calibration (the parent had none: its own quantiles on the held-out frames), so the arbiter
    # does not fall back to the default threshold for it.
    calibration = {k: v for k, v in artifact.metadata.metrics.items() if k.startswith("val_uncertainty_")}
    assert calibration and all(v > 0 for v in calibration.values()), artifact.metadata.metrics

    tracking = open_tracking(settings)
    run = tracking.client.get_run(second.run_id)
    assert run.data.params["strategy"] == "fedadam"
    history = tracking.client.get_metric_history(second.run_id, "heldout_accel_mse")
    assert [m.step for m in history] == [2]
    assert history[0].value == pytest.approx(second.heldout_after["heldout_accel_mse"])
    tags = run.data.tags
    assert (tags[ORIGIN_TAG], tags[ROUNDS_TAG], tags[PARTICIPANTS_COUNT_TAG], tags[PARENT_VERSION_TAG]) == (
        "federated",
        "2",
        "3",
        "none",
    )
    # Both calls' candidates wait for validate, found as the validate stage finds them.
    waiting = unvalidated_candidates(tracking, "unused", source="test", model="fl-policy")
    assert [(e.run_id, e.origin) for e in waiting][-2:] == [(first.run_id, "federated"), (second.run_id, "federated")]
    assert waiting[-1].artifact_uri == f"runs:/{second.run_id}/model/policy.safetensors"
