"""Control events: frozen dataclasses, each with a schema name and a ``major.minor`` version.

Every event carries the envelope fields of :class:`Event` (id, emission time, source). Later issues add
fields; a field added in a minor version must have a default and say so with
``field(default=..., metadata={"since_minor": N})`` so that readers of older payloads fill it in.
(De)serialisation lives in :mod:`fleetloop.platform.bus.serde`, like everything on the bus.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "EVENT_TYPES",
    "DatasetSealed",
    "Event",
    "FleetHealth",
    "LabelsReady",
    "ModelTrained",
    "ModelValidated",
    "OtaCommand",
    "OtaStatus",
    "RoadCondition",
]


def _new_event_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, kw_only=True)
class Event:
    """The envelope every control event shares.

    ``SCHEMA`` / ``MAJOR`` / ``MINOR`` name the payload schema; ``event_id`` lets consumers drop
    redelivered duplicates; ``emitted_at_s`` is wall-clock Unix time; ``source`` names the emitter.
    """

    SCHEMA: ClassVar[str] = ""
    MAJOR: ClassVar[int] = 1
    MINOR: ClassVar[int] = 0

    event_id: str = field(default_factory=_new_event_id)
    emitted_at_s: float = field(default_factory=time.time)
    source: str = ""


# -- pipeline events ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DatasetSealed(Event):
    """collect closed a dataset: its frames are durable in the lake and will not change."""

    SCHEMA: ClassVar[str] = "dataset.sealed"
    dataset_id: str
    uri: str
    n_frames: int
    content_sha256: str = ""


@dataclass(frozen=True, kw_only=True)
class LabelsReady(Event):
    """label finished hindsight labels for a sealed dataset."""

    SCHEMA: ClassVar[str] = "labels.ready"
    dataset_id: str
    labels_uri: str
    n_labelled: int


@dataclass(frozen=True, kw_only=True)
class ModelTrained(Event):
    """A candidate model exists (central fine-tune or federated round); validate picks it up."""

    SCHEMA: ClassVar[str] = "model.trained"
    model_name: str
    run_id: str
    artifact_uri: str
    origin: str = "central"  # "central" or "federated"
    dataset_ids: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ModelValidated(Event):
    """validate's verdict on a candidate model version."""

    SCHEMA: ClassVar[str] = "model.validated"
    model_name: str
    version: int
    passed: bool
    report_uri: str = ""
    reasons: tuple[str, ...] = ()


# -- OTA -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class OtaCommand(Event):
    """The rollout controller (or `fleetloop ota install`) asks one vehicle to install a signed release.

    A command authorises nothing by itself: the vehicle installs only what the signed metadata assigns to it.
    ``action`` "rollback" is an install of an authorised rollback release (a version re-published under a new
    release number); the vehicle treats it like "install". 1.1 added ``release``: the signed release number the
    command is for (0: whatever release signs this model version); a vehicle refuses a command whose number
    differs from the signed one. ``action`` "shadow" (no schema change: the field is a free string) asks the
    vehicle to fetch and verify the release the same way, then run it beside its active model without ever acting
    on it, and report how far the two disagree (``OtaStatus`` state "shadow_report").
    """

    SCHEMA: ClassVar[str] = "ota.command"
    MINOR: ClassVar[int] = 1
    rollout_id: str
    vehicle_id: str
    model_name: str
    version: int
    action: str = "install"  # "install", "rollback" or "shadow"
    artifact_uri: str = ""
    release: int = field(default=0, metadata={"since_minor": 1})


_SINCE_2 = {"since_minor": 2}  # OtaStatus fields added in 1.2


@dataclass(frozen=True, kw_only=True)
class OtaStatus(Event):
    """A vehicle reports where it stands in a rollout: one event per state change.

    ``state``: "downloaded", "verified", "installed", "activated", "committed", "rolled_back", "rejected" or
    "queued" (a command kept while the vehicle tries another update, followed once that trial ends).
    1.1 added ``model_name``, ``release`` (the signed release number, 0 before it is known) and ``reason``
    (a code: for "rejected" e.g. "bad_hash", "not_assigned", "unsupported_schema", "busy", "superseded"; for
    "rolled_back" "invalid_output", "deadline_surge" or "fallback_surge"); ``detail`` says the same for people.
    1.2 added shadow mode: states "shadow_started" and "shadow_report" (``version``: the candidate; ``reason``
    "periodic", "promoted", "superseded" or "end_of_run") with, per condition class of the vehicle's own estimate
    ("clear", "fog", "night", "wet"), since the shadow started: ``shadow_ticks`` (ticks both models gave a valid
    output), ``shadow_differ_share`` (share of those where the commanded accelerations differ by more than the
    vehicle's threshold), ``shadow_accel_mae_mps2`` and ``shadow_hazard_mae`` (mean absolute differences of the
    commanded acceleration [m/s²] and of the hazard probability).
    """

    SCHEMA: ClassVar[str] = "ota.status"
    MINOR: ClassVar[int] = 2
    rollout_id: str
    vehicle_id: str
    version: int
    state: str
    detail: str = ""
    model_name: str = field(default="", metadata={"since_minor": 1})
    release: int = field(default=0, metadata={"since_minor": 1})
    reason: str = field(default="", metadata={"since_minor": 1})
    shadow_ticks: dict[str, int] = field(default_factory=dict, hash=False, metadata=_SINCE_2)
    shadow_differ_share: dict[str, float] = field(default_factory=dict, hash=False, metadata=_SINCE_2)
    shadow_accel_mae_mps2: dict[str, float] = field(default_factory=dict, hash=False, metadata=_SINCE_2)
    shadow_hazard_mae: dict[str, float] = field(default_factory=dict, hash=False, metadata=_SINCE_2)


# -- fleet ---------------------------------------------------------------------------------------------


_HEALTH_1_1 = {"since_minor": 1}  # FleetHealth fields added in 1.1


@dataclass(frozen=True, kw_only=True)
class FleetHealth(Event):
    """A vehicle's periodic heartbeat.

    1.1 adds what the canary controller judges (docs/canary.md), all from the vehicle's own sensors and counters,
    never ground truth, summed over the ``period_s`` since the vehicle's previous beat (``beat_seq`` counts its
    beats): odometry ``distance_m`` and the distance its set speed asked for (``planned_distance_m``); event counts;
    fallback activations by arbiter reason; its own conditions estimate averaged over the beat (-1: not reported)
    and the condition and scenario class it drove in most (``fleetloop.edge_agent.heartbeat``); the OTA slot the
    active model runs from. A 1.0 heartbeat reads with ``period_s`` 0: it carries no exposure.
    """

    SCHEMA: ClassVar[str] = "fleet.health"
    MINOR: ClassVar[int] = 1
    vehicle_id: str
    model_version: int
    fallback_active: bool = False
    buffer_frames: int = 0
    frames_lost: int = 0
    model_slot: str = field(default="", metadata=_HEALTH_1_1)
    beat_seq: int = field(default=0, metadata=_HEALTH_1_1)
    period_s: float = field(default=0.0, metadata=_HEALTH_1_1)
    distance_m: float = field(default=0.0, metadata=_HEALTH_1_1)
    planned_distance_m: float = field(default=0.0, metadata=_HEALTH_1_1)
    collisions: int = field(default=0, metadata=_HEALTH_1_1)
    near_misses: int = field(default=0, metadata=_HEALTH_1_1)
    hard_brakes: int = field(default=0, metadata=_HEALTH_1_1)
    phantom_brakes: int = field(default=0, metadata=_HEALTH_1_1)
    harsh_jerks: int = field(default=0, metadata=_HEALTH_1_1)
    deadline_misses: int = field(default=0, metadata=_HEALTH_1_1)
    fallback_deadline: int = field(default=0, metadata=_HEALTH_1_1)
    fallback_invalid_output: int = field(default=0, metadata=_HEALTH_1_1)
    fallback_low_confidence: int = field(default=0, metadata=_HEALTH_1_1)
    fallback_ttc_critical: int = field(default=0, metadata=_HEALTH_1_1)
    fallback_sensor_fault: int = field(default=0, metadata=_HEALTH_1_1)
    fallback_no_model: int = field(default=0, metadata=_HEALTH_1_1)
    fallback_model_switch: int = field(default=0, metadata=_HEALTH_1_1)
    est_visibility_m: float = field(default=-1.0, metadata=_HEALTH_1_1)
    est_light: float = field(default=-1.0, metadata=_HEALTH_1_1)
    est_friction: float = field(default=-1.0, metadata=_HEALTH_1_1)
    condition_class: str = field(default="", metadata=_HEALTH_1_1)
    scenario_class: str = field(default="", metadata=_HEALTH_1_1)


@dataclass(frozen=True, kw_only=True)
class RoadCondition(Event):
    """The road-condition service's estimate for a stretch of road (from vehicles' own estimates)."""

    SCHEMA: ClassVar[str] = "road.condition"
    segment_start_m: float
    segment_end_m: float
    visibility_m: float
    friction: float
    n_reports: int
    confidence: float = 0.0


EVENT_TYPES: tuple[type[Event], ...] = (
    DatasetSealed,
    LabelsReady,
    ModelTrained,
    ModelValidated,
    OtaCommand,
    OtaStatus,
    FleetHealth,
    RoadCondition,
)
