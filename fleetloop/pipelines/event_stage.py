"""The event-driven stages (label, train, validate) behind the one stage shell: events in, events out.

    poll pipeline events                       (the shell; the consumer dead-letters what it cannot decode)
    keep the schemas the stage wants, drop repeats of an event id already handled in this run
    handle(events) -> output events            the stage function (its own files are its durable effect)
    events it could not handle -> rejects      (the shell dead-letters them)
    flush: send the outputs, flush (acks=all); then the shell commits the offsets

A handler that raises a ``DataError`` / ``UserInputError`` (bad event, missing dataset) fails only the event it
was handling: by default each event is handled alone (``batched=False``), so the error names its event; a
``batched`` handler gets a poll's events together and, when it raises, gets them again one by one, so only the
events that fail alone are dead-lettered (reason: the error's class) and the others' outputs go on. Anything
else propagates and nothing is committed, so the events are redelivered on the next start.

Batched handlers must be idempotent on their inputs (label skips datasets already labelled, train trains only
on what no run has used): a batch that raised, or a redelivery after a crash between emit and commit, is
handled again and repeats at most an announcement, which consumers drop by its key (docs/adr/0072).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleetloop.pipelines.stage_shell import Reject, ShellConfig, ShellReport, StopFlag, run_shell
from fleetloop.platform.bus.events import Event
from fleetloop.platform.bus.topics import DEAD_LETTER, PIPELINE_EVENTS, Topic
from fleetloop.platform.errors import DataError, UserInputError

if TYPE_CHECKING:
    from fleetloop.platform.bus.consumer import Delivery
    from fleetloop.platform.bus.producer import BusProducer
    from fleetloop.platform.settings import Settings

__all__ = ["HANDLED_ERRORS", "EventSink", "EventStageReport", "Handler", "handle_isolated", "run_event_stage"]

Handler = Callable[[Sequence[Event]], list[Event]]
HANDLED_ERRORS = (DataError, UserInputError)  # the event's fault: dead-letter it, go on


@dataclass
class EventStageReport(ShellReport):
    """What one run of an event-driven stage did."""

    events_in: int = 0
    events_handled: int = 0
    events_emitted: int = 0
    duplicates_dropped: int = 0


def handle_isolated(
    handle: Handler, events: Sequence[Event], *, batched: bool
) -> tuple[list[Event], list[tuple[int, Exception]]]:
    """Run ``handle`` over ``events`` so that an event's ``DataError`` / ``UserInputError`` fails that event only.

    Returns the outputs and ``(index, error)`` of each event that failed when handled alone. ``batched``: try
    all events in one call first (the handler must be idempotent); else one call per event."""
    if batched and len(events) > 1:
        try:
            return handle(events), []
        except HANDLED_ERRORS:
            pass  # find the culprits: each event alone
    outputs: list[Event] = []
    failed: list[tuple[int, Exception]] = []
    for i, ev in enumerate(events):
        try:
            outputs += handle([ev])
        except HANDLED_ERRORS as e:
            failed.append((i, e))
    return outputs, failed


class EventSink:
    """An event stage behind the shell: filters and deduplicates events, handles them, emits the outputs."""

    def __init__(
        self, handle: Handler, report: EventStageReport, *, wants: Sequence[str], events_topic: Topic, batched: bool
    ) -> None:
        self.name = report.stage
        self.handle = handle
        self.report = report
        self.wants = frozenset(wants)
        self.events_topic = events_topic
        self.batched = batched
        self.seen: set[str] = set()
        self.outputs: list[Event] = []  # handled, not yet acknowledged by the broker

    def start(self, producer: BusProducer) -> None:
        """Nothing to recover: a handler's files are its state."""

    def take(self, deliveries: Sequence[Delivery]) -> list[Reject]:
        batch: list[tuple[Delivery, Event]] = []
        for d in deliveries:
            ev = d.value
            if not isinstance(ev, Event) or ev.SCHEMA not in self.wants:
                continue
            self.report.events_in += 1
            if ev.event_id in self.seen:
                self.report.duplicates_dropped += 1
                continue
            self.seen.add(ev.event_id)
            batch.append((d, ev))
        if not batch:
            return []
        outputs, failed = handle_isolated(self.handle, [ev for _, ev in batch], batched=self.batched)
        self.outputs += outputs
        self.report.events_handled += len(batch) - len(failed)
        return [Reject(batch[i][0], type(e).__name__, str(e)) for i, e in failed]

    def due(self, caught_up: bool) -> bool:
        return True  # every poll: a handler's effect is already durable, its outputs go out at once

    def flush(self, producer: BusProducer) -> None:
        """Send the outputs and wait for the broker; on ``ServiceUnavailable`` they are kept and sent again."""
        if not self.outputs:
            return
        for out in self.outputs:
            producer.send(self.events_topic, out, key=_key(out))
        producer.flush()
        self.report.events_emitted += len(self.outputs)
        self.outputs = []


def run_event_stage(
    settings: Settings,
    stage: str,
    handle: Handler,
    *,
    wants: Sequence[str],
    group_id: str,
    batched: bool = False,
    topic: Topic | None = None,
    events_topic: Topic | None = None,
    dead_letter_topic: Topic | None = None,
    idle_timeout_s: float | None = 2.0,
    start_timeout_s: float = 30.0,
    poll_timeout_s: float = 0.5,
    stop: StopFlag | None = None,
) -> EventStageReport:
    """Consume ``topic`` (default the pipeline events) as ``group_id`` until idle or stopped, emitting to
    ``events_topic`` (default the pipeline events); see the module docstring."""
    report = EventStageReport(stage=stage)
    sink = EventSink(handle, report, wants=wants, events_topic=events_topic or PIPELINE_EVENTS, batched=batched)
    cfg = ShellConfig(
        topic=topic or PIPELINE_EVENTS,
        group_id=group_id,
        dead_letter_topic=dead_letter_topic or DEAD_LETTER,
        idle_timeout_s=idle_timeout_s,
        start_timeout_s=start_timeout_s,
        poll_timeout_s=poll_timeout_s,
    )
    run_shell(settings, sink, cfg, report, stop=stop)
    return report


def _key(event: Any) -> str:
    for attr in ("dataset_id", "run_id", "model_name"):
        v = getattr(event, attr, None)
        if v:
            return str(v)
    return str(event.SCHEMA)
