"""An idempotent ``acks=all`` producer for frame batches and control events."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from fleetloop.platform.bus import _kafka_speedups, _kafka_wakeup
from fleetloop.platform.bus._kafka import BrokerTarget, bootstrap_of, kafka_errors_as_ours
from fleetloop.platform.bus.counters import BusCounters
from fleetloop.platform.bus.events import Event
from fleetloop.platform.bus.serde import MAX_MESSAGE_BYTES, FrameBatch, encode_batch, encode_event, frames_per_message
from fleetloop.platform.bus.topics import Topic
from fleetloop.platform.errors import DataError, ServiceUnavailable

__all__ = ["PRODUCER_DEFAULTS", "BusProducer"]

# acks=all + idempotence: a retried send is written once, in order. linger and a large batch let the
# client pack several frame-batch messages per request; no compression, since on a 2-core machine the
# CPU is the bottleneck and loopback bandwidth is not (docs/adr/0021-producer-consumer-settings.md).
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "max_in_flight_requests_per_connection": 5,
    "linger_ms": 5,
    "batch_size": 1024 * 1024,
    "max_request_size": MAX_MESSAGE_BYTES + 64 * 1024,
    "compression_type": None,
    "delivery_timeout_ms": 120_000,
}


class BusProducer:
    """Send frame batches and events to catalogue topics; failures are counted and surface at :meth:`flush`.

    >>> with BusProducer(settings) as p:
    ...     p.send(TELEMETRY, batch)
    ...     p.flush()   # raises ServiceUnavailable if any send since the last flush failed
    """

    def __init__(
        self,
        target: BrokerTarget,
        *,
        client_id: str = "fleetloop",
        counters: BusCounters | None = None,
        **overrides: Any,
    ) -> None:
        from kafka import KafkaProducer

        _kafka_speedups.install()
        _kafka_wakeup.install()

        self.bootstrap = bootstrap_of(target)
        self.counters = counters if counters is not None else BusCounters()
        self._failed: list[str] = []
        self._failed_lock = threading.Lock()
        config = {**PRODUCER_DEFAULTS, **overrides}
        with kafka_errors_as_ours("starting a producer", self.bootstrap):
            self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, client_id=client_id, **config)

    # -- sending ---------------------------------------------------------------------------------

    def send(self, topic: Topic, item: FrameBatch | Event, key: str | None = None) -> int:
        """Send a frame batch (split into messages of at most :func:`frames_per_message` frames, keyed
        by vehicle) or an event (keyed by ``key``, else its ``vehicle_id``, else its schema name).
        Returns the number of messages queued."""
        if isinstance(item, FrameBatch):
            return self.send_batch(topic, item)
        if isinstance(item, Event):
            self._check_schema(topic, item.SCHEMA)
            k = key or getattr(item, "vehicle_id", None) or item.SCHEMA
            self._send(topic.name, encode_event(item), k.encode(), [], frames=0)
            return 1
        raise DataError(f"cannot send a {type(item).__name__}; send a FrameBatch or an Event")

    def send_batch(self, topic: Topic, batch: FrameBatch) -> int:
        """Send the frames of one vehicle in as few messages as fit; returns the number of messages."""
        self._check_schema(topic, batch.schema.name)
        step = frames_per_message(batch.schema)
        key = batch.vehicle_id.encode()
        n = batch.n_frames
        sent = 0
        for start in range(0, max(n, 1), step):
            part = batch if n <= step else batch.slice(start, min(start + step, n))
            self._send(topic.name, encode_batch(part), key, [], frames=part.n_frames)
            sent += 1
        return sent

    def send_raw(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> Any:
        """Send bytes as they are (dead letters, baselines); no schema check. Returns the client's future (its
        ``exception`` says why the broker refused this one record, once :meth:`flush` has returned)."""
        return self._send(topic, value, key, list(headers), frames=0)

    def _check_schema(self, topic: Topic, schema: str) -> None:
        if topic.schemas is not None and schema not in topic.schemas:
            raise DataError(f"{schema} does not belong on {topic.name}, which carries {sorted(topic.schemas)}")

    def _send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]], frames: int
    ) -> Any:
        from kafka.errors import MessageSizeTooLargeError

        try:
            with kafka_errors_as_ours(f"sending to {topic}", self.bootstrap):
                future = self._producer.send(topic, value=value, key=key, headers=headers)
        except MessageSizeTooLargeError as e:
            self.counters.add_reason("send_failures", type(e).__name__)
            raise DataError(
                f"a {len(value or b''):,}-byte message for {topic} is over this producer's request limit "
                f"({e}); split it (frame batches: frames_per_message) or send a reference to it"
            ) from e
        future.add_errback(self._on_error, topic)
        self.counters.add(messages_sent=1, frames_sent=frames, bytes_sent=len(value or b""))
        return future

    def _on_error(self, topic: str, exc: BaseException) -> None:
        reason = type(exc).__name__
        self.counters.add_reason("send_failures", reason)
        with self._failed_lock:
            self._failed.append(f"{topic}: {reason}: {exc}")

    # -- durability ------------------------------------------------------------------------------

    def flush(self, timeout_s: float | None = 60.0) -> None:
        """Block until every queued message is acknowledged by all in-sync replicas.

        Raises ``ServiceUnavailable`` if a message could not be delivered (each is counted under
        ``counters.send_failures``) or the flush timed out."""
        with kafka_errors_as_ours("flushing the producer", self.bootstrap):
            self._producer.flush(timeout=timeout_s)
        with self._failed_lock:
            failed, self._failed = self._failed, []
        if failed:
            raise ServiceUnavailable(
                f"{len(failed)} message(s) were not delivered to Kafka at {self.bootstrap}; first: {failed[0]}"
            )

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush what is queued and close the connection (raises like :meth:`flush`)."""
        try:
            self.flush(timeout_s)
        finally:
            self._producer.close(timeout=timeout_s)

    def __enter__(self) -> BusProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
