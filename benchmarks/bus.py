"""Bus throughput: batched telemetry producer -> broker -> consumer, beside one frame per Kafka message.

Both paths run in the same process against the same real broker, with the same producer settings
(acks=all, idempotent, linger/batch from PRODUCER_DEFAULTS); each is timed end to end, from the first
send to the last frame decoded by the consumer, and every frame's sequence number is checked (no loss,
no duplicates). Prints one table.

    python benchmarks/bus.py                            # starts its own broker through the launcher
    python benchmarks/bus.py --bootstrap 127.0.0.1:9092 # or uses a running one
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fleetloop.platform.bus import TELEMETRY, TELEMETRY_FRAMES, FrameBatch
from fleetloop.platform.bus.admin import ensure_topics
from fleetloop.platform.bus.consumer import BusConsumer
from fleetloop.platform.bus.producer import PRODUCER_DEFAULTS, BusProducer
from fleetloop.platform.settings import Settings, load_settings


@dataclass
class Result:
    path: str
    frames: int
    messages: int
    seconds: float
    produce_seconds: float
    bytes_on_wire: int

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes_on_wire / self.seconds / 1e6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def broker(bootstrap: str | None) -> Iterator[Settings]:
    """Settings pointing at ``bootstrap``, or at a fresh broker started by the launcher (stopped after)."""
    if bootstrap:
        yield Settings(kafka_bootstrap=bootstrap)
        return
    from fleetloop.platform import launcher

    base = load_settings()
    with tempfile.TemporaryDirectory(prefix="fleetloop-bench-") as tmp:
        settings = Settings(
            state_dir=Path(tmp),
            kafka_port=_free_port(),
            kafka_controller_port=_free_port(),
            kafka_libs_dir=base.kafka_libs_dir,
            java=base.java,
        )
        launcher.up(settings, ["kafka"])
        try:
            yield settings
        finally:
            launcher.down(settings, ["kafka"])


def vehicle_batches(n_vehicles: int, frames_per_vehicle: int, seed: int = 0) -> list[FrameBatch]:
    """Plausible sensor data; vehicles share the sensor arrays (memory) but each has its own sequence."""
    rng = np.random.default_rng(seed)
    n = frames_per_vehicle
    cols = TELEMETRY_FRAMES.zeros(n)
    cols["tick"][:] = np.arange(n)
    cols["camera"][:] = rng.integers(0, 256, cols["camera"].shape)
    cols["lidar_range_m"][:] = rng.uniform(1, 120, cols["lidar_range_m"].shape)
    cols["radar_range_m"][:] = rng.uniform(1, 150, cols["radar_range_m"].shape)
    cols["radar_range_rate_mps"][:] = rng.normal(0, 5, cols["radar_range_rate_mps"].shape)
    cols["radar_valid_bits"][:] = rng.integers(0, 256, n)
    cols["ego_speed_mps"][:] = rng.uniform(0, 35, n)
    cols["ego_accel_mps2"][:] = rng.normal(0, 1, n)
    cols["command_accel_mps2"][:] = rng.normal(0, 1, n)
    cols["hazard_prob"][:] = rng.uniform(0, 1, n)
    cols["est_visibility_m"][:] = rng.uniform(50, 1000, n)
    cols["est_friction"][:] = rng.uniform(0.3, 1.0, n)
    out = []
    for v in range(n_vehicles):
        mine = dict(cols)
        mine["seq"] = np.arange(n, dtype=np.uint32)
        out.append(FrameBatch.build(TELEMETRY_FRAMES, f"veh-{v:05d}", mine))
    return out


def _timed_producer(send_all: Callable[[], None]) -> tuple[threading.Thread, list[float]]:
    took: list[float] = []

    def run() -> None:
        t0 = time.perf_counter()
        send_all()
        took.append(time.perf_counter() - t0)

    return threading.Thread(target=run, name="bench-producer"), took


def run_batched(settings: Settings, n_vehicles: int, frames_per_vehicle: int) -> Result:
    topic = replace(TELEMETRY, name=f"fleetloop.bench-{uuid.uuid4().hex[:8]}.telemetry")
    ensure_topics(settings, [topic])
    batches = vehicle_batches(n_vehicles, frames_per_vehicle)
    total = n_vehicles * frames_per_vehicle
    seen: dict[str, list[np.ndarray]] = {}
    with BusConsumer(settings, [topic], group_id=f"bench-{uuid.uuid4().hex[:8]}") as consumer:
        _wait_assigned(consumer)
        producer = BusProducer(settings, client_id="bench-batched")

        def send_all() -> None:
            for b in batches:
                producer.send(topic, b)
            producer.flush()

        thread, took = _timed_producer(send_all)
        t0 = time.perf_counter()
        thread.start()
        got = 0
        deadline = time.monotonic() + 300
        while got < total and time.monotonic() < deadline:
            polled = consumer.poll(0.5)
            for d in polled.deliveries:
                assert isinstance(d.value, FrameBatch)
                seen.setdefault(d.value.vehicle_id, []).append(d.value.seq)
                got += d.value.n_frames
            consumer.commit(polled)
        elapsed = time.perf_counter() - t0
        thread.join()
        producer.close()
        sent = producer.counters.snapshot()
    _check_sequences(seen, n_vehicles, frames_per_vehicle, "batched")
    return Result(
        "batched (fleetloop bus)",
        total,
        int(str(sent["messages_sent"])),
        elapsed,
        took[0],
        int(str(sent["bytes_sent"])),
    )


def run_per_frame(settings: Settings, n_vehicles: int, frames_per_vehicle: int) -> Result:
    """Baseline: plain kafka-python, one frame (its 257 bytes, row-major) per Kafka message."""
    from kafka import KafkaConsumer, KafkaProducer

    topic = replace(TELEMETRY, name=f"fleetloop.bench-{uuid.uuid4().hex[:8]}.perframe")
    ensure_topics(settings, [topic])
    batches = vehicle_batches(n_vehicles, frames_per_vehicle)
    row_dtype = np.dtype([(c.name, c.np_dtype, c.shape) for c in TELEMETRY_FRAMES.columns])
    rows = []
    for b in batches:
        r = np.empty(b.n_frames, dtype=row_dtype)
        for name, arr in b.columns.items():
            r[name] = arr
        rows.append((b.vehicle_id.encode(), r))
    total = n_vehicles * frames_per_vehicle
    seen: dict[bytes, list[int]] = {}
    consumer = KafkaConsumer(
        topic.name,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        while not consumer.assignment():
            consumer.poll(timeout_ms=200)
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, **PRODUCER_DEFAULTS)
        nbytes = [0]

        def send_all() -> None:
            for key, r in rows:
                for i in range(len(r)):
                    value = r[i : i + 1].tobytes()
                    nbytes[0] += len(value)
                    producer.send(topic.name, value=value, key=key)
            producer.flush()

        thread, took = _timed_producer(send_all)
        t0 = time.perf_counter()
        thread.start()
        got = 0
        deadline = time.monotonic() + 300
        while got < total and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    seen.setdefault(rec.key, []).append(int.from_bytes(rec.value[:4], "little"))
                    got += 1
            consumer.commit()
        elapsed = time.perf_counter() - t0
        thread.join()
        producer.close()
    finally:
        consumer.close(autocommit=False)
    arrays = {k.decode(): [np.asarray(v, dtype=np.uint32)] for k, v in seen.items()}
    _check_sequences(arrays, n_vehicles, frames_per_vehicle, "per-frame")
    return Result("one frame per message (kafka-python)", total, total, elapsed, took[0], nbytes[0])


def _wait_assigned(consumer: BusConsumer) -> None:
    # Join the group before the clock starts, so neither path pays for the rebalance.
    deadline = time.monotonic() + 60
    while not consumer._consumer.assignment() and time.monotonic() < deadline:
        polled = consumer.poll(0.2)
        assert polled.n_records == 0


def _check_sequences(seen: dict[str, list[np.ndarray]], n_vehicles: int, per_vehicle: int, what: str) -> None:
    if len(seen) != n_vehicles:
        raise SystemExit(f"{what}: frames of {len(seen)} vehicles arrived, expected {n_vehicles}")
    want = np.arange(per_vehicle, dtype=np.uint32)
    for vid, parts in seen.items():
        seq = np.concatenate(parts)
        if seq.shape != want.shape or not np.array_equal(seq, want):
            raise SystemExit(f"{what}: {vid} has {seq.size} frames, not 0..{per_vehicle - 1} in order")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="use a running broker (HOST:PORT) instead of starting one")
    ap.add_argument("--vehicles", type=int, default=100)
    ap.add_argument("--frames-per-vehicle", type=int, default=10_000, help="batched path (default: 1M frames)")
    ap.add_argument("--baseline-frames-per-vehicle", type=int, default=1_000, help="baseline (default: 100k)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = ap.parse_args(argv)

    with broker(args.bootstrap) as settings:
        baseline = run_per_frame(settings, args.vehicles, args.baseline_frames_per_vehicle)
        batched = run_batched(settings, args.vehicles, args.frames_per_vehicle)
    results = [baseline, batched]
    speedup = batched.frames_per_s / baseline.frames_per_s
    if args.json:
        print(json.dumps({"results": [{**r.__dict__, "frames_per_s": r.frames_per_s} for r in results],
                          "speedup": speedup}, indent=2))
        return 0
    print(f"{'path':<38} {'frames':>10} {'messages':>9} {'end-to-end s':>13} {'frames/s':>12} {'MB/s':>7}")
    for r in results:
        print(
            f"{r.path:<38} {r.frames:>10,} {r.messages:>9,} {r.seconds:>13.2f} {r.frames_per_s:>12,.0f} "
            f"{r.mb_per_s:>7.1f}"
        )
    print(f"speed-up: {speedup:.1f}x; every frame arrived once, in order (sequence numbers checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
