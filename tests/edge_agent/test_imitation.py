"""Imitation training and the bootstrap, on a tiny budget: the real functions, outcome checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fleetloop.edge_agent.bootstrap import BootstrapConfig, bootstrap_initial_model, collect_expert_frames
from fleetloop.edge_agent.imitation import ImitationConfig, balance_weights, share_weights, train_imitation
from fleetloop.edge_agent.model_artifact import load_artifact
from fleetloop.edge_agent.policy import FusionPolicy


def _tiny(seed: int, tmp: Path, weather: str = "clear") -> BootstrapConfig:
    return BootstrapConfig(
        weather=weather,
        vehicles=256,
        ticks=70,
        keep_every=1,
        seed=seed,
        imitation=ImitationConfig(epochs=4, batch_size=256, lr=1e-2),
        output_dir=tmp,
    )


def test_bootstrap_learns_the_expert_on_held_out_clear_weather_frames(tmp_path: Path) -> None:
    path, metrics = bootstrap_initial_model(_tiny(0, tmp_path))
    assert metrics["loss_last"] < 0.5 * metrics["loss_first"], metrics
    loaded = load_artifact(path)
    assert loaded.metadata.notes["role"] == "initial" and loaded.metadata.model_version is None
    assert loaded.metadata.training_data_hashes[0].startswith("sha256:")
    held_out = collect_expert_frames(_tiny(1, tmp_path))  # other seed: other scenes and sensor noise
    with torch.inference_mode():
        pred = loaded.model(*(held_out[k] for k in ("camera", "lidar", "radar", "radar_mask", "ego")))[:, 0]
    target = held_out["accel_mps2"]
    corr = float(torch.corrcoef(torch.stack([pred, target]))[0, 1])
    assert corr > 0.6, f"policy accel correlates only {corr:.2f} with the expert on held-out frames"
    baseline_mse = float(((target - target.mean()) ** 2).mean())
    assert float(((pred - target) ** 2).mean()) < 0.6 * baseline_mse
    # the artifact carries the model's own validation uncertainty, and the arbiter's threshold comes from it: at
    # most ~1 % of in-distribution frames exceed the p99, so the arbiter keeps almost all of them on the model
    from fleetloop.edge_agent.arbiter import ArbiterConfig

    m = loaded.metadata.metrics
    assert 0 < m["val_uncertainty_p50_mps2"] <= m["val_uncertainty_p99_mps2"] <= m["val_uncertainty_p99_9_mps2"]
    cfg = ArbiterConfig.for_model(loaded.metadata)
    with torch.inference_mode():
        unc = loaded.model(*(held_out[k] for k in ("camera", "lidar", "radar", "radar_mask", "ego")))[:, 2]
    assert float((unc > cfg.max_uncertainty).float().mean()) < 0.02


def test_training_data_without_targets_is_refused_with_what_is_missing() -> None:
    data = {
        "camera": torch.zeros(4, 128),
        "lidar": torch.zeros(4, 32),
        "radar": torch.zeros(4, 8, 7),
        "radar_mask": torch.zeros(4, 8, dtype=torch.bool),
        "ego": torch.zeros(4, 3),
        "accel_mps2": torch.zeros(4),
    }
    with pytest.raises(ValueError, match="hazard"):
        train_imitation(FusionPolicy(), data, ImitationConfig(epochs=1), seed=0)
    data["hazard"] = torch.zeros(4)
    data["accel_mps2"] = torch.tensor([0.0, float("nan"), 0.0, 0.0])
    with pytest.raises(ValueError, match="NaN"):
        train_imitation(FusionPolicy(), data, ImitationConfig(epochs=1), seed=0)


def test_unknown_weather_option_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="clear, all"):
        BootstrapConfig(weather="fog")


def _frames(n: int, hazard: bool, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Synthetic policy inputs; hazard frames are told apart by the first camera feature."""
    camera = torch.randn(n, 128, generator=gen)
    camera[:, 0] = 2.0 if hazard else -2.0
    return {
        "camera": camera,
        "lidar": torch.randn(n, 32, generator=gen),
        "radar": torch.randn(n, 8, 7, generator=gen),
        "radar_mask": torch.rand(n, 8, generator=gen) > 0.5,
        "ego": torch.randn(n, 3, generator=gen),
    }


def _drift_on_normal_frames(anchor_weight: float) -> float:
    """Fine-tune a parent on hazard-heavy labels (9 in 10 frames brake hard); mean |accel change| on held-out
    normal frames."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    parent = FusionPolicy().eval()
    haz, normal, held_out = _frames(450, True, gen), _frames(50, False, gen), _frames(300, False, gen)
    with torch.no_grad():
        normal_target = parent(*(normal[k] for k in ("camera", "lidar", "radar", "radar_mask", "ego")))[:, 0]
    data = {k: torch.cat([haz[k], normal[k]]) for k in haz}
    data["accel_mps2"] = torch.cat([torch.full((450,), -6.0), normal_target + 0.3 * torch.randn(50, generator=gen)])
    data["hazard"] = torch.cat([torch.ones(450), torch.zeros(50)])
    model = FusionPolicy().eval()
    model.load_state_dict(parent.state_dict())
    frozen = FusionPolicy().eval()
    frozen.load_state_dict(parent.state_dict())
    cfg = ImitationConfig(epochs=6, batch_size=125, lr=3e-3, val_fraction=0.0, anchor_weight=anchor_weight)
    train_imitation(model, data, cfg, seed=0, anchor=frozen)
    assert all(torch.equal(v, parent.state_dict()[k]) for k, v in frozen.state_dict().items()), "anchor changed"
    x = tuple(held_out[k] for k in ("camera", "lidar", "radar", "radar_mask", "ego"))
    with torch.no_grad():
        return float((model(*x)[:, 0] - parent(*x)[:, 0]).abs().mean())


def test_the_anchor_keeps_a_hazard_heavy_fine_tune_close_to_its_parent_on_normal_frames() -> None:
    free, anchored = _drift_on_normal_frames(0.0), _drift_on_normal_frames(1.0)
    assert anchored < 0.7 * free, (anchored, free)


def test_balance_weights_give_both_classes_equal_total_weight() -> None:
    hazard = torch.tensor([1.0, 1.0, 1.0, 0.0])
    w = balance_weights(hazard)
    assert torch.allclose(w, torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0]))
    conf = torch.tensor([1.0, 0.5, 0.5, 0.5])
    w = balance_weights(hazard, conf)
    assert torch.allclose(w[:3].sum(), w[3:].sum()) and torch.isclose(w.sum(), conf.sum())
    assert torch.allclose(w[:3] / conf[:3], torch.full((3,), w[0] / conf[0]))  # existing weights kept within a class
    assert torch.equal(balance_weights(torch.ones(3), conf[:3]), conf[:3])  # one class only: unchanged


def test_balance_weights_give_the_hazard_frames_the_share_asked_for() -> None:
    hazard = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])
    conf = torch.tensor([1.0, 0.5, 0.5, 1.0, 0.25])
    w = balance_weights(hazard, conf, share=0.25)
    assert torch.isclose(w[:3].sum(), 0.25 * conf.sum()) and torch.isclose(w.sum(), conf.sum())
    assert torch.allclose(w[3:] / conf[3:], torch.full((2,), w[3] / conf[3]))


def test_share_weights_give_the_marked_frames_their_share_and_keep_weights_within_each_side() -> None:
    mask = torch.tensor([True, True, False, False, False])
    w0 = torch.tensor([1.0, 0.5, 2.0, 1.0, 1.0])
    w = share_weights(mask, w0, 0.3)
    assert torch.isclose(w[mask].sum(), 0.3 * w0.sum()) and torch.isclose(w.sum(), w0.sum())
    assert torch.allclose(w[mask] / w0[mask], torch.full((2,), w[0] / w0[0]))
    assert torch.allclose(w[~mask] / w0[~mask], torch.full((3,), w[2] / w0[2]))
    assert torch.equal(share_weights(torch.zeros(5, dtype=torch.bool), w0, 0.3), w0)  # nothing marked: unchanged


EPOCHS = 12


def _drift_with_replay(replay_share: float) -> float:
    """Fine-tune a parent on hazard frames only (brake hard), replaying normal frames labelled with the parent's
    own commands at ``replay_share`` of the loss (0: no replay); mean |accel change| on held-out normal frames."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    parent = FusionPolicy().eval()
    haz, replay, held_out = _frames(400, True, gen), _frames(400, False, gen), _frames(300, False, gen)
    keys = ("camera", "lidar", "radar", "radar_mask", "ego")
    with torch.no_grad():
        replay_target = parent(*(replay[k] for k in keys))[:, 0]
    n = 800 if replay_share > 0 else 400
    data = {k: torch.cat([haz[k], replay[k]])[:n] for k in haz}
    data["accel_mps2"] = torch.cat([torch.full((400,), -6.0), replay_target])[:n]
    data["hazard"] = torch.cat([torch.ones(400), torch.zeros(400)])[:n]
    data["replay"] = torch.cat([torch.zeros(400, dtype=torch.bool), torch.ones(400, dtype=torch.bool)])[:n]
    model = FusionPolicy().eval()
    model.load_state_dict(parent.state_dict())
    # As many steps either way (batches of an eighth), so only the replay differs.
    cfg = ImitationConfig(epochs=EPOCHS, batch_size=n // 8, lr=3e-3, val_fraction=0.0, replay_share=replay_share)
    train_imitation(model, data, cfg, seed=0)
    x = tuple(held_out[k] for k in keys)
    with torch.no_grad():
        return float((model(*x)[:, 0] - parent(*x)[:, 0]).abs().mean())


def test_replayed_frames_keep_a_hazard_only_fine_tune_from_unlearning_normal_driving() -> None:
    alone, replayed = _drift_with_replay(0.0), _drift_with_replay(0.5)
    assert replayed < 0.5 * alone, (replayed, alone)


def test_training_leaves_the_callers_weights_as_they_were() -> None:
    gen = torch.Generator().manual_seed(1)
    haz, normal = _frames(30, True, gen), _frames(10, False, gen)
    data = {k: torch.cat([haz[k], normal[k]]) for k in haz}
    data["accel_mps2"] = torch.cat([torch.full((30,), -6.0), torch.zeros(10)])
    data["hazard"] = torch.cat([torch.ones(30), torch.zeros(10)])
    data["weight"] = torch.rand(40, generator=gen)
    before = data["weight"].clone()
    cfg = ImitationConfig(epochs=1, batch_size=20, val_fraction=0.0, balance_hazard=True, hazard_share=0.25)
    train_imitation(FusionPolicy(), data, cfg, seed=0)
    assert torch.equal(data["weight"], before)
