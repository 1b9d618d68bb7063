"""The lake end of a stage: chunks pile up, then become durable segments announced as ``dataset.sealed``.

A :class:`LakeSink` runs behind :func:`fleetloop.pipelines.stage_shell.run_shell` with a pure step
``step(state, deliveries) -> (state, chunks, rejects)`` (collect's). When the shell says so, it writes the
pending chunks as segments (Parquet, then the manifest: the commit point), sends ``dataset.sealed`` per
segment, flushes and marks it announced; only then may the shell commit the offsets behind them.

A crash anywhere leaves a consistent lake: records not yet committed are redelivered and the state, rebuilt
from the manifests (:meth:`LakeState.absorb`), drops what was already written; a segment written but not
announced is announced by the next flush or the next start. Events are at-least-once (a lost ``.announced``
marker re-sends one), keyed by ``dataset_id`` so consumers drop repeats
(docs/adr/0071-collect-exactly-once-effect.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from fleetloop.pipelines.lake import (
    Chunk,
    Manifest,
    WriterLease,
    announce_pending,
    live_writers,
    load_manifests,
    mark_announced,
    remove_orphans,
    write_segments,
)
from fleetloop.pipelines.stage_shell import Reject, ShellReport
from fleetloop.platform.bus.consumer import Delivery
from fleetloop.platform.bus.events import DatasetSealed
from fleetloop.platform.bus.producer import BusProducer
from fleetloop.platform.bus.schemas import BatchSchema
from fleetloop.platform.bus.topics import Topic
from fleetloop.platform.errors import ServiceUnavailable
from fleetloop.platform.metrics import counter

__all__ = ["LakeSink", "LakeState", "LakeStep", "StageReport"]

ROWS = counter("fleetloop_pipeline_rows_collected_total", "Frames written to the lake.", ["table"])
SEGMENTS = counter("fleetloop_pipeline_segments_sealed_total", "Lake segments written durably.", ["table"])


class LakeState(Protocol):
    """A lake stage's state: it can fold in a segment already in the lake (ours before a crash, or another
    group member's)."""

    def absorb(self, manifest: Manifest) -> None: ...


S = TypeVar("S", bound=LakeState)
LakeStep = Callable[[S, Sequence[Delivery]], tuple[S, list[Chunk], list[Reject]]]


@dataclass
class StageReport(ShellReport):
    """What one run of a lake stage did; ``as_dict`` is what ``fleetloop pipeline run --json`` prints."""

    table: str = ""
    frames_in: int = 0
    rows_collected: int = 0
    duplicates_removed: dict[str, int] = field(default_factory=dict)
    empty_records: int = 0
    segments_sealed: int = 0
    segments: list[dict[str, Any]] = field(default_factory=list)
    events_emitted: int = 0
    recovered_announcements: int = 0
    orphans_removed: int = 0

    @property
    def frames_per_s(self) -> float:
        return self.rows_collected / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        d["duplicates_removed_total"] = sum(self.duplicates_removed.values())
        d["frames_per_s"] = round(self.frames_per_s, 1)
        return d


class LakeSink(Generic[S]):
    """A lake stage's state plus the rows waiting to become segments of one table.

    Args:
        state_dir, table, schema: where and what the segments are.
        step: the pure stage function; state: its initial state (rebuilt from the manifests at start).
        report: filled as segments are sealed and announced (its ``stage`` names the source of events).
        events_topic: where ``dataset.sealed`` goes; None announces nothing (the ground-truth table).
        segment_rows: seal when this many rows are pending; segment_age_s: or when the oldest is this old [s].
    """

    def __init__(
        self,
        state_dir: Path,
        table: str,
        schema: BatchSchema,
        step: LakeStep[S],
        state: S,
        report: StageReport,
        *,
        events_topic: Topic | None,
        segment_rows: int = 250_000,
        segment_age_s: float = 5.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.name = table
        self.schema = schema
        self.step = step
        self.state = state
        self.report = report
        self.events_topic = events_topic
        self.segment_rows = segment_rows
        self.segment_age_s = segment_age_s
        self.source = f"{report.stage}/{table}"
        self.segment_ids: set[str] = set()
        self.unannounced: list[Manifest] = []
        self.pending: list[Chunk] = []
        self.pending_rows = 0
        self.pending_since: float | None = None
        self.lease: WriterLease | None = None

    def close(self) -> None:
        """Give the writer lease back (a process that dies gives it back too)."""
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    # -- the Sink protocol ----------------------------------------------------------------------------

    def start(self, producer: BusProducer) -> None:
        """Take a writer lease, delete what dead writers left (never a live member's unfinished segment),
        rebuild the state from every manifest, announce what a crash left unannounced."""
        if self.lease is None:
            self.lease = WriterLease(self.state_dir, self.name)
        live = live_writers(self.state_dir, self.name)
        self.report.orphans_removed = remove_orphans(self.state_dir, self.name, live)
        manifests = load_manifests(self.state_dir, self.name)
        self._absorb(manifests)
        self.unannounced = announce_pending(manifests) if self.events_topic is not None else []
        n = len(self.unannounced)
        if n and self._announce(producer):
            self.report.recovered_announcements = n

    def take(self, deliveries: Sequence[Delivery]) -> list[Reject]:
        # Segments other group members wrote since: a partition may have moved to us.
        self._absorb(load_manifests(self.state_dir, self.name, skip=self.segment_ids))
        self.state, chunks, rejects = self.step(self.state, deliveries)
        if chunks and self.pending_since is None:
            self.pending_since = time.monotonic()
        self.pending.extend(chunks)
        self.pending_rows += sum(c.n for c in chunks)
        return rejects

    def due(self, caught_up: bool) -> bool:
        return caught_up or self.pending_rows >= self.segment_rows or self.age_s() >= self.segment_age_s

    def flush(self, producer: BusProducer) -> None:
        """Write the pending rows as durable segments and announce them. Never holds the offsets back: the rows
        are durable, and an announcement the broker did not take is retried by the next flush or start."""
        rows = self.pending_rows
        manifests = self.seal()
        r = self.report
        r.segments_sealed += len(manifests)
        r.rows_collected += rows
        ROWS.labels(self.name).inc(rows)
        SEGMENTS.labels(self.name).inc(len(manifests))
        r.segments += [
            {"segment": m.segment_id, "partition": m.partition, "rows": m.rows, "sha256": m.content_sha256}
            for m in manifests
        ]
        if self.events_topic is not None:
            self.unannounced += manifests
            self._announce(producer)

    # -- parts ------------------------------------------------------------------------------------------

    def age_s(self) -> float:
        return 0.0 if self.pending_since is None else time.monotonic() - self.pending_since

    def seal(self) -> list[Manifest]:
        """Write the pending chunks durably (one segment per hour partition); return the manifests."""
        writer = self.lease.token if self.lease is not None else ""
        manifests = (
            write_segments(self.state_dir, self.name, self.schema, self.pending, writer=writer) if self.pending else []
        )
        self.segment_ids.update(m.segment_id for m in manifests)
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

    def _absorb(self, manifests: Sequence[Manifest]) -> None:
        for m in manifests:
            self.state.absorb(m)
            self.segment_ids.add(m.segment_id)

    def _announce(self, producer: BusProducer) -> bool:
        """Send ``dataset.sealed`` for every unannounced segment; False if the broker did not take them."""
        if not self.unannounced or self.events_topic is None:
            return True
        try:
            for m in self.unannounced:
                producer.send(self.events_topic, self.event(m), key=m.segment_id)
            producer.flush()  # raises if the broker never took them: they stay unannounced for the next try
        except ServiceUnavailable:
            return False
        for m in self.unannounced:
            mark_announced(m)
        self.report.events_emitted += len(self.unannounced)
        self.unannounced = []
        return True
