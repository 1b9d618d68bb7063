"""The one (de)serialisation module of the bus: columnar frame batches and JSON control events.

Wire formats (docs/adr/0020-telemetry-columnar-batches.md says why):

- **frame batch**: ``b"FLCB"`` + ``u32`` header length + a JSON header
  (``schema``, ``version`` "M.m", ``vehicle_id``, ``n``, ``tick_period_s``, ``columns`` as
  ``[name, dtype, shape]``) padded to 8 bytes, then one block per column in header order, each
  ``n * frame_bytes`` long and padded to 8 bytes. Decoding is zero-copy: each column is an
  ``np.frombuffer`` view of the message.
- **event**: UTF-8 JSON ``{"schema": ..., "version": "M.m", "data": {...}}``.

Every rejection raises :class:`PayloadRejected` (a ``SchemaError``) whose ``reason`` is one of
:data:`REJECT_REASONS`, so the consumer can dead-letter and count it by reason.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from math import prod
from typing import Any, Union

import numpy as np

from fleetloop.platform.bus.events import EVENT_TYPES, Event
from fleetloop.platform.bus.schemas import GROUND_TRUTH_FRAMES, TELEMETRY_FRAMES, BatchSchema
from fleetloop.platform.errors import DataError, SchemaError

__all__ = [
    "DEFAULT_REGISTRY",
    "MAX_FRAMES_PER_MESSAGE",
    "MAX_MESSAGE_BYTES",
    "REJECT_REASONS",
    "FrameBatch",
    "PayloadRejected",
    "SchemaRegistry",
    "decode",
    "encode",
    "encode_batch",
    "encode_event",
    "frames_per_message",
]

BATCH_MAGIC = b"FLCB"
_PREFIX = struct.Struct("<4sI")
_ALIGN = 8
# Kafka's default message.max.bytes is 1,048,588; stay below it with room for record overhead.
MAX_MESSAGE_BYTES = 1_000_000
MAX_FRAMES_PER_MESSAGE = 2048
_MAX_HEADER_BYTES = 64 * 1024

REJECT_REASONS = ("malformed", "unknown_schema", "unsupported_major", "wrong_topic")


class PayloadRejected(SchemaError):
    """A payload the bus cannot accept; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REJECT_REASONS, reason
        super().__init__(message)
        self.reason = reason


def _pad(n: int) -> int:
    return -n % _ALIGN


@dataclass(frozen=True)
class SchemaRegistry:
    """The schemas a reader knows, keyed by ``(name, major)``; each entry is the newest minor it knows."""

    batches: Mapping[tuple[str, int], BatchSchema] = field(default_factory=dict)
    events: Mapping[tuple[str, int], type[Event]] = field(default_factory=dict)

    @classmethod
    def of(cls, batches: Iterable[BatchSchema] = (), events: Iterable[type[Event]] = ()) -> SchemaRegistry:
        return cls(
            batches={(s.name, s.major): s for s in batches},
            events={(e.SCHEMA, e.MAJOR): e for e in events},
        )

    def known(self) -> list[str]:
        """Every known ``name major.minor``, for error messages."""
        out = [f"{s.name} {s.version}" for s in self.batches.values()]
        out += [f"{e.SCHEMA} {e.MAJOR}.{e.MINOR}" for e in self.events.values()]
        return sorted(out)


DEFAULT_REGISTRY = SchemaRegistry.of(batches=(TELEMETRY_FRAMES, GROUND_TRUTH_FRAMES), events=EVENT_TYPES)


def _parse_version(v: object) -> tuple[int, int]:
    if not isinstance(v, str):
        raise PayloadRejected("malformed", f"version {v!r} is not a 'major.minor' string")
    major, sep, minor = v.partition(".")
    if not sep or not major.isdigit() or not minor.isdigit():
        raise PayloadRejected("malformed", f"version {v!r} is not 'major.minor'")
    return int(major), int(minor)


def _lookup(table: Mapping[tuple[str, int], Any], name: object, major: int, registry: SchemaRegistry) -> Any:
    if not isinstance(name, str):
        raise PayloadRejected("malformed", f"schema name {name!r} is not a string")
    found = table.get((name, major))
    if found is not None:
        return found
    if any(n == name for n, _ in table):
        majors = sorted(m for n, m in table if n == name)
        raise PayloadRejected(
            "unsupported_major", f"{name} major version {major} is not supported (this reader knows {majors})"
        )
    raise PayloadRejected("unknown_schema", f"unknown schema {name!r}; known: {', '.join(registry.known())}")


# -- frame batches ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FrameBatch:
    """Frames of one vehicle, column by column: ``columns[name]`` has shape ``(n_frames, *column.shape)``.

    Build one with :meth:`build` (validates and casts); :func:`decode` returns read-only views of the
    message. ``minor`` is the minor version the payload was written with; ``ignored_columns`` lists
    columns of a newer minor that this reader does not know.
    """

    schema: BatchSchema
    vehicle_id: str
    columns: Mapping[str, np.ndarray]
    tick_period_s: float = 0.1
    minor: int = -1
    ignored_columns: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        schema: BatchSchema,
        vehicle_id: str,
        columns: Mapping[str, Any],
        tick_period_s: float = 0.1,
    ) -> FrameBatch:
        """Validate ``columns`` against ``schema`` (every column, one length, per-frame shapes) and cast dtypes."""
        if not isinstance(vehicle_id, str) or not vehicle_id:
            raise DataError(f"vehicle_id must be a non-empty string, got {vehicle_id!r}")
        if not tick_period_s > 0:
            raise DataError(f"tick_period_s must be > 0, got {tick_period_s}")
        missing = [c.name for c in schema.columns if c.name not in columns]
        extra = sorted(set(columns) - set(schema.by_name))
        if missing or extra:
            raise DataError(f"{schema.name} {schema.version}: missing columns {missing}, unknown columns {extra}")
        out: dict[str, np.ndarray] = {}
        n: int | None = None
        for c in schema.columns:
            arr = np.ascontiguousarray(columns[c.name], dtype=c.np_dtype)
            if arr.ndim != 1 + len(c.shape) or arr.shape[1:] != c.shape:
                raise DataError(f"column {c.name}: shape {arr.shape} is not (n_frames, *{c.shape})")
            if n is None:
                n = arr.shape[0]
            elif arr.shape[0] != n:
                raise DataError(f"column {c.name} has {arr.shape[0]} frames, {schema.seq_column} has {n}")
            out[c.name] = arr
        return cls(schema, vehicle_id, out, float(tick_period_s), schema.minor)

    @property
    def n_frames(self) -> int:
        return int(self.columns[self.schema.seq_column].shape[0])

    @property
    def seq(self) -> np.ndarray:
        return self.columns[self.schema.seq_column]

    def slice(self, start: int, stop: int) -> FrameBatch:
        """Frames ``start:stop`` as a batch of views."""
        cols = {k: v[start:stop] for k, v in self.columns.items()}
        return dataclasses.replace(self, columns=cols)


def frames_per_message(schema: BatchSchema) -> int:
    """How many frames of ``schema`` one Kafka message holds (bounded by count and by bytes)."""
    header_allowance = 4096
    per_frame = schema.frame_bytes
    return max(1, min(MAX_FRAMES_PER_MESSAGE, (MAX_MESSAGE_BYTES - header_allowance) // per_frame))


def encode_batch(batch: FrameBatch) -> bytes:
    """Serialise a frame batch of at most :data:`MAX_MESSAGE_BYTES` (split bigger ones with ``slice``)."""
    schema = batch.schema
    n = batch.n_frames
    header = json.dumps(
        {
            "schema": schema.name,
            "version": schema.version,
            "vehicle_id": batch.vehicle_id,
            "n": n,
            "tick_period_s": batch.tick_period_s,
            "columns": [c.descriptor for c in schema.columns],
        },
        separators=(",", ":"),
    ).encode()
    parts: list[bytes | memoryview] = [_PREFIX.pack(BATCH_MAGIC, len(header)), header]
    zeros = bytes(_ALIGN)
    parts.append(zeros[: _pad(_PREFIX.size + len(header))])
    for c in schema.columns:
        arr = batch.columns[c.name]
        if arr.dtype != c.np_dtype or arr.shape != (n, *c.shape):
            raise DataError(f"column {c.name}: {arr.dtype}{arr.shape} does not match {c.dtype}{(n, *c.shape)}")
        block = np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data
        parts.append(block)
        parts.append(zeros[: _pad(block.nbytes)])
    raw = b"".join(parts)
    if len(raw) > MAX_MESSAGE_BYTES:
        raise DataError(
            f"a batch of {n} frames is {len(raw)} bytes, over the {MAX_MESSAGE_BYTES}-byte message limit; "
            f"send at most {frames_per_message(schema)} frames per message"
        )
    return raw


def _decode_batch(raw: bytes | memoryview, registry: SchemaRegistry) -> FrameBatch:
    buf = memoryview(raw)
    if len(buf) < _PREFIX.size:
        raise PayloadRejected("malformed", f"truncated batch: {len(buf)} bytes")
    _, header_len = _PREFIX.unpack_from(buf)
    if header_len > _MAX_HEADER_BYTES or _PREFIX.size + header_len > len(buf):
        raise PayloadRejected("malformed", f"batch header length {header_len} exceeds the {len(buf)}-byte payload")
    try:
        header = json.loads(bytes(buf[_PREFIX.size : _PREFIX.size + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PayloadRejected("malformed", f"batch header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise PayloadRejected("malformed", "batch header is not a JSON object")
    major, minor = _parse_version(header.get("version"))
    schema: BatchSchema = _lookup(registry.batches, header.get("schema"), major, registry)
    n, vehicle_id, tick_period_s, descriptors = (
        header.get("n"),
        header.get("vehicle_id"),
        header.get("tick_period_s"),
        header.get("columns"),
    )
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise PayloadRejected("malformed", f"frame count {n!r} is not a non-negative integer")
    if not isinstance(vehicle_id, str) or not vehicle_id:
        raise PayloadRejected("malformed", f"vehicle_id {vehicle_id!r} is not a non-empty string")
    if not isinstance(tick_period_s, int | float) or not tick_period_s > 0:
        raise PayloadRejected("malformed", f"tick_period_s {tick_period_s!r} is not a positive number")
    if not isinstance(descriptors, list):
        raise PayloadRejected("malformed", "batch header has no column list")

    offset = _PREFIX.size + header_len
    offset += _pad(offset)
    columns: dict[str, np.ndarray] = {}
    ignored: list[str] = []
    for d in descriptors:
        try:
            name, dtype_str, shape_list = d
            dtype = np.dtype(dtype_str)
            shape = tuple(int(s) for s in shape_list)
        except (TypeError, ValueError) as e:
            raise PayloadRejected("malformed", f"bad column descriptor {d!r}: {e}") from e
        if any(s <= 0 for s in shape) or dtype.hasobject:
            raise PayloadRejected("malformed", f"bad column descriptor {d!r}")
        nbytes = n * dtype.itemsize * prod(shape)
        if offset + nbytes > len(buf):
            raise PayloadRejected("malformed", f"truncated batch: column {name} ends past byte {len(buf)}")
        known = schema.by_name.get(name)
        if known is None:
            if minor <= schema.minor:
                raise PayloadRejected("malformed", f"{schema.name} {major}.{minor} has no column {name!r}")
            ignored.append(name)  # added by a newer minor: skip it
        else:
            if dtype != known.np_dtype or shape != known.shape:
                raise PayloadRejected(
                    "malformed",
                    f"column {name} is {dtype.str}{list(shape)}, schema {schema.name} says {known.dtype}"
                    f"{list(known.shape)}",
                )
            arr = np.frombuffer(buf, dtype=dtype, count=n * prod(shape), offset=offset)
            columns[name] = arr.reshape((n, *shape))
        offset += nbytes + _pad(nbytes)
    if offset != len(buf):
        raise PayloadRejected("malformed", f"batch length {len(buf)} bytes, its header describes {offset}")
    for c in schema.columns:
        if c.name in columns:
            continue
        if c.since_minor <= minor:
            raise PayloadRejected("malformed", f"{schema.name} {major}.{minor} payload lacks column {c.name!r}")
        filled = np.full((n, *c.shape), c.default, dtype=c.np_dtype)  # older minor: default
        filled.flags.writeable = False
        columns[c.name] = filled
    return FrameBatch(schema, vehicle_id, columns, float(tick_period_s), minor, tuple(ignored))


# -- events ------------------------------------------------------------------------------------------------


def encode_event(event: Event) -> bytes:
    """Serialise a control event as JSON with its schema name and version."""
    if not event.SCHEMA:
        raise DataError(f"{type(event).__name__} has no SCHEMA name; subclass a concrete event")
    data = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    doc = {"schema": event.SCHEMA, "version": f"{event.MAJOR}.{event.MINOR}", "data": data}
    return json.dumps(doc, separators=(",", ":")).encode()


def _since(f: dataclasses.Field[Any]) -> int:
    return int(f.metadata.get("since_minor", 0))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check a JSON value against a field annotation; JSON lists become tuples."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arm in typing.get_args(tp):
            if arm is type(None) and value is None:
                return None
        for arm in typing.get_args(tp):
            if arm is not type(None):
                try:
                    return _coerce(value, arm, where)
                except PayloadRejected:
                    pass
        raise PayloadRejected("malformed", f"{where}: {value!r} is not {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise PayloadRejected("malformed", f"{where}: {value!r} is not a list")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise PayloadRejected("malformed", f"{where}: {value!r} is not an object")
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (str, bool):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"{where}: field type {tp} is not supported on the bus")
    raise PayloadRejected("malformed", f"{where}: {value!r} is not {getattr(tp, '__name__', tp)}")


def _decode_event(raw: bytes | memoryview, registry: SchemaRegistry) -> Event:
    try:
        doc = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PayloadRejected("malformed", f"event is not JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise PayloadRejected("malformed", "event is not an object with schema, version and data")
    major, minor = _parse_version(doc.get("version"))
    cls: type[Event] = _lookup(registry.events, doc.get("schema"), major, registry)
    data: dict[str, Any] = doc["data"]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown and minor <= cls.MINOR:
        raise PayloadRejected("malformed", f"{cls.SCHEMA} {major}.{minor} has no fields {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{cls.SCHEMA}.{name}")
        elif _since(f) <= minor and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise PayloadRejected("malformed", f"{cls.SCHEMA} {major}.{minor} lacks required field {name!r}")
        elif _since(f) <= minor and name in ("event_id", "emitted_at_s"):
            raise PayloadRejected("malformed", f"{cls.SCHEMA} {major}.{minor} lacks envelope field {name!r}")
        # else: a field newer than the payload's minor (or optional): its default applies
    return cls(**kwargs)


# -- dispatch ------------------------------------------------------------------------------------------------


def encode(item: FrameBatch | Event) -> bytes:
    """Serialise a frame batch or a control event."""
    if isinstance(item, FrameBatch):
        return encode_batch(item)
    if isinstance(item, Event):
        return encode_event(item)
    raise DataError(f"cannot put a {type(item).__name__} on the bus; send a FrameBatch or an Event")


def decode(raw: bytes | memoryview | None, registry: SchemaRegistry = DEFAULT_REGISTRY) -> FrameBatch | Event:
    """Parse a bus payload; raise :class:`PayloadRejected` (a ``SchemaError``) saying why it cannot be read."""
    if raw is None:
        raise PayloadRejected("malformed", "empty record (no value)")
    head = bytes(memoryview(raw)[:4])
    if head == BATCH_MAGIC:
        return _decode_batch(raw, registry)
    if head[:1] == b"{":
        return _decode_event(raw, registry)
    raise PayloadRejected("malformed", f"not a fleetloop payload (starts with {head!r})")
