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


def test_a_candidate_carries_its_parents_uncertainty_calibration_scaled_to_itself(labelled_lake: Path) -> None:
    from fleetloop.edge_agent.arbiter import UNCERTAINTY_CALIBRATION_KEY, ArbiterConfig
    from fleetloop.edge_agent.bootstrap import uncertainty_quantiles
    from fleetloop.edge_agent.model_artifact import ArtifactMetadata, LoadedPolicy
    from fleetloop.pipelines.train import uncertainty_calibration

    ts = build_training_set(list_labelled(labelled_lake))
    torch.manual_seed(1)
    model = FusionPolicy(PolicyConfig()).eval()
    meta = ArtifactMetadata(
        architecture="fusion", hyperparameters={}, input_schema_version="x", metrics={UNCERTAINTY_CALIBRATION_KEY: 2.0}
    )
    # A candidate identical to its parent keeps the parent's recorded calibration exactly.
    parent = LoadedPolicy(model, meta, "")
    same = uncertainty_calibration(model, parent, ts.data, TINY)
    assert same[UNCERTAINTY_CALIBRATION_KEY] == pytest.approx(2.0, rel=1e-5)
    # A candidate twice as uncertain on the same frames gets a threshold twice as high.
    own = uncertainty_quantiles(model, ts.data)
    scaled = uncertainty_calibration(_ScaledUncertainty(model, 2.0), parent, ts.data, TINY)
    assert scaled[UNCERTAINTY_CALIBRATION_KEY] == pytest.approx(4.0, rel=1e-4)
    # ... but bounded: a hundred times more uncertain is carried over as twice (the hand-over stays on).
    wild = uncertainty_calibration(_ScaledUncertainty(model, 100.0), parent, ts.data, TINY)
    assert wild[UNCERTAINTY_CALIBRATION_KEY] == pytest.approx(4.0, rel=1e-4)
    # Without a parent: the candidate's own quantiles on its held-out frames, which the arbiter then uses.
    alone = uncertainty_calibration(model, None, ts.data, TINY)
    assert alone[UNCERTAINTY_CALIBRATION_KEY] > 0 and set(alone) == set(own)
    thr = ArbiterConfig.for_model(alone).max_uncertainty
    assert thr != ArbiterConfig().max_uncertainty


class _ScaledUncertainty(FusionPolicy):
    """The same policy reporting ``factor`` times its uncertainty (column 2 of the output)."""

    def __init__(self, base: FusionPolicy, factor: float) -> None:
        super().__init__(base.config)
        self.load_state_dict(base.state_dict())
        self.factor = factor
        self.eval()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = super().forward(*inputs).clone()
        out[:, 2] = out[:, 2] * self.factor
        return out


def test_train_config_refuses_a_hazard_share_outside_zero_to_one() -> None:
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="hazard_share"):
            TrainConfig(hazard_share=bad)
    cfg = TrainConfig()
    # ADR 0195, 0199: hazard frames carry less than half the whole label loss (the replayed frames take their share)
    assert 0 < cfg.hazard_share * (1 - cfg.replay_share) < 0.5
