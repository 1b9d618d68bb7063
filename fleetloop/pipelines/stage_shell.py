"""The thin Kafka shell around a lake-writing stage: poll -> process -> write durably -> announce -> commit.

    poll a batch of records (the consumer dead-letters what it cannot decode)
    step(state, deliveries) -> (state, chunks, rejects)      the pure stage function
    rejects -> dead-letter topic, counted by reason
    chunks  -> pending; when ``segment_rows`` or ``segment_age_s`` is reached (or on stop / idle):
        write the segments durably (Parquet, then manifest: the commit point)
        send ``dataset.sealed`` per segment, flush, mark it announced
        flush the dead letters, then commit the offsets of every record behind the segments

A crash anywhere leaves a consistent lake: records not yet committed are redelivered and the stage state,
rebuilt from the manifests, drops what was already written; a segment written but not announced is
announced on the next start. SIGTERM and Ctrl-C stop after the current poll: pending rows are sealed and
committed first. Events are at-least-once (a lost ``.announced`` marker re-sends one), keyed by
``dataset_id`` so consumers drop repeats (docs/adr/0071-collect-exactly-once-effect.md).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fleetloop.pipelines.collect import CollectState, Reject
from fleetloop.pipelines.lake import (
    Chunk,
    Manifest,
    announce_pending,
    load_manifests,
    mark_announced,
    remove_orphans,
    write_segments,
)
from fleetloop.platform.bus.events import DatasetSealed
from fleetloop.platform.bus.schemas import BatchSchema
from fleetloop.platform.bus.topics import Topic
from fleetloop.platform.errors import FleetloopError, ServiceUnavailable
from fleetloop.platform.metrics import counter
from fleetloop.platform.settings import Settings

__all__ = ["LakeSink", "ShellConfig", "StageReport", "StepFn", "StopFlag", "run_stage", "stop_on_signals"]

StepFn = Callable[[CollectState, Sequence[Any]], tuple[CollectState, list[Chunk], list[Reject]]]

ROWS = counter("fleetloop_pipeline_rows_collected_total", "Frames written to the lake.", ["table"])
DUPLICATES = counter(
    "fleetloop_pipeline_duplicates_removed_total", "Frames dropped as already collected.", ["table", "reason"]
)
DEAD_LETTERED = counter(
    "fleetloop_pipeline_dead_lettered_total", "Records a stage sent to the dead-letter topic.", ["table", "reason"]
)
SEGMENTS = counter("fleetloop_pipeline_segments_sealed_total", "Lake segments written durably.", ["table"])


class StopFlag(threading.Event):
    """Set by SIGTERM / Ctrl-C (or a test) to make the shell seal, commit and return."""


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """Route SIGTERM and SIGINT to ``flag`` while inside (main thread only); a second Ctrl-C interrupts hard."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: object) -> None:
        if flag.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass(frozen=True)
class ShellConfig:
    """Where a stage reads and writes, and when it seals.

    Attributes:
        topic: the topic consumed; group_id: the consumer group (members share its partitions).
        events_topic: where ``dataset.sealed`` goes; dead_letter_topic: where rejects go.
        idle_timeout_s: return after this long without records once partitions are assigned (None: run until
            stopped); start_timeout_s: return if no partition was assigned by then [s].
        segment_rows: seal when this many rows are pending; segment_age_s: or when the oldest is this old [s].
        announce: send ``dataset.sealed`` per segment (the ground-truth table does not).
        broker_outage_s: how long polls may fail (broker restarting) before the stage gives up [s].
        session_timeout_s: how long the group waits for a silent member (killed -9) before moving its
            partitions to the others; also how long a restarted member may wait for its partitions [s].
    """

    topic: Topic
    group_id: str
    events_topic: Topic
    dead_letter_topic: Topic
    idle_timeout_s: float | None = 2.0
    start_timeout_s: float = 30.0
    segment_rows: int = 250_000
    segment_age_s: float = 5.0
    announce: bool = True
    poll_timeout_s: float = 0.5
    broker_outage_s: float = 300.0
    session_timeout_s: float = 10.0


@dataclass
class StageReport:
    """What one run of a stage did; ``as_dict`` is what ``fleetloop pipeline run --json`` prints."""

    stage: str
    table: str
    records: int = 0
    frames_in: int = 0
    rows_collected: int = 0
    duplicates_removed: dict[str, int] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    empty_records: int = 0
    segments_sealed: int = 0
    segments: list[dict[str, Any]] = field(default_factory=list)
    events_emitted: int = 0
    recovered_announcements: int = 0
    orphans_removed: int = 0
    commits: int = 0
    commit_failures: int = 0
    broker_outages: int = 0
    stopped_by: str = ""
    wall_s: float = 0.0

    @property
    def frames_per_s(self) -> float:
        return self.rows_collected / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["duplicates_removed_total"] = sum(self.duplicates_removed.values())
        d["dead_lettered_total"] = sum(self.dead_lettered.values())
        d["frames_per_s"] = round(self.frames_per_s, 1)
        return d


class LakeSink:
    """A stage's state plus the rows waiting to become a segment of one lake table."""

    def __init__(self, state_dir: Path, table: str, schema: BatchSchema, step: StepFn, source: str) -> None:
        self.state_dir = Path(state_dir)
        self.table = table
        self.schema = schema
        self.step = step
        self.source = source
        self.state = CollectState()
        self.pending: list[Chunk] = []
        self.pending_rows = 0
        self.pending_since: float | None = None

    def recover(self) -> tuple[int, list[Manifest]]:
        """Delete crash orphans, rebuild the state from every manifest; return (orphans, unannounced)."""
        orphans = remove_orphans(self.state_dir, self.table)
        manifests = load_manifests(self.state_dir, self.table)
        for m in manifests:
            self.state.absorb(m)
        return orphans, announce_pending(manifests)

    def refresh(self) -> None:
        """Absorb segments other group members wrote since (a partition may have moved to us)."""
        for m in load_manifests(self.state_dir, self.table, skip=self.state.segments):
            self.state.absorb(m)

    def add(self, deliveries: Sequence[Any]) -> list[Reject]:
        self.state, chunks, rejects = self.step(self.state, deliveries)
        if chunks and self.pending_since is None:
            self.pending_since = time.monotonic()
        self.pending.extend(chunks)
        self.pending_rows += sum(c.n for c in chunks)
        return rejects

    def age_s(self) -> float:
        return 0.0 if self.pending_since is None else time.monotonic() - self.pending_since

    def seal(self) -> list[Manifest]:
        manifests = write_segments(self.state_dir, self.table, self.schema, self.pending) if self.pending else []
        for m in manifests:
            self.state.segments.add(m.segment_id)
        self.pending, self.pending_rows, self.pending_since = [], 0, None
        return manifests

    def event(self, m: Manifest) -> DatasetSealed:
        return DatasetSealed(
            dataset_id=m.segment_id,
            uri=m.parquet_path.resolve().as_uri(),
            n_frames=m.rows,
            content_sha256=m.content_sha256,
            source=self.source,
        )


def _assigned(consumer: Any) -> bool:
    # BusConsumer does not expose the assignment; the idle clock must not start before the group join.
    inner = getattr(consumer, "_consumer", None)
    return bool(inner.assignment()) if inner is not None else True


def run_stage(
    settings: Settings,
    sink: LakeSink,
    cfg: ShellConfig,
    *,
    stop: StopFlag | None = None,
    on_progress: Callable[[StageReport], None] | None = None,
) -> StageReport:
    """Run ``sink``'s stage as a member of ``cfg.group_id`` until idle, stopped or signalled; see the module doc."""
    from kafka.errors import KafkaError

    from fleetloop.platform.bus.consumer import BusConsumer, Polled
    from fleetloop.platform.bus.deadletter import DeadLetter
    from fleetloop.platform.bus.producer import BusProducer
    from fleetloop.platform.bus.serde import encode

    stage = sink.source.split("/")[0]
    report = StageReport(stage=stage, table=sink.table)
    started = time.monotonic()
    stop = stop or StopFlag()
    dead: Counter[str] = Counter()
    report.orphans_removed, unannounced = sink.recover()
    pending_polls: list[Polled] = []

    with (
        stop_on_signals(stop),
        BusProducer(settings, client_id=f"{stage}-{sink.table}") as producer,
        BusConsumer(
            settings,
            [cfg.topic],
            cfg.group_id,
            dead_letter_topic=cfg.dead_letter_topic,
            client_id=stage,
            session_timeout_ms=int(cfg.session_timeout_s * 1000),
            heartbeat_interval_ms=max(100, int(cfg.session_timeout_s * 1000 / 3)),
        ) as consumer,
    ):

        def announce(manifests: list[Manifest]) -> None:
            if not cfg.announce or not manifests:
                return
            for m in manifests:
                producer.send(cfg.events_topic, sink.event(m), key=m.segment_id)
            producer.flush()  # raises if the broker never took them: they stay unannounced for the next try
            for m in manifests:
                mark_announced(m)
            report.events_emitted += len(manifests)

        def flush() -> None:
            nonlocal unannounced, pending_polls
            t_rows = sink.pending_rows
            manifests = sink.seal()
            report.segments_sealed += len(manifests)
            report.rows_collected += t_rows
            ROWS.labels(sink.table).inc(t_rows)
            SEGMENTS.labels(sink.table).inc(len(manifests))
            report.segments += [
                {"segment": m.segment_id, "partition": m.partition, "rows": m.rows, "sha256": m.content_sha256}
                for m in manifests
            ]
            unannounced = unannounced + manifests
            try:
                announce(unannounced)
                unannounced = []
            except FleetloopError:
                pass  # the next flush (or the next start) announces them
            merged = Polled()
            for p in pending_polls:
                for tp, nxt in p.offsets.items():
                    merged.offsets[tp] = max(nxt, merged.offsets.get(tp, 0))
            pending_polls = []
            if merged.offsets:
                try:
                    consumer.commit(merged)  # also flushes the consumer's own dead letters first
                    report.commits += 1
                except (FleetloopError, KafkaError):
                    # Safe to go on: the rows are durable and deduplicated, a redelivery is dropped.
                    report.commit_failures += 1
            if on_progress:
                on_progress(report)

        if unannounced:
            n = len(unannounced)
            with contextlib.suppress(FleetloopError):
                announce(unannounced)
                report.recovered_announcements = n
                unannounced = []

        last_record: float | None = None
        outage_since: float | None = None
        while not stop.is_set():
            try:
                polled = consumer.poll(cfg.poll_timeout_s)
                outage_since = None
            except ServiceUnavailable:
                # A broker restart: keep what is pending (uncommitted, so safe) and wait for it to come back.
                now = time.monotonic()
                outage_since = outage_since or now
                if now - outage_since > cfg.broker_outage_s:
                    raise
                report.broker_outages += 1
                stop.wait(0.5)
                continue
            now = time.monotonic()
            if polled.n_records:
                last_record = now
                sink.refresh()
                rejects = sink.add(polled.deliveries)
                for r in rejects:
                    d = r.delivery
                    letter = DeadLetter(
                        r.reason, r.message, d.topic, d.partition, d.offset, cfg.group_id, d.key, encode(d.value)
                    )
                    producer.send_raw(cfg.dead_letter_topic.name, letter.value, d.key, letter.headers())
                    dead[r.reason] += 1
                    DEAD_LETTERED.labels(sink.table, r.reason).inc()
                if rejects:
                    producer.flush()  # a reject is committed only once its dead letter is kept
                report.records += polled.n_records
                pending_polls.append(polled)
            elif last_record is None and _assigned(consumer):
                last_record = now  # the idle clock starts once the group has given us partitions
            if pending_polls and (
                sink.pending_rows >= cfg.segment_rows or sink.age_s() >= cfg.segment_age_s or not polled.n_records
            ):
                flush()
            if cfg.idle_timeout_s is not None:
                if last_record is not None and now - last_record >= cfg.idle_timeout_s:
                    report.stopped_by = "idle"
                    break
                if last_record is None and now - started >= cfg.start_timeout_s:
                    report.stopped_by = "no_partitions_assigned"
                    break
        if pending_polls:
            flush()
        if stop.is_set():
            report.stopped_by = "signal"
        for reason, n in consumer.counters.dead_lettered.items():
            dead[reason] += n
            DEAD_LETTERED.labels(sink.table, reason).inc(n)
    s = sink.state
    report.frames_in = s.frames_in
    report.duplicates_removed = dict(s.duplicates)
    for reason, n in s.duplicates.items():
        DUPLICATES.labels(sink.table, reason).inc(n)
    report.empty_records = s.empty_records
    report.dead_lettered = dict(dead)
    report.wall_s = time.monotonic() - started
    return report
