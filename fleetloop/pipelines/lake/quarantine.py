"""Quarantine: a segment (or labelled dataset) a stage cannot process is set aside with its reason, not retried
forever and not allowed to stop the stage for everything else.

A quarantine record is one JSON file per item, beside the data it describes::

    <state_dir>/lake/<table>/_quarantine/<segment_id>.json          lake segments (refused by label)
    <state_dir>/datasets/labelled/_quarantine/<dataset_id>.json     labelled datasets (refused by train)

The data itself stays where it is (collect's dedup state lives in the segment manifests, so a quarantined
segment's frames still count as collected); every reader skips the ids whose record says ``quarantined``.
Only an operator's command changes that: ``release`` marks the record ``released`` (the next run of the stage
takes the item again, also a long-running member that would otherwise only look at newly announced segments;
the stage deletes the record once it has processed the item, or quarantines it again), ``drop`` deletes the
item's files and then the record. Records are written with :mod:`fleetloop.platform.atomic`. Why records and
not a move into a quarantine folder: docs/adr/0079.

Pure parts: :func:`isolate_failures` (which items of a batch make it fail), :func:`reason_code` (a short,
bounded reason for the metric); the rest is the record store.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from fleetloop.pipelines.lake.durable import mkdirs_durably
from fleetloop.pipelines.lake.segments import Manifest, lake_root, table_dir
from fleetloop.platform.atomic import fsync_dir, write_bytes_atomic
from fleetloop.platform.errors import DataError, NotFoundError, UserInputError

__all__ = [
    "QUARANTINED_METRIC",
    "QUARANTINE_DIRNAME",
    "DropResult",
    "QuarantineRecord",
    "QuarantineStore",
    "find_record",
    "isolate_failures",
    "lake_quarantine",
    "lake_quarantine_stores",
    "quarantine_segment",
    "quarantined_counter",
    "reason_code",
]

QUARANTINE_DIRNAME = "_quarantine"
RECORD_VERSION = 1
QUARANTINED_STATUS = "quarantined"
RELEASED_STATUS = "released"
MIN_PREFIX = 8  # fewest characters of an id that name a record (a segment id starts with its UTC time)

QUARANTINED_METRIC = "fleetloop_pipeline_quarantined_total"

# What a refusal's message says -> a short reason (bounded: a metric label, and what `quarantine list` shows).
_REASONS: tuple[tuple[str, str], ...] = (
    ("two frames at tick", "repeated_tick"),
    ("needs telemetry columns", "missing_columns"),
    ("lacks columns", "missing_columns"),
    ("does not match its hash", "hash_mismatch"),
    ("is missing", "missing_file"),
    ("unreadable", "unreadable"),
)

T = TypeVar("T")
R = TypeVar("R")


def quarantined_counter() -> Any:
    """The counter of items set aside, by stage and reason (a labelled counter has no series before its first
    increment, so declaring it on first use changes nothing a scrape sees)."""
    # Imported here: the metrics package loads the settings (pydantic), 150 ms measured, which every reader of
    # the lake (`import fleetloop.pipelines.lake`) would otherwise pay.
    from fleetloop.platform.metrics import counter

    return counter(
        QUARANTINED_METRIC,
        "Lake segments or labelled datasets a stage set aside (stage: who refused it; reason: reason_code).",
        ["stage", "reason"],
    )


def reason_code(error: BaseException) -> str:
    """A short reason for ``error``: a known refusal's name (``repeated_tick``, ``hash_mismatch``, ...), else
    the error's class in snake case (``data_error``, ``schema_error``)."""
    message = str(error)
    for fragment, code in _REASONS:
        if fragment in message:
            return code
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


def isolate_failures(
    items: Sequence[T], attempt: Callable[[Sequence[T]], R]
) -> tuple[list[T], R | None, list[tuple[T, DataError]]]:
    """Run ``attempt`` over as many of ``items`` as can go together; return (kept items, their result, failed).

    ``attempt`` must be free of side effects (it is called again on subsets) and raise ``DataError`` for data it
    cannot use. First all items at once; when that raises, each item alone: those that fail alone are set aside
    with their error. Items that pass alone but fail together (say two segments that both hold a vehicle's tick)
    are found by bisection over the item order: the first item whose prefix fails is set aside, with the error
    that prefix raised, and the rest is tried again. The result is ``None`` when nothing is kept."""
    try:
        return list(items), attempt(items), []
    except DataError:
        pass
    failed: list[tuple[T, DataError]] = []
    kept: list[T] = []
    for item in items:
        try:
            attempt([item])
            kept.append(item)
        except DataError as e:
            failed.append((item, e))
    while kept:
        try:
            return kept, attempt(kept), failed
        except DataError as e:
            last_error = e
        ok, bad = 1, len(kept)  # a prefix of 1 passes (each item passed alone); the whole list fails
        while bad - ok > 1:
            mid = (ok + bad) // 2
            try:
                attempt(kept[:mid])
                ok = mid
            except DataError as e:
                bad, last_error = mid, e
        failed.append((kept.pop(bad - 1), last_error))
    return [], None, failed


@dataclass(frozen=True)
class QuarantineRecord:
    """Why one segment (or labelled dataset) is set aside, and what an operator may do about it."""

    segment_id: str
    """The lake segment's id (a labelled dataset has the id of the segment it was labelled from)."""
    table: str
    """The lake table (``telemetry``), or ``labelled`` for a labelled dataset."""
    stage: str
    """The stage that refused it (``label``, ``train``)."""
    reason: str
    """Short reason (:func:`reason_code`), also the metric's ``reason`` label."""
    message: str
    """The refusal's full message: what was wrong."""
    error: str
    """The error's class (``DataError``, ``SchemaError``)."""
    quarantined_at_s: float
    """When it was set aside [s since the epoch, UTC]."""
    frames: int
    """Frames (rows) it holds."""
    files: tuple[str, ...]
    """Its files, commit point first (``drop`` deletes them in this order; markers after the data may be absent)."""
    status: str = QUARANTINED_STATUS
    """``quarantined`` (every reader skips it) or ``released`` (the next run of the stage takes it again)."""
    released_at_s: float | None = None
    history: tuple[str, ...] = field(default=())
    """Earlier refusals of the same item (``stage: reason``), oldest first."""

    def to_json(self) -> bytes:
        return json.dumps({**asdict(self), "record_version": RECORD_VERSION}, indent=1, sort_keys=True).encode()

    @classmethod
    def from_file(cls, path: Path) -> QuarantineRecord:
        try:
            doc = json.loads(path.read_bytes())
            if doc.pop("record_version") != RECORD_VERSION:
                raise ValueError("unsupported record version")
            doc["files"] = tuple(doc["files"])
            doc["history"] = tuple(doc.get("history", ()))
            return cls(**doc)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise DataError(f"quarantine record {path} is unreadable ({e}); fix or delete it") from e

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-able values, with whether its data is still there (retention may prune it)."""
        return {**asdict(self), "files": list(self.files), "files_present": self.data_present}

    @property
    def data_present(self) -> bool:
        """Whether its commit point (manifest or sidecar) is still on disk."""
        return bool(self.files) and Path(self.files[0]).exists()

    def brief(self) -> dict[str, Any]:
        """What a stage's summary says about it."""
        return {"segment_id": self.segment_id, "table": self.table, "reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class DropResult:
    """What ``quarantine drop`` deleted."""

    segment_id: str
    table: str
    frames: int
    files_deleted: int
    bytes_deleted: int


class QuarantineStore:
    """The quarantine records of one table (a lake table, or the labelled datasets) in ``folder``."""

    def __init__(self, folder: Path, table: str) -> None:
        self.folder = Path(folder)
        self.table = table

    def _path(self, segment_id: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", segment_id):
            raise UserInputError(f"{segment_id!r} is not a segment or dataset id")
        return self.folder / f"{segment_id}.json"

    def records(self) -> list[QuarantineRecord]:
        """Every record, oldest first."""
        if not self.folder.is_dir():
            return []
        recs = [QuarantineRecord.from_file(p) for p in self.folder.glob("*.json")]
        return sorted(recs, key=lambda r: (r.quarantined_at_s, r.segment_id))

    def get(self, segment_id: str) -> QuarantineRecord | None:
        p = self._path(segment_id)
        return QuarantineRecord.from_file(p) if p.exists() else None

    def held_ids(self) -> set[str]:
        """Ids every reader skips (status ``quarantined``)."""
        return {r.segment_id for r in self.records() if r.status == QUARANTINED_STATUS}

    def released_ids(self) -> set[str]:
        """Ids an operator released and no stage has processed since."""
        return {r.segment_id for r in self.records() if r.status == RELEASED_STATUS}

    def put(self, record: QuarantineRecord) -> None:
        mkdirs_durably(self.folder)
        write_bytes_atomic(self._path(record.segment_id), record.to_json())

    def remove(self, segment_id: str) -> None:
        p = self._path(segment_id)
        if p.exists():
            p.unlink()
            fsync_dir(self.folder)

    def quarantine(
        self, segment_id: str, *, stage: str, error: BaseException, frames: int, files: Sequence[Path | str]
    ) -> QuarantineRecord:
        """Set ``segment_id`` aside for ``error`` (a released item refused again keeps its history); counted."""
        before = self.get(segment_id)
        history = () if before is None else (*before.history, f"{before.stage}: {before.reason}")
        record = QuarantineRecord(
            segment_id=segment_id,
            table=self.table,
            stage=stage,
            reason=reason_code(error),
            message=str(error),
            error=type(error).__name__,
            quarantined_at_s=time.time(),
            frames=int(frames),
            files=tuple(str(f) for f in files),
            history=history,
        )
        self.put(record)
        quarantined_counter().labels(stage=stage, reason=record.reason).inc()
        return record

    def release(self, segment_id: str) -> QuarantineRecord:
        """Mark a record released: the next run of its stage takes the item again."""
        record = self._require(segment_id)
        if not record.data_present:
            raise UserInputError(
                f"{segment_id}'s data is gone ({record.files[0] if record.files else 'no files'}; pruned?), so "
                "there is nothing to release; "
                f"remove the record with `fleetloop lake quarantine drop {segment_id}`"
            )
        released = replace(record, status=RELEASED_STATUS, released_at_s=time.time())
        self.put(released)
        return released

    def clear_released(self, segment_ids: Iterable[str]) -> int:
        """Delete the released records of ``segment_ids`` (a stage processed them); returns how many."""
        released = self.released_ids()
        gone = [s for s in segment_ids if s in released]
        for s in gone:
            self.remove(s)
        return len(gone)

    def drop(self, segment_id: str) -> DropResult:
        """Delete the item's files, commit point first (a reader never sees it half deleted), then the record."""
        record = self._require(segment_id)
        deleted = size = 0
        for f in record.files:
            p = Path(f)
            if p.exists():
                size += p.stat().st_size
                p.unlink()
                fsync_dir(p.parent)
                deleted += 1
        self.remove(segment_id)
        return DropResult(record.segment_id, record.table, record.frames, deleted, size)

    def _require(self, segment_id: str) -> QuarantineRecord:
        record = self.get(segment_id)
        if record is None:
            raise NotFoundError(
                f"nothing quarantined as {segment_id} in {self.table}; see `fleetloop lake quarantine list`"
            )
        return record


def lake_quarantine(state_dir: Path, table: str = "telemetry") -> QuarantineStore:
    """The quarantine of lake table ``table``: ``<state_dir>/lake/<table>/_quarantine``."""
    return QuarantineStore(table_dir(state_dir, table) / QUARANTINE_DIRNAME, table)


def lake_quarantine_stores(state_dir: Path) -> list[QuarantineStore]:
    """The quarantine of every lake table there is, by table name."""
    root = lake_root(state_dir)
    if not root.is_dir():
        return []
    tables = [d.name for d in sorted(root.iterdir()) if d.is_dir() and re.fullmatch(r"[a-z][a-z0-9_]*", d.name)]
    return [lake_quarantine(state_dir, t) for t in tables]


def quarantine_segment(state_dir: Path, manifest: Manifest, stage: str, error: BaseException) -> QuarantineRecord:
    """Set a lake segment aside: its manifest (the commit point), Parquet file and announcement marker stay in
    place until an operator drops them."""
    if manifest.path is None:
        raise DataError(f"manifest of segment {manifest.segment_id} was not read from disk")
    marker = manifest.path.with_name(f"part-{manifest.segment_id}.announced")
    return lake_quarantine(state_dir, manifest.table).quarantine(
        manifest.segment_id,
        stage=stage,
        error=error,
        frames=manifest.rows,
        files=(manifest.path, manifest.parquet_path, marker),
    )


def find_record(stores: Sequence[QuarantineStore], id_or_prefix: str) -> tuple[QuarantineStore, QuarantineRecord]:
    """The one record whose id is ``id_or_prefix`` or starts with it (``MIN_PREFIX`` characters at least), in any
    of ``stores``.

    ``NotFoundError`` (exit 2) when none matches, ``UserInputError`` when several do; both name the list command."""
    hits = [(s, r) for s in stores for r in s.records() if r.segment_id == id_or_prefix]
    if not hits and len(id_or_prefix) >= MIN_PREFIX:
        hits = [(s, r) for s in stores for r in s.records() if r.segment_id.startswith(id_or_prefix)]
    if not hits:
        raise NotFoundError(
            f"nothing is quarantined as {id_or_prefix!r}; `fleetloop lake quarantine list` shows what is"
        )
    if len(hits) > 1:
        names = ", ".join(f"{r.table}/{r.segment_id}" for _, r in hits)
        raise UserInputError(
            f"{id_or_prefix!r} matches {len(hits)} quarantined items ({names}); give the whole id "
            "(`fleetloop lake quarantine list` shows them)"
        )
    return hits[0]
