"""The bus against a real broker: topics, round trips, commit-after-durable, dead letters, 1M frames."""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest

from fleetloop.platform.bus import (
    DEAD_LETTER,
    PIPELINE_EVENTS,
    TELEMETRY,
    TELEMETRY_FRAMES,
    TOPICS,
    BusConsumer,
    BusProducer,
    DatasetSealed,
    DeadLetter,
    FrameBatch,
    ModelTrained,
)
from fleetloop.platform.bus.admin import describe_topics, ensure_topics
from fleetloop.platform.bus.consumer import Polled
from fleetloop.platform.settings import Settings
from tests.integration.private_kafka import private_topic

pytestmark = pytest.mark.integration


def telemetry(vehicle_id: str, first_seq: int, n: int) -> FrameBatch:
    cols = TELEMETRY_FRAMES.zeros(n)
    cols["seq"] = np.arange(first_seq, first_seq + n, dtype=np.uint32)
    cols["camera"][:] = np.arange(128, dtype=np.uint8).reshape(8, 16)
    cols["ego_speed_mps"][:] = 13.5
    return FrameBatch.build(TELEMETRY_FRAMES, vehicle_id, cols)


def drain(consumer: BusConsumer, want_records: int, timeout_s: float = 30) -> list[Polled]:
    out: list[Polled] = []
    deadline = time.monotonic() + timeout_s
    while sum(p.n_records for p in out) < want_records and time.monotonic() < deadline:
        polled = consumer.poll(0.5)
        if polled.n_records:
            out.append(polled)
    return out


def test_ensure_topics_creates_the_catalogue_once(stack_settings: Settings, kafka_bootstrap: str) -> None:
    ensure_topics(stack_settings)  # `up` already ran it; again is a no-op
    assert ensure_topics(stack_settings) == []
    parts = describe_topics(stack_settings)
    assert set(parts) == {t.name for t in TOPICS}
    assert parts[TELEMETRY.name] == stack_settings.kafka_partitions
    assert parts[PIPELINE_EVENTS.name] == 1 and parts[DEAD_LETTER.name] == 1


def test_batches_and_events_round_trip(stack_settings: Settings, kafka_bootstrap: str) -> None:
    tel, events = private_topic(TELEMETRY), private_topic(PIPELINE_EVENTS)
    assert sorted(ensure_topics(stack_settings, [tel, events])) == sorted([tel.name, events.name])
    sealed = DatasetSealed(dataset_id="ds-1", uri="file:///lake/ds-1", n_frames=3000, source="test")
    trained = ModelTrained(model_name="fleet-policy", run_id="r1", artifact_uri="s3://x", dataset_ids=("ds-1",))
    with BusProducer(stack_settings) as p:
        # 3,000 frames of one vehicle: more than one message's worth, so the producer splits them
        assert p.send(tel, telemetry("veh-7", 0, 3000)) == 2
        p.send(events, sealed)
        p.send(events, trained)
        p.flush()
    with BusConsumer(stack_settings, [tel, events], group_id=f"g-{uuid.uuid4().hex}") as c:
        polls = drain(c, 4)
        for polled in polls:
            c.commit(polled)
        counts = c.counters.snapshot()
    deliveries = [d for p in polls for d in p.deliveries]
    got_events = [d.value for d in deliveries if d.topic == events.name]
    assert got_events == [sealed, trained]  # one partition: in order
    batches = [d.value for d in deliveries if isinstance(d.value, FrameBatch)]
    assert all(b.vehicle_id == "veh-7" for b in batches)
    seq = np.concatenate([b.seq for b in batches])
    np.testing.assert_array_equal(seq, np.arange(3000))
    assert float(batches[0].columns["ego_speed_mps"][0]) == 13.5
    assert counts["frames_received"] == 3000 and counts["dead_lettered"] == {}


def test_offsets_move_only_when_the_caller_commits(stack_settings: Settings, kafka_bootstrap: str) -> None:
    events = private_topic(PIPELINE_EVENTS)
    ensure_topics(stack_settings, [events])
    group = f"g-{uuid.uuid4().hex}"
    with BusProducer(stack_settings) as p:
        for i in range(3):
            p.send(events, DatasetSealed(dataset_id=f"ds-{i}", uri="u", n_frames=i))
    with BusConsumer(stack_settings, [events], group_id=group) as c:
        first = drain(c, 3)  # read but never committed: the work was not made durable
    assert sum(p.n_records for p in first) == 3
    with BusConsumer(stack_settings, [events], group_id=group) as c:
        again = drain(c, 3)
        assert [d.value.dataset_id for p in again for d in p.deliveries] == ["ds-0", "ds-1", "ds-2"]  # type: ignore[union-attr]
        for polled in again:
            c.commit(polled)
    with BusConsumer(stack_settings, [events], group_id=group) as c:
        assert drain(c, 1, timeout_s=4) == []  # committed: nothing is redelivered


def test_unreadable_records_go_to_the_dead_letter_topic(stack_settings: Settings, kafka_bootstrap: str) -> None:
    tel, dlq = private_topic(TELEMETRY), private_topic(DEAD_LETTER)
    ensure_topics(stack_settings, [tel, dlq])
    good = telemetry("veh-1", 0, 10)
    newer_major = json.dumps({"schema": "dataset.sealed", "version": "9.0", "data": {}}).encode()
    wrong_topic = DatasetSealed(dataset_id="d", uri="u", n_frames=1)
    with BusProducer(stack_settings) as p:
        p.send_raw(tel.name, b"\x00garbage", b"veh-1")
        p.send(tel, good)
        p.send_raw(tel.name, newer_major, b"veh-1")
        p.send_raw(tel.name, _encode(wrong_topic), b"veh-1")
    group = f"g-{uuid.uuid4().hex}"
    with BusConsumer(stack_settings, [tel], group_id=group, dead_letter_topic=dlq) as c:
        polls = drain(c, 4)
        for polled in polls:
            c.commit(polled)
        counts = c.counters.snapshot()
    assert sum(p.dead_lettered for p in polls) == 3
    assert [d.value.vehicle_id for p in polls for d in p.deliveries] == ["veh-1"]  # type: ignore[union-attr]
    assert counts["dead_lettered"] == {"malformed": 1, "unsupported_major": 1, "wrong_topic": 1}

    from kafka import KafkaConsumer

    reader = KafkaConsumer(dlq.name, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    try:
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + 20
        while len(letters) < 3 and time.monotonic() < deadline:
            for recs in reader.poll(timeout_ms=500).values():
                letters += [DeadLetter.from_record(r.key, r.value, list(r.headers)) for r in recs]
    finally:
        reader.close()
    assert [(x.reason, x.value) for x in letters] == [
        ("malformed", b"\x00garbage"),
        ("unsupported_major", newer_major),
        ("wrong_topic", _encode(wrong_topic)),
    ]
    assert all(x.topic == tel.name and x.group == group and x.key == b"veh-1" for x in letters)
    assert [x.offset for x in letters] == [0, 2, 3]  # one partition per key: the original offsets
    assert "major version 9" in letters[1].error


def _encode(event: DatasetSealed) -> bytes:
    from fleetloop.platform.bus import encode

    return encode(event)


@pytest.mark.slow
def test_a_million_frames_arrive_complete_without_duplicates(stack_settings: Settings, kafka_bootstrap: str) -> None:
    tel = private_topic(TELEMETRY)
    ensure_topics(stack_settings, [tel])
    n_vehicles, per_vehicle, per_send = 100, 10_000, 2_500  # each vehicle uploads in 4 chunks
    t0 = time.perf_counter()
    with BusProducer(stack_settings) as p:
        for first in range(0, per_vehicle, per_send):
            for v in range(n_vehicles):
                p.send(tel, telemetry(f"veh-{v:03d}", first, per_send))
        p.flush()
    seen: dict[str, list[np.ndarray]] = {}
    got = 0
    with BusConsumer(stack_settings, [tel], group_id=f"g-{uuid.uuid4().hex}") as c:
        deadline = time.monotonic() + 120
        while got < n_vehicles * per_vehicle and time.monotonic() < deadline:
            polled = c.poll(0.5)
            for d in polled.deliveries:
                assert isinstance(d.value, FrameBatch)
                seen.setdefault(d.value.vehicle_id, []).append(d.value.seq)
                got += d.value.n_frames
            c.commit(polled)
        # anything beyond the million would be a duplicate: give it a moment to show up
        extra = drain(c, 1, timeout_s=2)
    elapsed = time.perf_counter() - t0
    assert extra == [] and got == 1_000_000
    assert len(seen) == n_vehicles
    want = np.arange(per_vehicle, dtype=np.uint32)
    for vid, parts in seen.items():
        np.testing.assert_array_equal(np.concatenate(parts), want, err_msg=vid)  # complete, once, in order
    assert elapsed < 60, f"1M frames took {elapsed:.1f} s"
