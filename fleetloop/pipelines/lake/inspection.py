"""``fleetloop lake inspect``: a table summarised from its manifests alone (no Parquet is read)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetloop.pipelines.lake.quarantine import lake_quarantine
from fleetloop.pipelines.lake.segments import UNKNOWN_VISIBILITY, VISIBILITY_BUCKETS, load_manifests, table_dir

__all__ = ["LakeSummary", "inspect_lake"]


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
    quarantined_segments: int = 0
    """Segments a stage set aside (``fleetloop lake quarantine list``); not in the counts above."""
    quarantined_rows: int = 0


def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def inspect_lake(state_dir: Path, table: str = "telemetry") -> LakeSummary:
    """Summarise ``table`` from its manifests alone (no Parquet is read): partitions, rows, vehicles,
    conditions (buckets of the vehicles' visibility estimate), trigger counts by flag, bytes; quarantined
    segments are counted apart."""
    held = lake_quarantine(state_dir, table).held_ids()
    everything = load_manifests(state_dir, table)
    manifests = [m for m in everything if m.segment_id not in held]
    quarantined = [m for m in everything if m.segment_id in held]
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
        | ({UNKNOWN_VISIBILITY: vis[UNKNOWN_VISIBILITY]} if vis.get(UNKNOWN_VISIBILITY) else {}),
        triggers=dict(trig),
        unannounced_segments=sum(1 for m in manifests if not m.announced),
        first_ingest_utc=_utc(min(lo)) if lo else None,
        last_ingest_utc=_utc(max(hi)) if hi else None,
        quarantined_segments=len(quarantined),
        quarantined_rows=sum(m.rows for m in quarantined),
    )
