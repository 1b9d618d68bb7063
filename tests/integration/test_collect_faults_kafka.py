"""collect against a real broker when records and members misbehave: a record too large to dead-letter, a
rebalance with work in flight, a commit refused by a rebalance, a second member starting beside a running one,
a producer's retry after a broker restart. The rule: every record is processed or dead-lettered with a reason,
every valid frame lands once, and the group's offsets reach the end."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetloop.pipelines.collect import CollectState, collect, run_collect
from fleetloop.pipelines.lake import WriterLease, live_writers, read_table, table_dir
from fleetloop.pipelines.lake_sink import LakeSink, StageReport
from fleetloop.pipelines.stage_shell import ShellConfig, StopFlag, run_shell
from fleetloop.platform.bus import TELEMETRY_FRAMES, BusConsumer, BusProducer, DeadLetter, Delivery, Topic
from fleetloop.platform.bus.deadletter import KEPT_REFERENCE, REFERENCE_PREFIX_BYTES
from fleetloop.platform.bus.serde import encode_batch
from fleetloop.platform.settings import Settings
from tests.integration.private_kafka import private_kafka
from tests.integration.test_collect_kafka import Topics, collect_settings, frames, fresh_topics, produce

pytestmark = pytest.mark.integration

BIG_PRODUCER = {"max_request_size": 17 * 1024 * 1024}  # the broker takes up to 16 MiB; our producers ~1 MB


def dead_letters(settings: Settings, topic: Topic, n: int, timeout_s: float = 20) -> list[DeadLetter]:
    with BusConsumer(settings, [topic], group_id=f"r-{uuid.uuid4().hex}") as c:
        out: list[DeadLetter] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            for _tp, recs in c._consumer.poll(timeout_ms=500).items():  # raw: dead letters are not decodable
                out += [DeadLetter.from_record(r.key, r.value, list(r.headers)) for r in recs]
    return out


def committed(settings: Settings, topic: Topic, group: str) -> dict[tuple[str, int], tuple[int, int]]:
    """``(topic, partition) -> (committed offset of group, end offset)``."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic.name, p) for p in c.partitions_for_topic(topic.name)]
        ends = c.end_offsets(tps)
        return {(tp.topic, tp.partition): (c.committed(tp) or 0, ends[tp]) for tp in tps}
    finally:
        c.close(autocommit=False)


def committed_lag(settings: Settings, topic: Topic, group: str) -> int:
    """Records of ``topic`` beyond what ``group`` committed (0: its offsets reached the end)."""
    return sum(end - done for done, end in committed(settings, topic, group).values())


def run(s: Settings, t: Topics, group: str = "g", **kw: Any) -> Any:
    return run_collect(s, topic=t.telemetry, events_topic=t.events, dead_letter_topic=t.dead, group_id=group, **kw)


# -- one bad record ----------------------------------------------------------------------------------------


def test_a_record_too_large_to_dead_letter_is_kept_as_a_reference_and_collect_goes_on(
    stack_settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    s = collect_settings(stack_settings, tmp_path)
    t = fresh_topics(s)
    huge = os.urandom(5 * 1024 * 1024)  # 5 MB: the broker takes it, a dead-letter producer (~1 MB) cannot
    with BusProducer(s, **BIG_PRODUCER) as p:
        p.send(t.telemetry, frames("veh-000", np.arange(100)))
        p.send_raw(t.telemetry.name, huge, b"veh-000")
        p.send(t.telemetry, frames("veh-000", np.arange(100, 200)))  # valid records behind it
        p.flush()
    report = run(s, t)
    assert report.dead_lettered == {"malformed": 1} and report.rows_collected == 200
    [letter] = dead_letters(s, t.dead, 1)
    assert letter.kept == KEPT_REFERENCE and letter.reason == "malformed"
    ref = letter.reference()
    assert (ref["topic"], ref["size_bytes"], ref["sha256"]) == (
        t.telemetry.name,
        len(huge),
        hashlib.sha256(huge).hexdigest(),
    )
    assert ref["offset"] == letter.offset == 1
    assert len(ref["prefix_b64"]) <= 4 * REFERENCE_PREFIX_BYTES // 3 + 4
    assert committed_lag(s, t.telemetry, "g") == 0  # the partition moved on: no crash loop on restart
    assert run(s, t).records == 0


def test_any_stage_dead_letters_an_oversized_record_through_the_shared_path(
    stack_settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    s = collect_settings(stack_settings, tmp_path)
    t = fresh_topics(s)
    with BusProducer(s, **BIG_PRODUCER) as p:
        p.send_raw(t.events.name, b'{"schema": ' + b"x" * 3_000_000, b"k")  # an event stage's topic
        p.flush()
    with BusConsumer(s, [t.events], "ev", dead_letter_topic=t.dead) as c:
        polled = c.poll(5.0)
        deadline = time.monotonic() + 20
        while not polled.n_records and time.monotonic() < deadline:
            polled = c.poll(0.5)
        assert polled.dead_lettered == 1
        assert c.commit(polled) is True
        assert c.counters.dead_letter_references == 1
    [letter] = dead_letters(s, t.dead, 1)
    assert letter.kept == KEPT_REFERENCE and letter.reference()["size_bytes"] == 3_000_011


def test_a_producer_retry_after_a_broker_restart_is_counted_as_transport_not_the_vehicle(
    stack_settings: Settings, tmp_path: Path
) -> None:
    from fleetloop.platform import launcher
    from fleetloop.platform.services.kafka import SPEC as KAFKA

    with private_kafka(stack_settings, tmp_path / "stack") as private:
        t = fresh_topics(private)
        upload = encode_batch(frames("veh-000", np.arange(300)))
        with BusProducer(private) as p:
            p.send_raw(t.telemetry.name, upload, b"veh-000")
            p.flush()
        launcher.down(private, [KAFKA])
        launcher.up(private, [KAFKA])
        with BusProducer(private) as p:  # the upload was not acknowledged before the restart: sent again
            p.send_raw(t.telemetry.name, upload, b"veh-000")
            p.send(t.telemetry, frames("veh-000", np.arange(290, 310)))  # the vehicle repeats seqs 290..299
            p.flush()
        report = run(private, t)
        assert report.rows_collected == 310
        assert report.duplicates_removed == {"transport_retry": 300, "duplicate_seq": 10}


# -- members and rebalances --------------------------------------------------------------------------------


class _HoldingSink(LakeSink[CollectState]):
    """A lake sink that seals only when it must: on stop, or when its partitions leave it."""

    def due(self, caught_up: bool) -> bool:
        return False


def member(
    s: Settings, t: Topics, stop: StopFlag, *, hold: bool = False, step_delay_s: float = 0.0, **overrides: Any
) -> tuple[threading.Thread, StageReport]:
    """A collect member in a thread: run_collect's parts, optionally slow (a delay per poll) and holding its rows."""
    report = StageReport(stage="collect", table="telemetry")

    def step(state: CollectState, deliveries: Sequence[Delivery]) -> Any:
        time.sleep(step_delay_s)
        return collect(state, deliveries)

    def body() -> None:
        sink = (_HoldingSink if hold else LakeSink)(
            s.state_dir, "telemetry", TELEMETRY_FRAMES, step, CollectState(), report, events_topic=t.events,
        )  # fmt: skip
        cfg = ShellConfig(
            topic=t.telemetry, group_id="g", dead_letter_topic=t.dead, idle_timeout_s=None,
            consumer_overrides=overrides,
        )  # fmt: skip
        try:
            run_shell(s, sink, cfg, report, stop=stop)
        finally:
            sink.close()

    th = threading.Thread(target=body)
    th.start()
    return th, report


def test_a_member_joining_mid_stream_leaves_every_frame_once(
    stack_settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    s = collect_settings(stack_settings, tmp_path)
    t = fresh_topics(s)  # 4 partitions
    n_vehicles, n_frames = 8, 3000
    produce(s, t.telemetry, n_vehicles, n_frames)
    stop = StopFlag()
    # A slow member takes records two at a time and holds its rows (no segment, no commit) ...
    slow, held = member(s, t, stop, hold=True, step_delay_s=0.3, max_poll_records=2)
    deadline = time.monotonic() + 30
    while held.records < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    flushes_before = held.rebalance_flushes  # the group's first join may rebalance once more: rows written then
    assert held.records >= 6
    # ... when a second member joins and is given partitions the slow one holds rows from.
    fast, _ = member(s, t, stop)
    deadline = time.monotonic() + 60
    while held.rebalance_flushes == flushes_before and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3.0)  # the new owner collects its partitions
    stop.set()
    slow.join(30)
    fast.join(30)
    assert held.rebalance_flushes > flushes_before  # the slow member wrote its rows before its partitions moved
    run(s, t)  # a last member drains what the two left
    got = read_table(tmp_path, "telemetry", ["vehicle_id", "seq"])
    keys = set(zip(got["vehicle_id"], got["seq"].tolist(), strict=True))
    assert len(got["seq"]) == len(keys) == n_vehicles * n_frames
    assert committed_lag(s, t.telemetry, "g") == 0


def test_a_commit_refused_by_a_rebalance_is_retried_and_the_moved_records_go_to_the_new_owner(
    stack_settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    s = collect_settings(stack_settings, tmp_path)
    t = fresh_topics(s)
    produce(s, t.telemetry, n_vehicles=8, n_frames=500)  # one record per vehicle, over 4 partitions
    first = BusConsumer(s, [t.telemetry], "g", dead_letter_topic=t.dead, max_poll_interval_ms=3000)
    second: BusConsumer | None = None
    try:
        polled = first.poll(5.0)
        deadline = time.monotonic() + 20
        while polled.n_records < 8 and time.monotonic() < deadline:
            more = first.poll(0.5)
            polled.deliveries += more.deliveries
            polled.offsets.update(more.offsets)
        assert len(polled.offsets) == 4
        second = BusConsumer(s, [t.telemetry], "g", dead_letter_topic=t.dead)
        redelivered: list[Delivery] = []
        deadline = time.monotonic() + 30
        while not second.assignment() and time.monotonic() < deadline:  # `first` is silent past its poll interval
            redelivered += second.poll(0.5).deliveries
        assert first.commit(polled) is False  # refused: `first` is out of the group; kept, not raised
        assert first.counters.commit_retries >= 1
        deadline = time.monotonic() + 30
        while first.counters.commits == 0 and time.monotonic() < deadline:
            first.poll(0.3)  # rejoins; the kept offsets are committed for the partitions it holds again
            redelivered += second.poll(0.3).deliveries
        mine = first.assignment()
        assert first.counters.commits == 1 and mine and len(mine) < 4
        theirs = {tp for tp in polled.offsets if tp not in mine}
        assert theirs <= {(d.topic, d.partition) for d in redelivered}  # the new owner reads them again
        now = committed(s, t.telemetry, "g")
        assert all(now[tp][0] == polled.offsets[tp] for tp in mine)  # ours: committed once the group was stable
    finally:
        first.close()
        if second is not None:
            second.close()


def test_a_second_member_starting_spares_the_running_members_unfinished_segment(
    stack_settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    s = collect_settings(stack_settings, tmp_path)
    t = fresh_topics(s)
    folder = table_dir(tmp_path, "telemetry") / "date=2024-01-01/hour=00"
    folder.mkdir(parents=True)
    running = WriterLease(tmp_path, "telemetry")  # a member mid-write: its Parquet is there, its manifest not yet
    half_written = folder / f"part-20240101T000000-{running.token}-0123abcd.parquet"
    half_written.write_bytes(b"PAR1...")
    # A member killed -9 mid-write left a lease and a file: those are orphans.
    code = (
        "import os, sys; from fleetloop.pipelines.lake import WriterLease; l = WriterLease(sys.argv[1], 'telemetry');"
    )
    code += "print(l.token, flush=True); os.kill(os.getpid(), 9)"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False)
    dead = out.stdout.strip()
    assert len(dead) == 8 and dead != running.token
    crash_orphan = folder / f"part-20240101T000000-{dead}-0123abcd.parquet"
    crash_orphan.write_bytes(b"PAR1...")
    assert live_writers(tmp_path, "telemetry") == {running.token}
    produce(s, t.telemetry, 1, 100)
    report = run(s, t)  # the second member starts, cleans up, collects
    assert report.orphans_removed == 1 and report.rows_collected == 100
    assert half_written.exists() and not crash_orphan.exists()
    running.release()
    assert live_writers(tmp_path, "telemetry") == set()


# -- the rule, over random records ---------------------------------------------------------------------------

_KINDS = ["valid", "valid", "valid", "bytes", "truncated", "oversized", "repeat_tick", "nan", "reversed"]


@st.composite
def topics_of_records(draw: st.DrawFn) -> list[tuple[str, str, np.ndarray]]:
    """(kind, vehicle, seqs) per record; seqs of one vehicle overlap between records (redelivery-like)."""
    out = []
    for _ in range(draw(st.integers(1, 10))):
        start = draw(st.integers(0, 40))
        seqs = np.arange(start, start + draw(st.integers(2, 30)))
        out.append((draw(st.sampled_from(_KINDS)), f"veh-{draw(st.integers(0, 2))}", seqs))
    return out


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(records=topics_of_records(), noise=st.binary(min_size=0, max_size=64))
def test_every_record_is_collected_or_dead_lettered_and_the_offsets_reach_the_end(
    stack_settings: Settings, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory,
    records: list[tuple[str, str, np.ndarray]], noise: bytes,
) -> None:  # fmt: skip
    tmp = tmp_path_factory.mktemp("prop")
    s = collect_settings(stack_settings, tmp)
    t = fresh_topics(s)
    want: set[tuple[str, int]] = set()
    bad: set[tuple[int, int]] = set()  # (partition, offset) of every record that must be dead-lettered
    with BusProducer(s, **BIG_PRODUCER) as p:
        futures = []
        for kind, vid, seqs in records:
            b = frames(vid, seqs)  # tick = 3 * seq: consistent across records of a vehicle
            if kind == "repeat_tick":
                b = b.slice(0, len(seqs))
                b = dataclasses.replace(b, columns={**b.columns, "tick": np.repeat(b.columns["tick"][:1], len(seqs))})
            elif kind == "nan":
                b = dataclasses.replace(b, columns={**b.columns, "ego_speed_mps": np.full(len(seqs), np.nan, "<f2")})
            elif kind == "reversed":
                b = dataclasses.replace(b, columns={k: v[::-1] for k, v in b.columns.items()})
            raw = encode_batch(b)
            if kind == "bytes":
                raw = noise
            elif kind == "truncated":
                raw = raw[: len(raw) // 2]
            elif kind == "oversized":
                raw = noise + os.urandom(1_500_000)  # past what a dead letter may carry
            if kind == "valid":
                want |= {(vid, int(q)) for q in seqs}
            futures.append((kind, p.send_raw(t.telemetry.name, raw, vid.encode())))
        p.flush()
        for kind, f in futures:
            meta = f.get(timeout=30)
            if kind != "valid":
                bad.add((meta.partition, meta.offset))
    report = run(s, t, idle_timeout_s=1.0)
    got = read_table(tmp, "telemetry", ["vehicle_id", "seq"])
    keys = list(zip(got.get("vehicle_id", []), np.asarray(got.get("seq", []), dtype=np.int64).tolist(), strict=True))
    assert len(keys) == len(set(keys)) and set(keys) == want  # every valid frame once
    letters = dead_letters(s, t.dead, len(bad))
    assert {(d.partition, d.offset) for d in letters} == bad  # every bad record dead-lettered, with a reason
    assert all(d.reason for d in letters) and sum(report.dead_lettered.values()) == len(bad)
    assert committed_lag(s, t.telemetry, "g") == 0  # collect's offsets reached the end
