"""Fault injection: what can go wrong on a vehicle, parsed from the CLI, applied as pure functions per tick.

Kinds (``--inject`` strings; several may be given, or joined with ``;``)::

    latency_spike:p=0.05,ms=80      each tick, with probability p, inference takes ms longer (simulated time)
    nan_weights                     the model's weights are NaN: every output is NaN
    crash                           the model raises: no output at all
    sensor_dropout:sensor=camera    a sensor (camera, lidar or radar) delivers nothing

Every kind also takes ``fraction=F`` (a share of the fleet, chosen per vehicle id), ``ids=3+7+12`` (these
vehicle ids) and ``start=T``, ``end=T`` (ticks, end exclusive); without ``fraction`` / ``ids`` it is fleet-wide.
Which vehicles and ticks are hit is counter-based (seed, vehicle id, tick), so it never depends on the batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fleetloop.platform.errors import FaultError
from fleetloop.sim import rng
from fleetloop.sim.sensors import LIDAR_MAX_RANGE_M, Observation

__all__ = [
    "FAULT_KINDS",
    "SENSORS",
    "FaultEffects",
    "FaultError",
    "FaultSpec",
    "apply_sensor_dropout",
    "fault_effects",
    "parse_fault",
    "parse_faults",
]

FAULT_KINDS = ("latency_spike", "nan_weights", "crash", "sensor_dropout")
SENSORS = ("camera", "lidar", "radar")
_PARAMS = {
    "latency_spike": ("p", "ms"),
    "nan_weights": (),
    "crash": (),
    "sensor_dropout": ("sensor",),
}
_COMMON = ("fraction", "ids", "start", "end")
_STREAM_WHO = 0x4641  # counter-based streams of this module ("FA", "FB"), apart from the sim's
_STREAM_WHEN = 0x4642


@dataclass(frozen=True)
class FaultSpec:
    """One injected fault.

    Attributes:
        kind: one of ``FAULT_KINDS``.
        p: latency spike probability per tick [-].
        ms: latency spike length [ms] of simulated time.
        sensor: the dropped sensor, one of ``SENSORS``.
        fraction: share of vehicles hit (None: all, unless ``ids``).
        ids: the vehicle ids hit (None: by ``fraction``, or all).
        start_tick, end_tick: active from ``start_tick`` up to (excluding) ``end_tick``.
    """

    kind: str
    p: float = 1.0
    ms: float = 0.0
    sensor: str = ""
    fraction: float | None = None
    ids: tuple[int, ...] | None = None
    start_tick: int = 0
    end_tick: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise FaultError(f"unknown fault {self.kind!r}; valid faults: {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.p <= 1.0 or not math.isfinite(self.p):
            raise FaultError(f"{self.kind}: p must be within 0..1, got {self.p}")
        if self.ms < 0 or not math.isfinite(self.ms):
            raise FaultError(f"{self.kind}: ms must be a finite number >= 0, got {self.ms}")
        if self.kind == "latency_spike" and self.ms <= 0:
            raise FaultError("latency_spike needs ms > 0, e.g. latency_spike:p=0.05,ms=80")
        if self.kind == "sensor_dropout" and self.sensor not in SENSORS:
            raise FaultError(f"sensor_dropout needs sensor=one of {', '.join(SENSORS)}, got {self.sensor!r}")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise FaultError(f"{self.kind}: fraction must be within 0..1, got {self.fraction}")
        if self.start_tick < 0 or (self.end_tick is not None and self.end_tick <= self.start_tick):
            raise FaultError(f"{self.kind}: need 0 <= start < end, got start={self.start_tick} end={self.end_tick}")


@dataclass(frozen=True)
class FaultEffects:
    """What the faults do this tick, tensors [B]: extra inference latency [ms], NaN weights, crash, and a dropped
    camera / lidar / radar. The inference engine consumes the first three, ``apply_sensor_dropout`` the rest."""

    latency_spike_ms: torch.Tensor
    nan_weights: torch.Tensor
    crash: torch.Tensor
    drop_camera: torch.Tensor
    drop_lidar: torch.Tensor
    drop_radar: torch.Tensor

    @property
    def lidar_ok(self) -> torch.Tensor:
        """[B] the lidar works (for the fallback's sensor health)."""
        return ~self.drop_lidar

    @property
    def radar_ok(self) -> torch.Tensor:
        """[B] the radar works."""
        return ~self.drop_radar


def _number(kind: str, key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise FaultError(f"{kind}: {key} must be a number, got {value!r}") from None


def _integer(kind: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise FaultError(f"{kind}: {key} must be an integer, got {value!r}") from None


def parse_fault(text: str) -> FaultSpec:
    """Parse one ``kind[:key=value,...]`` string (see the module docstring); raises ``FaultError``."""
    kind, _, rest = text.strip().partition(":")
    kind = kind.strip()
    if kind not in FAULT_KINDS:
        raise FaultError(f"unknown fault {kind!r}; valid faults: {', '.join(FAULT_KINDS)}")
    allowed = _PARAMS[kind] + _COMMON
    kw: dict[str, object] = {"kind": kind}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key not in allowed:
            raise FaultError(f"{kind}: unknown or malformed parameter {item!r}; valid parameters: {', '.join(allowed)}")
        if key == "sensor":
            kw["sensor"] = value
        elif key == "ids":
            kw["ids"] = tuple(_integer(kind, "ids", v) for v in value.split("+"))
        elif key in ("start", "end"):
            kw[f"{key}_tick"] = _integer(kind, key, value)
        else:
            kw[key] = _number(kind, key, value)
    return FaultSpec(**kw)  # type: ignore[arg-type]


def parse_faults(texts: Sequence[str] | str) -> tuple[FaultSpec, ...]:
    """Parse several faults (a list of CLI values, each possibly ``;``-joined)."""
    items = [texts] if isinstance(texts, str) else list(texts)
    return tuple(parse_fault(part) for text in items for part in text.split(";") if part.strip())


def _hit(spec: FaultSpec, index: int, seed: int, vehicle_ids: torch.Tensor, tick: int) -> torch.Tensor:
    """[B] vehicles this fault affects at ``tick``."""
    active = spec.start_tick <= tick and (spec.end_tick is None or tick < spec.end_tick)
    hit = torch.full(vehicle_ids.shape, active, dtype=torch.bool, device=vehicle_ids.device)
    if spec.ids is not None:
        hit &= torch.isin(vehicle_ids, torch.tensor(spec.ids, dtype=torch.int64, device=vehicle_ids.device))
    if spec.fraction is not None:
        # Chosen once per (seed, fault index, vehicle id): the same vehicles for the whole run.
        u = rng.uniform(rng.vehicle_key(seed, vehicle_ids, index, _STREAM_WHO), (1,)).squeeze(-1)
        hit &= u < spec.fraction
    if spec.p < 1.0:
        u = rng.uniform(rng.vehicle_key(seed ^ (index * 0x9E37), vehicle_ids, tick, _STREAM_WHEN), (1,)).squeeze(-1)
        hit &= u < spec.p
    return hit


def fault_effects(faults: Sequence[FaultSpec], vehicle_ids: torch.Tensor, tick: int, seed: int) -> FaultEffects:
    """The effects of ``faults`` on ``vehicle_ids`` [B] at ``tick`` (latency spikes of several faults add up)."""
    ids = vehicle_ids.to(torch.int64)
    no = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    latency = torch.zeros(ids.shape, device=ids.device)
    flags = {"nan_weights": no, "crash": no, "camera": no, "lidar": no, "radar": no}
    for i, spec in enumerate(faults):
        hit = _hit(spec, i, seed, ids, tick)
        if spec.kind == "latency_spike":
            latency = latency + hit.float() * spec.ms
        else:
            key = spec.sensor if spec.kind == "sensor_dropout" else spec.kind
            flags[key] = flags[key] | hit
    return FaultEffects(
        latency_spike_ms=latency,
        nan_weights=flags["nan_weights"],
        crash=flags["crash"],
        drop_camera=flags["camera"],
        drop_lidar=flags["lidar"],
        drop_radar=flags["radar"],
    )


def apply_sensor_dropout(obs: Observation, effects: FaultEffects) -> Observation:
    """The observation with dropped sensors blanked: camera zeros and ``camera_valid`` False, lidar without
    returns, radar without targets. The vehicle learns of lidar and radar failures from ``effects.lidar_ok`` /
    ``radar_ok`` (its diagnostics), not from the readings."""
    cam = effects.drop_camera
    lid = effects.drop_lidar.unsqueeze(-1)
    rad = effects.drop_radar.unsqueeze(-1)
    return dataclasses.replace(
        obs,
        camera=torch.where(cam.view(-1, 1, 1), torch.zeros_like(obs.camera), obs.camera),
        camera_valid=obs.camera_valid & ~cam,
        lidar_range_m=torch.where(lid, torch.full_like(obs.lidar_range_m, LIDAR_MAX_RANGE_M), obs.lidar_range_m),
        radar_range_m=torch.where(rad, torch.zeros_like(obs.radar_range_m), obs.radar_range_m),
        radar_range_rate_mps=torch.where(rad, torch.zeros_like(obs.radar_range_rate_mps), obs.radar_range_rate_mps),
        radar_azimuth_rad=torch.where(rad, torch.zeros_like(obs.radar_azimuth_rad), obs.radar_azimuth_rad),
        radar_valid=obs.radar_valid & ~rad,
    )
