"""The Parquet lake: frame tables partitioned by upload hour, written atomically, each file with a manifest.

Layout (docs/adr/0070-lake-layout-and-segments.md says why hours, not vehicle buckets)::

    <state_dir>/lake/<table>/date=YYYY-MM-DD/hour=HH/part-<segment_id>.parquet
    <state_dir>/lake/<table>/date=YYYY-MM-DD/hour=HH/part-<segment_id>.manifest.json
    <state_dir>/lake/<table>/date=YYYY-MM-DD/hour=HH/part-<segment_id>.announced      (dataset.sealed was sent)

By concern: :mod:`.segments` (what a segment is; write, list, recover, read), :mod:`.parquet` (the columns'
encoding), :mod:`.durable` (crash-safe file writes), :mod:`.retention` (``fleetloop lake prune``),
:mod:`.inspection` (``fleetloop lake inspect``), :mod:`.quarantine` (segments a stage set aside, and
``fleetloop lake quarantine``), :mod:`.writers` (which collect members write now). The names below are the lake's
public API.
"""

from __future__ import annotations

from fleetloop.pipelines.lake.inspection import LakeSummary, inspect_lake
from fleetloop.pipelines.lake.parquet import frame_bytes_of, read_segment
from fleetloop.pipelines.lake.quarantine import (
    QuarantineRecord,
    QuarantineStore,
    isolate_failures,
    lake_quarantine,
    quarantine_segment,
)
from fleetloop.pipelines.lake.retention import LakeRetention, PruneResult, prune_lake
from fleetloop.pipelines.lake.segments import (
    LAKE_DIRNAME,
    VISIBILITY_BUCKETS,
    Chunk,
    Manifest,
    SeqIntervals,
    announce_pending,
    lake_root,
    load_manifests,
    mark_announced,
    path_of_uri,
    read_table,
    remove_orphans,
    table_dir,
    write_segments,
)
from fleetloop.pipelines.lake.writers import WriterLease, live_writers

__all__ = [
    "LAKE_DIRNAME",
    "VISIBILITY_BUCKETS",
    "Chunk",
    "LakeRetention",
    "LakeSummary",
    "Manifest",
    "PruneResult",
    "QuarantineRecord",
    "QuarantineStore",
    "SeqIntervals",
    "WriterLease",
    "announce_pending",
    "frame_bytes_of",
    "inspect_lake",
    "isolate_failures",
    "lake_quarantine",
    "lake_root",
    "live_writers",
    "load_manifests",
    "mark_announced",
    "path_of_uri",
    "prune_lake",
    "quarantine_segment",
    "read_segment",
    "read_table",
    "remove_orphans",
    "table_dir",
    "write_segments",
]
