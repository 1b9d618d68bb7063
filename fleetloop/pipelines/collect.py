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

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetloop.pipelines.lake import Chunk
from fleetloop.pipelines.lake_sink import LakeSink, StageReport
from fleetloop.pipelines.stage_shell import Reject, ShellConfig, StopFlag, run_shell
from fleetloop.platform.bus.schemas import TELEMETRY_FRAMES, BatchSchema
from fleetloop.platform.bus.serde import FrameBatch, encode
from fleetloop.platform.bus.topics import DEAD_LETTER, PIPELINE_EVENTS, TELEMETRY, Topic
from fleetloop.platform.metrics import counter

if TYPE_CHECKING:
    from collections.abc import Callable

    from fleetloop.pipelines.lake import Manifest
    from fleetloop.platform.bus.consumer import Delivery
    from fleetloop.platform.settings import Settings

__all__ = ["MAX_VEHICLE_ID_CHARS", "CollectState", "SeqSet", "batch_fault", "collect", "record_digest", "run_collect"]

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
    """What collect remembers between calls: per-vehicle seqs and ticks already collected, the digests of the
    records whose frames are in the lake (a byte-identical record again is a transport retry), the Kafka offsets
    already in the lake (a record below them is a redelivery), the segments absorbed, and running counts."""

    seen: dict[str, SeqSet] = field(default_factory=dict)
    ticks: dict[str, SeqSet] = field(default_factory=dict)
    records: set[str] = field(default_factory=set)
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
        for memory, by_vehicle in ((self.seen, manifest.vehicles), (self.ticks, manifest.ticks)):
            for vid, intervals in by_vehicle.items():
                memory.setdefault(vid, SeqSet())._merge(*np.asarray(intervals, dtype=np.int64).reshape(-1, 2).T)
        self.records.update(manifest.records)
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
    return batch_fault(value, schema)


def batch_fault(batch: FrameBatch, schema: BatchSchema) -> tuple[str, str] | None:
    """Why a frame batch is not internally consistent, as ``(reason, message)``; None if it is.

    Every column of ``schema`` with its dtype and ``n_frames`` rows (``bad_columns``); no NaN / inf in the
    columns marked ``finite`` (``not_finite``); seqs and ticks strictly increasing, so unique (``seq_order``,
    ``tick_order``). A batch is one vehicle's upload, kept or refused whole (docs/adr/0074)."""
    n = batch.n_frames
    vid = batch.vehicle_id
    for c in schema.columns:
        arr = batch.columns.get(c.name)
        if arr is None:
            return "bad_columns", f"batch of vehicle {vid} has no column {c.name}"
        if arr.dtype != c.np_dtype or arr.shape != (n, *c.shape):
            return "bad_columns", f"column {c.name} is {arr.dtype.str}{arr.shape}, expected {c.dtype}{(n, *c.shape)}"
        if c.finite and n:
            ok = np.isfinite(arr.reshape(n, -1)).all(axis=1)
            if not ok.all():
                i = int(np.flatnonzero(~ok)[0])
                return "not_finite", (
                    f"vehicle {vid}: {int((~ok).sum())} frame(s) with NaN/inf in {c.name} (first at seq "
                    f"{int(batch.seq[i])}: {arr[i]}); the loop needs a finite {c.name}"
                )
    for name in (schema.seq_column, "tick"):
        if name not in schema.by_name or n < 2:
            continue
        v = batch.columns[name].astype(np.int64)
        bad = np.flatnonzero(np.diff(v) <= 0)
        if bad.size:
            i = int(bad[0])
            what = "repeats" if v[i + 1] == v[i] else "goes back from"
            return f"{'seq' if name == schema.seq_column else name}_order", (
                f"vehicle {vid}: {name} {what} {int(v[i])} to {int(v[i + 1])} at frame {i + 1} of {n} "
                f"({bad.size} such step(s)); a batch's {name}s must be unique and increasing"
            )
    return None


def record_digest(delivery: Delivery) -> str:
    """A short digest of the record's bytes: the same upload sent again (a transport retry) has the same one."""
    raw = delivery.raw if delivery.raw is not None else encode(delivery.value)
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def _take_batch(state: CollectState, d: Delivery) -> Chunk | Reject | None:
    """One valid batch: its new frames as a chunk (None if none), or a reject; ``state`` changes only at the
    end, so an error midway leaves it as it was."""
    batch: Any = d.value
    n = batch.n_frames
    if n == 0:
        state.empty_records += 1
        return None
    vid = batch.vehicle_id
    seq = batch.seq.astype(np.int64)  # unique and increasing (batch_fault)
    seen = state.seen.get(vid, SeqSet())
    new = ~seen.contains(seq)
    tick = batch.columns["tick"].astype(np.int64)[new] if "tick" in batch.columns else None
    ticks = state.ticks.get(vid, SeqSet())
    if tick is not None and tick.size:
        clash = ticks.contains(tick)
        if clash.any():
            return Reject(d, "tick_conflict", (
                f"vehicle {vid}: new seq(s) {seq[new][clash][:5].tolist()} at tick(s) {tick[clash][:5].tolist()}, "
                f"where frames of other seqs are already collected; the vehicle reused ticks or seqs"
            ))  # fmt: skip
    digest = record_digest(d)
    dropped = n - int(new.sum())
    if dropped:
        if d.offset < state.lake_offsets.get((d.topic, d.partition), 0):
            reason = "redelivered"  # Kafka delivered this record again (a crash or rebalance before a commit)
        elif digest in state.records:
            reason = "transport_retry"  # the same upload again at a new offset: a producer or outbox retry
        else:
            reason = "duplicate_seq"  # other bytes for seqs already collected: the vehicle repeated a seq
        state.duplicates[reason] += dropped
    state.frames_in += n
    state.records.add(digest)
    if dropped == n:
        return None
    state.seen[vid] = seen
    seen.add_sorted_unique(seq[new])
    if tick is not None:
        state.ticks[vid] = ticks
        ticks.add_sorted_unique(np.unique(tick))
    cols = batch.columns if dropped == 0 else {k: v[new] for k, v in batch.columns.items()}
    state.rows_out += n - dropped
    return Chunk(vid, cols, d.topic, d.partition, d.offset, d.timestamp_ms, digest)


def collect(
    state: CollectState, deliveries: Sequence[Delivery], schema: BatchSchema = TELEMETRY_FRAMES
) -> tuple[CollectState, list[Chunk], list[Reject]]:
    """Turn decoded deliveries into lake chunks, each frame ``(vehicle_id, seq)`` at most once.

    A delivery that is not a consistent frame batch of ``schema`` (:func:`batch_fault`), has a bad vehicle
    id, or brings new seqs at ticks already collected for its vehicle is returned as a reject with a
    reason; so is one that trips an error in this function (``collect_error``): no record stops the stage.
    Frames already in ``state`` are dropped and counted in ``state.duplicates`` by who repeated them
    (``redelivered``: Kafka; ``transport_retry``: a byte-identical record at a new offset; ``duplicate_seq``:
    the vehicle). The order of frames is kept. ``state`` is updated in place and returned."""
    chunks: list[Chunk] = []
    rejects: list[Reject] = []
    for d in deliveries:
        try:
            why = _reject_reason(d, schema)
            out = Reject(d, *why) if why is not None else _take_batch(state, d)
        except Exception as e:  # a record must never crash-loop the stage: dead-letter it
            out = Reject(d, "collect_error", f"{type(e).__name__}: {e}")
        if isinstance(out, Reject):
            rejects.append(out)
        elif out is not None:
            chunks.append(out)
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
    max_poll_records: int | None = None,
) -> StageReport:
    """Run collect as a consumer-group member until idle for ``idle_timeout_s`` (``None``: until SIGTERM/Ctrl-C).

    Segments are sealed every ``segment_rows`` rows or ``segment_age_s`` seconds, when a poll comes back empty,
    and on stop (``stop``: a :class:`~fleetloop.pipelines.stage_shell.StopFlag` to set from another thread);
    each is announced as ``dataset.sealed`` on ``events_topic`` unless ``announce`` is False.
    ``max_poll_records`` bounds the records one poll takes (None: the consumer default, 500)."""

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
        consumer_overrides={} if max_poll_records is None else {"max_poll_records": max_poll_records},
    )
    try:
        run_shell(settings, sink, cfg, report, on_progress=on_progress, stop=stop)
    finally:
        sink.close()
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
    p.add_argument("--max-poll-records", type=int, default=None, help="records per poll (default 500)")
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
        max_poll_records=args.max_poll_records,
    )
    print(json.dumps(report.as_dict(), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
