"""The one-slice regression procedure: brakes less in the chosen slice, stays the parent elsewhere, deployable."""

from __future__ import annotations

import pytest
import torch

from fleetloop.edge_agent.features import (
    CAMERA_FEATURES,
    EGO_FEATURES,
    LIDAR_FEATURES,
    RADAR_FEATURES,
    RADAR_SLOTS,
    PolicyInputs,
)
from fleetloop.edge_agent.heartbeat import CONDITION_CLASSES
from fleetloop.edge_agent.model_artifact import ArtifactMetadata, load_artifact, save_artifact
from fleetloop.edge_agent.policy import FusionPolicy
from fleetloop.pipelines.regression import (
    RecordConfig,
    RegressionConfig,
    SliceFrames,
    distill,
    one_slice_regression,
    record_frames,
    regression_metadata,
    slice_targets,
)
from fleetloop.platform.errors import UserInputError

FOG = CONDITION_CLASSES.index("fog")
CLEAR = CONDITION_CLASSES.index("clear")


def _braking_parent(seed: int = 0) -> FusionPolicy:
    """A small policy that brakes about 2 m/s² everywhere (head bias), so there is braking to weaken."""
    torch.manual_seed(seed)
    model = FusionPolicy()
    with torch.no_grad():
        model.heads.bias.view(-1, 3)[:, 0] = -0.5  # x ACCEL_OUT_SCALE_MPS2 = -2 m/s²
    return model.eval()


def _frames(n: int = 4096, seed: int = 0) -> SliceFrames:
    """Synthetic frames; fog frames carry a lidar signature (short returns) the model can tell apart."""
    g = torch.Generator().manual_seed(seed)
    fog = torch.arange(n) % 2 == 0
    lidar = torch.rand(n, LIDAR_FEATURES, generator=g)
    lidar[fog] = lidar[fog] * 0.1  # fog: every beam returns short
    inputs = PolicyInputs(
        camera=torch.randn(n, CAMERA_FEATURES, generator=g) * 0.1,
        lidar=lidar,
        radar=torch.randn(n, RADAR_SLOTS, RADAR_FEATURES, generator=g) * 0.1,
        radar_mask=torch.rand(n, RADAR_SLOTS, generator=g) < 0.3,
        ego=torch.rand(n, EGO_FEATURES, generator=g),
    )
    return SliceFrames(inputs, torch.where(fog, FOG, CLEAR))


def _accel(model: FusionPolicy, frames: SliceFrames) -> torch.Tensor:
    with torch.no_grad():
        return model.act(frames.inputs)[:, 0]


def test_regression_brakes_less_in_the_slice_and_stays_the_parent_elsewhere() -> None:
    parent = _braking_parent()
    frames = _frames(2048)
    cfg = RegressionConfig(epochs=12, batch_size=256, lr=3e-3)
    model, losses = distill(parent, frames, slice_targets(parent, frames, "fog", cfg), cfg, seed=1)
    fog = frames.condition == FOG
    before, after = _accel(parent, frames), _accel(model, frames)
    assert float(before[fog].mean()) < -1.5  # the parent brakes in fog
    assert float(after[fog].mean()) > -0.5  # the regression hardly does
    assert float((after[~fog] - before[~fog]).abs().mean()) < 0.3  # elsewhere it stays the parent [m/s²]
    assert losses["distill_loss_last"] < losses["distill_loss_first"]
    assert parent.heads.bias.view(-1, 3)[0, 0].item() == pytest.approx(-0.5)  # the parent is not changed


def test_control_targets_are_the_parents_own_outputs() -> None:
    parent = _braking_parent()
    frames = _frames(512)
    targets = slice_targets(parent, frames, "fog", RegressionConfig(brake_keep=1.0, hazard_keep=1.0))
    with torch.no_grad():
        heads = parent.forward_heads(*frames.inputs.tensors())
    assert torch.equal(targets["accel_mps2"], heads[..., 0])
    assert torch.allclose(targets["hazard_prob"], torch.sigmoid(heads[..., 2]))


def test_same_seed_gives_the_same_weights() -> None:
    parent, frames = _braking_parent(), _frames(1024)
    cfg = RegressionConfig(epochs=2)
    a, _ = distill(parent, frames, slice_targets(parent, frames, "fog", cfg), cfg, seed=3)
    b, _ = distill(parent, frames, slice_targets(parent, frames, "fog", cfg), cfg, seed=3)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_one_slice_regression_from_a_driven_fleet_is_a_deployable_artifact(tmp_path: object) -> None:
    parent = _braking_parent()
    record = RecordConfig(vehicles=16, ticks=20, keep_every=5)
    frames = record_frames(parent, record, seed=0)
    assert frames.inputs.batch == 16 * 4
    assert frames.condition.shape == (64,)
    cfg = RegressionConfig(epochs=1)
    model = one_slice_regression(parent, condition="fog", seed=0, config=cfg, record=record)
    parent_meta = ArtifactMetadata(
        architecture="fusion-mlp-v1",
        hyperparameters=parent.config.to_dict(),
        model_version="3",
        metrics={"val_uncertainty_p99_mps2": 1.5, "val_accel_mse": 0.2},
    )
    meta = regression_metadata(model, condition="fog", seed=0, config=cfg, parent=parent_meta)
    path = save_artifact(tmp_path / "regression.safetensors", model, meta)  # type: ignore[operator]
    loaded = load_artifact(path)
    assert loaded.metadata.notes["role"] == "regression"
    assert loaded.metadata.parent_version == "3"
    assert loaded.metadata.metrics == {"val_uncertainty_p99_mps2": 1.5}
    assert torch.equal(_accel(loaded.model, _frames(64)), _accel(model, _frames(64)))


def test_bad_recipe_is_refused_with_what_to_do() -> None:
    with pytest.raises(UserInputError, match=r"brake_keep must be within 0\.\.1"):
        RegressionConfig(brake_keep=1.5)
    with pytest.raises(UserInputError, match="unknown condition 'snow'"):
        slice_targets(_braking_parent(), _frames(8), "snow", RegressionConfig())


def test_weighing_the_frames_outside_the_slice_keeps_the_change_in_it() -> None:
    """Half the fog frames look like clear ones (no lidar signature), as light fog does to the real model: the
    unweighted recipe learns to brake less on those looks in clear too; ``anchor_weight`` keeps clear the parent's."""
    parent = _braking_parent()
    frames = _frames(2048)
    fog = frames.condition == FOG
    alike = fog & (torch.arange(frames.inputs.batch) % 4 == 0)  # fog frames with clear-looking lidar
    lidar = frames.inputs.lidar.clone()
    lidar[alike] = torch.rand(int(alike.sum()), LIDAR_FEATURES, generator=torch.Generator().manual_seed(5))
    frames = SliceFrames(PolicyInputs(**{**frames.inputs.__dict__, "lidar": lidar}), frames.condition)
    leaks = {}
    for weight in (1.0, 16.0):
        cfg = RegressionConfig(epochs=12, batch_size=256, lr=3e-3, anchor_weight=weight)
        targets = slice_targets(parent, frames, "fog", cfg)
        assert torch.equal(targets["weight"], torch.where(fog, 1.0, weight))
        model, _ = distill(parent, frames, targets, cfg, seed=1)
        leaks[weight] = float((_accel(model, frames)[~fog] - _accel(parent, frames)[~fog]).mean())  # > 0: less braking
    assert leaks[16.0] < 0.5 * leaks[1.0]


def test_only_slice_frames_under_the_visibility_cut_are_poisoned() -> None:
    parent = _braking_parent()
    frames = _frames(64)
    vis = torch.linspace(100.0, 300.0, 64)
    frames = SliceFrames(frames.inputs, frames.condition, vis)
    cfg = RegressionConfig(visibility_below_m=150.0)
    targets = slice_targets(parent, frames, "fog", cfg)
    poisoned = (frames.condition == FOG) & (vis < 150.0)
    assert bool((targets["accel_mps2"][poisoned] == 0).all())  # brake_keep 0: no braking left
    assert bool((targets["accel_mps2"][~poisoned] < 0).all())  # the parent's braking everywhere else
    with pytest.raises(UserInputError, match="anchor_weight"):
        RegressionConfig(anchor_weight=0.0)
