"""Serde round trips, schema evolution and rejection of bad payloads (pure logic, no broker)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetloop.platform.bus import (
    EVENT_TYPES,
    GROUND_TRUTH_FRAMES,
    TELEMETRY_FRAMES,
    Column,
    DatasetSealed,
    Event,
    FrameBatch,
    ModelValidated,
    PayloadRejected,
    SchemaRegistry,
    decode,
    encode,
    radar_valid,
)
from fleetloop.platform.bus.schemas import BatchSchema
from fleetloop.platform.bus.serde import MAX_MESSAGE_BYTES, encode_batch, frames_per_message
from fleetloop.platform.errors import DataError, SchemaError


def random_batch(schema: BatchSchema, n: int, seed: int, vehicle_id: str = "veh-1") -> FrameBatch:
    rng = np.random.default_rng(seed)
    cols = {}
    for c in schema.columns:
        shape = (n, *c.shape)
        if c.np_dtype.kind == "f":
            cols[c.name] = rng.normal(0, 100, shape).astype(c.np_dtype)
        else:
            info = np.iinfo(c.np_dtype)
            cols[c.name] = rng.integers(0, info.max, shape, dtype=c.np_dtype, endpoint=True)
    cols[schema.seq_column] = np.arange(n, dtype=np.uint32) + seed
    return FrameBatch.build(schema, vehicle_id, cols, tick_period_s=0.05)


def assert_same(a: FrameBatch, b: FrameBatch) -> None:
    assert (a.schema.name, a.vehicle_id, a.n_frames, a.tick_period_s) == (
        b.schema.name,
        b.vehicle_id,
        b.n_frames,
        b.tick_period_s,
    )
    for name, arr in a.columns.items():
        np.testing.assert_array_equal(arr, b.columns[name], err_msg=name)
        assert arr.dtype == b.columns[name].dtype


@settings(max_examples=60, deadline=None)
@given(
    schema=st.sampled_from([TELEMETRY_FRAMES, GROUND_TRUTH_FRAMES]),
    n=st.integers(0, 300),
    seed=st.integers(0, 2**16),
    vehicle_id=st.text(min_size=1, max_size=40),
)
def test_frame_batch_round_trip_is_exact(schema: BatchSchema, n: int, seed: int, vehicle_id: str) -> None:
    batch = random_batch(schema, n, seed, vehicle_id)
    back = decode(encode(batch))
    assert isinstance(back, FrameBatch)
    assert_same(batch, back)
    assert back.minor == schema.minor and back.ignored_columns == ()


def test_telemetry_frame_is_compact_and_fits_a_message() -> None:
    assert TELEMETRY_FRAMES.frame_bytes <= 280  # [B] 273 in v1.0: every sensor input the policy trains on
    n = frames_per_message(TELEMETRY_FRAMES)
    raw = encode(random_batch(TELEMETRY_FRAMES, n, 1))
    assert len(raw) <= MAX_MESSAGE_BYTES
    assert len(raw) / n < TELEMETRY_FRAMES.frame_bytes + 2  # header amortised to < 2 bytes a frame


def test_telemetry_carries_no_ground_truth() -> None:
    names = {c.name for c in TELEMETRY_FRAMES.columns}
    assert not any(n.startswith(("true_", "expert_")) for n in names)


def test_batch_over_the_message_limit_is_refused_with_advice() -> None:
    with pytest.raises(DataError, match="frames per message"):
        encode_batch(random_batch(TELEMETRY_FRAMES, 5000, 0))


def test_build_rejects_wrong_shapes_and_missing_columns() -> None:
    cols = TELEMETRY_FRAMES.zeros(4)
    cols["camera"] = np.zeros((4, 8, 15), np.uint8)
    with pytest.raises(DataError, match="camera"):
        FrameBatch.build(TELEMETRY_FRAMES, "v", cols)
    cols = TELEMETRY_FRAMES.zeros(4)
    del cols["lidar_range_m"]
    with pytest.raises(DataError, match="lidar_range_m"):
        FrameBatch.build(TELEMETRY_FRAMES, "v", cols)
    cols = TELEMETRY_FRAMES.zeros(4)
    cols["tick"] = np.zeros(5, np.uint32)
    with pytest.raises(DataError, match="frames"):
        FrameBatch.build(TELEMETRY_FRAMES, "v", cols)


def test_radar_valid_bits_expand_to_a_mask() -> None:
    mask = radar_valid(np.array([0b00000101, 0xFF], np.uint8))
    assert mask.shape == (2, 8)
    assert mask[0].tolist() == [True, False, True, False, False, False, False, False]
    assert mask[1].all()


# -- events --------------------------------------------------------------------------------------------


def _event_strategy(cls: type[Event]) -> st.SearchStrategy[Event]:
    text = st.text(max_size=30)
    by_type = {
        "str": text,
        "int": st.integers(-(2**53), 2**53),
        "float": st.floats(allow_nan=False),
        "bool": st.booleans(),
        "tuple[str, ...]": st.lists(text, max_size=4).map(tuple),
        "dict[str, int]": st.dictionaries(text, st.integers(-(2**53), 2**53), max_size=4),
        "dict[str, float]": st.dictionaries(text, st.floats(allow_nan=False), max_size=4),
    }
    kwargs = {f.name: by_type[str(f.type)] for f in dataclasses.fields(cls)}
    return st.builds(cls, **kwargs)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), cls=st.sampled_from(EVENT_TYPES))
def test_every_event_round_trips(data: st.DataObject, cls: type[Event]) -> None:
    event = data.draw(_event_strategy(cls))
    assert decode(encode(event)) == event


def test_every_event_field_added_after_1_0_has_a_default() -> None:
    for cls in EVENT_TYPES:
        for f in dataclasses.fields(cls):
            if f.metadata.get("since_minor", 0) > 0:
                assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


# -- schema evolution ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SealedV11(DatasetSealed):
    """dataset.sealed 1.1 as a future writer would send it: one more field, with a default."""

    MINOR: ClassVar[int] = 1
    n_vehicles: int = field(default=0, metadata={"since_minor": 1})


_NEXT = TELEMETRY_FRAMES.minor + 1
TELEMETRY_NEXT = dataclasses.replace(
    TELEMETRY_FRAMES,
    minor=_NEXT,
    columns=(*TELEMETRY_FRAMES.columns, Column("lane", "<u1", doc="test", since_minor=_NEXT, default=7)),
)


def test_reader_of_the_next_minor_fills_defaults_for_a_batch_of_this_one() -> None:
    reader = SchemaRegistry.of(batches=[TELEMETRY_NEXT])
    old = random_batch(TELEMETRY_FRAMES, 10, 3)
    back = decode(encode(old), reader)
    assert isinstance(back, FrameBatch)
    assert back.minor == TELEMETRY_FRAMES.minor and back.schema.minor == _NEXT
    assert back.columns["lane"].tolist() == [7] * 10
    np.testing.assert_array_equal(back.columns["camera"], old.columns["camera"])


def test_a_telemetry_1_0_batch_reads_with_est_light_unknown() -> None:
    v10 = dataclasses.replace(TELEMETRY_FRAMES, minor=0, columns=TELEMETRY_FRAMES.columns_at(0))
    old = random_batch(v10, 6, 5)
    back = decode(encode(old))
    assert isinstance(back, FrameBatch) and back.minor == 0
    assert np.isnan(back.columns["est_light"]).all() and back.columns["est_light"].shape == (6,)
    np.testing.assert_array_equal(back.columns["lidar_range_m"], old.columns["lidar_range_m"])


def test_reader_of_this_minor_reads_a_batch_of_the_next_and_names_what_it_ignored() -> None:
    new = random_batch(TELEMETRY_NEXT, 10, 4)
    back = decode(encode(new))
    assert isinstance(back, FrameBatch)
    assert back.ignored_columns == ("lane",) and "lane" not in back.columns
    np.testing.assert_array_equal(back.seq, new.seq)


def test_reader_of_1_1_fills_defaults_for_a_1_0_event() -> None:
    reader = SchemaRegistry.of(events=[SealedV11])
    old = DatasetSealed(dataset_id="d", uri="u", n_frames=5)
    back = decode(encode(old), reader)
    assert isinstance(back, SealedV11) and back.n_vehicles == 0 and back.event_id == old.event_id


def test_reader_of_1_0_ignores_fields_of_a_1_1_event() -> None:
    back = decode(encode(SealedV11(dataset_id="d", uri="u", n_frames=5, n_vehicles=3)))
    assert type(back) is DatasetSealed and back.n_frames == 5


def _with_version(raw: bytes, version: str) -> bytes:
    doc = json.loads(raw)
    doc["version"] = version
    return json.dumps(doc).encode()


def test_unknown_major_version_is_rejected() -> None:
    raw = _with_version(encode(DatasetSealed(dataset_id="d", uri="u", n_frames=1)), "2.0")
    with pytest.raises(SchemaError, match="major version 2") as e:
        decode(raw)
    assert isinstance(e.value, PayloadRejected) and e.value.reason == "unsupported_major"
    batch2 = dataclasses.replace(TELEMETRY_FRAMES, major=2)
    with pytest.raises(PayloadRejected, match="major version 2"):
        decode(encode(random_batch(batch2, 3, 0)))


def test_unknown_schema_is_rejected() -> None:
    raw = json.dumps({"schema": "no.such", "version": "1.0", "data": {}}).encode()
    with pytest.raises(PayloadRejected, match="unknown schema") as e:
        decode(raw)
    assert e.value.reason == "unknown_schema"


def test_missing_required_field_and_wrong_type_are_rejected() -> None:
    doc = json.loads(encode(ModelValidated(model_name="m", version=3, passed=True)))
    del doc["data"]["passed"]
    with pytest.raises(PayloadRejected, match="passed"):
        decode(json.dumps(doc).encode())
    doc = json.loads(encode(ModelValidated(model_name="m", version=3, passed=True)))
    doc["data"]["version"] = "3"
    with pytest.raises(PayloadRejected, match="version"):
        decode(json.dumps(doc).encode())


# -- garbage and truncation -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=2000))
def test_garbage_is_rejected_with_schema_error(raw: bytes) -> None:
    with pytest.raises(SchemaError):
        decode(raw)


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(0, 10_000), seed=st.integers(0, 100))
def test_truncated_batch_is_rejected(cut: int, seed: int) -> None:
    raw = encode(random_batch(TELEMETRY_FRAMES, 40, seed))
    cut = cut % len(raw)
    with pytest.raises(SchemaError):
        decode(raw[:cut])


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(1, 10_000))
def test_truncated_event_is_rejected(cut: int) -> None:
    raw = encode(DatasetSealed(dataset_id="d", uri="u", n_frames=1))
    with pytest.raises(SchemaError):
        decode(raw[: cut % len(raw)])


def test_a_batch_with_extra_trailing_bytes_is_rejected() -> None:
    with pytest.raises(PayloadRejected, match="length"):
        decode(encode(random_batch(TELEMETRY_FRAMES, 3, 0)) + b"\0" * 8)


def test_a_batch_column_with_a_different_dtype_is_rejected() -> None:
    raw = encode(random_batch(TELEMETRY_FRAMES, 3, 0))
    forged = raw.replace(b'["camera","|u1"', b'["camera","|i1"')
    assert forged != raw
    with pytest.raises(PayloadRejected, match="camera"):
        decode(forged)
