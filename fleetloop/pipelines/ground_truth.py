"""The ground-truth audit table: the world's truth for telemetry frames, collected into its own lake table.

Only the label stage reads it, to measure label quality against the truth; nothing that trains a model may.
It is collected like telemetry (same dedup by ``(vehicle_id, seq)``, same durable segments, same dead
letters) into ``<state_dir>/lake/groundtruth/``, but its segments are not announced as ``dataset.sealed``:
a ground-truth segment is never a training dataset, and announcing it would invite a stage to train on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetloop.pipelines.collect import run_collect
from fleetloop.pipelines.datasets import GROUND_TRUTH_TABLE, read_ground_truth
from fleetloop.platform.bus.schemas import GROUND_TRUTH_FRAMES
from fleetloop.platform.bus.topics import GROUND_TRUTH_AUDIT

if TYPE_CHECKING:
    from fleetloop.pipelines.lake_sink import StageReport
    from fleetloop.platform.bus.topics import Topic
    from fleetloop.platform.settings import Settings

__all__ = ["GROUND_TRUTH_GROUP", "GROUND_TRUTH_TABLE", "read_ground_truth", "run_ground_truth"]

GROUND_TRUTH_GROUP = "fleetloop-collect-groundtruth"


def run_ground_truth(
    settings: Settings,
    *,
    topic: Topic | None = None,
    group_id: str = GROUND_TRUTH_GROUP,
    idle_timeout_s: float | None = 2.0,
    segment_rows: int = 250_000,
    segment_age_s: float = 5.0,
    on_progress: Any = None,
) -> StageReport:
    """Collect the ground-truth audit topic into the ``groundtruth`` lake table (no announcements)."""
    return run_collect(
        settings,
        topic=topic or GROUND_TRUTH_AUDIT,
        group_id=group_id,
        table=GROUND_TRUTH_TABLE,
        schema=GROUND_TRUTH_FRAMES,
        announce=False,
        idle_timeout_s=idle_timeout_s,
        segment_rows=segment_rows,
        segment_age_s=segment_age_s,
        on_progress=on_progress,
    )
