"""collect's pure logic, list in / list out: each (vehicle, seq) once, rejects with a reason, order kept."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetloop.pipelines import collect as collect_module
from fleetloop.pipelines.collect import CollectState, SeqSet, collect
from fleetloop.pipelines.label import label_columns
from fleetloop.pipelines.lake import Manifest
from fleetloop.platform.bus import GROUND_TRUTH_FRAMES, TELEMETRY_FRAMES, DatasetSealed, FrameBatch
from fleetloop.platform.bus.consumer import Delivery
from fleetloop.platform.bus.serde import decode, encode

TOPIC = "fleetloop.telemetry"


def batch(vehicle: str, seqs: list[int] | np.ndarray, schema=TELEMETRY_FRAMES) -> FrameBatch:  # type: ignore[no-untyped-def]
    seqs = np.asarray(seqs, dtype=np.uint32)
    cols = schema.zeros(len(seqs))
    cols["seq"] = seqs
    cols["tick"] = seqs * 2  # a payload column that must travel with its seq
    return FrameBatch.build(schema, vehicle, cols)


def deliver(value: object, offset: int = 0, partition: int = 0) -> Delivery:
    return Delivery(TOPIC, partition, offset, b"k", 1_700_000_000_000, value)  # type: ignore[arg-type]


def with_column(b: FrameBatch, name: str, values: object) -> FrameBatch:
    cols = dict(b.columns)
    cols[name] = np.asarray(values, dtype=cols[name].dtype)
    return dataclasses.replace(b, columns=cols)


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


def test_a_batch_that_repeats_a_tick_is_dead_lettered_whole_and_labelling_still_works() -> None:
    good = batch("v1", [0, 1, 2])
    repeats = with_column(batch("v2", [0, 1, 2]), "tick", [10, 10, 12])  # two frames at tick 10
    state, chunks, rejects = collect(CollectState(), [deliver(good, 0), deliver(repeats, 1)])
    assert written(chunks) == [("v1", 0), ("v1", 1), ("v1", 2)]
    assert [(r.reason, r.delivery.offset) for r in rejects] == [("tick_order", 1)]
    assert "tick repeats 10" in rejects[0].message
    assert state.rows_out == 3 and "v2" not in state.seen  # nothing of the refused batch is remembered
    lake = {k: np.concatenate([c.columns[k] for c in chunks]) for k in chunks[0].columns}
    lake["vehicle_id"] = np.array([c.vehicle_id for c in chunks for _ in range(c.n)])
    assert len(label_columns(lake)["label_valid"]) == 3  # the label stage's check is what failed before


@pytest.mark.parametrize(
    ("seqs", "ticks", "reason"),
    [
        ([4, 4, 7], [8, 9, 14], "seq_order"),  # a seq twice in one upload
        ([4, 7, 5], [8, 14, 10], "seq_order"),  # out of order
        ([1, 2, 3], [5, 4, 6], "tick_order"),  # time goes back
    ],
)
def test_seqs_and_ticks_must_be_unique_and_increasing_within_a_batch(
    seqs: list[int], ticks: list[int], reason: str
) -> None:
    b = with_column(batch("v1", seqs), "tick", ticks)
    _, chunks, rejects = collect(CollectState(), [deliver(b)])
    assert chunks == [] and [r.reason for r in rejects] == [reason]


def test_non_finite_motion_and_inconsistent_columns_are_dead_lettered() -> None:
    nan_speed = with_column(batch("v1", [0, 1]), "ego_speed_mps", [3.0, np.nan])
    cols = dict(batch("v2", [0, 1, 2]).columns)
    cols["road_pos_m"] = cols["road_pos_m"][:2]  # one column shorter than the others
    short = dataclasses.replace(batch("v2", [0, 1, 2]), columns=cols)
    f64 = with_column(batch("v3", [0]), "road_pos_m", [1.0])
    f64 = dataclasses.replace(f64, columns={**f64.columns, "road_pos_m": np.array([1.0])})  # float64, not <f4
    nan_ok = with_column(batch("v4", [0]), "hazard_prob", [np.nan])  # NaN means "no model ran": allowed
    _, chunks, rejects = collect(CollectState(), [deliver(nan_speed), deliver(short), deliver(f64), deliver(nan_ok)])
    assert [r.reason for r in rejects] == ["not_finite", "bad_columns", "bad_columns"]
    assert "ego_speed_mps" in rejects[0].message and "seq 1" in rejects[0].message
    assert written(chunks) == [("v4", 0)]


def test_new_seqs_at_ticks_already_collected_are_a_tick_conflict() -> None:
    first = batch("v1", [0, 1, 2])  # ticks 0, 2, 4
    reused = with_column(batch("v1", [10, 11]), "tick", [2, 6])  # seq 10 claims tick 2 again
    later = with_column(batch("v1", [12]), "tick", [6])  # tick 6 is free: the refused batch left no trace
    _, chunks, rejects = collect(CollectState(), [deliver(first, 0), deliver(reused, 1), deliver(later, 2)])
    assert [r.reason for r in rejects] == ["tick_conflict"]
    assert written(chunks) == [("v1", 0), ("v1", 1), ("v1", 2), ("v1", 12)]


def test_a_byte_identical_upload_is_a_transport_retry_and_other_bytes_blame_the_vehicle() -> None:
    upload = batch("v1", [0, 1, 2])
    raw = encode(upload)
    retried = dataclasses.replace(deliver(upload, 0), raw=raw)
    again = dataclasses.replace(deliver(decode(raw), 1), raw=raw)  # same bytes, a new offset
    other = with_column(batch("v1", [2, 3]), "road_pos_m", [9.0, 9.5])  # seq 2 again, other content
    state, chunks, _ = collect(CollectState(), [retried, again, deliver(other, 2)])
    assert written(chunks) == [("v1", 0), ("v1", 1), ("v1", 2), ("v1", 3)]
    assert dict(state.duplicates) == {"transport_retry": 3, "duplicate_seq": 1}


def test_an_error_inside_collect_dead_letters_that_record_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real = collect_module.record_digest

    def digest(d: Delivery) -> str:
        if d.offset == 1:
            raise RuntimeError("boom")
        return real(d)

    monkeypatch.setattr(collect_module, "record_digest", digest)
    state, chunks, rejects = collect(
        CollectState(), [deliver(batch("v1", [0]), 0), deliver(batch("v1", [1]), 1), deliver(batch("v1", [2]), 2)]
    )
    assert [(r.reason, r.message) for r in rejects] == [("collect_error", "RuntimeError: boom")]
    assert written(chunks) == [("v1", 0), ("v1", 2)] and state.seen["v1"].intervals() == [[0, 0], [2, 2]]


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


@st.composite
def uploads(draw: st.DrawFn) -> tuple[list[Delivery], set[tuple[str, int]], set[int]]:
    """Valid uploads (overlapping seq windows, some sent twice) mixed with inconsistent ones; returns the
    deliveries, the frames that must land, and the offsets that must be refused."""
    deliveries: list[Delivery] = []
    want: set[tuple[str, int]] = set()
    bad: set[int] = set()
    for i in range(draw(st.integers(0, 14))):
        vid = f"v{draw(st.integers(0, 3))}"
        start = draw(st.integers(0, 50))
        seqs = list(range(start, start + draw(st.integers(0, 12))))
        b = batch(vid, seqs)  # tick = 2 * seq: consistent across uploads
        fault = draw(st.sampled_from(["none", "none", "none", "repeat_tick", "nan", "shuffle", "wrong_schema"]))
        if fault == "repeat_tick" and len(seqs) >= 2:
            b = with_column(b, "tick", np.r_[b.columns["tick"][:1], b.columns["tick"][:-1]])
        elif fault == "nan" and seqs:
            b = with_column(b, "command_accel_mps2", np.full(len(seqs), np.inf))
        elif fault == "shuffle" and len(seqs) >= 2:
            b = b.slice(0, len(seqs))
            b = dataclasses.replace(b, columns={k: v[::-1] for k, v in b.columns.items()})
        elif fault == "wrong_schema":
            b = batch(vid, seqs, GROUND_TRUTH_FRAMES)
        else:
            fault = "none"
        if fault == "none" or (fault in ("repeat_tick", "shuffle") and len(seqs) < 2) or (fault == "nan" and not seqs):
            want |= {(vid, s) for s in seqs}
        else:
            bad.add(i)
        deliveries.append(deliver(b, offset=i))
    return deliveries, want, bad


@settings(max_examples=80, deadline=None)
@given(uploads())
def test_every_valid_frame_lands_once_and_every_inconsistent_upload_is_refused(
    case: tuple[list[Delivery], set[tuple[str, int]], set[int]],
) -> None:
    deliveries, want, bad = case
    cut = len(deliveries) // 2  # two polls: the state carries the dedup between them
    state, a, ra = collect(CollectState(), deliveries[:cut])
    state, b, rb = collect(state, deliveries[cut:])
    got = written(a + b)
    assert len(got) == len(set(got)) and set(got) == want
    assert {r.delivery.offset for r in ra + rb} == bad
    assert state.rows_out + sum(state.duplicates.values()) == state.frames_in


@pytest.mark.parametrize("weather", ["fog", "rain"])
def test_what_a_real_fleet_uploads_passes_the_consistency_checks(weather: str) -> None:
    from fleetloop.edge_agent.telemetry import vehicle_key
    from tests.pipelines.fleet_lake import _drive

    vids, tel, _ = _drive(24, 200, weather, 3)
    deliveries = []
    for i, v in enumerate(np.unique(vids)):
        rows = np.flatnonzero(vids == v)
        b = FrameBatch.build(TELEMETRY_FRAMES, vehicle_key(int(v), ""), {k: c[rows] for k, c in tel.items()})
        deliveries.append(deliver(b, offset=i))
    state, _, rejects = collect(CollectState(), deliveries)
    assert [(r.reason, r.message) for r in rejects] == []
    assert state.rows_out == len(vids)
