"""The fleet is configured, not patched: weather, triggers, arbiter and the per-vehicle model assignment given in
``FleetConfig`` / ``ShardSpec`` reach every vehicle, in the in-process runner and in shards alike (same totals)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fleetloop.edge_agent.arbiter import ArbiterConfig
from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.model_artifact import save_artifact
from fleetloop.edge_agent.policy import FusionPolicy, PolicyConfig
from fleetloop.edge_agent.shards import ShardedFleet, ShardSpec, build_runner
from fleetloop.edge_agent.triggers import TRIGGER_BITS, TriggerConfig
from fleetloop.platform.errors import FleetConfigError, UserInputError
from fleetloop.sim import Weather, WeatherPatch, weather_preset

IDS = tuple(range(16))
TICKS = 40
SEED = 4
FOG = Weather((WeatherPatch("fog", strength=0.8),), name="fog_0.8")  # steady fog, no preset holds it
RANDOM_ONLY = TriggerConfig(sample_rate=1.0, budget_fraction=1.0, trigger_mask=TRIGGER_BITS["random_sample"])
NEVER_UNSURE = ArbiterConfig(max_uncertainty=1e9)  # the untrained test models are unsure of everything at 0.5
VERSIONS = {3: "b", 12: "b", 5: None}  # ids in both halves of a two-shard split
BASE = FleetConfig(scenario="mixed", seed=SEED, progress_reference=False)
CONFIGURED = FleetConfig(
    scenario="mixed", seed=SEED, progress_reference=False, weather=FOG, triggers=RANDOM_ONLY, arbiter=NEVER_UNSURE
)


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for i, label in enumerate("ab"):
        torch.manual_seed(i)
        paths[label] = str(save_artifact(root / f"{label}.safetensors", FusionPolicy(PolicyConfig())))
    return paths


def _spec(config: FleetConfig, paths: dict[str, str], versions: dict[int, str | None]) -> ShardSpec:
    return ShardSpec(config, IDS, paths, initial_version="a", initial_versions=versions, torch_threads=1)


@pytest.fixture(scope="module")
def default_run(model_paths: dict[str, str]) -> dict[str, Any]:
    return build_runner(_spec(BASE, model_paths, {})).run(TICKS).to_dict()


@pytest.fixture(scope="module")
def configured_run(model_paths: dict[str, str]) -> dict[str, Any]:
    return build_runner(_spec(CONFIGURED, model_paths, VERSIONS)).run(TICKS).to_dict()


def _ticks_by_version(d: dict[str, Any]) -> dict[str, int]:
    return {v: round(g["vehicle_hours"] * 3600 / 0.1) for v, g in d["by_version"].items()}


def _uploaders(d: dict[str, Any]) -> set[str]:
    return {k for k, n in d["counts"]["uploads"]["uploaded_by_reason"].items() if n}


def test_the_in_process_runner_honours_every_field(default_run: dict[str, Any], configured_run: dict[str, Any]) -> None:
    # weather: every vehicle-tick in fog, where the default world is clear
    assert set(default_run["by_condition"]) == {"clear"}
    assert set(configured_run["by_condition"]) == {"fog"}
    # triggers: random clips alone ask for uploads, and the whole budget lets every decided frame go
    assert "random_sample" not in _uploaders(default_run)
    assert _uploaders(configured_run) == {"random_sample"}
    ups = configured_run["counts"]["uploads"]
    assert ups["frames_uploaded"] == ups["frames_decided"] > 0
    # arbiter: no low-confidence hand-over at a threshold nothing reaches; the default hands every vehicle over
    assert default_run["fallback_activations"]["low_confidence"] > 0
    assert configured_run["fallback_activations"]["low_confidence"] == 0
    # per-vehicle versions: two vehicles start on b, one on no model, the rest on a
    assert _ticks_by_version(default_run) == {"a": len(IDS) * TICKS}
    assert _ticks_by_version(configured_run) == {"a": (len(IDS) - 3) * TICKS, "b": 2 * TICKS, "none": TICKS}


@pytest.mark.parametrize("backend", ["processes", "ray"])
def test_shards_honour_every_field(backend: str, model_paths: dict[str, str], configured_run: dict[str, Any]) -> None:
    fleet = ShardedFleet(_spec(CONFIGURED, model_paths, VERSIONS), 2, backend)
    try:
        assert [s.initial_versions for s in fleet.specs] == [{3: "b", 5: None}, {12: "b"}]
        fleet.advance(TICKS)
        merged = fleet.close().to_dict()
    finally:
        if not fleet.closed:
            fleet.kill()
    for key in ("events", "fallback_activations", "vehicle_steps", "counts"):
        assert merged[key] == configured_run[key], key
    assert set(merged["by_condition"]) == {"fog"}
    assert _ticks_by_version(merged) == _ticks_by_version(configured_run)
    assert merged["km"] == pytest.approx(configured_run["km"], rel=1e-6)


def test_a_weather_field_drives_like_the_same_preset() -> None:
    """A ``Weather`` given whole is the preset's field: the same run, tick for tick."""
    preset = FleetRunner(FleetConfig(weather="rain", seed=SEED, progress_reference=False), IDS).run(20).to_dict()
    field = FleetConfig(weather=weather_preset("rain"), seed=SEED, progress_reference=False)
    assert FleetRunner(field, IDS).run(20).to_dict()["events"] == preset["events"]


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"weather": FOG, "fog_onset_s": 30.0}, "fog_onset_s goes with a weather preset name"),
        ({"arbiter": NEVER_UNSURE, "max_uncertainty_mps2": 0.7}, "not both"),
        ({"triggers": TriggerConfig(dt_s=0.05)}, r"must be the world's tick \(0.1 s\)"),
    ],
)
def test_contradictory_configuration_is_refused(kw: dict[str, Any], says: str) -> None:
    with pytest.raises(FleetConfigError, match=says):
        FleetConfig(**kw)


def test_a_model_assignment_must_name_loaded_versions_and_own_vehicles(model_paths: dict[str, str]) -> None:
    with pytest.raises(FleetConfigError, match=r"'c' is not among the models given: \['a', 'b'\]"):
        build_runner(_spec(BASE, model_paths, {1: "c"}))
    with pytest.raises(FleetConfigError, match=r"vehicle ids not in this fleet: \[99\]"):
        build_runner(_spec(BASE, model_paths, {99: "a"}))
    with pytest.raises(FleetConfigError, match=r"vehicle ids not in this fleet: \[99\]"):
        ShardedFleet.plan(_spec(BASE, model_paths, {99: "a"}), 2, "processes")


def test_fleet_errors_are_bad_input_for_the_cli() -> None:
    """Every configuration error is a ``UserInputError`` (exit code 2), none a bare ``ValueError``."""
    for bad in ({"weather": "snow"}, {"faults": ("melt",)}, {"device": "tpu"}):
        with pytest.raises(UserInputError) as info:
            FleetConfig(**bad)  # type: ignore[arg-type]
        assert info.value.exit_code == 2 and not isinstance(info.value, ValueError)
