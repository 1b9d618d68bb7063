"""The event-stage shell against a real broker: a bad event is dead-lettered alone while the events polled with
it go on, and a stage waits out a broker restart without losing an event."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from fleetloop.pipelines.event_stage import EventSink, EventStageReport, run_event_stage
from fleetloop.pipelines.stage_shell import ShellConfig, StopFlag, run_shell
from fleetloop.platform.bus import (
    DEAD_LETTER,
    PIPELINE_EVENTS,
    BusConsumer,
    BusProducer,
    DatasetSealed,
    DeadLetter,
    Event,
    LabelsReady,
    Topic,
)
from fleetloop.platform.bus.serde import encode_event
from fleetloop.platform.errors import DataError
from fleetloop.platform.metrics import REGISTRY
from fleetloop.platform.settings import Settings
from tests.integration.private_kafka import private_kafka, private_topics

pytestmark = pytest.mark.integration


@dataclasses.dataclass(frozen=True)
class Topics:
    source: Topic
    out: Topic
    dead: Topic


def fresh_topics(settings: Settings) -> Topics:
    return Topics(*private_topics(settings, (PIPELINE_EVENTS, "in"), (PIPELINE_EVENTS, "out"), (DEAD_LETTER, "dead")))


def sealed(dataset_id: str) -> DatasetSealed:
    return DatasetSealed(dataset_id=dataset_id, uri=f"file:///lake/{dataset_id}.parquet", n_frames=10)


class LabelLike:
    """A stage function shaped like label's: a batch of ``dataset.sealed`` in, one ``labels.ready`` per dataset
    out; a dataset whose id starts with ``bad`` is unreadable (``DataError``), failing the whole call; one whose
    id starts with ``slow`` holds the call until ``gate`` opens and yields nothing (too few frames to label)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[list[str]] = []
        self.handled: list[str] = []
        self.lock = threading.Lock()
        self.gate = gate

    def __call__(self, events: Sequence[Event]) -> list[Event]:
        ids = [e.dataset_id for e in events if isinstance(e, DatasetSealed)]
        with self.lock:
            self.calls.append(ids)
        if any(i.startswith("bad") for i in ids):
            raise DataError(f"segment {next(i for i in ids if i.startswith('bad'))} is unreadable")
        with self.lock:
            self.handled += ids
        if self.gate is not None and any(i.startswith("slow") for i in ids):
            self.gate.wait(60)
        return [
            LabelsReady(dataset_id=i, labels_uri=f"file:///labelled/{i}.parquet", n_labelled=10)
            for i in ids
            if not i.startswith("slow")
        ]


def send_events(settings: Settings, topic: Topic, events: Sequence[Event]) -> None:
    with BusProducer(settings) as p:
        for ev in events:
            p.send(topic, ev, key="one-partition")  # one key: one partition, so one poll takes them all
        p.flush()


def read_events(settings: Settings, topic: Topic, n: int) -> list[Any]:
    got: list[Any] = []
    with BusConsumer(settings, [topic], group_id=f"r-{uuid.uuid4().hex}") as c:
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            got += [d.value for d in c.poll(0.5).deliveries]
    return got


def read_dead_letters(settings: Settings, topic: Topic, n: int) -> list[DeadLetter]:
    from kafka import KafkaConsumer  # raw: a dead letter's headers are what the test reads

    reader = KafkaConsumer(topic.name, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest")
    letters: list[DeadLetter] = []
    try:
        deadline = time.monotonic() + 20
        while len(letters) < n and time.monotonic() < deadline:
            for recs in reader.poll(timeout_ms=500).values():
                letters += [DeadLetter.from_record(r.key, r.value, list(r.headers)) for r in recs]
    finally:
        reader.close()
    return letters


def test_a_data_error_dead_letters_its_event_only_and_the_events_polled_with_it_go_on(
    stack_settings: Settings, kafka_bootstrap: str
) -> None:
    t = fresh_topics(stack_settings)
    events = [sealed("seg-0"), sealed("seg-1"), sealed("bad-2"), sealed("seg-3"), sealed("seg-4")]
    send_events(stack_settings, t.source, events)
    stage = LabelLike()
    group = f"g-{uuid.uuid4().hex}"
    report = run_event_stage(
        stack_settings, "label", stage, wants=("dataset.sealed",), group_id=group, batched=True,
        topic=t.source, events_topic=t.out, dead_letter_topic=t.dead,
    )  # fmt: skip
    assert stage.calls[0] == [e.dataset_id for e in events]  # all five came in one poll, and the batch failed
    assert report.dead_lettered == {"DataError": 1} and report.events_handled == 4
    assert report.events_emitted == 4 and report.commits >= 1
    out = read_events(stack_settings, t.out, 4)
    assert sorted(e.dataset_id for e in out) == ["seg-0", "seg-1", "seg-3", "seg-4"]
    [letter] = read_dead_letters(stack_settings, t.dead, 1)
    assert letter.reason == "DataError" and "bad-2 is unreadable" in letter.error
    assert (letter.topic, letter.offset) == (t.source.name, 2)
    assert letter.value == encode_event(events[2])  # the record kept byte for byte
    again = run_event_stage(
        stack_settings, "label", LabelLike(), wants=("dataset.sealed",), group_id=group,
        topic=t.source, events_topic=t.out, dead_letter_topic=t.dead,
    )  # fmt: skip
    assert again.records == 0  # every offset, the dead-lettered one's too, was committed


def test_an_event_stage_waits_out_a_broker_restart_and_handles_every_event(
    stack_settings: Settings, tmp_path: Path
) -> None:
    from fleetloop.platform import launcher
    from fleetloop.platform.services.kafka import SPEC as KAFKA

    with private_kafka(stack_settings, tmp_path / "stack") as private:
        t = fresh_topics(private)
        gate = threading.Event()
        stage = LabelLike(gate)
        stop = StopFlag()
        report = EventStageReport(stage="label")
        sink = EventSink(stage, report, wants=("dataset.sealed",), events_topic=t.out, batched=True)
        # What run_event_stage runs, with a short commit timeout so that the outage outlasts a commit.
        cfg = ShellConfig(t.source, "g", t.dead, idle_timeout_s=None, commit_timeout_s=2.0)
        worker = threading.Thread(target=run_shell, args=(private, sink, cfg, report), kwargs={"stop": stop})

        def wait_for(what: str, done: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 90
            while not done():
                assert worker.is_alive(), f"the stage died waiting for {what}"
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                time.sleep(0.1)

        worker.start()
        send_events(private, t.source, [sealed(f"before-{i}") for i in range(5)])
        wait_for("the first events", lambda: len(set(stage.handled)) == 5)
        send_events(private, t.source, [sealed("slow-0")])
        wait_for("the slow event", lambda: "slow-0" in stage.handled)
        launcher.down(private, [KAFKA])  # mid-work: the slow event's commit meets no broker
        gate.set()
        wait_for("a failed commit", lambda: report.commit_failures >= 1)
        launcher.up(private, [KAFKA])
        send_events(private, t.source, [sealed(f"after-{i}") for i in range(5)])
        wait_for("the events sent after the restart", lambda: len(set(stage.handled)) == 11)
        wait_for("their announcements", lambda: report.events_emitted >= 10)
        stop.set()
        worker.join(60)
        assert not worker.is_alive() and report.stopped_by == "signal" and report.dead_lettered == {}
        want = {f"before-{i}" for i in range(5)} | {f"after-{i}" for i in range(5)}
        assert {e.dataset_id for e in read_events(private, t.out, 10)} == want


def test_the_lag_a_stage_exports_counts_the_records_it_has_yet_to_read_and_ends_at_zero(
    stack_settings: Settings, kafka_bootstrap: str
) -> None:
    t = fresh_topics(stack_settings)
    send_events(stack_settings, t.source, [sealed(f"seg-{i}") for i in range(30)])
    series = {"stage": "label", "topic": t.source.name}

    def lag() -> float | None:
        return REGISTRY.collector_registry.get_sample_value("fleetloop_pipeline_consumer_lag_records", series)

    seen: list[float | None] = []

    def stage(events: Sequence[Event]) -> list[Event]:
        seen.append(lag())
        return []

    report = EventStageReport(stage="label")
    sink = EventSink(stage, report, wants=("dataset.sealed",), events_topic=t.out, batched=True)
    cfg = ShellConfig(t.source, f"g-{uuid.uuid4().hex}", t.dead, consumer_overrides={"max_poll_records": 5})
    run_shell(stack_settings, sink, cfg, report)
    assert report.records == 30 and len(seen) == 6
    assert seen[0] == 25  # the first poll took 5 of the 30: the gauge was set before the stage ran on them
    assert seen == sorted(seen, reverse=True)  # it falls as the stage reads
    assert lag() == 0
