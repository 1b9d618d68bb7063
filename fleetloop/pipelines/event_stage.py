"""The thin Kafka shell of the event-driven stages (label, train, validate): poll -> handle -> emit -> commit.

    poll pipeline events (the consumer dead-letters what it cannot decode)
    keep the schemas the stage wants, drop repeats of an event id already handled in this run
    handle(events) -> output events              the stage function (its own files are its durable effect)
    send the outputs, flush (acks=all), then commit the offsets

A handler that raises a ``DataError`` / ``UserInputError`` (bad event, missing dataset) has the events of that
poll dead-lettered with the reason, counted, and the stage goes on; anything else propagates and nothing is
committed, so the events are redelivered on the next start. Handlers are idempotent on their inputs (label
skips datasets already labelled), so a redelivery after a crash between emit and commit repeats at most an
announcement, which consumers drop by its key.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetloop.platform.bus.events import Event
    from fleetloop.platform.bus.topics import Topic
    from fleetloop.platform.settings import Settings

__all__ = ["EventStageReport", "run_event_stage"]


@dataclass
class EventStageReport:
    """What one run of an event-driven stage did."""

    stage: str
    events_in: int = 0
    events_handled: int = 0
    events_emitted: int = 0
    duplicates_dropped: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    stopped_by: str = ""
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_event_stage(
    settings: Settings,
    stage: str,
    handle: Callable[[Sequence[Event]], list[Event]],
    *,
    wants: Sequence[str],
    group_id: str,
    topic: Topic | None = None,
    idle_timeout_s: float | None = 2.0,
    start_timeout_s: float = 30.0,
    poll_timeout_s: float = 0.5,
    stop: Any = None,
) -> EventStageReport:
    """Consume ``topic`` (default the pipeline events) as ``group_id`` until idle or stopped; see the module doc."""
    from fleetloop.pipelines.stage_shell import StopFlag, stop_on_signals
    from fleetloop.platform.bus.consumer import BusConsumer
    from fleetloop.platform.bus.deadletter import DeadLetter
    from fleetloop.platform.bus.producer import BusProducer
    from fleetloop.platform.bus.serde import encode
    from fleetloop.platform.bus.topics import DEAD_LETTER, PIPELINE_EVENTS
    from fleetloop.platform.errors import DataError, UserInputError

    src = topic or PIPELINE_EVENTS
    report = EventStageReport(stage=stage)
    started = time.monotonic()
    stop = stop or StopFlag()
    seen: set[str] = set()
    dead: Counter[str] = Counter()
    with (
        stop_on_signals(stop),
        BusProducer(settings, client_id=f"{stage}-events") as producer,
        BusConsumer(settings, [src], group_id, client_id=stage) as consumer,
    ):
        last: float | None = None
        while not stop.is_set():
            polled = consumer.poll(poll_timeout_s)
            now = time.monotonic()
            if polled.n_records:
                last = now
                batch = []
                for d in polled.deliveries:
                    ev: Any = d.value
                    if getattr(ev, "SCHEMA", None) not in wants:
                        continue
                    report.events_in += 1
                    if ev.event_id in seen:
                        report.duplicates_dropped += 1
                        continue
                    seen.add(ev.event_id)
                    batch.append((d, ev))
                if batch:
                    try:
                        outputs = handle([ev for _, ev in batch])
                    except (DataError, UserInputError) as e:
                        reason = type(e).__name__
                        for d, _ in batch:
                            letter = DeadLetter(
                                reason, str(e), d.topic, d.partition, d.offset, group_id, d.key, encode(d.value)
                            )
                            producer.send_raw(DEAD_LETTER.name, letter.value, d.key, letter.headers())
                            dead[reason] += 1
                        outputs = []
                    else:
                        report.events_handled += len(batch)
                    for out in outputs:
                        producer.send(PIPELINE_EVENTS, out, key=_key(out))
                    report.events_emitted += len(outputs)
                producer.flush()
                consumer.commit(polled)
            elif last is None:
                last = now if _assigned(consumer) else None
                if last is None and idle_timeout_s is not None and now - started >= start_timeout_s:
                    report.stopped_by = "no_partitions_assigned"
                    break
            if idle_timeout_s is not None and last is not None and now - last >= idle_timeout_s:
                report.stopped_by = "idle"
                break
        if stop.is_set():
            report.stopped_by = "signal"
    report.dead_lettered = dict(dead)
    report.wall_s = time.monotonic() - started
    return report


def _key(event: Any) -> str:
    for attr in ("dataset_id", "run_id", "model_name"):
        v = getattr(event, attr, None)
        if v:
            return str(v)
    return str(event.SCHEMA)


def _assigned(consumer: Any) -> bool:
    inner = getattr(consumer, "_consumer", None)
    return bool(inner.assignment()) if inner is not None else True
