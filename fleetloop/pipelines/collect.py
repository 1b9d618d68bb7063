"""The collect stage: telemetry frame batches in, deduplicated lake chunks out, rejects as their own stream.

The pure part is :func:`collect`, ``(state, deliveries) -> (state, chunks, rejects)``: no I/O, numpy
arrays in and out. A frame is identified by ``(vehicle_id, seq)`` (the schema says a vehicle never reuses
a seq); the state remembers, per vehicle, the sequence numbers already collected as sorted intervals, so a
frame redelivered after a crash, or uploaded twice by the vehicle, is written once. The state is rebuilt
from the lake's manifests (:meth:`CollectState.absorb`), which carry the same intervals and are written
atomically with the rows, so the dedup survives ``kill -9`` (docs/adr/0071-collect-exactly-once-effect.md).

:func:`run_collect` puts it behind the one stage shell (:mod:`fleetloop.pipelines.stage_shell`) with a lake
sink (:mod:`fleetloop.pipelines.lake_sink`); ``python -m fleetloop.pipelines.collect`` runs it as a process (the
kill -9 test does).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetloop.pipelines.lake import Chunk
from fleetloop.pipelines.lake_sink import LakeSink, StageReport
from fleetloop.pipelines.stage_shell import Reject, ShellConfig, StopFlag, run_shell
from fleetloop.platform.bus.schemas import TELEMETRY_FRAMES, BatchSchema
from fleetloop.platform.bus.serde import FrameBatch
from fleetloop.platform.bus.topics import DEAD_LETTER, PIPELINE_EVENTS, TELEMETRY, Topic
from fleetloop.platform.metrics import counter

if TYPE_CHECKING:
    from collections.abc import Callable

    from fleetloop.pipelines.lake import Manifest
    from fleetloop.platform.bus.consumer import Delivery
    from fleetloop.platform.settings import Settings

__all__ = ["MAX_VEHICLE_ID_CHARS", "CollectState", "SeqSet", "collect", "run_collect"]

MAX_VEHICLE_ID_CHARS = 128  # vehicle ids name lake rows and Kafka keys; longer ones are a producer bug

DUPLICATES = counter(
    "fleetloop_pipeline_duplicates_removed_total", "Frames dropped as already collected.", ["table", "reason"]
)


class SeqSet:
    """A set of non-negative integers stored as sorted, disjoint, non-adjacent inclusive intervals.

    Sequence numbers arrive mostly in runs (a trigger uploads a window of frames), so a vehicle's whole
    history usually takes a handful of intervals."""

    __slots__ = ("ends", "starts")

    def __init__(self, intervals: Sequence[Sequence[int]] = ()) -> None:
        self.starts = np.empty(0, dtype=np.int64)
        self.ends = np.empty(0, dtype=np.int64)
        if len(intervals):
            arr = np.asarray(intervals, dtype=np.int64).reshape(-1, 2)
            self._merge(arr[:, 0], arr[:, 1])

    def __len__(self) -> int:
        """How many integers the set holds."""
        return int((self.ends - self.starts + 1).sum())

    def intervals(self) -> list[list[int]]:
        return [[int(a), int(b)] for a, b in zip(self.starts, self.ends, strict=True)]

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``values`` are in the set."""
        v = np.asarray(values, dtype=np.int64)
        idx = np.searchsorted(self.starts, v, side="right") - 1
        ok = idx >= 0
        out = np.zeros(v.shape, dtype=bool)
        out[ok] = v[ok] <= self.ends[idx[ok]]
        return out

    def add_sorted_unique(self, values: np.ndarray) -> None:
        """Add ``values`` (sorted ascending, no repeats)."""
        if values.size == 0:
            return
        v = np.asarray(values, dtype=np.int64)
        breaks = np.flatnonzero(np.diff(v) != 1) + 1
        self._merge(v[np.concatenate(([0], breaks))], v[np.concatenate((breaks - 1, [v.size - 1]))])

    def _merge(self, starts: np.ndarray, ends: np.ndarray) -> None:
        s = np.concatenate((self.starts, starts))
        e = np.concatenate((self.ends, ends))
        order = np.argsort(s, kind="stable")
        s, e = s[order], e[order]
        reach = np.maximum.accumulate(e)
        # A new interval starts where it neither overlaps nor touches everything before it.
        first = np.concatenate(([True], s[1:] > reach[:-1] + 1))
        heads = np.flatnonzero(first)
        self.starts = s[heads]
        self.ends = np.maximum.reduceat(e, heads)


@dataclass
class CollectState:
    """What collect remembers between calls: per-vehicle seqs already collected, the Kafka offsets already in
    the lake (only to tell a redelivery from a vehicle's own duplicate in the counts), the segments absorbed,
    and running counts."""

    seen: dict[str, SeqSet] = field(default_factory=dict)
    lake_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    segments: set[str] = field(default_factory=set)
    frames_in: int = 0
    rows_out: int = 0
    duplicates: Counter[str] = field(default_factory=Counter)
    empty_records: int = 0

    def absorb(self, manifest: Manifest) -> None:
        """Fold a lake segment (written by us before a crash, or by another group member) into the state."""
        if manifest.segment_id in self.segments:
            return
        self.segments.add(manifest.segment_id)
        for vid, intervals in manifest.vehicles.items():
            seen = self.seen.setdefault(vid, SeqSet())
            seen._merge(*np.asarray(intervals, dtype=np.int64).reshape(-1, 2).T)
        for key, (_, hi) in manifest.offsets.items():
            topic, _, part = key.rpartition(":")
            tp = (topic, int(part))
            self.lake_offsets[tp] = max(self.lake_offsets.get(tp, 0), hi)


def _reject_reason(delivery: Delivery, schema: BatchSchema) -> tuple[str, str] | None:
    value = delivery.value
    if not isinstance(value, FrameBatch) or value.schema.name != schema.name:
        name = value.schema.name if isinstance(value, FrameBatch) else getattr(value, "SCHEMA", type(value).__name__)
        return "wrong_schema", f"collect of {schema.name} got {name}"
    vid = value.vehicle_id
    if len(vid) > MAX_VEHICLE_ID_CHARS or not vid.isprintable():
        return "bad_vehicle_id", f"vehicle id {vid[:40]!r}... is not a printable id of <= {MAX_VEHICLE_ID_CHARS} chars"
    return None


def collect(
    state: CollectState, deliveries: Sequence[Delivery], schema: BatchSchema = TELEMETRY_FRAMES
) -> tuple[CollectState, list[Chunk], list[Reject]]:
    """Turn decoded deliveries into lake chunks, each frame ``(vehicle_id, seq)`` at most once.

    Frames already in ``state`` are dropped and counted in ``state.duplicates`` as ``redelivered`` (the
    record's offset is below what the lake holds for its partition) or ``duplicate_seq`` (the vehicle sent a
    seq twice); deliveries that are not frame batches of ``schema`` or have a bad vehicle id are returned as
    rejects. The order of frames is kept. ``state`` is updated in place and returned."""
    chunks: list[Chunk] = []
    rejects: list[Reject] = []
    for d in deliveries:
        why = _reject_reason(d, schema)
        if why is not None:
            rejects.append(Reject(d, *why))
            continue
        batch: Any = d.value
        n = batch.n_frames
        state.frames_in += n
        if n == 0:
            state.empty_records += 1
            continue
        seq = batch.seq.astype(np.int64)
        uniq, first = np.unique(seq, return_index=True)
        seen = state.seen.setdefault(batch.vehicle_id, SeqSet())
        new = ~seen.contains(uniq)
        keep = np.sort(first[new])
        dropped = n - keep.size
        if dropped:
            within = n - uniq.size  # repeats inside this one record are the vehicle's duplicates
            redelivered = d.offset < state.lake_offsets.get((d.topic, d.partition), 0)
            if dropped > within:
                state.duplicates["redelivered" if redelivered else "duplicate_seq"] += dropped - within
            if within:
                state.duplicates["duplicate_seq"] += within
        if keep.size == 0:
            continue
        seen.add_sorted_unique(uniq[new])
        cols = batch.columns if keep.size == n else {k: v[keep] for k, v in batch.columns.items()}
        chunks.append(Chunk(batch.vehicle_id, cols, d.topic, d.partition, d.offset, d.timestamp_ms))
        state.rows_out += keep.size
    return state, chunks, rejects


def run_collect(
    settings: Settings,
    *,
    topic: Topic | None = None,
    group_id: str = "fleetloop-collect",
    table: str = "telemetry",
    schema: BatchSchema = TELEMETRY_FRAMES,
    announce: bool = True,
    idle_timeout_s: float | None = 2.0,
    segment_rows: int = 250_000,
    segment_age_s: float = 5.0,
    events_topic: Topic | None = None,
    dead_letter_topic: Topic | None = None,
    on_progress: Callable[[StageReport], None] | None = None,
    stop: StopFlag | None = None,
) -> StageReport:
    """Run collect as a consumer-group member until idle for ``idle_timeout_s`` (``None``: until SIGTERM/Ctrl-C).

    Segments are sealed every ``segment_rows`` rows or ``segment_age_s`` seconds, when a poll comes back empty,
    and on stop (``stop``: a :class:`~fleetloop.pipelines.stage_shell.StopFlag` to set from another thread);
    each is announced as ``dataset.sealed`` on ``events_topic`` unless ``announce`` is False."""

    def step(state: CollectState, deliveries: Sequence[Delivery]) -> tuple[CollectState, list[Chunk], list[Reject]]:
        return collect(state, deliveries, schema)

    report = StageReport(stage="collect", table=table)
    state = CollectState()
    sink = LakeSink(
        settings.state_dir,
        table,
        schema,
        step,
        state,
        report,
        events_topic=(events_topic or PIPELINE_EVENTS) if announce else None,
        segment_rows=segment_rows,
        segment_age_s=segment_age_s,
    )
    cfg = ShellConfig(
        topic=topic or TELEMETRY,
        group_id=group_id,
        dead_letter_topic=dead_letter_topic or DEAD_LETTER,
        idle_timeout_s=idle_timeout_s,
    )
    run_shell(settings, sink, cfg, report, on_progress=on_progress, stop=stop)
    report.frames_in = sink.state.frames_in
    report.duplicates_removed = dict(sink.state.duplicates)
    report.empty_records = sink.state.empty_records
    for reason, n in sink.state.duplicates.items():
        DUPLICATES.labels(table, reason).inc(n)
    return report


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m fleetloop.pipelines.collect``: one collect process (settings from the environment)."""
    import argparse
    import dataclasses
    import json

    from fleetloop.platform.bus.topics import topic_named
    from fleetloop.platform.errors import NotFoundError
    from fleetloop.platform.settings import load_settings

    p = argparse.ArgumentParser(prog="python -m fleetloop.pipelines.collect", description=__doc__.splitlines()[0])
    p.add_argument("--topic", default=TELEMETRY.name, help="telemetry topic (a private copy in tests)")
    p.add_argument("--group", default="fleetloop-collect", help="consumer group id")
    p.add_argument("--idle-timeout-s", type=float, default=None, help="stop after this long without records")
    p.add_argument("--segment-rows", type=int, default=250_000)
    p.add_argument("--segment-age-s", type=float, default=5.0)
    p.add_argument("--events-topic", default=PIPELINE_EVENTS.name, help="where dataset.sealed goes")
    p.add_argument("--dead-letter-topic", default=DEAD_LETTER.name, help="where rejects go")
    args = p.parse_args(argv)

    def named(name: str, like: Topic) -> Topic:
        try:
            return topic_named(name)
        except NotFoundError:  # a private copy of a catalogue topic (tests, experiments)
            return dataclasses.replace(like, name=name)

    report = run_collect(
        load_settings(),
        topic=named(args.topic, TELEMETRY),
        events_topic=named(args.events_topic, PIPELINE_EVENTS),
        dead_letter_topic=named(args.dead_letter_topic, DEAD_LETTER),
        group_id=args.group,
        idle_timeout_s=args.idle_timeout_s,
        segment_rows=args.segment_rows,
        segment_age_s=args.segment_age_s,
    )
    print(json.dumps(report.as_dict(), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
