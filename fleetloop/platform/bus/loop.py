"""The consumer loop every long-running bus member shares: polls that wait out a broker outage, a stop flag that
SIGTERM and Ctrl-C set, and commits made once the work on the records is durable.

    with stop_on_signals(stop):                      (main thread only)
        for polled in polls(consumer, stop, outage, poll_timeout_s):
            ... the member's work on polled, made durable ...
            commit_durable(consumer, polled)         ("committed", "deferred" or "failed")

A broker restart makes polls raise ``ServiceUnavailable``: :func:`polls` keeps what is pending (uncommitted, so
safe), waits ``OUTAGE_RETRY_S`` between tries, and raises once the broker has been away longer than the member
allows (:class:`BrokerOutage`). A commit the broker does not take comes back as ``failed``, for the member to
count and go on: the work is durable and the member drops a redelivered record. What is the member's own (the
pipeline stages' sinks and dead letters, the rollout controller's records) stays with it:
``fleetloop.pipelines.stage_shell``, ``fleetloop.platform.canary.service``.

This module imports no Kafka client: the consumer is handed in.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fleetloop.platform.errors import ServiceUnavailable

if TYPE_CHECKING:
    from fleetloop.platform.bus.consumer import BusConsumer, Polled

__all__ = [
    "OUTAGE_RETRY_S",
    "WAIT_SLICE_S",
    "BrokerOutage",
    "CommitOutcome",
    "Stop",
    "StopFlag",
    "commit_durable",
    "member_timeouts",
    "new_dead_letters",
    "polls",
    "stop_on_signals",
]

OUTAGE_RETRY_S = 0.5  # [s] wait between tries while the broker is away
WAIT_SLICE_S = 0.05  # [s] longest sleep of StopFlag.wait before it looks at the flag again

CommitOutcome = Literal["committed", "deferred", "failed"]


class Stop(Protocol):
    """What a loop looks at to know when to stop: a :class:`StopFlag`, or a ``threading.Event`` set from a thread."""

    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class StopFlag:
    """Set by SIGTERM / Ctrl-C (:func:`stop_on_signals`), by another thread or by a test, to make a loop finish the
    cycle in hand and return. The same calls as ``threading.Event`` (``set``, ``is_set``, ``wait``).

    A signal handler runs on the main thread between two bytecodes, possibly while that thread is inside
    ``threading.Event.wait`` holding the event's lock; an ``Event.set`` in the handler would then wait for that lock
    for ever. So the flag is a plain attribute, the signal path (:meth:`set_from_signal`) takes no lock, and
    :meth:`wait` sleeps in slices of ``WAIT_SLICE_S``, seeing a flag set by a signal within one slice (a ``set``
    from a thread wakes it at once; docs/adr/0180)."""

    def __init__(self) -> None:
        self._stopped = False
        self._wake = threading.Event()

    def set(self) -> None:
        """Stop, and wake the waiters now (not from a signal handler: use :meth:`set_from_signal`)."""
        self._stopped = True
        self._wake.set()

    def set_from_signal(self) -> None:
        """Stop; safe inside a signal handler (takes no lock: waiters see it within ``WAIT_SLICE_S``)."""
        self._stopped = True

    def is_set(self) -> bool:
        return self._stopped

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until the flag is set or ``timeout`` [s] has passed (None: until set); returns whether it is set."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stopped:
            slice_s = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, deadline - time.monotonic())
            if slice_s <= 0:
                break
            self._wake.wait(slice_s)
        return self._stopped


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """Route SIGTERM and SIGINT to ``flag`` while inside (main thread only); a second Ctrl-C interrupts hard."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: object) -> None:
        if flag.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.set_from_signal()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class _CountsOutages(Protocol):
    broker_outages: int


class BrokerOutage:
    """How long the broker has been away: ``failed`` on each failure (counting a new outage in
    ``counts.broker_outages``), raising the failure once it has been away longer than ``limit_s`` [s]; ``over`` once
    it answers again."""

    def __init__(self, limit_s: float, counts: _CountsOutages) -> None:
        self.limit_s = limit_s
        self.counts = counts
        self.since: float | None = None

    def failed(self, error: ServiceUnavailable) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            self.counts.broker_outages += 1
        if now - self.since > self.limit_s:
            raise error

    def over(self) -> None:
        self.since = None


def polls(consumer: BusConsumer, stop: Stop, outage: BrokerOutage, poll_timeout_s: float) -> Iterator[Polled]:
    """Each poll's records (maybe none) until ``stop`` is set; a broker away is waited out (``outage``)."""
    while not stop.is_set():
        try:
            polled = consumer.poll(poll_timeout_s)
        except ServiceUnavailable as e:
            # A broker restart: what is pending stays uncommitted (so safe) while we wait for it to come back.
            outage.failed(e)
            stop.wait(OUTAGE_RETRY_S)
            continue
        outage.over()
        yield polled


def commit_durable(consumer: BusConsumer, polled: Polled, timeout_s: float | None = None) -> CommitOutcome:
    """Commit ``polled`` once the work on its records is durable (dead letters flushed first): ``deferred`` while
    the group rebalances (the next poll retries), ``failed`` if the broker did not take it within ``timeout_s`` [s]
    (None: the client's request timeout): safe to go on, the work is durable and a redelivery is dropped."""
    try:
        return "committed" if consumer.commit(polled, timeout_s) else "deferred"
    except ServiceUnavailable:
        return "failed"


def new_dead_letters(consumer: BusConsumer, counted: MutableMapping[str, int]) -> dict[str, int]:
    """The consumer's dead letters by reason since ``counted`` (moved up to them): reason -> how many are new."""
    new: dict[str, int] = {}
    for reason, n in list(consumer.counters.dead_lettered.items()):
        before = counted.get(reason, 0)
        if n > before:
            new[reason] = n - before
            counted[reason] = n
    return new


def member_timeouts(session_timeout_s: float) -> dict[str, Any]:
    """Consumer settings (kafka-python names) of a member its group gives up on after ``session_timeout_s`` [s]."""
    return {
        "session_timeout_ms": int(session_timeout_s * 1000),
        "heartbeat_interval_ms": max(100, int(session_timeout_s * 1000 / 3)),
    }
