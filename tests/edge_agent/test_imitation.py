"""Imitation training and the bootstrap, on a tiny budget: the real functions, outcome checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fleetloop.edge_agent.bootstrap import BootstrapConfig, bootstrap_initial_model, collect_expert_frames
from fleetloop.edge_agent.imitation import ImitationConfig, train_imitation
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
