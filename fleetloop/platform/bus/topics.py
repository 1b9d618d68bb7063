"""The topic catalogue: every topic the platform uses, its partitions and the schemas it carries."""

from __future__ import annotations

from dataclasses import dataclass

from fleetloop.platform.errors import NotFoundError

__all__ = [
    "DEAD_LETTER",
    "FLEET_HEALTH",
    "GROUND_TRUTH_AUDIT",
    "OTA_COMMANDS",
    "OTA_STATUS",
    "PIPELINE_EVENTS",
    "ROAD_CONDITIONS",
    "TELEMETRY",
    "TOPICS",
    "Topic",
    "topic_named",
]

PREFIX = "fleetloop."


@dataclass(frozen=True)
class Topic:
    """A topic in the catalogue.

    ``partitions`` is None for topics keyed by vehicle, which get ``settings.kafka_partitions``; topics
    that need one total order (pipeline events, dead letters) have 1. ``schemas`` are the payload
    schema names a consumer accepts on it (anything else is dead-lettered as ``wrong_topic``);
    ``schemas=None`` accepts anything (the dead-letter topic holds raw bytes). ``key`` says what
    the message key is.
    """

    name: str
    schemas: frozenset[str] | None
    partitions: int | None = None
    key: str = "vehicle_id"
    retention_ms: int = 7 * 24 * 3600 * 1000
    doc: str = ""

    def partitions_for(self, default: int) -> int:
        return self.partitions if self.partitions is not None else default


TELEMETRY = Topic(
    PREFIX + "telemetry",
    frozenset({"telemetry.frames"}),
    doc="Frame batches uploaded by vehicles (columnar, one vehicle per message).",
)
FLEET_HEALTH = Topic(PREFIX + "fleet-health", frozenset({"fleet.health"}), doc="Vehicle heartbeats.")
OTA_COMMANDS = Topic(PREFIX + "ota-commands", frozenset({"ota.command"}), doc="Rollout controller -> vehicle.")
OTA_STATUS = Topic(PREFIX + "ota-status", frozenset({"ota.status"}), doc="Vehicle -> rollout controller.")
ROAD_CONDITIONS = Topic(
    PREFIX + "road-conditions",
    frozenset({"road.condition"}),
    key="segment",
    doc="Road-condition estimates by stretch of road.",
)
PIPELINE_EVENTS = Topic(
    PREFIX + "pipeline-events",
    frozenset({"dataset.sealed", "labels.ready", "model.trained", "model.validated"}),
    partitions=1,
    key="event",
    doc="The data loop's stage handoffs, in one total order.",
)
GROUND_TRUTH_AUDIT = Topic(
    PREFIX + "groundtruth-audit",
    frozenset({"groundtruth.frames"}),
    doc="The world's truth for telemetry frames; read only by label-quality audits.",
)
DEAD_LETTER = Topic(
    PREFIX + "deadletter",
    None,
    partitions=1,
    key="original key",
    retention_ms=30 * 24 * 3600 * 1000,
    doc="Records no consumer could read: raw bytes + headers with the reason and origin.",
)

TOPICS: tuple[Topic, ...] = (
    TELEMETRY,
    FLEET_HEALTH,
    OTA_COMMANDS,
    OTA_STATUS,
    ROAD_CONDITIONS,
    PIPELINE_EVENTS,
    GROUND_TRUTH_AUDIT,
    DEAD_LETTER,
)


def topic_named(name: str) -> Topic:
    """The catalogue entry for a topic name; ``NotFoundError`` lists the known topics."""
    for t in TOPICS:
        if t.name == name:
            return t
    raise NotFoundError(f"unknown topic {name!r}; known: {', '.join(t.name for t in TOPICS)}")
