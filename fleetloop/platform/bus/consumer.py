"""A consumer that decodes bus payloads, dead-letters what it cannot read, and commits only when told.

    with BusConsumer(settings, [TELEMETRY], group_id="collect") as consumer:
        for polled in consumer.poll_batches(idle_timeout_s=5):
            write_to_lake(polled.deliveries)      # make the work durable first ...
            consumer.commit(polled)               # ... then move the group's offsets past it

A record that fails to decode (or carries a schema that does not belong on its topic) is sent, byte for
byte, to the dead-letter topic with the reason and its origin in headers, and counted by reason. Its offset
is committed with the batch it came in, after the dead letter itself is acknowledged, so nothing is lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetloop.platform.bus import _kafka_speedups
from fleetloop.platform.bus._kafka import BrokerTarget, bootstrap_of, kafka_errors_as_ours
from fleetloop.platform.bus.counters import BusCounters
from fleetloop.platform.bus.deadletter import DeadLetter
from fleetloop.platform.bus.events import Event
from fleetloop.platform.bus.producer import BusProducer
from fleetloop.platform.bus.serde import DEFAULT_REGISTRY, FrameBatch, PayloadRejected, SchemaRegistry, decode
from fleetloop.platform.bus.topics import DEAD_LETTER, Topic
from fleetloop.platform.errors import DataError

__all__ = ["CONSUMER_DEFAULTS", "BusConsumer", "Delivery", "Polled"]

# Offsets move only through commit(); fetches are large because one message holds ~1,000 frames.
CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "max_poll_records": 500,
    "fetch_max_bytes": 64 * 1024 * 1024,
    "max_partition_fetch_bytes": 8 * 1024 * 1024,
    "fetch_max_wait_ms": 100,
}


@dataclass(frozen=True)
class Delivery:
    """One decoded record and where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    value: FrameBatch | Event


@dataclass
class Polled:
    """What one poll returned: decoded deliveries, how many records were dead-lettered, and the offsets to
    commit once the caller's work on them is durable (``(topic, partition) -> next offset``)."""

    deliveries: list[Delivery] = field(default_factory=list)
    dead_lettered: int = 0
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def n_records(self) -> int:
        return len(self.deliveries) + self.dead_lettered

    @property
    def n_frames(self) -> int:
        return sum(d.value.n_frames for d in self.deliveries if isinstance(d.value, FrameBatch))


class BusConsumer:
    """A consumer-group member on catalogue topics; see the module docstring for the commit contract."""

    def __init__(
        self,
        target: BrokerTarget,
        topics: Sequence[Topic],
        group_id: str,
        *,
        registry: SchemaRegistry = DEFAULT_REGISTRY,
        dead_letter_topic: Topic = DEAD_LETTER,
        client_id: str = "fleetloop",
        counters: BusCounters | None = None,
        **overrides: Any,
    ) -> None:
        from kafka import KafkaConsumer

        _kafka_speedups.install()

        if not topics:
            raise DataError("a consumer needs at least one topic")
        if not group_id:
            raise DataError("a consumer needs a group_id: offsets are committed per group")
        self.bootstrap = bootstrap_of(target)
        self.group_id = group_id
        self.registry = registry
        self.counters = counters if counters is not None else BusCounters()
        self._topics = {t.name: t for t in topics}
        self._dead_letter_topic = dead_letter_topic
        self._dlq: BusProducer | None = None
        self._client_id = client_id
        self._committed: dict[tuple[str, int], int] = {}
        config = {**CONSUMER_DEFAULTS, **overrides}
        with kafka_errors_as_ours("starting a consumer", self.bootstrap):
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=group_id, client_id=client_id, **config
            )
            # Learn the topics' partitions before joining the group: kafka-python 3.0.12's group leader assigns
            # nothing for a topic it has no metadata for yet (a topic just created), and the rebalance that
            # follows once the metadata arrives can stall, leaving the member without partitions.
            for name in self._topics:
                self._consumer.partitions_for_topic(name)
            self._consumer.subscribe(list(self._topics))

    # -- reading -----------------------------------------------------------------------------------

    def poll(self, timeout_s: float = 1.0) -> Polled:
        """Fetch what is available within ``timeout_s``: decoded deliveries plus offsets to commit later."""
        with kafka_errors_as_ours("polling", self.bootstrap):
            fetched = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        out = Polled()
        for tp, records in fetched.items():
            topic = self._topics.get(tp.topic)
            for rec in records:
                value = rec.value
                self.counters.add(messages_received=1, bytes_received=len(value or b""))
                try:
                    item = decode(value, self.registry)
                    schema = item.schema.name if isinstance(item, FrameBatch) else item.SCHEMA
                    if topic is not None and topic.schemas is not None and schema not in topic.schemas:
                        raise PayloadRejected(
                            "wrong_topic", f"{schema} does not belong on {tp.topic} ({sorted(topic.schemas)})"
                        )
                except PayloadRejected as e:
                    self._dead_letter(rec, e.reason, str(e))
                    out.dead_lettered += 1
                else:
                    if isinstance(item, FrameBatch):
                        self.counters.add(frames_received=item.n_frames)
                    out.deliveries.append(Delivery(tp.topic, tp.partition, rec.offset, rec.key, rec.timestamp, item))
                out.offsets[(tp.topic, tp.partition)] = rec.offset + 1
        return out

    def poll_batches(self, idle_timeout_s: float | None = None, poll_timeout_s: float = 0.5) -> Iterator[Polled]:
        """Yield non-empty polls; stop after ``idle_timeout_s`` without records (``None``: never)."""
        last = time.monotonic()
        while True:
            polled = self.poll(poll_timeout_s)
            if polled.n_records:
                last = time.monotonic()
                yield polled
            elif idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
                return

    def _dead_letter(self, rec: Any, reason: str, error: str) -> None:
        if self._dlq is None:
            self._dlq = BusProducer(self.bootstrap, client_id=f"{self._client_id}-deadletter")
        letter = DeadLetter(reason, error, rec.topic, rec.partition, rec.offset, self.group_id, rec.key, rec.value)
        self._dlq.send_raw(self._dead_letter_topic.name, rec.value, rec.key, letter.headers())
        self.counters.add_reason("dead_lettered", reason)

    # -- committing ----------------------------------------------------------------------------------

    def commit(self, polled: Polled) -> None:
        """Commit the offsets of ``polled``: call it only once the work on its deliveries is durable.

        Dead letters of the batch are flushed first, so a record is never committed before it is either
        processed by the caller or kept on the dead-letter topic. Offsets never move backwards."""
        from kafka.structs import OffsetAndMetadata, TopicPartition

        if self._dlq is not None:
            self._dlq.flush()
        offsets = {}
        for (topic, partition), nxt in polled.offsets.items():
            if nxt > self._committed.get((topic, partition), -1):
                offsets[TopicPartition(topic, partition)] = OffsetAndMetadata(nxt, "", -1)
        if not offsets:
            return
        with kafka_errors_as_ours("committing offsets", self.bootstrap):
            self._consumer.commit(offsets)
        for tp, om in offsets.items():
            self._committed[(tp.topic, tp.partition)] = om.offset
        self.counters.add(commits=1)

    def close(self) -> None:
        """Leave the group without committing anything not already committed; flush pending dead letters."""
        try:
            if self._dlq is not None:
                self._dlq.close()
        finally:
            self._consumer.close(autocommit=False)

    def __enter__(self) -> BusConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
