"""The bus: topic catalogue, versioned schemas, one serde module, producer, consumer, dead letters, admin.

This ``__init__`` imports only the pure parts (numpy); the Kafka-facing classes load kafka-python on first
use: ``from fleetloop.platform.bus import BusProducer`` works, but a process that only encodes frames
never imports kafka.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetloop.platform.bus.counters import BusCounters
from fleetloop.platform.bus.deadletter import DeadLetter
from fleetloop.platform.bus.events import (
    EVENT_TYPES,
    DatasetSealed,
    Event,
    FleetHealth,
    LabelsReady,
    ModelTrained,
    ModelValidated,
    OtaCommand,
    OtaStatus,
    RoadCondition,
)
from fleetloop.platform.bus.schemas import (
    GROUND_TRUTH_FRAMES,
    TELEMETRY_FRAMES,
    BatchSchema,
    Column,
    Driver,
    FallbackReason,
    HazardType,
    TriggerFlag,
    radar_valid,
)
from fleetloop.platform.bus.serde import (
    DEFAULT_REGISTRY,
    FrameBatch,
    PayloadRejected,
    SchemaRegistry,
    decode,
    encode,
)
from fleetloop.platform.bus.topics import (
    DEAD_LETTER,
    FLEET_HEALTH,
    GROUND_TRUTH_AUDIT,
    OTA_COMMANDS,
    OTA_STATUS,
    PIPELINE_EVENTS,
    ROAD_CONDITIONS,
    TELEMETRY,
    TOPICS,
    Topic,
    topic_named,
)

if TYPE_CHECKING:
    from fleetloop.platform.bus.admin import ensure_topics
    from fleetloop.platform.bus.consumer import BusConsumer, Delivery, Polled
    from fleetloop.platform.bus.producer import BusProducer

__all__ = [
    "DEAD_LETTER",
    "DEFAULT_REGISTRY",
    "EVENT_TYPES",
    "FLEET_HEALTH",
    "GROUND_TRUTH_AUDIT",
    "GROUND_TRUTH_FRAMES",
    "OTA_COMMANDS",
    "OTA_STATUS",
    "PIPELINE_EVENTS",
    "ROAD_CONDITIONS",
    "TELEMETRY",
    "TELEMETRY_FRAMES",
    "TOPICS",
    "BatchSchema",
    "BusConsumer",
    "BusCounters",
    "BusProducer",
    "Column",
    "DatasetSealed",
    "DeadLetter",
    "Delivery",
    "Driver",
    "Event",
    "FallbackReason",
    "FleetHealth",
    "FrameBatch",
    "HazardType",
    "LabelsReady",
    "ModelTrained",
    "ModelValidated",
    "OtaCommand",
    "OtaStatus",
    "PayloadRejected",
    "Polled",
    "RoadCondition",
    "SchemaRegistry",
    "Topic",
    "TriggerFlag",
    "decode",
    "encode",
    "ensure_topics",
    "radar_valid",
    "topic_named",
]

_LAZY = {
    "BusProducer": "fleetloop.platform.bus.producer",
    "BusConsumer": "fleetloop.platform.bus.consumer",
    "Delivery": "fleetloop.platform.bus.consumer",
    "Polled": "fleetloop.platform.bus.consumer",
    "ensure_topics": "fleetloop.platform.bus.admin",
}


def __getattr__(name: str) -> Any:
    # Kafka-facing names load kafka-python on first use only.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
