"""The world: per-vehicle scenes in batched tensors, physics, weather, sensors, scenarios, the privileged expert.

Pure and I/O-free; imports only torch, numpy and the standard library. The public names below are loaded lazily so
that ``import fleetloop.sim`` stays cheap until one is used. See docs/sim.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetloop.sim.errors import ScenarioError, SimError, StateError
    from fleetloop.sim.events import Events, detect_events, progress_ratio
    from fleetloop.sim.expert import expert_control
    from fleetloop.sim.scenarios import (
        FAMILIES,
        ActorSpec,
        ScenarioSpec,
        draw_scenarios,
        euro_ncap_matrix,
        scenario_from_dict,
    )
    from fleetloop.sim.sensors import Observation, observe
    from fleetloop.sim.state import StaticHazard, World, WorldState
    from fleetloop.sim.traffic import IdmParams
    from fleetloop.sim.weather import PRESETS, Weather, WeatherPatch, weather_preset
    from fleetloop.sim.world import GroundTruth, ground_truth, init_state, respawn, step

_WHERE = {
    "ScenarioError": "errors",
    "SimError": "errors",
    "StateError": "errors",
    "Events": "events",
    "detect_events": "events",
    "progress_ratio": "events",
    "expert_control": "expert",
    "FAMILIES": "scenarios",
    "ActorSpec": "scenarios",
    "ScenarioSpec": "scenarios",
    "draw_scenarios": "scenarios",
    "euro_ncap_matrix": "scenarios",
    "scenario_from_dict": "scenarios",
    "Observation": "sensors",
    "observe": "sensors",
    "StaticHazard": "state",
    "World": "state",
    "WorldState": "state",
    "IdmParams": "traffic",
    "PRESETS": "weather",
    "Weather": "weather",
    "WeatherPatch": "weather",
    "weather_preset": "weather",
    "GroundTruth": "world",
    "ground_truth": "world",
    "init_state": "world",
    "respawn": "world",
    "step": "world",
}

__all__ = [
    "FAMILIES",
    "PRESETS",
    "ActorSpec",
    "Events",
    "GroundTruth",
    "IdmParams",
    "Observation",
    "ScenarioError",
    "ScenarioSpec",
    "SimError",
    "StateError",
    "StaticHazard",
    "Weather",
    "WeatherPatch",
    "World",
    "WorldState",
    "detect_events",
    "draw_scenarios",
    "euro_ncap_matrix",
    "expert_control",
    "ground_truth",
    "init_state",
    "observe",
    "progress_ratio",
    "respawn",
    "scenario_from_dict",
    "step",
    "weather_preset",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"fleetloop.sim.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'fleetloop.sim' has no attribute {name!r}")
