"""Collect throughput: frames/s into durable Parquet, beside the nested-list layout it replaced.

Rows:
- ``collect + lake (no Kafka)``: decoded telemetry batches -> collect (dedup) -> durable segments (fsync), the
  stage's own cost (median of 3); blob layout (fixed_size_binary) with zstd and lz4, and the baseline
  (the same rows with nested list columns, Parquet write only). Camera and lidar are random, so barely compress.
- ``end to end, N member(s)``: frames pre-produced to a fresh topic, then N collect processes (one consumer
  group) drain it into the lake; wall time from start to the last segment; every frame checked exactly once.

    python benchmarks/collect.py                             # starts its own broker through the launcher
    python benchmarks/collect.py --bootstrap 127.0.0.1:9092  # or uses a running one
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from fleetloop.pipelines.collect import CollectState, collect
from fleetloop.pipelines.lake import load_manifests, read_table, write_segments
from fleetloop.platform.bus import DEAD_LETTER, PIPELINE_EVENTS, TELEMETRY, TELEMETRY_FRAMES, FrameBatch
from fleetloop.platform.bus.consumer import Delivery
from fleetloop.platform.bus.serde import decode, encode_batch
from fleetloop.platform.settings import Settings

FRAMES_PER_MSG = 2048
REPEATS = 3  # the machine is shared: report the median of a few runs


def batches(n_vehicles: int, frames_per_vehicle: int, seed: int = 0) -> list[FrameBatch]:
    rng = np.random.default_rng(seed)
    out = []
    for v in range(n_vehicles):
        for start in range(0, frames_per_vehicle, FRAMES_PER_MSG):
            n = min(FRAMES_PER_MSG, frames_per_vehicle - start)
            cols = TELEMETRY_FRAMES.zeros(n)
            cols["seq"] = np.arange(start, start + n, dtype=np.uint32)
            cols["tick"] = cols["seq"]
            cols["camera"] = rng.integers(0, 255, (n, 8, 16), dtype=np.uint8)
            cols["lidar_range_m"] = rng.uniform(0, 120, (n, 32)).astype(np.float16)
            cols["ego_speed_mps"] = rng.uniform(0, 30, n).astype(np.float16)
            cols["est_visibility_m"] = rng.uniform(20, 1000, n).astype(np.float16)
            out.append(FrameBatch.build(TELEMETRY_FRAMES, f"veh-{v:05d}", cols))
    return out


def bench_local(n_vehicles: int, frames_per_vehicle: int) -> list[tuple[str, int, float]]:
    raws = [encode_batch(b) for b in batches(n_vehicles, frames_per_vehicle)]
    deliveries = [Delivery(TELEMETRY.name, 0, i, None, int(time.time() * 1000), decode(r)) for i, r in enumerate(raws)]
    n = sum(d.value.n_frames for d in deliveries)  # type: ignore[union-attr]
    rows = []
    for compression in ("zstd", "lz4"):
        times = []
        for _ in range(REPEATS):
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                _, chunks, _ = collect(CollectState(), deliveries)
                write_segments(Path(d), "telemetry", TELEMETRY_FRAMES, chunks, compression=compression)
                times.append(time.perf_counter() - t0)
        rows.append((f"collect + lake (no Kafka), blobs, {compression}", n, float(np.median(times))))
    base = float(np.median([_nested_baseline(chunks) for _ in range(REPEATS)]))
    rows.append(("lake write, nested list columns, zstd (baseline)", n, base))
    return rows


def _nested_baseline(chunks: list) -> float:  # type: ignore[type-arg]
    """The same rows with per-frame arrays as Parquet list columns (what fixed_size_binary replaced)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    cols = {}
    for c in TELEMETRY_FRAMES.columns:
        arr = np.concatenate([ch.columns[c.name] for ch in chunks])
        if c.shape:
            flat = arr.reshape(len(arr), -1)
            cols[c.name] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
            cols[c.name] = cols[c.name].cast(pa.list_(cols[c.name].type.value_type))
        else:
            cols[c.name] = pa.array(arr)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(cols), sink, compression="zstd")
    return time.perf_counter() - t0


def bench_kafka(settings: Settings, n_vehicles: int, frames_per_vehicle: int, members: int) -> tuple[str, int, float]:
    from fleetloop.platform.bus.admin import ensure_topics
    from fleetloop.platform.bus.producer import BusProducer

    tag = uuid.uuid4().hex[:8]
    topic = dataclasses.replace(TELEMETRY, name=f"{TELEMETRY.name}.bench-{tag}")
    ensure_topics(settings, [topic])
    with BusProducer(settings) as p:
        for b in batches(n_vehicles, frames_per_vehicle):
            p.send(topic, b)
        p.flush()
    n = n_vehicles * frames_per_vehicle
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "FLEETLOOP_STATE_DIR": d, "FLEETLOOP_KAFKA_BOOTSTRAP": settings.bootstrap_servers}
        cmd = [sys.executable, "-m", "fleetloop.pipelines.collect", "--topic", topic.name, "--group", f"b-{tag}"]
        cmd += ["--events-topic", PIPELINE_EVENTS.name, "--dead-letter-topic", DEAD_LETTER.name]
        cmd += ["--idle-timeout-s", "2"]
        t0 = time.perf_counter()
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL) for _ in range(members)]
        for pr in procs:
            pr.wait()
        # Wall time to the last durable segment, not to the idle timeout that ends the processes.
        last = max(m.created_at_s for m in load_manifests(Path(d), "telemetry"))
        wall = time.perf_counter() - t0 - (time.time() - last)
        t = read_table(Path(d), "telemetry", ["vehicle_id", "seq"])
        keys = set(zip(t["vehicle_id"], t["seq"].tolist(), strict=True))
        assert len(t["seq"]) == len(keys) == n, (len(t["seq"]), len(keys), n)
    return f"end to end via Kafka, {members} member(s)", n, wall


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vehicles", type=int, default=100)
    ap.add_argument("--frames", type=int, default=4096, help="frames per vehicle")
    ap.add_argument("--bootstrap", default=None, help="a running broker; default: start one via the launcher")
    ap.add_argument("--no-kafka", action="store_true")
    args = ap.parse_args()
    rows = bench_local(args.vehicles, args.frames)
    if not args.no_kafka:
        from fleetloop.platform import launcher
        from fleetloop.platform.services.kafka import SPEC as KAFKA

        tmp = tempfile.mkdtemp()
        settings = Settings(
            state_dir=Path(tmp),
            kafka_bootstrap=args.bootstrap,
            kafka_port=_free_port(),
            kafka_controller_port=_free_port(),
        )
        if args.bootstrap is None:
            launcher.up(settings, [KAFKA])
        try:
            for members in (1, 2):
                rows.append(bench_kafka(settings, args.vehicles, args.frames, members))
        finally:
            if args.bootstrap is None:
                launcher.down(settings, [KAFKA], purge=True)
    print(f"{'path':<48} {'frames':>10} {'seconds':>8} {'frames/s':>12}")
    for name, n, s in rows:
        print(f"{name:<48} {n:>10,} {s:>8.2f} {n / s:>12,.0f}")


if __name__ == "__main__":
    main()
