"""Where a shard's OTA client reads commands and sends statuses: Kafka (a run) or memory (tests, benchmarks).

``KafkaTransport`` consumes ``fleetloop.ota-commands`` in a consumer group of its own (each shard sees every
command and keeps those for its vehicles), from the earliest offset (the client drops commands older than
``OtaSpec.command_max_age_s``), and produces ``fleetloop.ota-status`` keyed by vehicle id. It joins its group
before the first tick and reads the commands already waiting (the vehicles are connected when they start
driving): a group join takes seconds, in which a small fleet drives hundreds of ticks. Then a thread of its own
polls the broker (``POLL_TIMEOUT_S`` a call) and queues the commands; the tick takes what is queued and never
waits. A consumer polled only at tick boundaries with a few milliseconds each never fetched anything once it had
read the topic's backlog (kafka-python 3.0's group coordination and fetch each need more than such a poll gives
them): no vehicle heard a command sent after it started.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from fleetloop.platform.bus.consumer import BusConsumer
from fleetloop.platform.bus.events import OtaCommand, OtaStatus
from fleetloop.platform.bus.producer import BusProducer
from fleetloop.platform.bus.topics import OTA_COMMANDS, OTA_STATUS
from fleetloop.platform.errors import ServiceUnavailable
from fleetloop.platform.settings import Settings

__all__ = ["POLL_TIMEOUT_S", "KafkaTransport", "MemoryTransport"]

POLL_TIMEOUT_S = 0.5  # [s] one poll of the command thread (the tick does not wait: it takes what is queued)
JOIN_TIMEOUT_S = 60.0  # [s] for the consumer group to assign the command topic's partitions
CATCH_UP_TIMEOUT_S = 10.0  # [s] to read the commands already waiting before the first tick; later ones queue


class KafkaTransport:
    """Commands from Kafka, statuses to Kafka (``bus``: ``Settings.model_dump()``)."""

    def __init__(self, bus: dict[str, Any], group_id: str) -> None:
        settings = Settings(**bus)
        self.consumer = BusConsumer(settings, [OTA_COMMANDS], group_id, auto_offset_reset="earliest")
        self.producer = BusProducer(settings, client_id="ota-client")
        self._early: list[OtaCommand] = []
        self._queue: queue.SimpleQueue[OtaCommand] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ota-commands", daemon=True)
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while not self.consumer.assignment():
            if time.monotonic() > deadline:
                self.close(5.0)
                raise ServiceUnavailable(
                    f"the OTA command consumer got no partition of {OTA_COMMANDS.name} in {JOIN_TIMEOUT_S:.0f} s; "
                    "is Kafka up (`fleetloop status`)?"
                )
            self._early += self._read(0.1)
        # and reads the commands already waiting (a vehicle boots, then checks for updates): one fetch response
        # per partition may arrive polls apart, and a command read a poll later is a second fetch job, whose
        # vehicles activate seconds of wall time (hundreds of a small fleet's ticks) after the first job's
        caught_up_by = time.monotonic() + CATCH_UP_TIMEOUT_S
        while not self._caught_up() and time.monotonic() < min(deadline, caught_up_by):
            self._early += self._read(0.1)
        self._thread.start()

    def _caught_up(self) -> bool:
        """Every assigned partition fetched and read to its end."""
        lag = self.consumer.lag_records()
        return set(lag) == set(self.consumer.assignment()) and not any(lag.values())

    def _read(self, timeout_s: float) -> list[OtaCommand]:
        polled = self.consumer.poll(timeout_s)
        return [d.value for d in polled.deliveries if isinstance(d.value, OtaCommand)]

    def _run(self) -> None:
        """The command thread: the only user of the consumer until ``close``."""
        try:
            while not self._stop.is_set():
                for command in self._read(POLL_TIMEOUT_S):
                    self._queue.put(command)
        except BaseException as e:  # surfaced at the next tick's poll, as a poll's own error would be
            self._error = e

    def poll(self) -> list[OtaCommand]:
        """The commands that arrived since the last call (no wait)."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        early, self._early = self._early, []
        while True:
            try:
                early.append(self._queue.get_nowait())
            except queue.Empty:
                return early

    def send(self, status: OtaStatus) -> None:
        """Queue a status (delivery failures surface at ``close``)."""
        self.producer.send(OTA_STATUS, status)

    def close(self, timeout_s: float) -> None:
        """Deliver the queued statuses, stop the command thread, leave the group."""
        self._stop.set()
        try:
            self.producer.close(timeout_s)
        finally:
            if self._thread.is_alive():
                self._thread.join(POLL_TIMEOUT_S + timeout_s)
            self.consumer.close()


class MemoryTransport:
    """Commands from a list the caller appends to; statuses into ``sent`` (tests of the shell, the benchmark)."""

    def __init__(self) -> None:
        self.inbox: list[OtaCommand] = []
        self.sent: list[OtaStatus] = []

    def poll(self) -> list[OtaCommand]:
        """Take everything in the inbox."""
        out, self.inbox = self.inbox, []
        return out

    def send(self, status: OtaStatus) -> None:
        """Keep the status."""
        self.sent.append(status)

    def close(self, timeout_s: float) -> None:
        """Nothing to deliver."""
