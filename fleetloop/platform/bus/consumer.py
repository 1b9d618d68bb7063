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

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetloop.platform.bus import _kafka_speedups, _kafka_wakeup
from fleetloop.platform.bus._kafka import BrokerTarget, bootstrap_of, kafka_errors_as_ours
from fleetloop.platform.bus.counters import BusCounters
from fleetloop.platform.bus.deadletter import KEPT_REFERENCE, REFERENCE_PREFIX_BYTES, DeadLetter
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


@dataclass
class _Letter:
    """A dead letter on its way: the rejected record, what is sent for it (the record or a reference), and the
    client's future of the last send (None: to be sent again)."""

    original: DeadLetter
    sent: DeadLetter
    future: Any = None


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
        on_revoked: Callable[[frozenset[tuple[str, int]]], None] | None = None,
        **overrides: Any,
    ) -> None:
        from kafka import KafkaConsumer

        _kafka_speedups.install()
        _kafka_wakeup.install()

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
        self._unacked: list[_Letter] = []  # dead letters sent since the last acknowledged flush
        self._client_id = client_id
        self._committed: dict[tuple[str, int], int] = {}
        self._deferred: dict[tuple[str, int], int] = {}  # offsets a rebalance refused; retried after a poll
        self._listener_error: BaseException | None = None
        self._on_revoked = on_revoked
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
            self._consumer.subscribe(list(self._topics), listener=self._listener())

    # -- reading -----------------------------------------------------------------------------------

    def _listener(self) -> Any:
        """The rebalance listener: before partitions leave this member (a rebalance, or closing), the owner's
        ``on_revoked`` makes the work on their records durable, so the next owner finds it in the sink's own
        dedup state (docs/adr/0075). It runs on the client's IO thread: an error is kept and raised by ``poll``."""
        from kafka import ConsumerRebalanceListener

        consumer = self

        class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Any) -> None:
                consumer._revoked(revoked)

            def on_partitions_lost(self, lost: Any) -> None:
                consumer._revoked(lost)  # a zombie's last chance: its records go elsewhere (ADR 0071)

            def on_partitions_assigned(self, assigned: Any) -> None:
                pass

        return _Listener()

    def _revoked(self, partitions: Any) -> None:
        tps = frozenset((tp.topic, tp.partition) for tp in partitions)
        if not tps or self._on_revoked is None:
            return
        try:
            self._on_revoked(tps)
        except BaseException as e:  # raised by the next poll(), in the caller's thread
            self._listener_error = e

    def poll(self, timeout_s: float = 1.0) -> Polled:
        """Fetch what is available within ``timeout_s``: decoded deliveries plus offsets to commit later.

        A commit a rebalance refused (see :meth:`commit`) is retried here, for the partitions still ours."""
        with kafka_errors_as_ours("polling", self.bootstrap):
            fetched = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        if self._listener_error is not None:
            error, self._listener_error = self._listener_error, None
            raise error
        if self._deferred:
            self._retry_deferred()
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

    def lag_records(self) -> dict[tuple[str, int], int]:
        """Records behind the end of each partition this member holds: the partition's end offset minus the
        position the next poll reads from. The end offset is the high watermark of the partition's last fetch
        response (what ``end_offsets`` would ask the broker for; no request is made), so a partition not fetched
        yet, or without a position yet, is left out."""
        from kafka.errors import KafkaError

        out: dict[tuple[str, int], int] = {}
        for tp in self._consumer.assignment():
            end = self._consumer.highwater(tp)
            if end is None:
                continue
            try:
                position = self._consumer.position(tp, timeout_ms=0)  # known after a fetch: no request
            except KafkaError:
                continue
            if position is not None:
                out[(tp.topic, tp.partition)] = max(0, int(end) - int(position))
        return out

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
        fitted = letter.fitted()
        if fitted.kept == KEPT_REFERENCE:
            self.counters.add(dead_letter_references=1)
        pending = _Letter(letter, fitted)
        self._send_letter(pending)
        self._unacked.append(pending)
        self.counters.add_reason("dead_lettered", letter.reason)

    def _send_letter(self, p: _Letter) -> None:
        if self._dlq is None:
            self._dlq = BusProducer(self.bootstrap, client_id=f"{self._client_id}-deadletter")
        p.future = self._dlq.send_raw(self._dead_letter_topic.name, p.sent.value, p.sent.key, p.sent.headers())

    def _flush_dead_letters(self) -> None:
        """Block until every dead letter sent is acknowledged, so a record is never committed without its
        letter. After a failed flush (broker down) the letters not acknowledged are sent again at the next one
        (a letter may then be kept twice); one the broker refused as too large is sent again at once as a
        reference (4 KiB of prefix, then none)."""
        if self._dlq is None or not self._unacked:
            return
        for _ in range(3):  # full -> reference -> reference without prefix
            for p in self._unacked:
                if p.future is None:
                    self._send_letter(p)
            try:
                self._dlq.flush()
            except ServiceUnavailable:
                shrunk = self._keep_unacknowledged()
                if not shrunk:
                    raise
                continue
            self._unacked = []
            return
        raise ServiceUnavailable(
            f"the dead-letter topic {self._dead_letter_topic.name} at {self.bootstrap} refuses even a "
            "reference letter of a few hundred bytes as too large; raise its max.message.bytes"
        )

    def _keep_unacknowledged(self) -> bool:
        """After a failed flush: keep the letters not acknowledged, to be sent again; those refused as too
        large become references. Returns whether any did."""
        from kafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

        shrunk = False
        still: list[_Letter] = []
        for p in self._unacked:
            f = p.future
            if f is not None and f.is_done and f.exception is None:
                continue  # acknowledged before the failure
            refused = f is not None and f.is_done and f.exception is not None
            if refused and isinstance(f.exception, MessageSizeTooLargeError | RecordListTooLargeError):
                prefix = 0 if p.sent.kept == KEPT_REFERENCE else REFERENCE_PREFIX_BYTES
                if p.sent.kept != KEPT_REFERENCE:
                    self.counters.add(dead_letter_references=1)
                p.sent = p.original.as_reference(prefix)
                shrunk = True
            p.future = None
            still.append(p)
        self._unacked = still
        return shrunk

    # -- committing ----------------------------------------------------------------------------------

    def commit(self, polled: Polled, timeout_s: float | None = None) -> bool:
        """Commit the offsets of ``polled``: call it only once the work on its deliveries is durable.

        Dead letters are flushed first, so a record is never committed before it is either processed by the
        caller or kept on the dead-letter topic. Offsets never move backwards, and only partitions this member
        holds are committed (a partition that moved away is the new owner's; its records are redelivered
        there and the sink's dedup drops them).

        Returns False when the group is rebalancing (``RebalanceInProgressError``, ``CommitFailedError``): the
        offsets are kept and committed by the next :meth:`poll` that finds the group stable, for the
        partitions still ours. Raises ``ServiceUnavailable`` if the broker did not take the commit within
        ``timeout_s`` (None: the client's request timeout, 30 s)."""
        self._flush_dead_letters()
        for tp, nxt in polled.offsets.items():
            self._deferred[tp] = max(nxt, self._deferred.get(tp, 0))
        return self._commit_deferred(timeout_s)

    @property
    def has_deferred_commit(self) -> bool:
        """Whether offsets a rebalance refused are still waiting to be committed."""
        return bool(self._deferred)

    def finish_commits(self, timeout_s: float) -> bool:
        """Before leaving: complete a rebalance under way (polls whose records are dropped unread: uncommitted,
        they are redelivered to the next owner) and commit the deferred offsets. Returns whether none is left."""
        deadline = time.monotonic() + timeout_s
        while self._deferred and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(ServiceUnavailable), kafka_errors_as_ours("polling", self.bootstrap):
                self._consumer.poll(timeout_ms=int(min(1.0, left) * 1000))  # the group is joined inside poll
            # each attempt bounded, and the offsets kept when one times out: a commit sent while the coordinator
            # moves could otherwise wait out the client's whole request timeout (30 s) and be dropped unsaid
            with contextlib.suppress(ServiceUnavailable):
                self._commit_deferred(max(0.1, min(5.0, deadline - time.monotonic())), keep_on_failure=True)
        return not self._deferred

    def _retry_deferred(self) -> None:
        with contextlib.suppress(ServiceUnavailable):  # the broker is away: the next commit covers them
            self._commit_deferred(None)

    def _commit_deferred(self, timeout_s: float | None, keep_on_failure: bool = False) -> bool:
        from kafka.errors import (
            CommitFailedError,
            IllegalGenerationError,
            KafkaError,
            RebalanceInProgressError,
            UnknownMemberIdError,
        )
        from kafka.structs import OffsetAndMetadata, TopicPartition

        mine = self.assignment()
        if not mine:
            return False  # out of the group (or not yet in): keep them until it gives us partitions again
        offsets = {
            TopicPartition(*tp): OffsetAndMetadata(nxt, "", -1)
            for tp, nxt in self._deferred.items()
            if tp in mine and nxt > self._committed.get(tp, -1)
        }
        if not offsets:
            self._deferred = {}
            return True
        try:
            self._consumer.commit(offsets, timeout_ms=None if timeout_s is None else int(timeout_s * 1000))
        except (RebalanceInProgressError, CommitFailedError, IllegalGenerationError, UnknownMemberIdError):
            self.counters.add(commit_retries=1)
            return False  # kept in _deferred: the next poll completes the rebalance and retries
        except KafkaError as e:  # the broker is down or did not answer in time
            if not keep_on_failure:
                self._deferred = {}  # later commits move past these offsets; a restart redelivers them
            raise ServiceUnavailable(
                f"committing offsets of group {self.group_id} to Kafka at {self.bootstrap} failed "
                f"({type(e).__name__}: {e}); the records are redelivered, so make the work on them idempotent"
            ) from e
        for tp, om in offsets.items():
            self._committed[(tp.topic, tp.partition)] = om.offset
        self._deferred = {}
        self.counters.add(commits=1)
        return True

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
