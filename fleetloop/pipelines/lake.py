"""The Parquet lake: frame tables partitioned by upload hour, written atomically, each file with a manifest.

Layout (docs/adr/0070-lake-layout-and-segments.md says why hours, not vehicle buckets)::

    <state_dir>/lake/<table>/date=YYYY-MM-DD/hour=HH/part-<segment_id>.parquet
    <state_dir>/lake/<table>/date=YYYY-MM-DD/hour=HH/part-<segment_id>.manifest.json
    <state_dir>/lake/<table>/date=YYYY-MM-DD/hour=HH/part-<segment_id>.announced      (dataset.sealed was sent)

A *segment* is one Parquet file plus its manifest. The manifest is the commit point: it is written (temp file,
fsync, ``os.replace``, fsync of the folder) only after the Parquet file is durable the same way, and it holds
the file's rows, SHA-256, bytes, Kafka offset ranges, per-vehicle sequence intervals (the dedup state, so it
is persisted atomically with the rows it describes) and the summary ``inspect_lake`` shows. A Parquet file
without a manifest is an orphan of a crash: readers ignore it and :func:`remove_orphans` deletes it.

Telemetry columns keep their wire dtypes (``float16`` too); per-frame arrays (camera, lidar, radar) are
``fixed_size_binary`` blobs with their dtype and shape in the field metadata, which write an order of
magnitude faster than nested lists; :func:`read_segment` turns them back into numpy arrays.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from fleetloop.platform.atomic import fsync_dir, write_bytes_atomic
from fleetloop.platform.bus.schemas import BatchSchema, Column, TriggerFlag
from fleetloop.platform.errors import DataError, UserInputError

__all__ = [
    "LAKE_DIRNAME",
    "VISIBILITY_BUCKETS",
    "Chunk",
    "LakeRetention",
    "LakeSummary",
    "Manifest",
    "PruneResult",
    "SeqIntervals",
    "announce_pending",
    "inspect_lake",
    "lake_root",
    "load_manifests",
    "mark_announced",
    "path_of_uri",
    "prune_lake",
    "read_segment",
    "read_table",
    "remove_orphans",
    "table_dir",
    "write_segments",
]

LAKE_DIRNAME = "lake"
MANIFEST_VERSION = 1
_MANIFEST_SUFFIX = ".manifest.json"
_ANNOUNCED_SUFFIX = ".announced"
_PARTITION_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_HOUR_RE = re.compile(r"^hour=(\d{2})$")

# Condition buckets of the vehicles' own visibility estimate [m]: (label, upper bound exclusive).
VISIBILITY_BUCKETS: tuple[tuple[str, float], ...] = (
    ("dense fog <50 m", 50.0),
    ("fog 50-150 m", 150.0),
    ("mist 150-400 m", 400.0),
    ("clear >=400 m", float("inf")),
)
_UNKNOWN_VISIBILITY = "unknown (NaN)"

SeqIntervals = dict[str, list[list[int]]]  # vehicle id -> sorted disjoint inclusive [first_seq, last_seq]


def lake_root(state_dir: Path) -> Path:
    """``<state_dir>/lake``."""
    return Path(state_dir) / LAKE_DIRNAME


def table_dir(state_dir: Path, table: str) -> Path:
    """``<state_dir>/lake/<table>``; ``table`` is a plain name such as ``telemetry``."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", table):
        raise UserInputError(f"lake table name {table!r} must be lower-case letters, digits and _")
    return lake_root(state_dir) / table


# -- durable file writes --------------------------------------------------------------------------------


def _mkdirs_durably(path: Path) -> None:
    """Create ``path`` and fsync each new folder's parent, so the folder entry survives a crash too."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_dir(d.parent)


# -- what is written --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """Frames of one vehicle from one Kafka record, ready for the lake (the collect stage's output).

    ``columns`` hold the schema's columns, all of ``n`` frames; ``timestamp_ms`` is the record's Kafka
    timestamp (upload time, UTC), which picks the hour partition.
    """

    vehicle_id: str
    columns: Mapping[str, np.ndarray]
    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    @property
    def n(self) -> int:
        return int(next(iter(self.columns.values())).shape[0])


@dataclass(frozen=True)
class Manifest:
    """A segment's manifest: what its Parquet file holds; written after the file is durable."""

    segment_id: str
    table: str
    schema: str
    schema_version: str
    partition: str  # "date=YYYY-MM-DD/hour=HH"
    file: str  # file name inside the partition folder
    rows: int
    size_bytes: int
    content_sha256: str
    created_at_s: float
    offsets: dict[str, list[int]]  # "topic:partition" -> [first offset, last offset + 1)
    vehicles: SeqIntervals
    summary: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)  # where it was read from (not stored)

    @property
    def parquet_path(self) -> Path:
        if self.path is None:
            raise DataError(f"manifest of segment {self.segment_id} was not read from disk")
        return self.path.parent / self.file

    @property
    def announced(self) -> bool:
        return self.path is not None and _announced_marker(self.path).exists()

    def to_json(self) -> bytes:
        doc = {k: v for k, v in self.__dict__.items() if k != "path"}
        doc["manifest_version"] = MANIFEST_VERSION
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_file(cls, path: Path) -> Manifest:
        try:
            doc = json.loads(path.read_bytes())
            if doc.pop("manifest_version") != MANIFEST_VERSION:
                raise ValueError("unsupported manifest version")
            return cls(**doc, path=path)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise DataError(f"lake manifest {path} is unreadable ({e}); move it aside and re-run collect") from e


def _announced_marker(manifest_path: Path) -> Path:
    return manifest_path.with_name(manifest_path.name[: -len(_MANIFEST_SUFFIX)] + _ANNOUNCED_SUFFIX)


def _hour_partition(timestamp_ms: int) -> str:
    t = dt.datetime.fromtimestamp(timestamp_ms / 1000.0, tz=dt.UTC)
    return f"date={t:%Y-%m-%d}/hour={t:%H}"


def _runs(seqs: np.ndarray) -> list[list[int]]:
    """Sorted unique sequence numbers as inclusive [first, last] runs."""
    if seqs.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(seqs) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks - 1, [seqs.size - 1]))
    return [[int(seqs[a]), int(seqs[b])] for a, b in zip(starts, ends, strict=True)]


def _summary(schema: BatchSchema, cols: Mapping[str, np.ndarray], ts_ms: np.ndarray) -> dict[str, Any]:
    """Counts ``inspect_lake`` shows, computed once when the segment is written."""
    out: dict[str, Any] = {"min_ingest_ms": int(ts_ms.min()), "max_ingest_ms": int(ts_ms.max())}
    vis_col = "est_visibility_m" if "est_visibility_m" in cols else "true_visibility_m"
    if vis_col in cols:
        vis = cols[vis_col].astype(np.float32)
        buckets: dict[str, int] = {}
        lower = -np.inf
        for label, upper in VISIBILITY_BUCKETS:
            buckets[label] = int(np.count_nonzero((vis >= lower) & (vis < upper)))
            lower = upper
        buckets[_UNKNOWN_VISIBILITY] = int(np.count_nonzero(np.isnan(vis)))
        out["visibility"] = buckets
    if "trigger_flags" in cols:
        flags = cols["trigger_flags"]
        out["triggers"] = {f.name or str(f.value): int(np.count_nonzero(flags & f.value)) for f in TriggerFlag}
        out["triggers"]["none"] = int(np.count_nonzero(flags == 0))
    return out


def _arrow_table(schema: BatchSchema, chunks: Sequence[Chunk]) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
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


def _parquet_bytes(table: Any, schema: BatchSchema, compression: str) -> Any:
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


def write_segments(
    state_dir: Path,
    table: str,
    schema: BatchSchema,
    chunks: Sequence[Chunk],
    *,
    compression: str = "zstd",
) -> list[Manifest]:
    """Write ``chunks`` as one segment per hour partition they touch; return the manifests, all durable.

    Each segment is independently atomic (Parquet first, then its manifest), so a crash between two
    segments leaves the first complete and the second absent, never half written."""
    by_partition: dict[str, list[Chunk]] = {}
    for ch in chunks:
        if ch.n:
            by_partition.setdefault(_hour_partition(ch.timestamp_ms), []).append(ch)
    out = []
    for partition, part_chunks in sorted(by_partition.items()):
        out.append(_write_one(state_dir, table, schema, partition, part_chunks, compression))
    return out


def _write_one(
    state_dir: Path, table: str, schema: BatchSchema, partition: str, chunks: Sequence[Chunk], compression: str
) -> Manifest:
    arrow, cols, ts = _arrow_table(schema, chunks)
    data = _parquet_bytes(arrow, schema, compression)
    folder = table_dir(state_dir, table) / partition
    _mkdirs_durably(folder)
    segment_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
    name = f"part-{segment_id}.parquet"
    write_bytes_atomic(folder / name, data)
    seqs: dict[str, list[np.ndarray]] = {}
    offsets: dict[str, list[int]] = {}
    for ch in chunks:
        seqs.setdefault(ch.vehicle_id, []).append(ch.columns[schema.seq_column])
        key = f"{ch.topic}:{ch.partition}"
        lo, hi = offsets.get(key, [ch.offset, ch.offset + 1])
        offsets[key] = [min(lo, ch.offset), max(hi, ch.offset + 1)]
    vehicles = {v: _runs(np.unique(np.concatenate(s).astype(np.int64))) for v, s in seqs.items()}
    manifest = Manifest(
        segment_id=segment_id,
        table=table,
        schema=schema.name,
        schema_version=schema.version,
        partition=partition,
        file=name,
        rows=arrow.num_rows,
        size_bytes=data.size,
        content_sha256=hashlib.sha256(memoryview(data)).hexdigest(),
        created_at_s=time.time(),
        offsets=offsets,
        vehicles=vehicles,
        summary=_summary(schema, cols, ts),
    )
    mpath = folder / f"part-{segment_id}{_MANIFEST_SUFFIX}"
    write_bytes_atomic(mpath, manifest.to_json())  # the commit point of the segment
    return Manifest(**{**manifest.__dict__, "path": mpath})


# -- what is read --------------------------------------------------------------------------------------------


def _partition_dirs(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for d in sorted(root.iterdir()):
        if d.is_dir() and _PARTITION_RE.match(d.name):
            for h in sorted(d.iterdir()):
                if h.is_dir() and _HOUR_RE.match(h.name):
                    yield h


def load_manifests(state_dir: Path, table: str, skip: Iterable[str] = ()) -> list[Manifest]:
    """Every segment manifest of ``table``, oldest partition first; ``skip`` names segment ids already known."""
    known = set(skip)
    out = []
    for h in _partition_dirs(table_dir(state_dir, table)):
        for p in sorted(h.glob("part-*" + _MANIFEST_SUFFIX)):
            seg = p.name[len("part-") : -len(_MANIFEST_SUFFIX)]
            if seg not in known:
                out.append(Manifest.from_file(p))
    return out


def remove_orphans(state_dir: Path, table: str) -> int:
    """Delete Parquet files without a manifest and stale temp files (left by a crash); return how many."""
    removed = 0
    for h in _partition_dirs(table_dir(state_dir, table)):
        for p in h.iterdir():
            orphan = p.name.endswith(".tmp") or (
                p.suffix == ".parquet" and not p.with_name(p.name[: -len(".parquet")] + _MANIFEST_SUFFIX).exists()
            )
            if orphan:
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def mark_announced(manifest: Manifest) -> None:
    """Record that ``dataset.sealed`` for this segment was acknowledged (no fsync: a lost marker only means
    the segment is announced once more, which consumers deduplicate by ``dataset_id``)."""
    if manifest.path is None:
        raise DataError(f"manifest of segment {manifest.segment_id} was not read from disk")
    _announced_marker(manifest.path).touch()


def path_of_uri(uri: str) -> Path:
    """The local path of a ``file://`` URI from ``dataset.sealed`` (``=`` in partition names is %-encoded)."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise UserInputError(f"{uri!r} is not a file:// URI of a lake segment")
    return Path(unquote(parsed.path))


def announce_pending(manifests: Iterable[Manifest]) -> list[Manifest]:
    """The manifests whose ``dataset.sealed`` was not acknowledged yet (a crash after the write)."""
    return [m for m in manifests if not m.announced]


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


def read_table(state_dir: Path, table: str, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Every committed segment of ``table`` concatenated (small lakes and tests; stages read segment by segment)."""
    parts = [read_segment(m.parquet_path, columns) for m in load_manifests(state_dir, table)]
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# -- retention -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LakeRetention:
    """How much of a lake table to keep; whole hour partitions go, oldest first.

    Attributes:
        max_age_h: delete partitions whose hour ended more than this many hours ago [h]; None keeps all.
        max_bytes: then delete the oldest partitions until the table holds at most this many bytes [B];
            None keeps all. The newest partition is never deleted (collect may be writing to it).
    """

    max_age_h: float | None = None
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_age_h is not None and not self.max_age_h > 0:
            raise UserInputError(f"lake retention max_age_h must be > 0 hours, got {self.max_age_h}")
        if self.max_bytes is not None and self.max_bytes < 0:
            raise UserInputError(f"lake retention max_bytes must be >= 0, got {self.max_bytes}")


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune_lake` deleted: partitions, segments, rows and bytes, and why each partition went."""

    partitions: list[str]
    reasons: dict[str, str]
    segments: int
    rows: int
    size_bytes: int


def _partition_end_s(partition: str) -> float:
    date, hour = partition.split("/")
    start = dt.datetime.strptime(f"{date[5:]} {hour[5:]}", "%Y-%m-%d %H").replace(tzinfo=dt.UTC)
    return (start + dt.timedelta(hours=1)).timestamp()


def prune_lake(state_dir: Path, table: str, retention: LakeRetention, now_s: float | None = None) -> PruneResult:
    """Delete whole old partitions of ``table`` per ``retention``; manifests go first, so a reader never sees a
    manifest whose file is gone (the dedup state of deleted frames goes with them: see the ADR)."""
    now_s = time.time() if now_s is None else now_s
    by_part: dict[str, list[Manifest]] = {}
    for m in load_manifests(state_dir, table):
        by_part.setdefault(m.partition, []).append(m)
    parts = sorted(by_part)
    doomed: dict[str, str] = {}
    if retention.max_age_h is not None:
        for p in parts[:-1]:
            if now_s - _partition_end_s(p) > retention.max_age_h * 3600:
                doomed[p] = f"older than {retention.max_age_h:g} h"
    if retention.max_bytes is not None:
        total = sum(m.size_bytes for p in parts if p not in doomed for m in by_part[p])
        for p in parts[:-1]:
            if total <= retention.max_bytes:
                break
            if p not in doomed:
                doomed[p] = f"table over {retention.max_bytes} bytes"
                total -= sum(m.size_bytes for m in by_part[p])
    root = table_dir(state_dir, table)
    for p in sorted(doomed):
        folder = root / p
        for m in by_part[p]:
            if m.path is not None:
                m.path.unlink(missing_ok=True)
        fsync_dir(folder)
        shutil.rmtree(folder)
        if not any(folder.parent.iterdir()):
            folder.parent.rmdir()
    gone = [m for p in doomed for m in by_part[p]]
    return PruneResult(sorted(doomed), doomed, len(gone), sum(m.rows for m in gone), sum(m.size_bytes for m in gone))


# -- inspection ------------------------------------------------------------------------------------------------


@dataclass
class LakeSummary:
    """What ``fleetloop lake inspect`` shows for one table."""

    table: str
    path: str
    partitions: list[dict[str, Any]]
    segments: int
    rows: int
    vehicles: int
    size_bytes: int
    visibility: dict[str, int]
    triggers: dict[str, int]
    unannounced_segments: int
    first_ingest_utc: str | None
    last_ingest_utc: str | None


def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def inspect_lake(state_dir: Path, table: str = "telemetry") -> LakeSummary:
    """Summarise ``table`` from its manifests alone (no Parquet is read): partitions, rows, vehicles,
    conditions (buckets of the vehicles' visibility estimate), trigger counts by flag, bytes."""
    manifests = load_manifests(state_dir, table)
    parts: dict[str, dict[str, Any]] = {}
    vehicles: set[str] = set()
    vis: Counter[str] = Counter()
    trig: Counter[str] = Counter()
    for m in manifests:
        p = parts.setdefault(m.partition, {"partition": m.partition, "segments": 0, "rows": 0, "size_bytes": 0})
        p["segments"] += 1
        p["rows"] += m.rows
        p["size_bytes"] += m.size_bytes
        vehicles.update(m.vehicles)
        vis.update(m.summary.get("visibility", {}))
        trig.update(m.summary.get("triggers", {}))
    lo = [m.summary["min_ingest_ms"] for m in manifests if "min_ingest_ms" in m.summary]
    hi = [m.summary["max_ingest_ms"] for m in manifests if "max_ingest_ms" in m.summary]
    return LakeSummary(
        table=table,
        path=str(table_dir(state_dir, table)),
        partitions=[parts[k] for k in sorted(parts)],
        segments=len(manifests),
        rows=sum(m.rows for m in manifests),
        vehicles=len(vehicles),
        size_bytes=sum(m.size_bytes for m in manifests),
        visibility={label: vis.get(label, 0) for label, _ in VISIBILITY_BUCKETS}
        | ({_UNKNOWN_VISIBILITY: vis[_UNKNOWN_VISIBILITY]} if vis.get(_UNKNOWN_VISIBILITY) else {}),
        triggers=dict(trig),
        unannounced_segments=sum(1 for m in manifests if not m.announced),
        first_ingest_utc=_utc(min(lo)) if lo else None,
        last_ingest_utc=_utc(max(hi)) if hi else None,
    )


def frame_bytes_of(schema: BatchSchema) -> int:
    """Bytes of one frame's values in the lake (before Parquet overhead)."""
    return sum(c.np_dtype.itemsize * prod(c.shape) for c in schema.columns)
