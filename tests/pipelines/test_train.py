"""The train stage's pure parts: features from the lake, targets, seeded fine-tuning, too-small data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fleetloop.edge_agent.policy import FusionPolicy, PolicyConfig
from fleetloop.pipelines.datasets import list_labelled
from fleetloop.pipelines.label import label_pending
from fleetloop.pipelines.train import TrainConfig, build_training_set, fine_tune, run_train, target_conditions
from fleetloop.platform.settings import Settings
from tests.pipelines.fleet_lake import write_fleet_lake

TINY = TrainConfig(epochs=1, batch_size=256, max_seconds=10.0, min_frames=64, torch_threads=1)


@pytest.fixture(scope="module")
def labelled_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("lake")
    write_fleet_lake(d)
    label_pending(d)
    return d


def test_the_training_set_is_the_valid_frames_as_vehicle_features(labelled_lake: Path) -> None:
    datasets = list_labelled(labelled_lake)
    ts = build_training_set(datasets)
    assert ts.frames == sum(d.valid_rows for d in datasets)
    assert ts.data["camera"].shape == (ts.frames, 128) and ts.data["weight"].max() <= 1.0
    assert ts.dataset_hashes == tuple(d.content_sha256 for d in datasets)
    assert target_conditions(ts.conditions) == ["fog"]


def test_fine_tuning_is_seeded_and_leaves_the_parent_untouched(labelled_lake: Path) -> None:
    ts = build_training_set(list_labelled(labelled_lake))
    torch.manual_seed(1)
    parent = FusionPolicy(PolicyConfig()).eval()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    a, ma = fine_tune(parent, ts, TINY)
    b, _ = fine_tune(parent, ts, TINY)
    assert all(torch.equal(v, before[k]) for k, v in parent.state_dict().items())
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert ma.steps >= 1


def test_too_little_data_stops_cleanly_without_touching_mlflow(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, mlflow_port=1025)  # nothing listens there: must not be contacted
    out = run_train(settings, TINY)
    assert out.status == "skipped" and "too little labelled data" in out.reason and out.event is None


def test_target_conditions_prefer_the_new_condition_over_clear() -> None:
    assert target_conditions({"clear": 70, "fog": 30}) == ["fog"]
    assert target_conditions({"clear": 95, "fog": 5}) == ["clear"]
    assert target_conditions({}) == ["clear"]
