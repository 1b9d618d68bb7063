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
import multiprocessing as mp
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fleetloop.platform.bus import TELEMETRY, TELEMETRY_FRAMES, FrameBatch, Topic
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


def _produce_batched(bootstrap: str, topic: Topic, n_vehicles: int, per_vehicle: int, go: Any, out: Any) -> None:
    """Child process: the fleet side. Sends every vehicle's frames once ``go`` is set; reports counters."""
    batches = vehicle_batches(n_vehicles, per_vehicle)
    with BusProducer(bootstrap, client_id="bench-batched") as producer:
        go.wait()
        t0 = time.perf_counter()
        for b in batches:
            producer.send(topic, b)
        producer.flush()
        snap = producer.counters.snapshot()
        out.put((time.perf_counter() - t0, snap["messages_sent"], snap["bytes_sent"]))


def _produce_per_frame(bootstrap: str, topic: str, n_vehicles: int, per_vehicle: int, go: Any, out: Any) -> None:
    """Child process: plain kafka-python, one frame (its row-major bytes) per Kafka message."""
    from kafka import KafkaProducer

    row_dtype = np.dtype([(c.name, c.np_dtype, c.shape) for c in TELEMETRY_FRAMES.columns])
    rows = []
    for b in vehicle_batches(n_vehicles, per_vehicle):
        r = np.empty(b.n_frames, dtype=row_dtype)
        for name, arr in b.columns.items():
            r[name] = arr
        rows.append((b.vehicle_id.encode(), [r[i : i + 1].tobytes() for i in range(len(r))]))
    producer = KafkaProducer(bootstrap_servers=bootstrap, **PRODUCER_DEFAULTS)
    go.wait()
    t0 = time.perf_counter()
    nbytes = 0
    for key, values in rows:
        for value in values:
            producer.send(topic, value=value, key=key)
            nbytes += len(value)
    producer.flush()
    out.put((time.perf_counter() - t0, sum(len(v) for _, v in rows), nbytes))
    producer.close()


def _start(target: Callable[..., None], *args: Any) -> tuple[Any, Any, Any]:
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, go, out), name="bench-producer")
    proc.start()
    return proc, go, out


def run_batched(settings: Settings, n_vehicles: int, frames_per_vehicle: int) -> Result:
    topic = replace(TELEMETRY, name=f"fleetloop.bench-{uuid.uuid4().hex[:8]}.telemetry")
    ensure_topics(settings, [topic])
    total = n_vehicles * frames_per_vehicle
    seen: dict[str, list[np.ndarray]] = {}
    proc, go, out = _start(_produce_batched, settings.bootstrap_servers, topic, n_vehicles, frames_per_vehicle)
    try:
        with BusConsumer(settings, [topic], group_id=f"bench-{uuid.uuid4().hex[:8]}") as consumer:
            _wait_assigned(lambda: bool(consumer._consumer.assignment()), lambda: consumer.poll(0.2).n_records)
            go.set()
            t0 = time.perf_counter()
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
        produce_s, messages, nbytes = out.get(timeout=60)
    finally:
        proc.join(60)
    _check_sequences(seen, n_vehicles, frames_per_vehicle, "batched")
    return Result("batched (fleetloop bus)", total, messages, elapsed, produce_s, nbytes)


def run_per_frame(settings: Settings, n_vehicles: int, frames_per_vehicle: int) -> Result:
    """Baseline: plain kafka-python, one frame (its 257 bytes, row-major) per Kafka message."""
    from kafka import KafkaConsumer

    topic = f"fleetloop.bench-{uuid.uuid4().hex[:8]}.perframe"
    ensure_topics(settings, [replace(TELEMETRY, name=topic)])
    total = n_vehicles * frames_per_vehicle
    seen: dict[bytes, list[int]] = {}
    proc, go, out = _start(_produce_per_frame, settings.bootstrap_servers, topic, n_vehicles, frames_per_vehicle)
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        _wait_assigned(lambda: bool(consumer.assignment()), lambda: len(consumer.poll(timeout_ms=200)))
        go.set()
        t0 = time.perf_counter()
        got = 0
        deadline = time.monotonic() + 300
        while got < total and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    seen.setdefault(rec.key, []).append(int.from_bytes(rec.value[:4], "little"))
                    got += 1
            consumer.commit()
        elapsed = time.perf_counter() - t0
        produce_s, messages, nbytes = out.get(timeout=60)
    finally:
        consumer.close(autocommit=False)
        proc.join(60)
    arrays = {k.decode(): [np.asarray(v, dtype=np.uint32)] for k, v in seen.items()}
    _check_sequences(arrays, n_vehicles, frames_per_vehicle, "per-frame")
    return Result("one frame per message (kafka-python)", total, messages, elapsed, produce_s, nbytes)


def _wait_assigned(assigned: Callable[[], bool], poll: Callable[[], int]) -> None:
    # Join the group before the clock starts, so neither path pays for the rebalance; nothing is sent yet.
    deadline = time.monotonic() + 60
    while not assigned() and time.monotonic() < deadline:
        if poll():
            raise SystemExit("records arrived before the producer started: the topic was not fresh")


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
        print(
            json.dumps(
                {"results": [{**r.__dict__, "frames_per_s": r.frames_per_s} for r in results], "speedup": speedup},
                indent=2,
            )
        )
        return 0
    print(f"{'path':<38} {'frames':>10} {'messages':>9} {'end-to-end s':>13} {'frames/s':>12} {'MB/s':>7}")
    for r in results:
        print(
            f"{r.path:<38} {r.frames:>10,} {r.messages:>9,} {r.seconds:>13.2f} {r.frames_per_s:>12,.0f} "
            f"{r.mb_per_s:>7.1f}"
        )
    for r in results:
        print(f"  {r.path}: producer finished after {r.produce_seconds:.2f} s")
    print(f"speed-up: {speedup:.1f}x; every frame arrived once, in order (sequence numbers checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
