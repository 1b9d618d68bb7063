"""The fused policy and its features: shapes, ranges, masking, modality subsets."""

from __future__ import annotations

import pytest
import torch

from fleetloop.edge_agent.features import INPUT_SCHEMA_VERSION, PolicyInputs, features_from_observation
from fleetloop.edge_agent.policy import FusionPolicy, PolicyConfig, build_policy, nonfinite_parameters
from fleetloop.sim import World, draw_scenarios, init_state, observe


def fleet_inputs(n: int = 32, seed: int = 3) -> PolicyInputs:
    world = World()
    ids = list(range(n))
    state = init_state(world, draw_scenarios("mixed", ids, seed), ids, seed)
    return features_from_observation(observe(world, state))


def test_outputs_are_bounded_commands_probabilities_and_nonnegative_uncertainty() -> None:
    torch.manual_seed(0)
    out = FusionPolicy().act(fleet_inputs())
    assert out.shape == (32, 3)
    assert bool(((out[:, 0] >= -9.5) & (out[:, 0] <= 3.0)).all())
    assert bool(((out[:, 1] >= 0) & (out[:, 1] <= 1)).all())
    assert bool((out[:, 2] >= 0).all())


def test_padded_radar_slots_never_change_the_output() -> None:
    torch.manual_seed(0)
    model = FusionPolicy().eval()
    x = fleet_inputs()
    garbage = x.radar + 50.0 * (~x.radar_mask).unsqueeze(-1)  # huge values in the invalid slots only
    noisy = PolicyInputs(x.camera, x.lidar, garbage, x.radar_mask, x.ego)
    trimmed = x.trim_radar(max(1, x.radar_extent()))
    ref = model.act(x)
    torch.testing.assert_close(model.act(noisy), ref)
    torch.testing.assert_close(model.act(trimmed), ref)


def test_lost_camera_frame_and_empty_lidar_give_zero_features() -> None:
    world = World()
    state = init_state(world, draw_scenarios("free", [0, 1], 0), [0, 1], 0)
    obs = observe(world, state)
    obs = type(obs)(**{**obs.as_dict(), "camera_valid": torch.tensor([False, True])})
    x = features_from_observation(obs)
    assert bool((x.camera[0] == 0).all()) and x.ego[0, 2] == 0 and x.ego[1, 2] == 1
    far = type(obs)(**{**obs.as_dict(), "lidar_range_m": torch.full_like(obs.lidar_range_m, 120.0)})
    assert bool((features_from_observation(far).lidar == 0).all())


@pytest.mark.parametrize("modalities", [("camera",), ("lidar",), ("radar",), ("camera", "lidar", "radar")])
def test_single_modality_models_build_and_are_small(modalities: tuple[str, ...]) -> None:
    model = FusionPolicy(PolicyConfig(modalities=modalities))
    assert model.act(fleet_inputs(4)).shape == (4, 3)
    assert sum(p.numel() for p in model.parameters()) < 10_000


def test_unknown_modality_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="camera"):
        PolicyConfig(modalities=("sonar",))


def test_config_round_trips_through_json_form() -> None:
    cfg = PolicyConfig(trunk_width=24, modalities=("radar", "lidar"))
    model = build_policy("fusion-mlp-v1", cfg.to_dict())
    assert model.config == cfg
    with pytest.raises(ValueError, match="unknown policy architecture"):
        build_policy("transformer-xl", cfg.to_dict())


def test_nan_parameters_are_named() -> None:
    model = FusionPolicy()
    assert nonfinite_parameters(model) == []
    with torch.no_grad():
        model.trunk[0].weight[0, 0] = float("nan")
    assert nonfinite_parameters(model) == ["trunk.0.weight"]


def test_inputs_validate_names_the_wrong_field() -> None:
    x = fleet_inputs(4)
    with pytest.raises(ValueError, match=f"'lidar'.*{INPUT_SCHEMA_VERSION}"):
        PolicyInputs(x.camera, x.lidar[:, :5], x.radar, x.radar_mask, x.ego).validate()
