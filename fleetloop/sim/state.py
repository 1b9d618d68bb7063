"""The world's configuration and the tensors it carries: ``World``, ``StaticHazard``, ``WorldState``.

B is the number of scenes (one per fleet vehicle), K the actor slots per scene: ``max_actors`` of the scene's own
traffic followed by ``hazard_slots`` filled each tick with the nearest shared static hazards of the road.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from fleetloop.sim.errors import ScenarioError
from fleetloop.sim.traffic import IdmParams
from fleetloop.sim.weather import Weather

__all__ = [
    "EGO_LENGTH_M",
    "EGO_WIDTH_M",
    "GRAVITY_MPS2",
    "KIND_CODES",
    "HazardKind",
    "StaticHazard",
    "World",
    "WorldState",
]

GRAVITY_MPS2 = 9.81  # [m/s²]
EGO_LENGTH_M = 4.5  # [m]
EGO_WIDTH_M = 1.8  # [m]
# Actor kind codes in ``WorldState.actor_kind`` (0: empty slot).
KIND_CODES = {"vehicle": 1, "pedestrian": 2, "stopped_vehicle": 3, "debris": 4, "work_zone": 5}
HazardKind = str


@dataclass(frozen=True)
class StaticHazard:
    """A static hazard on the shared road, met by every vehicle that drives past it.

    Attributes:
        kind: "stopped_vehicle", "debris" or "work_zone".
        position_m: road position of its front [m].
        lane: the lane it blocks.
        onset_s, clear_s: it is there from ``onset_s`` until ``clear_s`` [s] of simulated time.
    """

    kind: HazardKind
    position_m: float
    lane: int
    onset_s: float = 0.0
    clear_s: float = math.inf

    def __post_init__(self) -> None:
        if self.kind not in ("stopped_vehicle", "debris", "work_zone"):
            raise ScenarioError(f"unknown hazard kind {self.kind!r}; valid: stopped_vehicle, debris, work_zone")
        if not self.clear_s > self.onset_s:
            raise ScenarioError(f"hazard at {self.position_m} m needs clear_s > onset_s")


@dataclass(frozen=True)
class World:
    """Configuration of the world every scene lives in (road, weather, hazards, vehicle physics).

    Attributes:
        dt_s: tick length [s]; ``step`` must be called with it.
        n_lanes, lane_width_m: the shared road's cross-section.
        road_length_m: the road is a loop of this length [m]; weather and hazards wrap with it.
        weather: the weather field (``weather_preset`` builds the named ones).
        hazards: static hazards on the shared road.
        max_actors: actor slots of each scene's own traffic.
        hazard_slots: extra slots holding the nearest shared hazards.
        dead_time_s: actuator dead time [s] between a command and its first effect (>= 0.2 s).
        brake_jerk_mps3: how fast deceleration can build up [m/s³].
        jerk_mps3: how fast acceleration can rise or braking release [m/s³].
        max_brake_mps2, max_accel_mps2: vehicle limits [m/s²] before friction.
        actor_idm: IDM parameters of the actors (their desired speed comes from the scenario).
        scene_spacing_m: default road position of vehicle id i is ``i * scene_spacing_m`` (wrapped).
    """

    dt_s: float = 0.1
    n_lanes: int = 3
    lane_width_m: float = 3.5
    road_length_m: float = 50_000.0
    weather: Weather = field(default_factory=Weather)
    hazards: tuple[StaticHazard, ...] = ()
    max_actors: int = 6
    hazard_slots: int = 2
    dead_time_s: float = 0.2
    brake_jerk_mps3: float = 30.0
    jerk_mps3: float = 10.0
    max_brake_mps2: float = 9.5
    max_accel_mps2: float = 3.0
    actor_idm: IdmParams = field(default_factory=IdmParams)
    scene_spacing_m: float = 150.0

    def __post_init__(self) -> None:
        if not self.dt_s > 0:
            raise ScenarioError(f"dt_s must be > 0, got {self.dt_s}")
        if self.dead_time_s < 0.2 - 1e-9:
            raise ScenarioError(f"dead_time_s must be >= 0.2 s (honest actuators), got {self.dead_time_s}")
        if abs(round(self.dead_time_s / self.dt_s) * self.dt_s - self.dead_time_s) > 1e-6:
            raise ScenarioError(f"dead_time_s ({self.dead_time_s}) must be a multiple of dt_s ({self.dt_s})")
        if self.n_lanes < 1 or self.max_actors < 1 or self.hazard_slots < 0:
            raise ScenarioError("n_lanes and max_actors must be >= 1, hazard_slots >= 0")
        for h in self.hazards:
            if not 0 <= h.lane < self.n_lanes:
                raise ScenarioError(f"hazard at {h.position_m} m: lane {h.lane} outside 0..{self.n_lanes - 1}")

    @property
    def delay_ticks(self) -> int:
        """Dead time in ticks."""
        return round(self.dead_time_s / self.dt_s)

    @property
    def slots(self) -> int:
        """Actor slots per scene, own traffic plus shared hazards."""
        return self.max_actors + self.hazard_slots

    def lane_center_m(self, lane: torch.Tensor | float) -> torch.Tensor | float:
        """Lateral position of a lane's centre [m] (lane -1 / n_lanes are the kerbs)."""
        return (lane + 0.5) * self.lane_width_m


@dataclass(frozen=True)
class WorldState:
    """Everything the world knows at one tick, as tensors on one device. Never hand this to a vehicle.

    Shapes: [B] per scene, [B, K] per actor slot, [B, D] for the dead-time queue (D = ``World.delay_ticks``).
    Positions: ``ego_s_m`` is on the shared road (float64); actors are relative to the ego's front bumper
    (``actor_x_m``, + ahead) and lateral from the right road edge (``actor_y_m``).
    """

    vehicle_ids: torch.Tensor  # [B] int64
    seed: int
    tick: int
    scene_t_s: torch.Tensor  # [B] time since the scene started [s]
    ego_s_m: torch.Tensor  # [B] float64 road position of the ego front bumper [m]
    ego_start_s_m: torch.Tensor  # [B] float64 where the scene started [m]
    ego_lane: torch.Tensor  # [B] int64
    ego_v_mps: torch.Tensor  # [B]
    ego_a_mps2: torch.Tensor  # [B] kinematic acceleration over the last tick [m/s²]
    ego_act_mps2: torch.Tensor  # [B] acceleration the actuators deliver now [m/s²]
    ego_cmd_queue: torch.Tensor  # [B, D] commands waiting out the dead time [m/s²]
    ego_v0_mps: torch.Tensor  # [B] the expert's cruise speed [m/s]
    actor_kind: torch.Tensor  # [B, K] int64, KIND_CODES, 0 empty
    actor_x_m: torch.Tensor  # [B, K] front bumper relative to the ego front bumper [m]
    actor_y_m: torch.Tensor  # [B, K] lateral centre [m]
    actor_v_mps: torch.Tensor  # [B, K] longitudinal speed [m/s]
    actor_a_mps2: torch.Tensor  # [B, K]
    actor_vy_mps: torch.Tensor  # [B, K] lateral speed [m/s]
    actor_len_m: torch.Tensor  # [B, K]
    actor_width_m: torch.Tensor  # [B, K]
    actor_v0_mps: torch.Tensor  # [B, K] IDM desired speed
    actor_brake_t_s: torch.Tensor  # [B, K] scripted braking start (inf: none)
    actor_brake_mps2: torch.Tensor  # [B, K]
    actor_move_t_s: torch.Tensor  # [B, K] scripted lateral move start (inf: none)
    actor_target_y_m: torch.Tensor  # [B, K]
    actor_lat_speed_mps: torch.Tensor  # [B, K]
    visibility_m: torch.Tensor  # [B] true conditions at the ego
    friction: torch.Tensor  # [B]
    light: torch.Tensor  # [B]
    rain: torch.Tensor  # [B]
    collided: torch.Tensor  # [B] bool, sticky
    impact_speed_mps: torch.Tensor  # [B] relative speed of the first collision
    ttc_s: torch.Tensor  # [B] ground-truth time to collision with the in-path obstacle (inf: none)
    required_decel_mps2: torch.Tensor  # [B] deceleration the in-path obstacle demands (0: none)
    near_active: torch.Tensor  # [B] bool, an episode of ttc < NEAR_MISS_TTC_S is going on
    near_min_ttc_s: torch.Tensor  # [B] minimum ttc within the current episode

    @property
    def batch(self) -> int:
        """Number of scenes B."""
        return int(self.vehicle_ids.shape[0])

    @property
    def device(self) -> torch.device:
        """Device every tensor lives on."""
        return self.vehicle_ids.device

    def replace(self, **changes: object) -> WorldState:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def select(self, index: torch.Tensor) -> WorldState:
        """The scenes at ``index`` (a [B'] index or [B] bool mask), as a smaller state (e.g. a shard)."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value[index] if isinstance(value, torch.Tensor) else value
        return WorldState(**out)  # type: ignore[arg-type]

    def to(self, device: torch.device | str) -> WorldState:
        """The same state on another device."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to(device) if isinstance(value, torch.Tensor) else value
        return WorldState(**out)  # type: ignore[arg-type]

    @staticmethod
    def concat(states: list[WorldState]) -> WorldState:
        """Scenes of several states (same tick and seed) side by side."""
        first = states[0]
        if any(s.tick != first.tick or s.seed != first.seed for s in states):
            raise ScenarioError("can only concatenate states of the same tick and seed")
        out: dict[str, object] = {}
        for f in dataclasses.fields(first):
            value = getattr(first, f.name)
            out[f.name] = torch.cat([getattr(s, f.name) for s in states]) if isinstance(value, torch.Tensor) else value
        return WorldState(**out)  # type: ignore[arg-type]
