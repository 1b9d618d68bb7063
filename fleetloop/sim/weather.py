"""Weather as a physical field over road position and time, shared by every vehicle on the road.

The field is a base of clear daylight plus *patches*: a stretch of road where fog, rain or night holds with some
strength, with soft edges (``edge_m``) so conditions change continuously along the road, and an onset time and
ramp (``onset_s``, ``ramp_s``) so fog can roll in while the fleet drives. What one vehicle meets at road position
``s`` the vehicles behind it meet when they reach ``s``.

Strengths map to physical quantities the sensors and tyres use:

- visibility [m] (meteorological optical range, where contrast falls to 5 %): clear 10 km, thick fog 50 m,
  heavy rain 1.5 km; blended log-linearly.
- friction coefficient mu [-]: dry asphalt 0.9, wet 0.5 (rain), fog dampens the road a little (-0.1); an icy
  road (the "ice" kind: friction only, no effect on the sensors) pulls it towards 0.3.
- light [0..1]: day 1.0, night 0.08 (headlights are modelled by the camera).
- rain intensity [0..1]: radar clutter and a small camera / lidar penalty.

The vehicle never receives these values: they reach only the sensor models, the tyres and the ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fleetloop.sim.errors import ScenarioError

__all__ = [
    "KINDS",
    "PRESETS",
    "Conditions",
    "Weather",
    "WeatherPatch",
    "conditions_at",
    "weather_preset",
]

KINDS = ("fog", "rain", "night", "ice")
PRESETS = ("clear", "fog", "rain", "night", "mixed")

VISIBILITY_CLEAR_M = 10_000.0  # [m]
VISIBILITY_FOG_M = 50.0  # [m] thick fog
VISIBILITY_RAIN_M = 1_500.0  # [m] heavy rain
FRICTION_DRY = 0.9  # [-] dry asphalt
FRICTION_WET = 0.5  # [-] wet asphalt, heavy rain
FRICTION_FOG_DAMP = 0.1  # [-] a fog-damp road loses this much
FRICTION_ICE = 0.3  # [-] packed snow / ice at full strength
LIGHT_NIGHT = 0.08  # [-] ambient light at night relative to day
MIXED_CELL_M = 2_000.0  # [m] the "mixed" preset draws one weather per stretch of this length
MIXED_EDGE_M = 300.0  # [m] transition length between stretches


@dataclass(frozen=True)
class WeatherPatch:
    """One kind of weather over ``[start_m, end_m)`` of the road, from ``onset_s`` on.

    Attributes:
        kind: "fog", "rain", "night" or "ice".
        start_m, end_m: road stretch [m]; ``end_m`` may be ``inf``.
        strength: 0..1, how thick the fog / heavy the rain / dark the night is at full onset.
        edge_m: length of the soft transition at each end [m] (0 for a hard edge).
        onset_s: simulated time the patch starts to form [s].
        ramp_s: time it takes to reach full strength after ``onset_s`` [s] (0: at once).
    """

    kind: str
    start_m: float = 0.0
    end_m: float = math.inf
    strength: float = 1.0
    edge_m: float = 0.0
    onset_s: float = 0.0
    ramp_s: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ScenarioError(f"unknown weather kind {self.kind!r}; valid kinds: {', '.join(KINDS)}")
        if not 0.0 <= self.strength <= 1.0:
            raise ScenarioError(f"weather strength must be within 0..1, got {self.strength}")
        if not self.end_m > self.start_m:
            raise ScenarioError(f"weather patch needs end_m > start_m, got {self.start_m}..{self.end_m}")
        if self.edge_m < 0 or self.ramp_s < 0 or self.onset_s < 0:
            raise ScenarioError("weather edge_m, ramp_s and onset_s must be >= 0")


@dataclass(frozen=True)
class Weather:
    """The weather field of the shared road: a list of patches over clear daylight."""

    patches: tuple[WeatherPatch, ...] = field(default_factory=tuple)
    name: str = "clear"


@dataclass(frozen=True)
class Conditions:
    """Physical conditions at a batch of road positions, each a [B] float32 tensor."""

    visibility_m: torch.Tensor
    friction: torch.Tensor
    light: torch.Tensor
    rain: torch.Tensor


def weather_preset(
    name: str,
    *,
    seed: int = 0,
    fog_onset_s: float | None = None,
    fog_ramp_s: float = 60.0,
    fog_start_m: float = 0.0,
    fog_end_m: float = math.inf,
    road_length_m: float = 50_000.0,
) -> Weather:
    """A named weather for the CLI: clear, fog, rain, night or mixed.

    ``fog_onset_s`` adds a fog bank over ``[fog_start_m, fog_end_m)`` that starts forming at that time and is
    thick after ``fog_ramp_s`` (the data-loop scenario "a fleet driving into fog"). ``mixed`` draws one weather
    per 2 km stretch from ``seed`` (clear, fog, rain, night, night fog), with 300 m transitions.
    """
    if name not in PRESETS:
        raise ScenarioError(f"unknown weather {name!r}; valid presets: {', '.join(PRESETS)}")
    patches: list[WeatherPatch] = []
    if name in ("fog", "rain", "night"):
        patches.append(WeatherPatch(kind=name))
    elif name == "mixed":
        n_cells = max(1, int(road_length_m // MIXED_CELL_M))
        draws = torch.randint(0, 5, (n_cells,), generator=torch.Generator().manual_seed(seed)).tolist()
        for cell, draw in enumerate(draws):
            start = cell * MIXED_CELL_M
            end = start + MIXED_CELL_M
            kinds = [(), ("fog",), ("rain",), ("night",), ("fog", "night")][draw]
            patches.extend(WeatherPatch(kind=k, start_m=start, end_m=end, edge_m=MIXED_EDGE_M) for k in kinds)
    if fog_onset_s is not None:
        patches.append(
            WeatherPatch(kind="fog", start_m=fog_start_m, end_m=fog_end_m, onset_s=fog_onset_s, ramp_s=fog_ramp_s)
        )
    return Weather(patches=tuple(patches), name=name if fog_onset_s is None else f"{name}+fog@{fog_onset_s:g}s")


def _patch_table(weather: Weather, device: torch.device) -> torch.Tensor:
    """[P, 7] float64 table: kind index, start, end, strength, edge, onset, ramp."""
    rows = [
        [KINDS.index(p.kind), p.start_m, p.end_m, p.strength, p.edge_m, p.onset_s, p.ramp_s] for p in weather.patches
    ]
    return torch.tensor(rows or [[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64, device=device)


def conditions_at(weather: Weather, road_s_m: torch.Tensor, time_s: float, road_length_m: float) -> Conditions:
    """Conditions at road positions ``road_s_m`` [B] (float64, wrapped onto the road loop) at ``time_s``."""
    s = torch.remainder(road_s_m.to(torch.float64), road_length_m).unsqueeze(-1)  # [B, 1]
    tab = _patch_table(weather, s.device)
    kind, start, end, strength, edge, onset, ramp = tab.unbind(-1)
    big = 1.0e30
    inside_lo = torch.where(edge > 0, (s - start) / edge.clamp_min(1e-9), torch.where(s >= start, big, -big))
    inside_hi = torch.where(edge > 0, (end - s) / edge.clamp_min(1e-9), torch.where(s < end, big, -big))
    space = torch.minimum(inside_lo, inside_hi).clamp(0.0, 1.0)
    grow = torch.where(ramp > 0, (time_s - onset) / ramp.clamp_min(1e-9), torch.ones_like(ramp))
    grow = torch.where(torch.as_tensor(time_s, dtype=torch.float64) >= onset, grow, torch.zeros_like(grow))
    strength_bp = strength * space * grow.clamp(0.0, 1.0)  # [B, P]
    if not weather.patches:
        strength_bp = torch.zeros_like(strength_bp)
    per_kind = [(strength_bp * (kind == i)).sum(-1).clamp(0.0, 1.0) for i in range(len(KINDS))]
    fog, rain, night, ice = (x.to(torch.float32) for x in per_kind)
    log_vis = (
        math.log(VISIBILITY_CLEAR_M)
        + fog * (math.log(VISIBILITY_FOG_M) - math.log(VISIBILITY_CLEAR_M))
        + rain * (math.log(VISIBILITY_RAIN_M) - math.log(VISIBILITY_CLEAR_M))
    )
    visibility = torch.exp(log_vis).clamp_min(VISIBILITY_FOG_M)
    friction = FRICTION_DRY - rain * (FRICTION_DRY - FRICTION_WET) - fog * FRICTION_FOG_DAMP
    light = 1.0 - night * (1.0 - LIGHT_NIGHT)
    friction = friction.clamp_min(FRICTION_WET - 0.1)
    friction = friction - ice * (friction - FRICTION_ICE).clamp_min(0.0)
    return Conditions(visibility_m=visibility, friction=friction, light=light, rain=rain)
