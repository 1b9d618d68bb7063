"""The one Kafka shell of every pipeline stage: poll -> take -> dead letters -> make durable -> commit.

    poll a batch of records            (the consumer dead-letters what it cannot decode)
    sink.take(deliveries) -> rejects   (the stage's pure function runs here; its refusals come back as data)
    rejects -> the dead-letter topic   (counted by reason; committed only once the letter is acknowledged)
    when sink.due(caught_up):
        sink.flush(producer)           (the stage's effect made durable and announced: segments, events)
        commit the offsets of every record behind it

A :class:`Sink` is what a stage puts behind the shell: :class:`fleetloop.pipelines.lake_sink.LakeSink` seals
lake segments (collect, groundtruth); :mod:`fleetloop.pipelines.event_stage` emits events (label, train,
validate). The shell knows nothing of either.

Faults: a broker outage (polls, sends or commits raise ``ServiceUnavailable``) is waited out up to
``broker_outage_s``: what is pending stays uncommitted, a flush that failed is retried, and the stage resumes
when the broker is back. A commit that fails is counted and skipped: the work is durable and the sinks drop
what they already made durable when it is redelivered. Before partitions leave this member (a rebalance), the
sink is flushed, so their next owner drops what this member already wrote; a commit the group refuses while it
rebalances is retried by the next poll (docs/adr/0075). Every record is processed or dead-lettered: the
dead-letter path keeps a record too large to send again as a reference (docs/adr/0073). SIGTERM and Ctrl-C
stop after the current poll: what is pending is flushed and committed first. The loop itself (polls through an
outage, the stop flag, commits after durable work) is the bus's: :mod:`fleetloop.platform.bus.loop`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from fleetloop.platform.bus.consumer import BusConsumer, Delivery, Polled
from fleetloop.platform.bus.loop import (
    OUTAGE_RETRY_S,
    BrokerOutage,
    StopFlag,
    commit_durable,
    member_timeouts,
    new_dead_letters,
    polls,
    stop_on_signals,
)
from fleetloop.platform.bus.producer import BusProducer
from fleetloop.platform.bus.topics import Topic
from fleetloop.platform.errors import ServiceUnavailable
from fleetloop.platform.metrics import CONSUMER_LAG, counter
from fleetloop.platform.settings import Settings

__all__ = [
    "Reject",
    "ShellConfig",
    "ShellReport",
    "Sink",
    "StopFlag",
    "run_shell",
    "stop_on_signals",
]

log = logging.getLogger(__name__)

DEAD_LETTERED = counter(
    "fleetloop_pipeline_dead_lettered_total",
    "Records a stage sent to the dead-letter topic (table: the lake table, or the stage for event stages).",
    ["table", "reason"],
)


@dataclass(frozen=True)
class Reject:
    """A delivery a stage refuses: it goes to the dead-letter topic with ``reason`` (a code) and ``message``."""

    delivery: Delivery
    reason: str
    message: str


class Sink(Protocol):
    """The stage behind the shell. ``take`` runs the stage on one poll's deliveries and returns what it refuses;
    ``due`` says whether to make the pending work durable now (``caught_up``: the last poll was empty);
    ``flush`` makes it durable and announces it, raising ``ServiceUnavailable`` if the broker did not take the
    announcements and the offsets must wait (it is called again)."""

    name: str

    def start(self, producer: BusProducer) -> None: ...
    def take(self, deliveries: Sequence[Delivery]) -> list[Reject]: ...
    def due(self, caught_up: bool) -> bool: ...
    def flush(self, producer: BusProducer) -> None: ...


@dataclass(frozen=True)
class ShellConfig:
    """Where a stage reads, where its rejects go, and how long it waits.

    Attributes:
        topic: the topic consumed; group_id: the consumer group (members share its partitions).
        dead_letter_topic: where rejects go.
        idle_timeout_s: return after this long without records once partitions are assigned (None: run until
            stopped) [s]; start_timeout_s: return if no partition was assigned by then [s].
        poll_timeout_s: how long one poll waits for records [s].
        broker_outage_s: how long the broker may stay away (polls, sends, commits failing) before the stage
            gives up and raises ``ServiceUnavailable`` [s].
        commit_timeout_s: how long a commit may wait for the broker before it counts as failed [s].
        session_timeout_s: how long the group waits for a silent member (killed -9) before moving its
            partitions to the others; also how long a restarted member may wait for its partitions [s].
        consumer_overrides: kafka-python consumer settings for experiments and tests (``max_poll_interval_ms``).
    """

    topic: Topic
    group_id: str
    dead_letter_topic: Topic
    idle_timeout_s: float | None = 2.0
    start_timeout_s: float = 30.0
    poll_timeout_s: float = 0.5
    broker_outage_s: float = 300.0
    commit_timeout_s: float = 30.0
    session_timeout_s: float = 10.0
    consumer_overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ShellReport:
    """What the shell counts for any stage; stage reports extend it (``as_dict`` is what ``--json`` prints)."""

    stage: str
    records: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    commits: int = 0
    commits_deferred: int = 0
    commit_failures: int = 0
    rebalance_flushes: int = 0
    broker_outages: int = 0
    stopped_by: str = ""
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dead_lettered_total"] = sum(self.dead_lettered.values())
        return d


def run_shell(
    settings: Settings,
    sink: Sink,
    cfg: ShellConfig,
    report: ShellReport,
    *,
    stop: StopFlag | None = None,
    on_progress: Callable[[Any], None] | None = None,
) -> ShellReport:
    """Run ``sink``'s stage as a member of ``cfg.group_id`` until idle, stopped or signalled; fills and returns
    ``report``. See the module docstring for the order of effects."""
    started = time.monotonic()
    stop = stop or StopFlag()
    outage = BrokerOutage(cfg.broker_outage_s, report)
    pending: list[Polled] = []  # polls whose records are taken but not yet durable
    counted: Counter[str] = Counter()  # dead letters already in the metric

    with contextlib.ExitStack() as stack:
        stack.enter_context(stop_on_signals(stop))
        producer = stack.enter_context(BusProducer(settings, client_id=f"{report.stage}-{sink.name}"))

        def on_revoked(partitions: frozenset[tuple[str, int]]) -> None:
            """Partitions are leaving this member: make the work on their records durable before the group
            moves them, so their next owner's dedup sees it (docs/adr/0075). The offsets wait for the next
            commit, which covers only partitions still ours; the rest are redelivered to the new owner and
            dropped there."""
            if not pending:
                return
            try:
                sink.flush(producer)
            except ServiceUnavailable:
                return  # outputs kept; sent by the next flush (at-least-once, consumers drop repeats)
            report.rebalance_flushes += 1

        consumer = stack.enter_context(
            BusConsumer(
                settings,
                [cfg.topic],
                cfg.group_id,
                dead_letter_topic=cfg.dead_letter_topic,
                client_id=report.stage,
                on_revoked=on_revoked,
                **member_timeouts(cfg.session_timeout_s),
                **cfg.consumer_overrides,
            )
        )

        def report_counts() -> None:
            for reason, n in new_dead_letters(consumer, counted).items():
                DEAD_LETTERED.labels(sink.name, reason).inc(n)
            report.dead_lettered = dict(counted)
            report.commits = consumer.counters.commits  # deferred commits done by a later poll included

        def settle() -> bool:
            """Flush the sink and commit what is behind it; False while the broker is away."""
            nonlocal pending
            try:
                sink.flush(producer)
            except ServiceUnavailable as e:
                outage.failed(e)  # the sink keeps what it could not announce; the offsets wait
                return False
            offsets = Polled.merged(pending)
            pending = []
            outcome = commit_durable(consumer, offsets, cfg.commit_timeout_s)
            if outcome == "deferred":  # a rebalance is under way: kept, the next poll commits it
                report.commits_deferred += 1
            elif outcome == "failed":  # safe to go on: the work is durable and idempotent; a redelivery is dropped
                report.commit_failures += 1
            report_counts()
            if on_progress:
                on_progress(report)
            return True

        lag_exported = False

        def export_lag() -> None:
            """The stage's lag on its topic, summed over the partitions it holds (0 once it holds none)."""
            nonlocal lag_exported
            lags = consumer.lag_records()
            if lags or lag_exported:
                CONSUMER_LAG.labels(report.stage, cfg.topic.name).set(sum(lags.values()))
                lag_exported = True

        with contextlib.suppress(ServiceUnavailable):
            sink.start(producer)  # a failed start (recovery announcements) is retried by the first flush

        last_record: float | None = None
        for polled in polls(consumer, stop, outage, cfg.poll_timeout_s):
            export_lag()
            now = time.monotonic()
            if polled.n_records:
                last_record = now
                for r in sink.take(polled.deliveries):
                    consumer.dead_letter(r.delivery, r.reason, r.message)
                report.records += polled.n_records
                pending.append(polled)
            elif last_record is None and consumer.assignment():
                last_record = now  # the idle clock starts once the group has given us partitions
            if pending and sink.due(not polled.n_records) and not settle():
                stop.wait(OUTAGE_RETRY_S)
                continue
            if cfg.idle_timeout_s is not None:
                if last_record is not None and now - last_record >= cfg.idle_timeout_s:
                    report.stopped_by = "idle"
                    break
                if last_record is None and now - started >= cfg.start_timeout_s:
                    report.stopped_by = "no_partitions_assigned"
                    break
        while pending and not settle():
            time.sleep(OUTAGE_RETRY_S)  # stopping: pending work is made durable (or the outage limit raises)
        if consumer.has_deferred_commit and not consumer.finish_commits(cfg.commit_timeout_s):
            # a commit a rebalance refused and no later attempt made before leaving: the work is durable, the
            # next owner is redelivered these records and the sink drops them as duplicates
            report.commit_failures += 1
            log.warning("%s: offsets not committed before leaving (the group was rebalancing)", report.stage)
        if stop.is_set():
            report.stopped_by = "signal"
        report_counts()
    report.wall_s = time.monotonic() - started
    return report
