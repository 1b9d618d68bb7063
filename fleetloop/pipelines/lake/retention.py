"""Lake retention: whole hour partitions of a table go, oldest first, by age or by the table's size."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from fleetloop.pipelines.lake.segments import Manifest, load_manifests, table_dir
from fleetloop.platform.atomic import fsync_dir
from fleetloop.platform.errors import UserInputError

__all__ = ["LakeRetention", "PruneResult", "prune_lake"]


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
