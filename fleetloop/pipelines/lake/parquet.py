"""A segment's Parquet encoding: frame columns with their wire dtypes, per-frame arrays as blobs.

Telemetry columns keep their wire dtypes (``float16`` too); per-frame arrays (camera, lidar, radar) are
``fixed_size_binary`` blobs with their dtype and shape in the field metadata, which write an order of
magnitude faster than nested lists; :func:`read_segment` turns them back into numpy arrays.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetloop.platform.bus.schemas import BatchSchema, Column

if TYPE_CHECKING:
    from fleetloop.pipelines.lake.segments import Chunk

__all__ = ["arrow_table", "frame_bytes_of", "parquet_bytes", "read_segment"]


def arrow_table(schema: BatchSchema, chunks: Sequence[Chunk]) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    """The chunks as one Arrow table (blobs as fixed-size binary, Kafka position columns added), plus the
    concatenated columns and per-row ingest times the manifest summary is computed from."""
    import pyarrow as pa

    n = sum(c.n for c in chunks)
    cols = {c.name: np.concatenate([ch.columns[c.name] for ch in chunks]) for c in schema.columns}
    ts = np.repeat(np.array([c.timestamp_ms for c in chunks], dtype=np.int64), [c.n for c in chunks])
    offsets = np.repeat(np.array([c.offset for c in chunks], dtype=np.int64), [c.n for c in chunks])
    kpart = np.repeat(np.array([c.partition for c in chunks], dtype=np.int32), [c.n for c in chunks])
    # vehicle_id as a dictionary column: one string per chunk, not per row.
    names = sorted({c.vehicle_id for c in chunks})
    code = {v: i for i, v in enumerate(names)}
    idx = np.repeat(np.array([code[c.vehicle_id] for c in chunks], dtype=np.int32), [c.n for c in chunks])
    arrays: dict[str, Any] = {"vehicle_id": pa.DictionaryArray.from_arrays(pa.array(idx), pa.array(names))}
    fields = [pa.field("vehicle_id", pa.dictionary(pa.int32(), pa.string()))]
    for c in schema.columns:
        arr = np.ascontiguousarray(cols[c.name])
        if c.shape:
            width = c.frame_bytes
            arrays[c.name] = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(width), n, [None, pa.py_buffer(arr.reshape(-1).view(np.uint8))]
            )
            meta = {b"dtype": c.np_dtype.str.encode(), b"shape": json.dumps(list(c.shape)).encode()}
            fields.append(pa.field(c.name, pa.binary(width), nullable=False, metadata=meta))
        else:
            arrays[c.name] = pa.array(arr)
            fields.append(pa.field(c.name, arrays[c.name].type, nullable=False))
    for name, arr in (("_ingest_ms", ts), ("_kafka_partition", kpart), ("_kafka_offset", offsets)):
        arrays[name] = pa.array(arr)
        fields.append(pa.field(name, arrays[name].type, nullable=False))
    meta = {b"fleetloop.schema": schema.name.encode(), b"fleetloop.schema_version": schema.version.encode()}
    table = pa.Table.from_arrays(list(arrays.values()), schema=pa.schema(fields, metadata=meta))
    return table, cols, ts


def parquet_bytes(table: Any, schema: BatchSchema, compression: str) -> Any:
    """The Parquet file of ``table``, in memory (written durably by the caller)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    scalars = [c.name for c in schema.columns if not c.shape] + ["_ingest_ms", "_kafka_offset"]
    # Dictionary encoding and statistics only where they pay: blobs would be hashed for nothing.
    pq.write_table(
        table,
        sink,
        compression=compression,
        use_dictionary=["vehicle_id"],
        write_statistics=scalars,
        row_group_size=1 << 20,
    )
    return sink.getvalue()


def read_segment(path: Path, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """A segment's Parquet file as numpy columns; blob columns come back with their dtype and per-frame shape,
    ``vehicle_id`` as an array of ``str``. A segment written under an older minor version of its schema gets the
    columns added since filled with their defaults, so segments of several minors concatenate."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)  # one open: the footer gives the schema, then the columns are read
    file_schema = parquet.schema_arrow
    added = [c for c in _schema_of(file_schema.metadata) if c.name not in file_schema.names]
    if columns is not None:
        added = [c for c in added if c.name in columns]
        columns = [name for name in columns if name in file_schema.names]
    table = parquet.read(columns=list(columns) if columns is not None else None)
    out: dict[str, np.ndarray] = {}
    for f, col in zip(table.schema, table.columns, strict=True):
        arr = col.combine_chunks()
        meta = f.metadata or {}
        if b"dtype" in meta:
            shape = tuple(json.loads(meta[b"shape"]))
            raw = np.frombuffer(arr.buffers()[1], dtype=np.uint8)[arr.offset * f.type.byte_width :]
            out[f.name] = raw[: len(arr) * f.type.byte_width].view(np.dtype(meta[b"dtype"].decode()))
            out[f.name] = out[f.name].reshape((len(arr), *shape))
        elif f.name == "vehicle_id":
            out[f.name] = np.asarray(arr.to_pylist(), dtype=object)
        else:
            out[f.name] = arr.to_numpy(zero_copy_only=False)
    for c in added:
        out[c.name] = np.full((table.num_rows, *c.shape), c.default, dtype=c.np_dtype)
    return out


def _schema_of(metadata: Mapping[bytes, bytes] | None) -> tuple[Column, ...]:
    """The columns of the batch schema (this code's newest minor of its major) a segment's metadata names; none
    for a file this lake did not write or a schema this code does not know."""
    from fleetloop.platform.bus.serde import DEFAULT_REGISTRY

    meta = metadata or {}
    name = meta.get(b"fleetloop.schema", b"").decode()
    major = meta.get(b"fleetloop.schema_version", b"").decode().partition(".")[0]
    schema = DEFAULT_REGISTRY.batches.get((name, int(major))) if major.isdigit() else None
    return schema.columns if schema is not None else ()


def frame_bytes_of(schema: BatchSchema) -> int:
    """Bytes of one frame's values in the lake (before Parquet overhead)."""
    return sum(c.np_dtype.itemsize * prod(c.shape) for c in schema.columns)
