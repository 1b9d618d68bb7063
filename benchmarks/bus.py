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
import os
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
    producer_cpu_s: float = float("nan")  # CPU of the producer process while it sent (user + system)
    consumer_cpu_s: float = float("nan")  # CPU of the consumer process (all its threads), first send to last frame
    broker_cpu_s: float = float("nan")  # CPU of the broker JVM over the same span (when its pid is known)

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


def broker_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) the process ``pid`` has used so far; NaN when unknown or unreadable."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _broker_pid(settings: Settings) -> int | None:
    from fleetloop.platform import launcher

    try:
        info = json.loads((launcher.service_dir(settings, "kafka") / "process.json").read_text())
    except (OSError, ValueError):
        return None
    return int(info["pid"])


@contextmanager
def broker(bootstrap: str | None, pid: int | None = None) -> Iterator[tuple[Settings, int | None]]:
    """Settings pointing at ``bootstrap`` (whose JVM is ``pid``, if given), or at a fresh broker started by the
    launcher (stopped after), with the broker's pid."""
    if bootstrap:
        yield Settings(kafka_bootstrap=bootstrap), pid
        return
    from fleetloop.platform import launcher
    from fleetloop.platform.services.kafka import SPEC as KAFKA

    base = load_settings()
    with tempfile.TemporaryDirectory(prefix="fleetloop-bench-") as tmp:
        settings = Settings(
            state_dir=Path(tmp),
            kafka_port=_free_port(),
            kafka_controller_port=_free_port(),
            kafka_libs_dir=base.kafka_libs_dir,
            java=base.java,
        )
        launcher.up(settings, [KAFKA])
        try:
            yield settings, _broker_pid(settings)
        finally:
            launcher.down(settings, [KAFKA])


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
        t0, c0 = time.perf_counter(), time.process_time()
        for b in batches:
            producer.send(topic, b)
        producer.flush()
        snap = producer.counters.snapshot()
        out.put((time.perf_counter() - t0, time.process_time() - c0, snap["messages_sent"], snap["bytes_sent"]))


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
    t0, c0 = time.perf_counter(), time.process_time()
    nbytes = 0
    for key, values in rows:
        for value in values:
            producer.send(topic, value=value, key=key)
            nbytes += len(value)
    producer.flush()
    out.put((time.perf_counter() - t0, time.process_time() - c0, sum(len(v) for _, v in rows), nbytes))
    producer.close()


def _start(target: Callable[..., None], *args: Any) -> tuple[Any, Any, Any]:
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, go, out), name="bench-producer")
    proc.start()
    return proc, go, out


def run_batched(settings: Settings, n_vehicles: int, frames_per_vehicle: int, broker_pid: int | None = None) -> Result:
    topic = replace(TELEMETRY, name=f"fleetloop.bench-{uuid.uuid4().hex[:8]}.telemetry")
    ensure_topics(settings, [topic])
    total = n_vehicles * frames_per_vehicle
    seen: dict[str, list[np.ndarray]] = {}
    proc, go, out = _start(_produce_batched, settings.bootstrap_servers, topic, n_vehicles, frames_per_vehicle)
    try:
        with BusConsumer(settings, [topic], group_id=f"bench-{uuid.uuid4().hex[:8]}") as consumer:
            _wait_assigned(lambda: bool(consumer.assignment()), lambda: consumer.poll(0.2).n_records)
            go.set()
            t0, c0, b0 = time.perf_counter(), time.process_time(), broker_cpu_s(broker_pid)
            got = 0
            progress = time.monotonic()
            while got < total and not _stalled(progress, proc):
                polled = consumer.poll(0.5)
                for d in polled.deliveries:
                    assert isinstance(d.value, FrameBatch)
                    seen.setdefault(d.value.vehicle_id, []).append(d.value.seq)
                    got += d.value.n_frames
                    progress = time.monotonic()
                consumer.commit(polled)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            broker_cpu = broker_cpu_s(broker_pid) - b0
        produce_s, produce_cpu, messages, nbytes = out.get(timeout=60)
    finally:
        proc.join(60)
    _check_sequences(seen, n_vehicles, frames_per_vehicle, "batched")
    return Result("batched (fleetloop bus)", total, messages, elapsed, produce_s, nbytes, produce_cpu, cpu, broker_cpu)


def run_per_frame(
    settings: Settings, n_vehicles: int, frames_per_vehicle: int, broker_pid: int | None = None
) -> Result:
    """Baseline: plain kafka-python, one frame (its 257 bytes, row-major) per Kafka message."""
    from kafka import KafkaConsumer

    topic = f"fleetloop.bench-{uuid.uuid4().hex[:8]}.perframe"
    ensure_topics(settings, [replace(TELEMETRY, name=topic)])
    total = n_vehicles * frames_per_vehicle
    seen: dict[bytes, list[int]] = {}
    proc, go, out = _start(_produce_per_frame, settings.bootstrap_servers, topic, n_vehicles, frames_per_vehicle)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    consumer.partitions_for_topic(topic)  # metadata before the group join, as BusConsumer does
    consumer.subscribe([topic])
    try:
        _wait_assigned(lambda: bool(consumer.assignment()), lambda: len(consumer.poll(timeout_ms=200)))
        go.set()
        t0, c0, b0 = time.perf_counter(), time.process_time(), broker_cpu_s(broker_pid)
        got = 0
        progress = time.monotonic()
        while got < total and not _stalled(progress, proc):
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    seen.setdefault(rec.key, []).append(int.from_bytes(rec.value[:4], "little"))
                    got += 1
                progress = time.monotonic()
            consumer.commit()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        broker_cpu = broker_cpu_s(broker_pid) - b0
        produce_s, produce_cpu, messages, nbytes = out.get(timeout=60)
    finally:
        consumer.close(autocommit=False)
        proc.join(60)
    arrays = {k.decode(): [np.asarray(v, dtype=np.uint32)] for k, v in seen.items()}
    _check_sequences(arrays, n_vehicles, frames_per_vehicle, "per-frame")
    return Result(
        "one frame per message (kafka-python)",
        total,
        messages,
        elapsed,
        produce_s,
        nbytes,
        produce_cpu,
        cpu,
        broker_cpu,
    )


STALL_S = float(os.environ.get("BENCH_STALL_S", 60))  # [s] give up when no frame arrived for this long


def _stalled(last_progress: float, producer: Any) -> bool:
    """True when nothing arrived for ``STALL_S``, or the producer process failed (its frames will not come)."""
    if producer.exitcode not in (None, 0):
        print(f"producer process exited with {producer.exitcode}", file=sys.stderr)
        return True
    return time.monotonic() - last_progress > STALL_S


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
    ap.add_argument("--broker-pid", type=int, help="with --bootstrap: the broker JVM's pid, to report its CPU")
    ap.add_argument("--vehicles", type=int, default=100)
    ap.add_argument("--frames-per-vehicle", type=int, default=10_000, help="batched path (default: 1M frames)")
    ap.add_argument("--baseline-frames-per-vehicle", type=int, default=1_000, help="baseline (default: 100k)")
    ap.add_argument("--repeat", type=int, default=1, help="run baseline and batched this many times, alternating")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = ap.parse_args(argv)

    runs: list[tuple[int, Result, Result]] = []
    with broker(args.bootstrap, args.broker_pid) as (settings, pid):
        for i in range(args.repeat):
            baseline = run_per_frame(settings, args.vehicles, args.baseline_frames_per_vehicle, pid)
            batched = run_batched(settings, args.vehicles, args.frames_per_vehicle, pid)
            runs.append((i + 1, baseline, batched))
    if args.json:
        out = [
            {
                "run": i,
                "results": [{**r.__dict__, "frames_per_s": r.frames_per_s} for r in (a, b)],
                "speedup": b.frames_per_s / a.frames_per_s,
            }
            for i, a, b in runs
        ]
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"{'run':>3} {'path':<38} {'frames':>10} {'messages':>9} {'end-to-end s':>13} {'frames/s':>12} {'MB/s':>7}"
        f" {'CPU s prod/cons/broker':>23}"
    )
    for i, *results in runs:
        for r in results:
            cpu = f"{r.producer_cpu_s:.2f} / {r.consumer_cpu_s:.2f} / {r.broker_cpu_s:.2f}"
            print(
                f"{i:>3} {r.path:<38} {r.frames:>10,} {r.messages:>9,} {r.seconds:>13.2f} {r.frames_per_s:>12,.0f} "
                f"{r.mb_per_s:>7.1f} {cpu:>23}"
            )
    for i, *results in runs:
        for r in results:
            print(f"  run {i}, {r.path}: producer finished after {r.produce_seconds:.2f} s")
    speedups = ", ".join(f"{b.frames_per_s / a.frames_per_s:.1f}x" for _, a, b in runs)
    print(f"speed-up: {speedups}; every frame arrived once, in order (sequence numbers checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
