"""Metrics of the control plane and the pipeline consumers, declared once here because alert rules query them.

Most metrics are declared beside the code that sets them (``fleetloop_sim_*`` in ``fleetloop.cli.sim``,
``fleetloop_pipeline_*`` in ``fleetloop.pipelines``). These are declared here instead: the alert rules in
``deploy/prometheus/rules`` need registered names, and the processes that set them may live in several modules
(or are still to be written). Each help text says who sets the metric and when.

All are labelled, so a process that imports this module but sets none of them exports no sample of them (an
unlabelled gauge would export 0, which an alert on "seconds to expiry" would read as "expired").
"""

from __future__ import annotations

from fleetloop.platform.metrics.registry import gauge

__all__ = [
    "CONSUMER_LAG",
    "RELEASE_TIME_TO_EXPIRY",
    "ROLLOUT_WAVE",
    "ROLLOUT_WAVE_STARTED",
]

ROLLOUT_WAVE = gauge(
    "fleetloop_rollout_wave",
    "The wave (1, 2, ...) a model rollout is in. Set by the rollout controller while the rollout advances or "
    "holds; its series is removed when the rollout completes, rolls back or is paused by an operator.",
    ["model", "version"],
)
ROLLOUT_WAVE_STARTED = gauge(
    "fleetloop_rollout_wave_started_timestamp_seconds",
    "Unix time the current wave of a model rollout began. Set and removed with fleetloop_rollout_wave.",
    ["model", "version"],
)
RELEASE_TIME_TO_EXPIRY = gauge(
    "fleetloop_release_metadata_time_to_expiry_seconds",
    "Seconds until the signed release metadata of a role (timestamp, snapshot, targets, root) expires; "
    "negative once expired. Set by the process that serves or refreshes the release repository, after each refresh "
    "and at least once a minute.",
    ["role"],
)
CONSUMER_LAG = gauge(
    "fleetloop_pipeline_consumer_lag_records",
    "Records a pipeline stage has yet to consume from a topic: log end offset minus the stage's position, "
    "summed over the partitions it holds. Set by the stage after each poll.",
    ["stage", "topic"],
)
