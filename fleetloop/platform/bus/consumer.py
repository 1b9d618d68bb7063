"""A consumer that decodes bus payloads, dead-letters what it cannot read, and commits only when told.

    with BusConsumer(settings, [TELEMETRY], group_id="collect") as consumer:
        for polled in consumer.poll_batches(idle_timeout_s=5):
            write_to_lake(polled.deliveries)      # make the work durable first ...
            consumer.commit(polled)               # ... then move the group's offsets past it

A record that fails to decode (or carries a schema that does not belong on its topic) is sent, byte for
byte, to the dead-letter topic with the reason and its origin in headers, and counted by reason. A stage
that refuses a decoded delivery hands it to :meth:`BusConsumer.dead_letter`, the same path. Offsets are
committed only after every dead letter sent before is acknowledged, so nothing is lost.
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
from fleetloop.platform.bus.serde import (
    DEFAULT_REGISTRY,
    FrameBatch,
    PayloadRejected,
    SchemaRegistry,
    decode,
    encode,
)
from fleetloop.platform.bus.topics import DEAD_LETTER, Topic
from fleetloop.platform.errors import DataError, ServiceUnavailable

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
    """One decoded record and where it came from; ``raw`` is the record's value as it arrived (what a dead
    letter keeps; decoded frame columns are views of it, so holding it costs no copy)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    value: FrameBatch | Event
    raw: bytes | None = field(default=None, repr=False, compare=False)


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

    @classmethod
    def merged(cls, polls: Sequence[Polled]) -> Polled:
        """The offsets of several polls as one commit (the furthest per partition); deliveries are not kept."""
        out = cls()
        for p in polls:
            for tp, nxt in p.offsets.items():
                out.offsets[tp] = max(nxt, out.offsets.get(tp, 0))
        return out


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
        self._unacked: list[DeadLetter] = []  # dead letters sent since the last acknowledged flush
        self._resend = False  # a flush failed: send the unacknowledged letters again before the next one
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
                    out.deliveries.append(
                        Delivery(tp.topic, tp.partition, rec.offset, rec.key, rec.timestamp, item, value)
                    )
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

    def assignment(self) -> frozenset[tuple[str, int]]:
        """The ``(topic, partition)`` pairs this member holds now; empty until the group has assigned it some."""
        return frozenset((tp.topic, tp.partition) for tp in self._consumer.assignment())

    # -- dead letters --------------------------------------------------------------------------------

    def dead_letter(self, delivery: Delivery, reason: str, error: str) -> None:
        """Send a decoded delivery the caller refuses to the dead-letter topic (its original bytes, ``reason``
        and ``error`` in headers), counted by reason; :meth:`commit` acknowledges it before moving past it."""
        value = delivery.raw if delivery.raw is not None else encode(delivery.value)
        d = delivery
        self._send_dead_letter(DeadLetter(reason, error, d.topic, d.partition, d.offset, self.group_id, d.key, value))

    def _dead_letter(self, rec: Any, reason: str, error: str) -> None:
        self._send_dead_letter(
            DeadLetter(reason, error, rec.topic, rec.partition, rec.offset, self.group_id, rec.key, rec.value)
        )

    def _send_dead_letter(self, letter: DeadLetter) -> None:
        if self._dlq is None:
            self._dlq = BusProducer(self.bootstrap, client_id=f"{self._client_id}-deadletter")
        self._dlq.send_raw(self._dead_letter_topic.name, letter.value, letter.key, letter.headers())
        self._unacked.append(letter)
        self.counters.add_reason("dead_lettered", letter.reason)

    def _flush_dead_letters(self) -> None:
        """Block until every dead letter sent is acknowledged; after a failed flush (broker down) they are sent
        again, so a record is never committed without its letter (a letter may then be kept twice)."""
        if self._dlq is None or not self._unacked:
            return
        if self._resend:
            for letter in self._unacked:
                self._dlq.send_raw(self._dead_letter_topic.name, letter.value, letter.key, letter.headers())
        try:
            self._dlq.flush()
        except ServiceUnavailable:
            self._resend = True
            raise
        self._unacked, self._resend = [], False

    # -- committing ----------------------------------------------------------------------------------

    def commit(self, polled: Polled, timeout_s: float | None = None) -> None:
        """Commit the offsets of ``polled``: call it only once the work on its deliveries is durable.

        Dead letters are flushed first, so a record is never committed before it is either processed by the
        caller or kept on the dead-letter topic. Offsets never move backwards. Raises ``ServiceUnavailable`` if
        the broker did not take the commit within ``timeout_s`` (None: the client's request timeout, 30 s) or
        the group moved a partition away meanwhile (its records are then redelivered)."""
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata, TopicPartition

        self._flush_dead_letters()
        offsets = {}
        for (topic, partition), nxt in polled.offsets.items():
            if nxt > self._committed.get((topic, partition), -1):
                offsets[TopicPartition(topic, partition)] = OffsetAndMetadata(nxt, "", -1)
        if not offsets:
            return
        try:
            self._consumer.commit(offsets, timeout_ms=None if timeout_s is None else int(timeout_s * 1000))
        except KafkaError as e:  # broker down, or a rebalance moved a partition away (CommitFailedError)
            raise ServiceUnavailable(
                f"committing offsets of group {self.group_id} to Kafka at {self.bootstrap} failed "
                f"({type(e).__name__}: {e}); the records are redelivered, so make the work on them idempotent"
            ) from e
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
