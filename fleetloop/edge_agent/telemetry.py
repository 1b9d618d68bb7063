"""Where uploaded frames go: the ``TelemetrySink`` interface, an in-memory sink and the Kafka sink.

The fleet runner hands every tick's uploaded frames (``UploadedFrames``: telemetry columns of
``telemetry.frames`` and, for the same frames, the ground-truth columns of ``groundtruth.frames``) to a sink. The
runner core depends on this module's interface only; ``BusTelemetrySink`` imports the bus (kafka-python) and the
spool lazily, on construction, so ``fleetloop sim run --no-telemetry`` and the runner import with torch + numpy alone.

``BusTelemetrySink`` never blocks the fleet on the broker: ``submit`` appends to a bounded outbox; a background
thread groups the outbox by vehicle, sends one ``FrameBatch`` per vehicle to the telemetry topic and the matching
ground truth to the audit topic, and flushes (acks=all). While the broker is down the frames wait in the outbox and
are retried. What the broker does not take is spooled to the state directory (``telemetry_spool``, ADR 0082): the
oldest half of the outbox when it overflows (``outbox_full``), what is still queued when the sink closes
(``unsent_at_close``); ``deliver_spooled`` sends it on a later run. Frames are lost only when they cannot be
encoded (``malformed``) or spooled (``spool_failed``), or, for a sink made with ``spool=False``, for the two reasons
above; every frame spooled or lost is counted with its reason. A retry after a failed flush may send frames twice;
consumers deduplicate on (vehicle id, seq), as the collect stage does.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from fleetloop.edge_agent.heartbeat import Heartbeat
    from fleetloop.edge_agent.telemetry_spool import TelemetrySpool
    from fleetloop.platform.bus import BatchSchema, Topic
    from fleetloop.platform.settings import Settings

__all__ = [
    "BusTelemetrySink",
    "CollectingSink",
    "TelemetrySink",
    "UploadedFrames",
    "concat_frames",
    "deliver_spooled",
    "vehicle_key",
]


def vehicle_key(vehicle_id: int, fleet_tag: str = "") -> str:
    """The telemetry vehicle id (Kafka key) of a simulated vehicle: ``"<fleet_tag>-<id>"`` or ``"<id>"``."""
    return f"{fleet_tag}-{vehicle_id}" if fleet_tag else str(vehicle_id)


@dataclass(frozen=True)
class UploadedFrames:
    """Frames uploaded on one tick (n frames, any vehicles).

    ``telemetry`` holds every ``TELEMETRY_FRAMES`` column, ``ground_truth`` every ``GROUND_TRUTH_FRAMES`` column
    for the same frames (or None when the runner keeps no ground truth), each with n rows.
    """

    vehicle_ids: np.ndarray
    telemetry: Mapping[str, np.ndarray]
    ground_truth: Mapping[str, np.ndarray] | None = None

    @property
    def n_frames(self) -> int:
        return int(self.vehicle_ids.shape[0])

    def take(self, index: np.ndarray) -> UploadedFrames:
        """The frames at ``index``."""
        gt = None if self.ground_truth is None else {k: v[index] for k, v in self.ground_truth.items()}
        return UploadedFrames(self.vehicle_ids[index], {k: v[index] for k, v in self.telemetry.items()}, gt)


def concat_frames(parts: list[UploadedFrames]) -> UploadedFrames:
    """The frames of ``parts`` (at least one) as one ``UploadedFrames``, in order; ground truth only if all have it."""
    gts = [p.ground_truth for p in parts if p.ground_truth is not None]
    gt = {k: np.concatenate([g[k] for g in gts]) for k in gts[0]} if gts and len(gts) == len(parts) else None
    tel = {k: np.concatenate([p.telemetry[k] for p in parts]) for k in parts[0].telemetry}
    return UploadedFrames(np.concatenate([p.vehicle_ids for p in parts]), tel, gt)


class TelemetrySink(Protocol):
    """Receives uploaded frames; must not block the fleet for long."""

    def submit(self, frames: UploadedFrames) -> None:
        """Take this tick's uploaded frames."""
        ...

    def submit_heartbeats(self, beats: Sequence[Heartbeat]) -> None:
        """Take the vehicles' heartbeats of one beat (``vehicle_id``: the plain vehicle id)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters so far: ``frames_submitted``, ``frames_sent``, ``frames_lost`` by reason, ..."""
        ...

    def close(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Deliver what can be delivered within ``timeout_s``, count the rest as lost; return the stats."""
        ...


class CollectingSink:
    """Keeps every submitted frame in memory (tests, short evaluations); ``frames()`` concatenates them."""

    def __init__(self) -> None:
        self.parts: list[UploadedFrames] = []
        self.heartbeats: list[Heartbeat] = []

    def submit(self, frames: UploadedFrames) -> None:
        if frames.n_frames:
            self.parts.append(frames)

    def submit_heartbeats(self, beats: Sequence[Heartbeat]) -> None:
        self.heartbeats.extend(beats)

    def frames(self) -> UploadedFrames | None:
        """Everything submitted, as one ``UploadedFrames`` (None if nothing)."""
        return concat_frames(self.parts) if self.parts else None

    def stats(self) -> dict[str, Any]:
        n = sum(p.n_frames for p in self.parts)
        return {"sink": "memory", "frames_submitted": n, "frames_sent": n, "frames_lost": {}}

    def close(self, timeout_s: float = 30.0) -> dict[str, Any]:
        return self.stats()


class BusTelemetrySink:
    """Sends uploaded frames to Kafka from a background thread, through a bounded outbox (see the module doc).

    Args:
        settings: where the broker is, and the state directory whose spool keeps what the broker does not take.
        fleet_tag: prefix of the telemetry vehicle ids (``vehicle_key``), e.g. the run id, so that runs do not
            reuse (vehicle id, seq) pairs.
        max_outbox_frames: frames held while the broker is away; beyond it the oldest half is spooled (or, without
            a spool, the oldest frames over the bound are dropped); counted either way.
        flush_interval_s: how often the thread sends what has accumulated [s] (bigger batches per vehicle).
        retry_backoff_s: wait after a failed attempt [s].
        send_timeout_s: longest one flush may take before the attempt counts as failed [s].
        spool: keep undelivered frames in ``<state_dir>/telemetry-outbox`` for a later run (ADR 0082); False: count
            them as lost.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        fleet_tag: str = "",
        max_outbox_frames: int = 200_000,
        flush_interval_s: float = 1.0,
        retry_backoff_s: float = 2.0,
        send_timeout_s: float = 15.0,
        client_id: str = "fleetloop-fleet",
        spool: bool = True,
    ) -> None:
        from fleetloop.edge_agent.telemetry_spool import TelemetrySpool
        from fleetloop.platform.bus import GROUND_TRUTH_AUDIT, GROUND_TRUTH_FRAMES, TELEMETRY, TELEMETRY_FRAMES

        if max_outbox_frames < 1:
            raise ValueError(f"max_outbox_frames must be >= 1, got {max_outbox_frames}")
        self._topics = (TELEMETRY, GROUND_TRUTH_AUDIT)
        self._schemas = (TELEMETRY_FRAMES, GROUND_TRUTH_FRAMES)
        self.settings = settings
        self.fleet_tag = fleet_tag
        self.max_outbox_frames = int(max_outbox_frames)
        self.flush_interval_s = flush_interval_s
        self.retry_backoff_s = retry_backoff_s
        self.send_timeout_s = send_timeout_s
        self.client_id = client_id
        self.spool: TelemetrySpool | None = TelemetrySpool.of_state_dir(settings.state_dir) if spool else None
        self._outbox: deque[UploadedFrames] = deque()
        self._outbox_frames = 0
        self._lock = threading.Lock()
        self._spool_lock = threading.Lock()  # one spill at a time: the fleet thread and the sender may both spill
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._producer: Any = None
        self._inflight: list[UploadedFrames] = []  # taken from the outbox by the sender, not yet sent or put back
        self._beats: deque[Heartbeat] = deque()  # heartbeats to send (not spooled: the next beat supersedes them)
        self._beats_inflight: list[Heartbeat] = []
        self._abandoned = False  # close() gave up on the sender thread: it must not count anything after that
        self._stats: dict[str, Any] = {
            "sink": "kafka",
            "bootstrap": settings.bootstrap_servers,
            "frames_submitted": 0,
            "frames_sent": 0,
            "ground_truth_frames_sent": 0,
            "messages_sent": 0,
            "frames_spooled": {},
            "frames_lost": {},
            "failed_attempts": 0,
            "last_error": None,
            "outbox_peak_frames": 0,
            "heartbeats_submitted": 0,
            "heartbeats_sent": 0,
            "heartbeats_lost": {},
        }
        self._thread = threading.Thread(target=self._loop, name="fleet-telemetry", daemon=True)
        self._thread.start()

    # -- fleet side ------------------------------------------------------------------------------

    def submit(self, frames: UploadedFrames) -> None:
        """Queue frames for sending (never waits for the broker); spools the oldest half when over the bound."""
        if frames.n_frames == 0:
            return
        with self._lock:
            self._outbox.append(frames)
            self._outbox_frames += frames.n_frames
            self._stats["frames_submitted"] += frames.n_frames
            self._stats["outbox_peak_frames"] = max(self._stats["outbox_peak_frames"], self._outbox_frames)
            evicted = self._trim_locked()
        self._spill(evicted, "outbox_full")

    def submit_heartbeats(self, beats: Sequence[Heartbeat]) -> None:
        """Queue heartbeats for the fleet-health topic (never waits for the broker); beyond
        ``max_outbox_frames`` queued the oldest are dropped and counted ``outbox_full``."""
        with self._lock:
            self._beats.extend(beats)
            self._stats["heartbeats_submitted"] += len(beats)
            over = len(self._beats) - self.max_outbox_frames
            for _ in range(max(0, over)):
                self._beats.popleft()
            if over > 0:
                _count(self._stats["heartbeats_lost"], "outbox_full", over)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self._stats)
            out["heartbeats_lost"] = dict(self._stats["heartbeats_lost"])
            out["frames_lost"] = dict(self._stats["frames_lost"])
            out["frames_spooled"] = dict(self._stats["frames_spooled"])
            out["outbox_frames"] = self._outbox_frames
        return out

    def close(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Send what is queued within ``timeout_s``; spool (or lose) what is still unsent as ``unsent_at_close``."""
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            # A sender still stuck in a send may yet deliver its frames: spooling them too can only duplicate them.
            left = list(self._outbox) + (self._inflight if self._thread.is_alive() else [])
            beats_left = len(self._beats) + (len(self._beats_inflight) if self._thread.is_alive() else 0)
            if beats_left:
                _count(self._stats["heartbeats_lost"], "unsent_at_close", beats_left)
            self._beats.clear()
            self._abandoned = True
            self._outbox.clear()
            self._outbox_frames = 0
        self._spill(left, "unsent_at_close")
        if self._producer is not None:
            try:
                self._producer.close(timeout_s=max(1.0, deadline - time.monotonic()))
            except Exception as e:  # the frames were counted above; a failing close must not hide the run
                with self._lock:
                    self._stats["last_error"] = f"closing the producer: {e}"
        return self.stats()

    # -- what the broker did not take -------------------------------------------------------------

    def _lose_locked(self, reason: str, n: int) -> None:
        _count(self._stats["frames_lost"], reason, n)

    def _trim_locked(self) -> list[UploadedFrames]:
        """Take the oldest frames off an outbox over its bound: down to half the bound when they go to the spool
        (one file per overflow, not one per tick), just below the bound when they are lost. Returns them."""
        if self._outbox_frames <= self.max_outbox_frames:
            return []
        keep = self.max_outbox_frames // 2 if self.spool is not None else self.max_outbox_frames
        evicted: list[UploadedFrames] = []
        while self._outbox_frames > keep and self._outbox:
            excess = self._outbox_frames - keep
            head = self._outbox[0]
            if head.n_frames <= excess:
                evicted.append(self._outbox.popleft())
            else:
                evicted.append(head.take(np.arange(excess)))
                self._outbox[0] = head.take(np.arange(excess, head.n_frames))
            self._outbox_frames -= evicted[-1].n_frames
        return evicted

    def _spill(self, parts: list[UploadedFrames], reason: str) -> None:
        """Spool ``parts`` as one file (counted under ``reason``); without a spool, or when writing fails, lose them."""
        n = sum(p.n_frames for p in parts)
        if not n:
            return
        error = None
        if self.spool is not None:
            try:
                with self._spool_lock:
                    self.spool.write(concat_frames(parts), self.fleet_tag)
            except (OSError, ValueError) as e:
                error = f"spooling {n} frames to {self.spool.directory}: {e}"
        with self._lock:
            if self.spool is None:
                self._lose_locked(reason, n)
            elif error is None:
                _count(self._stats["frames_spooled"], reason, n)
            else:
                self._lose_locked("spool_failed", n)
                self._stats["last_error"] = error

    # -- sender thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            self._send_heartbeats()
            with self._lock:
                pending = list(self._outbox)
                self._outbox.clear()
                self._inflight = pending
                self._outbox_frames = 0
            if pending:
                ok = self._send(pending)
                with self._lock:
                    self._inflight = []
                    if self._abandoned:
                        return
                if ok:
                    continue
                with self._lock:  # put them back in front, oldest first, then re-apply the bound
                    self._outbox.extendleft(reversed(pending))
                    self._outbox_frames += sum(p.n_frames for p in pending)
                    evicted = self._trim_locked()
                self._spill(evicted, "outbox_full")
                if stopping:
                    return  # close() spools what is left
                self._stop.wait(self.retry_backoff_s)  # close() during the backoff: one last attempt
            elif stopping:
                return

    def _send(self, pending: list[UploadedFrames]) -> bool:
        from fleetloop.platform.errors import FleetloopError

        try:
            self._open_producer()
            sent = _send_frames(self._producer, concat_frames(pending), self.fleet_tag, self._topics, self._schemas)
            self._producer.flush(timeout_s=self.send_timeout_s)
        except Exception as err:  # kafka-python raises its own errors too; the frames stay queued
            with self._lock:
                if self._abandoned:
                    return False
                self._stats["failed_attempts"] += 1
                self._stats["last_error"] = str(err) if isinstance(err, FleetloopError) else _describe(err)
            return False
        with self._lock:
            if self._abandoned:  # close() already spooled these frames
                return True
            self._stats["frames_sent"] += sent.frames
            self._stats["ground_truth_frames_sent"] += sent.ground_truth_frames
            self._stats["messages_sent"] += sent.messages
            if sent.malformed:
                self._lose_locked("malformed", sent.malformed)
                self._stats["last_error"] = sent.malformed_error
        return True

    def _open_producer(self) -> None:
        from fleetloop.platform.bus import BusProducer

        if self._producer is None:
            self._producer = BusProducer(
                self.settings, client_id=self.client_id, **_producer_timeouts(self.send_timeout_s)
            )

    def _send_heartbeats(self) -> None:
        """Send the queued heartbeats as ``fleet.health`` events keyed by vehicle (``vehicle_key``); on failure
        they go back to the front of the queue for the next attempt."""
        from fleetloop.platform.bus import FLEET_HEALTH, FleetHealth

        with self._lock:
            beats, self._beats_inflight = list(self._beats), list(self._beats)
            self._beats.clear()
        if not beats:
            return
        try:
            self._open_producer()
            for b in beats:
                fields: dict[str, Any] = {
                    **b.event_fields(),
                    "vehicle_id": vehicle_key(int(b.vehicle_id), self.fleet_tag),
                }
                self._producer.send(FLEET_HEALTH, FleetHealth(**fields, source=self.client_id))
            self._producer.flush(timeout_s=self.send_timeout_s)
        except Exception as err:  # kafka-python raises its own errors too; the beats stay queued
            with self._lock:
                self._beats_inflight = []
                if not self._abandoned:
                    self._beats.extendleft(reversed(beats))
                    self._stats["failed_attempts"] += 1
                    self._stats["last_error"] = _describe(err)
            return
        with self._lock:
            self._beats_inflight = []
            if not self._abandoned:
                self._stats["heartbeats_sent"] += len(beats)


# -- sending, shared by the sink and the spool's delivery ----------------------------------------------


@dataclass(frozen=True)
class _Sent:
    frames: int
    ground_truth_frames: int
    messages: int
    malformed: int
    malformed_error: str | None


def _producer_timeouts(send_timeout_s: float) -> dict[str, Any]:
    ms = int(send_timeout_s * 1000)
    return {"max_block_ms": ms, "request_timeout_ms": ms, "delivery_timeout_ms": ms + 1000}


def _send_frames(
    producer: Any,
    frames: UploadedFrames,
    fleet_tag: str,
    topics: tuple[Topic, Topic],
    schemas: tuple[BatchSchema, BatchSchema],
) -> _Sent:
    """Queue one telemetry ``FrameBatch`` per vehicle (and its ground truth on the audit topic); the caller flushes.

    A vehicle whose frames do not encode is skipped and counted ``malformed``; the rest still go."""
    from fleetloop.platform.bus import FrameBatch
    from fleetloop.platform.errors import DataError

    (tel_topic, gt_topic), (tel_schema, gt_schema) = topics, schemas
    ids, tel, gt = frames.vehicle_ids, frames.telemetry, frames.ground_truth
    order = np.argsort(ids, kind="stable")
    ids_sorted = ids[order]
    starts = np.flatnonzero(np.r_[True, ids_sorted[1:] != ids_sorted[:-1]])
    ends = np.r_[starts[1:], len(ids_sorted)]
    messages = gt_frames = malformed = 0
    error = None
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        rows = order[s:e]
        key = vehicle_key(int(ids_sorted[s]), fleet_tag)
        try:
            batch = FrameBatch.build(tel_schema, key, {k: v[rows] for k, v in tel.items()})
            gt_batch = FrameBatch.build(gt_schema, key, {k: v[rows] for k, v in gt.items()}) if gt else None
        except DataError as err:
            malformed += len(rows)
            error = f"malformed frames of vehicle {key}: {err}"
            continue
        messages += producer.send(tel_topic, batch)
        if gt_batch is not None:
            messages += producer.send(gt_topic, gt_batch)
            gt_frames += len(rows)
    return _Sent(len(ids) - malformed, gt_frames, messages, malformed, error)


def deliver_spooled(settings: Settings, *, send_timeout_s: float = 15.0) -> dict[str, Any]:
    """Send the spooled uploads of ``settings.state_dir`` (oldest file first), deleting each file once flushed.

    Stops at the first failed flush (the broker went away: the files wait for the next call). A file that cannot be
    read is renamed ``*.damaged`` and counted, never retried. Returns ``files_delivered``, ``frames_sent``,
    ``frames_malformed``, ``damaged_files``, ``frames_waiting`` (still spooled) and ``last_error``.

    Two runs delivering the same spool at once may both send a file; consumers deduplicate on (vehicle id, seq).
    """
    from fleetloop.edge_agent.telemetry_spool import TelemetrySpool
    from fleetloop.platform.bus import GROUND_TRUTH_AUDIT, GROUND_TRUTH_FRAMES, TELEMETRY, TELEMETRY_FRAMES, BusProducer
    from fleetloop.platform.errors import FleetloopError

    spool = TelemetrySpool.of_state_dir(settings.state_dir)
    out: dict[str, Any] = {"files_delivered": 0, "frames_sent": 0, "frames_malformed": 0, "damaged_files": 0}
    out["last_error"] = None
    files = spool.files()
    if files:
        producer = BusProducer(settings, client_id="fleetloop-spool", **_producer_timeouts(send_timeout_s))
        try:
            for path in files:
                try:
                    tag, frames = spool.read(path)
                except (OSError, ValueError, KeyError) as e:
                    out["damaged_files"] += 1
                    out["last_error"] = f"cannot read spooled file {path}: {e}"
                    path.replace(path.with_suffix(".damaged"))
                    continue
                try:
                    sent = _send_frames(
                        producer, frames, tag, (TELEMETRY, GROUND_TRUTH_AUDIT), (TELEMETRY_FRAMES, GROUND_TRUTH_FRAMES)
                    )
                    producer.flush(timeout_s=send_timeout_s)
                except FleetloopError as e:
                    out["last_error"] = str(e)
                    break
                path.unlink(missing_ok=True)
                out["files_delivered"] += 1
                out["frames_sent"] += sent.frames
                out["frames_malformed"] += sent.malformed
                out["last_error"] = sent.malformed_error or out["last_error"]
        finally:
            producer.close(timeout_s=send_timeout_s)
    out["frames_waiting"] = spool.frames_waiting()
    return out


def _count(counts: dict[str, int], reason: str, n: int) -> None:
    counts[reason] = counts.get(reason, 0) + int(n)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"
