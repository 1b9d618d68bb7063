"""The ground-truth audit table: the world's truth for telemetry frames, collected into its own lake table.

Only the label stage reads it, to measure label quality against the truth; nothing that trains a model may.
It is collected like telemetry (same dedup by ``(vehicle_id, seq)``, same durable segments, same dead
letters) into ``<state_dir>/lake/groundtruth/``, but its segments are not announced as ``dataset.sealed``:
a ground-truth segment is never a training dataset, and announcing it would invite a stage to train on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetloop.pipelines.datasets import GROUND_TRUTH_TABLE, read_ground_truth
from fleetloop.platform.bus.schemas import GROUND_TRUTH_FRAMES

if TYPE_CHECKING:
    from fleetloop.pipelines.stage_shell import StageReport
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
    from fleetloop.pipelines.collect import collect
    from fleetloop.pipelines.stage_shell import LakeSink, ShellConfig, run_stage
    from fleetloop.platform.bus.topics import DEAD_LETTER, GROUND_TRUTH_AUDIT, PIPELINE_EVENTS

    def step(state: Any, deliveries: Any) -> Any:
        return collect(state, deliveries, GROUND_TRUTH_FRAMES)

    sink = LakeSink(settings.state_dir, GROUND_TRUTH_TABLE, GROUND_TRUTH_FRAMES, step, source="collect/groundtruth")
    cfg = ShellConfig(
        topic=topic or GROUND_TRUTH_AUDIT,
        group_id=group_id,
        events_topic=PIPELINE_EVENTS,
        dead_letter_topic=DEAD_LETTER,
        idle_timeout_s=idle_timeout_s,
        segment_rows=segment_rows,
        segment_age_s=segment_age_s,
        announce=False,
    )
    return run_stage(settings, sink, cfg, on_progress=on_progress)
