"""collect's pure logic, list in / list out: each (vehicle, seq) once, rejects with a reason, order kept."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetloop.pipelines.collect import CollectState, SeqSet, collect
from fleetloop.pipelines.lake import Manifest
from fleetloop.platform.bus import GROUND_TRUTH_FRAMES, TELEMETRY_FRAMES, DatasetSealed, FrameBatch
from fleetloop.platform.bus.consumer import Delivery

TOPIC = "fleetloop.telemetry"


def batch(vehicle: str, seqs: list[int] | np.ndarray, schema=TELEMETRY_FRAMES) -> FrameBatch:  # type: ignore[no-untyped-def]
    seqs = np.asarray(seqs, dtype=np.uint32)
    cols = schema.zeros(len(seqs))
    cols["seq"] = seqs
    cols["tick"] = seqs * 2  # a payload column that must travel with its seq
    return FrameBatch.build(schema, vehicle, cols)


def deliver(value: object, offset: int = 0, partition: int = 0) -> Delivery:
    return Delivery(TOPIC, partition, offset, b"k", 1_700_000_000_000, value)  # type: ignore[arg-type]


def written(chunks: list) -> list[tuple[str, int]]:  # type: ignore[type-arg]
    return [(c.vehicle_id, int(s)) for c in chunks for s in c.columns["seq"]]


def test_a_frame_sent_twice_is_written_once_and_counted() -> None:
    state = CollectState()
    state, chunks, rejects = collect(state, [deliver(batch("v1", [0, 1, 2]), 0), deliver(batch("v1", [2, 3]), 1)])
    assert written(chunks) == [("v1", 0), ("v1", 1), ("v1", 2), ("v1", 3)]
    assert rejects == [] and state.duplicates["duplicate_seq"] == 1 and state.rows_out == 4


def test_same_seq_of_different_vehicles_are_different_frames() -> None:
    _, chunks, _ = collect(CollectState(), [deliver(batch("v1", [5])), deliver(batch("v2", [5]))])
    assert written(chunks) == [("v1", 5), ("v2", 5)]


def test_repeats_inside_one_record_keep_the_first_and_its_payload() -> None:
    b = batch("v1", [4, 4, 7, 5])
    _, chunks, _ = collect(CollectState(), [deliver(b)])
    assert written(chunks) == [("v1", 4), ("v1", 7), ("v1", 5)]  # arrival order, not sorted
    assert chunks[0].columns["tick"].tolist() == [8, 14, 10]


def test_redelivery_below_the_lake_offsets_is_counted_as_redelivered() -> None:
    state = CollectState()
    m = Manifest(
        segment_id="s1", table="telemetry", schema="telemetry.frames", schema_version="1.0",
        partition="date=2024-01-01/hour=00", file="part-s1.parquet", rows=3, size_bytes=1, content_sha256="x",
        created_at_s=0.0, offsets={f"{TOPIC}:0": [0, 10]}, vehicles={"v1": [[0, 2]]},
    )  # fmt: skip
    state.absorb(m)
    state.absorb(m)  # absorbing twice changes nothing
    state, chunks, _ = collect(state, [deliver(batch("v1", [1, 2, 3]), offset=9)])
    assert written(chunks) == [("v1", 3)]
    assert dict(state.duplicates) == {"redelivered": 2}


def test_events_and_foreign_schemas_are_rejected_with_a_reason() -> None:
    ev = DatasetSealed(dataset_id="d", uri="u", n_frames=1)
    gt = batch("v1", [1], GROUND_TRUTH_FRAMES)
    _, chunks, rejects = collect(CollectState(), [deliver(ev), deliver(gt), deliver(batch("x" * 200, [1]))])
    assert chunks == []
    assert [r.reason for r in rejects] == ["wrong_schema", "wrong_schema", "bad_vehicle_id"]


def test_empty_records_write_nothing_and_are_counted() -> None:
    state, chunks, rejects = collect(CollectState(), [deliver(batch("v1", []))])
    assert chunks == [] and rejects == [] and state.empty_records == 1


def test_seqset_merges_touching_and_overlapping_runs() -> None:
    s = SeqSet([[10, 12], [0, 3]])
    s.add_sorted_unique(np.array([4, 5, 9, 20]))
    assert s.intervals() == [[0, 5], [9, 12], [20, 20]]
    assert s.contains(np.array([0, 5, 6, 8, 9, 13, 20, 21])).tolist() == [1, 1, 0, 0, 1, 0, 1, 0]
    assert len(s) == 11


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 60), max_size=30), max_size=12), st.integers(1, 4))
def test_any_sequence_of_uploads_writes_each_frame_exactly_once(uploads: list[list[int]], n_vehicles: int) -> None:
    deliveries = [deliver(batch(f"v{i % n_vehicles}", seqs), offset=i) for i, seqs in enumerate(uploads)]
    # Split into two calls at every point: the state carries the dedup between polls.
    cut = len(deliveries) // 2
    state, a, _ = collect(CollectState(), deliveries[:cut])
    state, b, _ = collect(state, deliveries[cut:])
    got = written(a + b)
    want = {(f"v{i % n_vehicles}", s) for i, seqs in enumerate(uploads) for s in seqs}
    assert len(got) == len(set(got)) and set(got) == want
    assert state.rows_out + sum(state.duplicates.values()) == sum(len(u) for u in uploads)
