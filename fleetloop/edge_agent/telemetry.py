"""Where uploaded frames go: the ``TelemetrySink`` interface, an in-memory sink and the Kafka sink.

The fleet runner hands every tick's uploaded frames (``UploadedFrames``: telemetry columns of
``telemetry.frames`` and, for the same frames, the ground-truth columns of ``groundtruth.frames``) to a sink. The
runner core depends on this module's interface only; ``BusTelemetrySink`` imports the bus (kafka-python) lazily,
on construction, so ``fleetloop sim run --no-telemetry`` and the runner import with torch + numpy alone.

``BusTelemetrySink`` never blocks the fleet: ``submit`` appends to a bounded outbox; a background thread groups
the outbox by vehicle, sends one ``FrameBatch`` per vehicle to the telemetry topic and the matching ground truth
to the audit topic, and flushes (acks=all). While the broker is down the frames wait in the outbox and are
retried; when the outbox is full the oldest frames are dropped, and every frame lost is counted with its reason
(``outbox_full``, ``unsent_at_close``, ``malformed``). A retry after a failed flush may send frames twice;
consumers deduplicate on (vehicle id, seq), as the collect stage does.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from fleetloop.platform.settings import Settings

__all__ = ["BusTelemetrySink", "CollectingSink", "TelemetrySink", "UploadedFrames", "vehicle_key"]


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


class TelemetrySink(Protocol):
    """Receives uploaded frames; must not block the fleet for long."""

    def submit(self, frames: UploadedFrames) -> None:
        """Take this tick's uploaded frames."""
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

    def submit(self, frames: UploadedFrames) -> None:
        if frames.n_frames:
            self.parts.append(frames)

    def frames(self) -> UploadedFrames | None:
        """Everything submitted, as one ``UploadedFrames`` (None if nothing)."""
        if not self.parts:
            return None
        gt = None
        if all(p.ground_truth is not None for p in self.parts):
            gts = [p.ground_truth for p in self.parts if p.ground_truth is not None]
            gt = {k: np.concatenate([g[k] for g in gts]) for k in gts[0]}
        tel = {k: np.concatenate([p.telemetry[k] for p in self.parts]) for k in self.parts[0].telemetry}
        return UploadedFrames(np.concatenate([p.vehicle_ids for p in self.parts]), tel, gt)

    def stats(self) -> dict[str, Any]:
        n = sum(p.n_frames for p in self.parts)
        return {"sink": "memory", "frames_submitted": n, "frames_sent": n, "frames_lost": {}}

    def close(self, timeout_s: float = 30.0) -> dict[str, Any]:
        return self.stats()


class BusTelemetrySink:
    """Sends uploaded frames to Kafka from a background thread, through a bounded outbox (see the module doc).

    Args:
        settings: where the broker is.
        fleet_tag: prefix of the telemetry vehicle ids (``vehicle_key``), e.g. the run id, so that runs do not
            reuse (vehicle id, seq) pairs.
        max_outbox_frames: frames held while the broker is away; beyond it the oldest are dropped (counted).
        flush_interval_s: how often the thread sends what has accumulated [s] (bigger batches per vehicle).
        retry_backoff_s: wait after a failed attempt [s].
        send_timeout_s: longest one flush may take before the attempt counts as failed [s].
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
    ) -> None:
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
        self._outbox: deque[UploadedFrames] = deque()
        self._outbox_frames = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._producer: Any = None
        self._inflight_frames = 0  # taken from the outbox by the sender, not yet sent or put back
        self._abandoned = False  # close() gave up on the sender thread: it must not count anything after that
        self._stats: dict[str, Any] = {
            "sink": "kafka",
            "bootstrap": settings.bootstrap_servers,
            "frames_submitted": 0,
            "frames_sent": 0,
            "ground_truth_frames_sent": 0,
            "messages_sent": 0,
            "frames_lost": {},
            "failed_attempts": 0,
            "last_error": None,
            "outbox_peak_frames": 0,
        }
        self._thread = threading.Thread(target=self._loop, name="fleet-telemetry", daemon=True)
        self._thread.start()

    # -- fleet side ------------------------------------------------------------------------------

    def submit(self, frames: UploadedFrames) -> None:
        """Queue frames for sending (never blocks on the broker); drops the oldest when over the bound."""
        if frames.n_frames == 0:
            return
        with self._lock:
            self._outbox.append(frames)
            self._outbox_frames += frames.n_frames
            self._stats["frames_submitted"] += frames.n_frames
            self._trim_locked()
            self._stats["outbox_peak_frames"] = max(self._stats["outbox_peak_frames"], self._outbox_frames)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self._stats)
            out["frames_lost"] = dict(self._stats["frames_lost"])
            out["outbox_frames"] = self._outbox_frames
        return out

    def close(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Send what is queued within ``timeout_s``; frames still unsent are counted as ``unsent_at_close``."""
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = self._outbox_frames + (self._inflight_frames if self._thread.is_alive() else 0)
            self._abandoned = True
            self._outbox.clear()
            self._outbox_frames = 0
            if left:
                self._lose_locked("unsent_at_close", left)
        if self._producer is not None:
            try:
                self._producer.close(timeout_s=max(1.0, deadline - time.monotonic()))
            except Exception as e:  # the frames were counted above; a failing close must not hide the run
                with self._lock:
                    self._stats["last_error"] = f"closing the producer: {e}"
        return self.stats()

    # -- sender thread ---------------------------------------------------------------------------

    def _lose_locked(self, reason: str, n: int) -> None:
        lost = self._stats["frames_lost"]
        lost[reason] = lost.get(reason, 0) + int(n)

    def _trim_locked(self) -> None:
        while self._outbox_frames > self.max_outbox_frames and self._outbox:
            excess = self._outbox_frames - self.max_outbox_frames
            head = self._outbox[0]
            if head.n_frames <= excess:
                self._outbox.popleft()
                self._outbox_frames -= head.n_frames
                self._lose_locked("outbox_full", head.n_frames)
            else:
                self._outbox[0] = head.take(np.arange(excess, head.n_frames))
                self._outbox_frames -= excess
                self._lose_locked("outbox_full", excess)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            with self._lock:
                pending = list(self._outbox)
                self._outbox.clear()
                self._inflight_frames = self._outbox_frames
                self._outbox_frames = 0
            if pending:
                ok = self._send(pending)
                with self._lock:
                    self._inflight_frames = 0
                    if self._abandoned:
                        return
                if ok:
                    continue
                with self._lock:  # put them back in front, oldest first, then re-apply the bound
                    self._outbox.extendleft(reversed(pending))
                    self._outbox_frames += sum(p.n_frames for p in pending)
                    self._trim_locked()
                if stopping:
                    return  # close() counts what is left
                self._stop.wait(self.retry_backoff_s)  # close() during the backoff: one last attempt
            elif stopping:
                return

    def _send(self, pending: list[UploadedFrames]) -> bool:
        from fleetloop.platform.bus import BusProducer, FrameBatch
        from fleetloop.platform.errors import DataError, FleetloopError

        tel_topic, gt_topic = self._topics
        tel_schema, gt_schema = self._schemas
        try:
            if self._producer is None:
                self._producer = BusProducer(
                    self.settings,
                    client_id=self.client_id,
                    max_block_ms=int(self.send_timeout_s * 1000),
                    request_timeout_ms=int(self.send_timeout_s * 1000),
                    delivery_timeout_ms=int(self.send_timeout_s * 1000) + 1000,
                )
            ids = np.concatenate([p.vehicle_ids for p in pending])
            tel = {k: np.concatenate([p.telemetry[k] for p in pending]) for k in pending[0].telemetry}
            gts = [p.ground_truth for p in pending if p.ground_truth is not None]
            gt = {k: np.concatenate([g[k] for g in gts]) for k in gts[0]} if len(gts) == len(pending) else None
            order = np.argsort(ids, kind="stable")
            ids_sorted = ids[order]
            starts = np.flatnonzero(np.r_[True, ids_sorted[1:] != ids_sorted[:-1]])
            ends = np.r_[starts[1:], len(ids_sorted)]
            messages = gt_frames = malformed = 0
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                rows = order[s:e]
                key = vehicle_key(int(ids_sorted[s]), self.fleet_tag)
                try:
                    batch = FrameBatch.build(tel_schema, key, {k: v[rows] for k, v in tel.items()})
                    gt_batch = FrameBatch.build(gt_schema, key, {k: v[rows] for k, v in gt.items()}) if gt else None
                except DataError as err:
                    malformed += len(rows)
                    with self._lock:
                        self._stats["last_error"] = f"malformed frames of vehicle {key}: {err}"
                    continue
                messages += self._producer.send(tel_topic, batch)
                if gt_batch is not None:
                    messages += self._producer.send(gt_topic, gt_batch)
                    gt_frames += len(rows)
            self._producer.flush(timeout_s=self.send_timeout_s)
        except FleetloopError as err:
            with self._lock:
                if self._abandoned:
                    return False
                self._stats["failed_attempts"] += 1
                self._stats["last_error"] = str(err)
            return False
        except Exception as err:  # kafka-python raises its own errors too; the frames stay queued
            with self._lock:
                if self._abandoned:
                    return False
                self._stats["failed_attempts"] += 1
                self._stats["last_error"] = f"{type(err).__name__}: {err}"
            return False
        with self._lock:
            if self._abandoned:  # close() already counted these frames as unsent
                return True
            n = len(ids) - malformed
            self._stats["frames_sent"] += n
            self._stats["ground_truth_frames_sent"] += gt_frames
            self._stats["messages_sent"] += messages
            if malformed:
                self._lose_locked("malformed", malformed)
        return True
