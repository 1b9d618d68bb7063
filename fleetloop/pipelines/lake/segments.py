"""Lake segments: what a segment is, how one is written atomically, listed, recovered after a crash and read.

A *segment* is one Parquet file plus its manifest. The manifest is the commit point: it is written (temp file,
fsync, ``os.replace``, fsync of the folder) only after the Parquet file is durable the same way, and it holds
the file's rows, SHA-256, bytes, Kafka offset ranges, per-vehicle sequence intervals (the dedup state, so it
is persisted atomically with the rows it describes) and the summary ``inspect_lake`` shows. A Parquet file
without a manifest is an orphan of a crash: readers ignore it and :func:`remove_orphans` deletes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleetloop.pipelines.lake.durable import mkdirs_durably
from fleetloop.pipelines.lake.parquet import arrow_table, parquet_bytes, read_segment
from fleetloop.platform.atomic import write_bytes_atomic
from fleetloop.platform.bus.schemas import BatchSchema, TriggerFlag
from fleetloop.platform.errors import DataError, UserInputError

__all__ = [
    "LAKE_DIRNAME",
    "UNKNOWN_VISIBILITY",
    "VISIBILITY_BUCKETS",
    "Chunk",
    "Manifest",
    "SeqIntervals",
    "announce_pending",
    "lake_root",
    "load_manifests",
    "mark_announced",
    "path_of_uri",
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
UNKNOWN_VISIBILITY = "unknown (NaN)"

SeqIntervals = dict[str, list[list[int]]]  # vehicle id -> sorted disjoint inclusive [first_seq, last_seq]


def lake_root(state_dir: Path) -> Path:
    """``<state_dir>/lake``."""
    return Path(state_dir) / LAKE_DIRNAME


def table_dir(state_dir: Path, table: str) -> Path:
    """``<state_dir>/lake/<table>``; ``table`` is a plain name such as ``telemetry``."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", table):
        raise UserInputError(f"lake table name {table!r} must be lower-case letters, digits and _")
    return lake_root(state_dir) / table


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
    record_digest: str = ""  # of the Kafka record's bytes: tells a transport retry from a vehicle's repeat

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
    ticks: SeqIntervals = field(default_factory=dict)  # vehicle id -> tick intervals (collect's tick check)
    records: list[str] = field(default_factory=list)  # digests of the Kafka records whose frames are here
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
        buckets[UNKNOWN_VISIBILITY] = int(np.count_nonzero(np.isnan(vis)))
        out["visibility"] = buckets
    if "trigger_flags" in cols:
        flags = cols["trigger_flags"]
        out["triggers"] = {f.name or str(f.value): int(np.count_nonzero(flags & f.value)) for f in TriggerFlag}
        out["triggers"]["none"] = int(np.count_nonzero(flags == 0))
    return out


def write_segments(
    state_dir: Path,
    table: str,
    schema: BatchSchema,
    chunks: Sequence[Chunk],
    *,
    compression: str = "zstd",
    writer: str = "",
) -> list[Manifest]:
    """Write ``chunks`` as one segment per hour partition they touch; return the manifests, all durable.

    Each segment is independently atomic (Parquet first, then its manifest), so a crash between two
    segments leaves the first complete and the second absent, never half written. ``writer`` (a
    :class:`~fleetloop.pipelines.lake.writers.WriterLease` token) goes into the segment ids, so that
    :func:`remove_orphans` leaves a live writer's unfinished files alone."""
    by_partition: dict[str, list[Chunk]] = {}
    for ch in chunks:
        if ch.n:
            by_partition.setdefault(_hour_partition(ch.timestamp_ms), []).append(ch)
    out = []
    for partition, part_chunks in sorted(by_partition.items()):
        out.append(_write_one(state_dir, table, schema, partition, part_chunks, compression, writer))
    return out


def _write_one(
    state_dir: Path,
    table: str,
    schema: BatchSchema,
    partition: str,
    chunks: Sequence[Chunk],
    compression: str,
    writer: str,
) -> Manifest:
    arrow, cols, ts = arrow_table(schema, chunks)
    data = parquet_bytes(arrow, schema, compression)
    folder = table_dir(state_dir, table) / partition
    mkdirs_durably(folder)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    segment_id = f"{stamp}-{writer}-{uuid.uuid4().hex[:8]}" if writer else f"{stamp}-{uuid.uuid4().hex[:12]}"
    name = f"part-{segment_id}.parquet"
    write_bytes_atomic(folder / name, data)
    seqs: dict[str, list[np.ndarray]] = {}
    ticks: dict[str, list[np.ndarray]] = {}
    offsets: dict[str, list[int]] = {}
    for ch in chunks:
        seqs.setdefault(ch.vehicle_id, []).append(ch.columns[schema.seq_column])
        if "tick" in ch.columns:
            ticks.setdefault(ch.vehicle_id, []).append(ch.columns["tick"])
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
        ticks={v: _runs(np.unique(np.concatenate(t).astype(np.int64))) for v, t in ticks.items()},
        records=sorted({ch.record_digest for ch in chunks if ch.record_digest}),
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


_WRITER_RE = re.compile(r"part-\d{8}T\d{6}-([0-9a-f]{8})-[0-9a-f]{8}\.")


def remove_orphans(state_dir: Path, table: str, live_writers: Iterable[str] = ()) -> int:
    """Delete Parquet files without a manifest and stale temp files (left by a crash); return how many.

    Files of a writer in ``live_writers`` (tokens in their segment ids) are never touched: they may be a
    segment another collect member is writing right now."""
    live = set(live_writers)
    removed = 0
    for h in _partition_dirs(table_dir(state_dir, table)):
        for p in h.iterdir():
            owner = _WRITER_RE.search(p.name)
            if owner is not None and owner.group(1) in live:
                continue
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


def read_table(state_dir: Path, table: str, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Every committed segment of ``table`` concatenated (small lakes and tests; stages read segment by segment)."""
    parts = [read_segment(m.parquet_path, columns) for m in load_manifests(state_dir, table)]
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
